//! Results: one [`Row`] per workload and target, printed as a table for people and as JSON
//! lines for tools, with each server's figures as ratios of the relay's from the same run,
//! and our server's as ratios of the baseline server's when one ran.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::launch::TargetKind;

/// One measurement of one workload against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `fanout`, `openloop`, `idle` or `join`.
    pub workload: &'static str,
    /// What was measured.
    pub target: TargetKind,
    /// The workload's parameters.
    pub params: Map<String, Value>,
    /// The headline figure: deliveries/s, joins/s, or bytes per idle connection.
    pub rate: Option<f64>,
    /// The headline figure's unit.
    pub unit: &'static str,
    /// Median latency, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: Option<f64>,
    /// Target CPU seconds per million units of the headline figure (deliveries or joins).
    pub cpu_s_per_1m: Option<f64>,
    /// Target CPU seconds over the measured window.
    pub server_cpu_s: Option<f64>,
    /// Length of the measured window, seconds.
    pub elapsed_s: Option<f64>,
    /// Target resident memory at the end, KiB.
    pub rss_kib: Option<u64>,
    /// The bench's own CPU over the window, percent of one core.
    pub bench_cpu_pct: Option<f64>,
    /// Everything else's CPU over the window (other processes on the machine), percent
    /// of one core; high values mean a noisy measurement.
    pub other_cpu_pct: Option<f64>,
    /// Messages some receiver never got.
    pub loss: u64,
    /// Messages that arrived out of order or twice.
    pub reorders: u64,
    /// Everything else that went wrong: disconnects, clients dropped by the server,
    /// malformed texts, unexpected replies, window conflicts.
    pub other_errors: u64,
    /// True when nothing was lost, reordered or dropped.
    pub ok: bool,
    /// Why the run could not complete, if it could not.
    pub error: Option<String>,
    /// Workload-specific figures.
    pub extra: Map<String, Value>,
    /// This server divided by the relay, from the same run.
    pub vs_relay: Option<Ratios>,
    /// Our server divided by the baseline server, from the same run.
    pub vs_baseline: Option<Ratios>,
}

/// One target's figures divided by another's.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Headline figure (higher is better, except bytes per connection).
    pub rate: Option<f64>,
    /// CPU per million (lower is better).
    pub cpu: Option<f64>,
    /// p99 latency (lower is better).
    pub p99: Option<f64>,
}

impl Row {
    /// An empty row for `workload` against `target`; the workload fills it in.
    pub fn new(workload: &'static str, target: TargetKind, unit: &'static str) -> Self {
        Self {
            workload,
            target,
            params: Map::new(),
            rate: None,
            unit,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            cpu_s_per_1m: None,
            server_cpu_s: None,
            elapsed_s: None,
            rss_kib: None,
            bench_cpu_pct: None,
            other_cpu_pct: None,
            loss: 0,
            reorders: 0,
            other_errors: 0,
            ok: true,
            error: None,
            extra: Map::new(),
            vs_relay: None,
            vs_baseline: None,
        }
    }

    /// Adds a parameter.
    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_string(), value.into());
    }

    /// Adds a workload-specific figure.
    pub fn extra(&mut self, key: &str, value: impl Into<Value>) {
        self.extra.insert(key.to_string(), value.into());
    }

    /// The parameters as `key=value` words.
    pub fn params_text(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn ratio(ours: Option<f64>, relay: Option<f64>) -> Option<f64> {
    match (ours, relay) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratios(row: &Row, other: &Row) -> Ratios {
    Ratios {
        rate: ratio(row.rate, other.rate),
        cpu: ratio(row.cpu_s_per_1m, other.cpu_s_per_1m),
        p99: ratio(row.p99_us, other.p99_us),
    }
}

/// Fills `vs_relay` of every server and baseline row, and `vs_baseline` of every server
/// row, that has a row of that target with the same workload and parameters.
pub fn add_ratios(rows: &mut [Row]) {
    let others: Vec<Row> = rows
        .iter()
        .filter(|r| r.target != TargetKind::Server)
        .cloned()
        .collect();
    let find = |row: &Row, target: TargetKind| {
        others
            .iter()
            .find(|r| r.target == target && r.workload == row.workload && r.params == row.params)
    };
    for row in rows.iter_mut() {
        if row.target != TargetKind::Relay {
            row.vs_relay = find(row, TargetKind::Relay).map(|relay| ratios(row, relay));
        }
        if row.target == TargetKind::Server {
            row.vs_baseline = find(row, TargetKind::Baseline).map(|base| ratios(row, base));
        }
    }
}

/// Compares every cluster row with the one-node (server) row of the same workload and
/// parameters: adds `vs_one_node_rate` and, when both have latencies, `added_p50_us` and
/// `added_p99_us` to the cluster row's extras, and returns a line per pair for people
/// (empty without cluster rows).
pub fn cluster_summary(rows: &mut [Row]) -> String {
    let singles: Vec<Row> = rows
        .iter()
        .filter(|r| r.target == TargetKind::Server)
        .cloned()
        .collect();
    let mut out = String::new();
    for row in rows.iter_mut().filter(|r| r.target == TargetKind::Cluster) {
        let Some(one) = singles
            .iter()
            .find(|r| r.workload == row.workload && r.params == row.params)
        else {
            continue;
        };
        let mut parts = Vec::new();
        if let (Some(cluster), Some(single)) = (row.rate, one.rate) {
            parts.push(format!(
                "{} {} vs {} on one node",
                human(cluster),
                row.unit,
                human(single)
            ));
            if single > 0.0 {
                row.extra("vs_one_node_rate", cluster / single);
            }
        }
        for (name, cluster, single) in [
            ("p50", row.p50_us, one.p50_us),
            ("p99", row.p99_us, one.p99_us),
        ] {
            if let (Some(cluster), Some(single)) = (cluster, single) {
                let added = cluster - single;
                parts.push(format!(
                    "{name} {cluster:.0} us vs {single:.0} us (added {added:.0} us)"
                ));
                row.extra(&format!("added_{name}_us"), added);
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(
                out,
                "cluster vs one node, {} {}: {}",
                row.workload,
                row.params_text(),
                parts.join("; ")
            );
        }
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

/// One JSON object per row, one per line.
pub fn json_lines(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        match serde_json::to_string(row) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise a row"),
        }
    }
    out
}

/// `1234567.0` as `1.23M`, `12345.0` as `12.3k`.
fn human(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn opt(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_string(), format)
}

/// The rows as an aligned table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "workload",
        "target",
        "params",
        "rate",
        "unit",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "CPU-s/1M",
        "RSS MiB",
        "bench CPU",
        "other CPU",
        "result",
        "vs relay",
        "vs baseline",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for row in rows {
        let result = if let Some(error) = &row.error {
            format!("ERROR: {error}")
        } else if row.ok {
            "ok".to_string()
        } else {
            format!(
                "FAIL loss={} reorder={} other={}",
                row.loss, row.reorders, row.other_errors
            )
        };
        let describe = |ratios: Option<Ratios>| {
            ratios.map_or_else(String::new, |r| {
                let mut parts = Vec::new();
                if let Some(x) = r.rate {
                    parts.push(format!("rate {x:.2}x"));
                }
                if let Some(x) = r.cpu {
                    parts.push(format!("cpu {x:.2}x"));
                }
                if let Some(x) = r.p99 {
                    parts.push(format!("p99 {x:.2}x"));
                }
                parts.join(", ")
            })
        };
        cells.push(vec![
            row.workload.to_string(),
            row.target.to_string(),
            row.params_text(),
            opt(row.rate, human),
            row.unit.to_string(),
            opt(row.p50_us, |v| format!("{v:.0}")),
            opt(row.p99_us, |v| format!("{v:.0}")),
            opt(row.p999_us, |v| format!("{v:.0}")),
            opt(row.cpu_s_per_1m, |v| format!("{v:.3}")),
            opt(row.rss_kib.map(|k| k as f64 / 1024.0), |v| {
                format!("{v:.1}")
            }),
            opt(row.bench_cpu_pct, |v| format!("{v:.0}%")),
            opt(row.other_cpu_pct, |v| format!("{v:.0}%")),
            result,
            describe(row.vs_relay),
            describe(row.vs_baseline),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let numeric = (3..=11).contains(&c) && i > 0;
            if numeric {
                let _ = write!(line, "{cell:>w$}  ", w = widths[c]);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: TargetKind, rate: f64, cpu: f64) -> Row {
        let mut row = Row::new("fanout", target, "deliveries/s");
        row.param("clients", 100);
        row.rate = Some(rate);
        row.cpu_s_per_1m = Some(cpu);
        row
    }

    #[test]
    fn ratios_pair_rows_with_equal_parameters() {
        let mut rows = vec![
            row(TargetKind::Server, 800.0, 0.25),
            row(TargetKind::Relay, 1000.0, 0.2),
        ];
        add_ratios(&mut rows);
        let r = rows[0].vs_relay.unwrap();
        assert!((r.rate.unwrap() - 0.8).abs() < 1e-9);
        assert!((r.cpu.unwrap() - 1.25).abs() < 1e-9);
        assert!(r.p99.is_none());
        assert!(rows[1].vs_relay.is_none());
    }

    #[test]
    fn the_server_is_compared_with_the_baseline_and_both_with_the_relay() {
        let mut rows = vec![
            row(TargetKind::Server, 900.0, 0.2),
            row(TargetKind::Baseline, 600.0, 0.3),
            row(TargetKind::Relay, 1000.0, 0.1),
        ];
        add_ratios(&mut rows);
        let vs_base = rows[0].vs_baseline.unwrap();
        assert!((vs_base.rate.unwrap() - 1.5).abs() < 1e-9);
        let base_vs_relay = rows[1].vs_relay.unwrap();
        assert!((base_vs_relay.cpu.unwrap() - 3.0).abs() < 1e-9);
        assert!(rows[1].vs_baseline.is_none());
        assert!(rows[2].vs_relay.is_none());
    }

    #[test]
    fn a_cluster_row_is_compared_with_one_node() {
        let mut single = row(TargetKind::Server, 1000.0, 0.2);
        single.p99_us = Some(500.0);
        let mut cluster = row(TargetKind::Cluster, 800.0, 0.4);
        cluster.p99_us = Some(1700.0);
        let mut rows = vec![single, cluster];
        let summary = cluster_summary(&mut rows);
        assert!(summary.contains("added 1200 us"), "{summary}");
        assert_eq!(rows[1].extra["added_p99_us"], 1200.0);
        assert_eq!(rows[1].extra["vs_one_node_rate"], 0.8);
        assert!(rows[0].extra.is_empty());
    }

    #[test]
    fn table_and_json_have_a_line_per_row() {
        let rows = vec![row(TargetKind::Server, 1.5e6, 0.2)];
        let table = table(&rows);
        assert_eq!(table.lines().count(), 2);
        assert!(table.contains("1.50M"));
        let json = json_lines(&rows);
        let value: Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(value["target"], "server");
        assert_eq!(value["params"]["clients"], 100);
    }
}
