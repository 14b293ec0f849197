//! [`Follower`]: reads a room's stream in order, from a sequence number on, forever.
//!
//! It blocks in `XREAD` on a connection of its own (a blocking read would hold up
//! everything else on a shared one), a batch at a time, and hands out entries strictly
//! in sequence: the next entry it delivers is always the one after the last, or it says
//! which numbers are gone ([`Progress::Lost`]: trimmed before it read them). Its
//! position is the last entry it delivered, so a dropped connection costs nothing:
//! after a backoff it connects again, checks that Redis still holds the same epoch, and
//! reads on from that position, skipping and repeating nothing. A Redis that lost the
//! room (restarted empty) is reported as [`ClusterError::EpochChanged`], never read
//! past: every entry carries its epoch and the epoch key is checked after every
//! reconnect and every idle wait.

use std::collections::VecDeque;
use std::time::Duration;

use redis::Value;

use super::config::ClusterConfig;
use super::entry::{self, LogEntry, Parsed, StreamId};
use super::error::ClusterError;
use super::keys::Keys;
use super::link::Link;
use super::reply::{self, malformed};

/// What a call to [`Follower::next`] found.
#[derive(Debug)]
pub enum Progress {
    /// The next entries, in order, without a gap (never empty).
    Entries(Vec<LogEntry>),
    /// Entries `from..=to` are no longer in the stream (trimmed before this reader got
    /// to them); reading goes on after `to`.
    Lost {
        /// The first number lost.
        from: u64,
        /// The last number lost.
        to: u64,
    },
    /// Reading failed (Redis unreachable, the connection dropped, a malformed answer);
    /// the next call tries again after a backoff, from the same position.
    Interrupted(ClusterError),
}

/// A reader of a room's stream.
#[derive(Debug)]
pub struct Follower {
    link: Link,
    keys: Keys,
    epoch: u64,
    batch: usize,
    block: Duration,
    /// The least pause after a failed read (a connection that keeps answering nonsense
    /// is not asked again in a tight loop).
    pause: Duration,
    /// The sequence number of the next entry to deliver.
    next: u64,
    /// Where the next `XREAD` starts (after the last ID read, ours or not).
    cursor: StreamId,
    /// Entries read but not delivered yet.
    pending: VecDeque<LogEntry>,
    /// The epoch was checked on the current connection since the last idle wait.
    checked: bool,
    /// The last read failed: wait for the backoff before the next.
    failed: bool,
}

impl Follower {
    pub(crate) fn new(
        config: &ClusterConfig,
        keys: Keys,
        epoch: u64,
        from: u64,
    ) -> Result<Self, ClusterError> {
        let mut timings = config.link_timings();
        // The answer to a blocking read comes after the block.
        timings.response += config.read_block;
        let from = from.max(1);
        Ok(Self {
            link: Link::new(&config.url, timings)?,
            keys,
            epoch,
            batch: config.read_batch.clamp(1, 10_000),
            block: config.read_block.max(Duration::from_millis(1)),
            pause: config.backoff_min.max(Duration::from_millis(1)),
            next: from,
            cursor: StreamId {
                ms: from - 1,
                sub: 0,
            },
            pending: VecDeque::new(),
            checked: false,
            failed: false,
        })
    }

    /// The sequence number of the next entry it will deliver.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The room epoch it reads.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Waits for the next entries. [`ClusterError::EpochChanged`] is final: the stream
    /// this reader followed is gone. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Progress, ClusterError> {
        loop {
            if let Some(progress) = self.deliver() {
                return Ok(progress);
            }
            if self.failed {
                tokio::time::sleep(self.link.retry_in().await.max(self.pause)).await;
                self.failed = false;
            }
            match self.read().await {
                Ok(()) => {}
                Err(e @ ClusterError::EpochChanged { .. }) => return Err(e),
                Err(e) => {
                    self.failed = true;
                    self.checked = false;
                    return Ok(Progress::Interrupted(e));
                }
            }
        }
    }

    /// What can be delivered from `pending`, if anything.
    fn deliver(&mut self) -> Option<Progress> {
        let first = self.pending.front()?.seq;
        if first > self.next {
            let lost = Progress::Lost {
                from: self.next,
                to: first - 1,
            };
            self.next = first;
            return Some(lost);
        }
        let mut out = Vec::new();
        while let Some(entry) = self.pending.pop_front() {
            if entry.seq < self.next {
                continue; // Already delivered: impossible with XREAD, but never twice.
            }
            if entry.seq > self.next {
                self.pending.push_front(entry);
                break;
            }
            self.next += 1;
            out.push(entry);
        }
        (!out.is_empty()).then_some(Progress::Entries(out))
    }

    /// One blocking read into `pending` (or an idle timeout).
    async fn read(&mut self) -> Result<(), ClusterError> {
        if !self.checked {
            self.check_epoch().await?;
            self.checked = true;
        }
        let value: Value = self
            .link
            .query(
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(self.batch)
                    .arg("BLOCK")
                    .arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX))
                    .arg("STREAMS")
                    .arg(self.keys.log())
                    .arg(self.cursor.to_string()),
            )
            .await?;
        let Some(entries) = stream_entries(value)? else {
            // Nothing new for a whole block: look at the epoch again before the next
            // read, in case Redis lost the room without dropping this connection.
            self.checked = false;
            return Ok(());
        };
        for parsed in entry::parse_entries(entries, self.epoch)? {
            let id = parsed.id();
            if id <= self.cursor {
                return Err(ClusterError::Malformed(format!(
                    "XREAD after {} answered {id}",
                    self.cursor
                )));
            }
            self.cursor = id;
            match parsed {
                Parsed::Entry(entry) => self.pending.push_back(entry),
                Parsed::Foreign(id) => {
                    tracing::warn!(%id, "skipping a stream entry this cluster did not write");
                }
            }
        }
        Ok(())
    }

    async fn check_epoch(&self) -> Result<(), ClusterError> {
        let value: Value = self
            .link
            .query(redis::cmd("GET").arg(self.keys.epoch()))
            .await?;
        let found = match &value {
            Value::Nil => None,
            other => Some(reply::number(other).ok_or_else(|| malformed("the epoch", other))?),
        };
        if found == Some(self.epoch) {
            Ok(())
        } else {
            Err(ClusterError::EpochChanged {
                expected: self.epoch,
                found,
            })
        }
    }
}

/// The entries of the one stream in an `XREAD` answer; `None` when it timed out.
fn stream_entries(value: Value) -> Result<Option<Value>, ClusterError> {
    let streams = match value {
        Value::Nil => return Ok(None),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    Ok((pair.next(), pair.next()))
                }
                other => Err(malformed("a stream in an XREAD answer", &other)),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(map) => map.into_iter().map(|(k, v)| (Some(k), Some(v))).collect(),
        other => return Err(malformed("an XREAD answer", &other)),
    };
    let mut streams = streams.into_iter();
    match (streams.next(), streams.next()) {
        (Some((Some(_name), Some(entries))), None) => Ok(Some(entries)),
        (None, _) => Ok(None),
        _ => Err(ClusterError::Malformed(
            "an XREAD answer that is not one stream's entries".to_string(),
        )),
    }
}
