//! What the kernel says about a process: CPU time and resident memory from `/proc`, and
//! the open-files limit.
//!
//! CPU time is `utime + stime` from `/proc/<pid>/stat` (in clock ticks, converted with
//! `sysconf(_SC_CLK_TCK)`); resident memory is `VmRSS` from `/proc/<pid>/status`. Both are
//! read before and after a measured window, so the difference is what the window cost.

use std::fs;
use std::io;

use anyhow::{Context, Result, bail};

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    cpu_seconds_at(&format!("/proc/{pid}/stat"))
}

/// CPU seconds (user + system) this process has used so far.
pub fn own_cpu_seconds() -> Result<f64> {
    cpu_seconds_at("/proc/self/stat")
}

fn cpu_seconds_at(path: &str) -> Result<f64> {
    let stat = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself hold spaces or
/// parentheses, so fields are counted from the last `)`: after it come field 3 (state)
/// onwards, which puts utime (field 14) at index 11 and stime (field 15) at index 12.
fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize, name: &str| -> Result<u64> {
        fields
            .get(index)
            .with_context(|| format!("{name} is missing"))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    Ok(field(11, "utime")? + field(12, "stime")?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds the whole machine has spent busy (all CPUs, everything but idle and
/// iowait), from the first line of `/proc/stat`.
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let ticks = parse_machine_busy(&stat).context("cannot parse /proc/stat")?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// Busy ticks from the `cpu` line: user, nice, system, irq, softirq and steal (guest
/// time is already counted in user).
fn parse_machine_busy(stat: &str) -> Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().context("not a number"))
        .collect::<Result<_>>()?;
    if values.len() < 8 {
        bail!("the cpu line has {} fields", values.len());
    }
    // user nice system idle iowait irq softirq steal
    Ok(values[0] + values[1] + values[2] + values[5] + values[6] + values[7])
}

/// Resident set size of a process, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// The `VmRSS` line of `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// Raises this process's open-files soft limit to its hard limit (children inherit it)
/// and returns the new soft limit. Fails when even the hard limit is below `needed`.
pub fn raise_open_files_limit(needed: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE) failed");
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE) failed");
        }
        limit = raised;
    }
    let soft: u64 = limit.rlim_cur;
    if soft < needed {
        bail!(
            "this run needs about {needed} open files but the hard limit is {soft}; \
             raise it (e.g. `ulimit -Hn {needed}` as root, or in /etc/security/limits.conf)"
        );
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "1234 (chat (server) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 325);
    }

    #[test]
    fn truncated_stat_is_an_error() {
        assert!(parse_stat_ticks("1 (x) S 1 2").is_err());
        assert!(parse_stat_ticks("garbage").is_err());
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 30 7 8 2 0 0\ncpu0 50 2 25 4500 15 3 4 1 0 0\n";
        assert_eq!(parse_machine_busy(stat).unwrap(), 172);
        assert!(parse_machine_busy("cpu  1 2\n").is_err());
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tchat-server\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(own_cpu_seconds().unwrap() >= 0.0);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
