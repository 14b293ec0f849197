//! [`Cluster`]: one node's handle on a room kept in Redis.
//!
//! It numbers and appends the room's events, joins and departs members with their
//! cluster-wide nicks, keeps and takes over sessions, and reads the stream's past. Each
//! call is one or two round trips, at most one of them a script that does the whole
//! change atomically (see `scripts.rs`). A handle is one incarnation of a node in one
//! epoch: after [`ClusterError::EpochChanged`] or [`ClusterError::LeaseLost`] the node
//! connects again, getting a new [`NodeId`] and the epoch in force.

use std::sync::Arc;

use bytes::Bytes;
use redis::{ScriptInvocation, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::ClusterConfig;
use super::entry::{self, LogEntry, NewEvent, Parsed};
use super::error::{ClusterError, escape_bytes};
use super::follow::Follower;
use super::keys::Keys;
use super::link::Link;
use super::node::NodeId;
use super::reply::{self, malformed};
use super::scripts;
use crate::history::SessionId;

/// Most entries one read of the stream's past returns.
pub const MAX_RANGE: usize = 10_000;

/// Most members a snapshot accepts (a hash larger than this is refused as malformed).
pub const MAX_MEMBERS: usize = 1_000_000;

/// One node's handle on the room in Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    keys: Keys,
    link: Link,
    node: NodeId,
    epoch: u64,
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Appended with this sequence number.
    At(u64),
    /// The session already used this message id: not appended again. The sequence
    /// number it got, if it was the session's last one (else 0).
    Repeated(u64),
    /// The session is not in the room on this node (it left, or was taken over or
    /// released): nothing appended.
    NotHere,
}

/// What became of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// In the room as a new session; the join has this sequence number.
    Joined {
        /// The new session.
        session: SessionId,
        /// The join's sequence number.
        seq: u64,
    },
    /// Another session holds the nick's key.
    NickInUse {
        /// That session (0 if Redis did not say).
        holder: SessionId,
    },
}

/// What became of a departure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departed {
    /// Left the room; the departure has this sequence number.
    Left {
        /// The departure's sequence number.
        seq: u64,
        /// The session's nick (now free).
        nick: String,
    },
    /// The session was not in the room on that node (already gone, or taken over).
    NotHere,
}

/// A session as Redis keeps it, readable by every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its number.
    pub id: SessionId,
    /// Its nick.
    pub nick: String,
    /// Its nick's uniqueness key (as the caller computed it at join).
    pub nick_key: Vec<u8>,
    /// The node holding it (or that held it when it departed).
    pub node: NodeId,
    /// In the room, or departed (resumable until the record expires).
    pub in_room: bool,
    /// When it departed, in milliseconds since the Unix epoch (Redis's clock).
    pub departed_at_ms: Option<u64>,
    /// The client's last message id and the sequence number it got.
    pub last_msg: (u64, u64),
    secret_digest: [u8; 32],
}

impl SessionRecord {
    /// Whether `secret` is this session's (compared in constant time).
    pub fn verify(&self, secret: &[u8; 16]) -> bool {
        bool::from(digest(secret).ct_eq(&self.secret_digest))
    }
}

/// A successful resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The session's nick.
    pub nick: String,
    /// It had departed and is back in the room (a join was appended).
    pub rejoined: bool,
    /// The sequence number of what was appended (the join, or the control entry telling
    /// the old node), 0 if nothing was.
    pub seq: u64,
    /// The node that held it before.
    pub from: NodeId,
    /// The client's last message id and the sequence number it got.
    pub last_msg: (u64, u64),
}

/// What became of a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// This node holds the session now.
    Resumed(Resumed),
    /// No such session (it expired, or the secret is wrong).
    UnknownSession,
    /// The session had departed and its nick is someone else's now.
    NickInUse,
}

/// The room as of one sequence number, for a node that starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The newest sequence number: follow the stream from the next one.
    pub head: u64,
    /// Everyone in the room at `head`: (session, nick).
    pub members: Vec<(SessionId, String)>,
    /// The last entries up to `head`, oldest first.
    pub recent: Vec<LogEntry>,
}

/// SHA-256 of a session secret: what Redis keeps instead of the secret.
fn digest(secret: &[u8; 16]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Cluster {
    /// Connects to the room in Redis as a new incarnation of node `name`: sets the
    /// room's epoch if Redis has none, and registers this node's lease. Fails with
    /// [`ClusterError::Unavailable`] (or another error) if Redis cannot be reached.
    pub async fn connect(config: ClusterConfig, name: &str) -> Result<Self, ClusterError> {
        let keys = Keys::new(&config.room);
        let link = Link::new(&config.url, config.link_timings())?;
        let candidate = rand::random::<u64>() | 1;
        let mut init = scripts::INIT_SCRIPT.prepare_invoke();
        init.key(keys.epoch()).arg(candidate);
        let value = link.script(&init).await?;
        let epoch = reply::number(&value).ok_or_else(|| malformed("the room's epoch", &value))?;
        let cluster = Self {
            inner: Arc::new(Inner {
                node: NodeId::new(name),
                config,
                keys,
                link,
                epoch,
            }),
        };
        cluster.register().await?;
        tracing::info!(node = %cluster.node(), epoch, "joined the cluster");
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The room's epoch this handle works in.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// How long until this handle tries to connect again after a failure (zero when
    /// connected, or when a call would try now): for "retrying in N s" and for pacing
    /// retries.
    pub async fn ready_in(&self) -> std::time::Duration {
        self.link().retry_in().await
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn link(&self) -> &Link {
        &self.inner.link
    }

    /// A script invocation with the keys and arguments every writing script starts with.
    fn writing<'a>(&self, script: &'a redis::Script) -> ScriptInvocation<'a> {
        let keys = self.keys();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.epoch())
            .key(keys.seq())
            .key(keys.log())
            .arg(self.epoch())
            .arg(self.inner.config.history.max(1));
        invocation
    }

    /// Registers (again) this node's lease and its id in the node set.
    async fn register(&self) -> Result<(), ClusterError> {
        let keys = self.keys();
        let mut invocation = scripts::REGISTER_SCRIPT.prepare_invoke();
        invocation
            .key(keys.epoch())
            .key(keys.lease(self.node().as_str()))
            .key(keys.nodes())
            .arg(self.epoch())
            .arg(self.node().as_str())
            .arg(lease_ms(self));
        let value = self.link().script(&invocation).await?;
        let (status, rest) = reply::status(&value)?;
        match status {
            b"ok" => Ok(()),
            b"epoch" => Err(reply::epoch_changed(self.epoch(), rest)),
            _ => Err(malformed("the answer to a registration", &value)),
        }
    }

    /// Appends a message, private message or notice and gives it the next sequence
    /// number. A member's message is refused unless its session is in the room on this
    /// node; a message id the session already used is not appended twice (so a request
    /// that failed as [`ClusterError::Indeterminate`] can be sent again).
    pub async fn append(&self, event: &NewEvent) -> Result<Appended, ClusterError> {
        let mut invocation = self.writing(&scripts::APPEND_SCRIPT);
        invocation
            .key(self.keys().session(event.session))
            .arg(event.kind.code())
            .arg(entry::audience_code(event.audience))
            .arg(self.node().as_str())
            .arg(event.session)
            .arg(event.msg_id)
            .arg(event.payload.as_ref());
        let value = self.link().script(&invocation).await?;
        let (status, rest) = reply::status(&value)?;
        match status {
            b"ok" => Ok(Appended::At(reply::number_at(
                rest,
                0,
                "a sequence number",
            )?)),
            b"dup" => Ok(Appended::Repeated(reply::number_at(
                rest,
                0,
                "a sequence number",
            )?)),
            b"gone" => Ok(Appended::NotHere),
            b"epoch" => Err(reply::epoch_changed(self.epoch(), rest)),
            _ => Err(malformed("the answer to an append", &value)),
        }
    }

    /// Joins a new session as `nick`, claiming the nick's uniqueness key `nick_key`
    /// (computed by the caller: case-folded, confusables mapped) for it cluster-wide,
    /// keeping a digest of `secret`, and appending `payload` (the encoded join) for the
    /// room, all in one step: of two nodes racing for one key, exactly one wins.
    pub async fn join(
        &self,
        nick: &str,
        nick_key: &[u8],
        secret: &[u8; 16],
        payload: &[u8],
    ) -> Result<Joined, ClusterError> {
        let session = self.new_session().await?;
        self.join_as(session, nick, nick_key, secret, payload).await
    }

    /// A new session number, unique in the room's epoch (for [`Cluster::join_as`]).
    pub async fn new_session(&self) -> Result<SessionId, ClusterError> {
        self.link()
            .query(redis::cmd("INCR").arg(self.keys().sid()))
            .await
    }

    /// [`Cluster::join`] as session `session` (from [`Cluster::new_session`]): a
    /// caller whose join ended [`ClusterError::Indeterminate`] knows which session to
    /// depart if it was made after all.
    pub async fn join_as(
        &self,
        session: SessionId,
        nick: &str,
        nick_key: &[u8],
        secret: &[u8; 16],
        payload: &[u8],
    ) -> Result<Joined, ClusterError> {
        let keys = self.keys();
        let node = self.node().as_str();
        let mut invocation = self.writing(&scripts::JOIN_SCRIPT);
        invocation
            .key(keys.session(session))
            .key(keys.members())
            .key(keys.nick(nick_key))
            .key(keys.held(node))
            .key(keys.lease(node))
            .arg(node)
            .arg(session)
            .arg(nick)
            .arg(nick_key)
            .arg(&digest(secret)[..])
            .arg(payload);
        let value = self.link().script(&invocation).await?;
        let (status, rest) = reply::status(&value)?;
        match status {
            b"ok" => Ok(Joined::Joined {
                session,
                seq: reply::number_at(rest, 0, "a sequence number")?,
            }),
            b"taken" => Ok(Joined::NickInUse {
                holder: rest.first().and_then(reply::number).unwrap_or(0),
            }),
            b"lease" => Err(ClusterError::LeaseLost),
            b"epoch" => Err(reply::epoch_changed(self.epoch(), rest)),
            _ => Err(malformed("the answer to a join", &value)),
        }
    }

    /// Takes `session` out of the room if this node holds it: appends the departure
    /// (`payload`, built from the nick), frees the nick, and keeps the session
    /// resumable for the resume window (`resumable`) or forgets it (a leave on purpose).
    pub async fn depart(
        &self,
        session: SessionId,
        resumable: bool,
        payload: impl FnOnce(&str) -> Bytes,
    ) -> Result<Departed, ClusterError> {
        let node = self.node().clone();
        self.depart_from(session, &node, resumable, payload).await
    }

    /// [`Cluster::depart`] for a session held by `holder` (this node, or a dead one
    /// being reaped).
    pub(crate) async fn depart_from(
        &self,
        session: SessionId,
        holder: &NodeId,
        resumable: bool,
        payload: impl FnOnce(&str) -> Bytes,
    ) -> Result<Departed, ClusterError> {
        let keys = self.keys();
        let (nick, nick_key): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .link()
            .query(
                redis::cmd("HMGET")
                    .arg(keys.session(session))
                    .arg("nick")
                    .arg("key"),
            )
            .await?;
        // Without a record the script only takes the session out of the node's set.
        let nick = nick.map(|n| String::from_utf8_lossy(&n).into_owned());
        let payload = nick.as_deref().map(payload).unwrap_or_default();
        let mut invocation = self.writing(&scripts::DEPART_SCRIPT);
        invocation
            .key(keys.session(session))
            .key(keys.members())
            .key(keys.nick(&nick_key.unwrap_or_default()))
            .key(keys.held(holder.as_str()))
            .arg(holder.as_str())
            .arg(session)
            .arg(self.node().as_str())
            .arg(payload.as_ref())
            .arg(if resumable { "1" } else { "0" })
            .arg(window_ms(self));
        let value = self.link().script(&invocation).await?;
        let (status, rest) = reply::status(&value)?;
        match status {
            b"ok" => Ok(Departed::Left {
                seq: reply::number_at(rest, 0, "a sequence number")?,
                nick: rest
                    .get(1)
                    .and_then(reply::bytes)
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default(),
            }),
            b"not" => Ok(Departed::NotHere),
            b"epoch" => Err(reply::epoch_changed(self.epoch(), rest)),
            _ => Err(malformed("the answer to a departure", &value)),
        }
    }

    /// The session numbered `id`, if Redis still has it.
    pub async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, ClusterError> {
        let value: Value = self
            .link()
            .query(redis::cmd("HGETALL").arg(self.keys().session(id)))
            .await?;
        parse_record(id, &value)
    }

    /// The session holding a nick's uniqueness key, if any.
    pub async fn nick_holder(&self, nick_key: &[u8]) -> Result<Option<SessionId>, ClusterError> {
        let value: Value = self
            .link()
            .query(redis::cmd("GET").arg(self.keys().nick(nick_key)))
            .await?;
        match value {
            Value::Nil => Ok(None),
            other => reply::number(&other)
                .map(Some)
                .ok_or_else(|| malformed("a session number", &other)),
        }
    }

    /// Resumes session `id` on this node if `secret` is its own: a session in the room
    /// on another node moves here (that node is told by a control entry in the stream
    /// and closes its stale connection); a departed one comes back into the room with
    /// `payload(nick)` as its join, if its nick is still free.
    pub async fn resume(
        &self,
        id: SessionId,
        secret: &[u8; 16],
        payload: impl Fn(&str) -> Bytes,
    ) -> Result<Resume, ClusterError> {
        // The record can change hands between reading it and taking it over; each try
        // sees it change only if another node took it meanwhile, so a few suffice.
        for _ in 0..3 {
            let Some(record) = self.session(id).await? else {
                return Ok(Resume::UnknownSession);
            };
            if !record.verify(secret) {
                return Ok(Resume::UnknownSession);
            }
            let keys = self.keys();
            let node = self.node().as_str();
            let mut invocation = self.writing(&scripts::TAKE_OVER_SCRIPT);
            invocation
                .key(keys.session(id))
                .key(keys.members())
                .key(keys.nick(&record.nick_key))
                .key(keys.held(node))
                .key(keys.lease(node))
                .key(keys.held(record.node.as_str()))
                .arg(node)
                .arg(id)
                .arg(&digest(secret)[..])
                .arg(record.node.as_str())
                .arg(payload(&record.nick).as_ref());
            let value = self.link().script(&invocation).await?;
            let (status, rest) = reply::status(&value)?;
            return match status {
                b"ok" => Ok(Resume::Resumed(Resumed {
                    rejoined: reply::number_at(rest, 0, "a flag")? == 1,
                    seq: reply::number_at(rest, 1, "a sequence number")?,
                    last_msg: (
                        reply::number_at(rest, 2, "a message id")?,
                        reply::number_at(rest, 3, "a sequence number")?,
                    ),
                    nick: record.nick,
                    from: record.node,
                })),
                b"moved" => continue,
                b"unknown" => Ok(Resume::UnknownSession),
                b"taken" => Ok(Resume::NickInUse),
                b"lease" => Err(ClusterError::LeaseLost),
                b"epoch" => Err(reply::epoch_changed(self.epoch(), rest)),
                _ => Err(malformed("the answer to a take-over", &value)),
            };
        }
        Err(ClusterError::Indeterminate(
            "the session kept changing hands during the resume".to_string(),
        ))
    }

    /// The room now: its head, its members, and its last `recent` entries, read in one
    /// step so they agree.
    pub async fn snapshot(&self, recent: usize) -> Result<Snapshot, ClusterError> {
        let keys = self.keys();
        let mut invocation = scripts::SNAPSHOT_SCRIPT.prepare_invoke();
        invocation
            .key(keys.epoch())
            .key(keys.seq())
            .key(keys.log())
            .key(keys.members())
            .arg(self.epoch())
            .arg(recent.min(MAX_RANGE));
        let value = self.link().script(&invocation).await?;
        let (status, rest) = reply::status(&value)?;
        match status {
            b"ok" => {}
            b"epoch" => return Err(reply::epoch_changed(self.epoch(), rest)),
            _ => return Err(malformed("a snapshot", &value)),
        }
        let head = reply::number_at(rest, 0, "the head")?;
        let flat = rest
            .get(1)
            .and_then(reply::items)
            .filter(|f| f.len().is_multiple_of(2) && f.len() / 2 <= MAX_MEMBERS)
            .ok_or_else(|| ClusterError::Malformed("a snapshot's members".to_string()))?;
        let mut members = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let session =
                reply::number(&pair[0]).ok_or_else(|| malformed("a session", &pair[0]))?;
            let nick = reply::bytes(&pair[1]).ok_or_else(|| malformed("a nick", &pair[1]))?;
            let nick = String::from_utf8(nick.to_vec())
                .map_err(|_| ClusterError::Malformed(format!("nick {}", escape_bytes(nick))))?;
            members.push((session, nick));
        }
        let recent_value = rest.get(2).cloned().unwrap_or(Value::Nil);
        let mut recent = entries(entry::parse_entries(recent_value, self.epoch())?);
        recent.reverse();
        Ok(Snapshot {
            head,
            members,
            recent,
        })
    }

    /// Up to `count` entries (at most [`MAX_RANGE`]) from sequence number `from` on, in
    /// order. The first may be later than `from` if the stream no longer has it.
    pub async fn range(&self, from: u64, count: usize) -> Result<Vec<LogEntry>, ClusterError> {
        let value: Value = self
            .link()
            .query(
                redis::cmd("XRANGE")
                    .arg(self.keys().log())
                    .arg(format!("{from}-0"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count.clamp(1, MAX_RANGE)),
            )
            .await?;
        Ok(entries(entry::parse_entries(value, self.epoch())?))
    }

    /// The last sequence number handed out.
    pub async fn head(&self) -> Result<u64, ClusterError> {
        let value: Value = self
            .link()
            .query(redis::cmd("GET").arg(self.keys().seq()))
            .await?;
        match value {
            Value::Nil => Ok(0),
            other => reply::number(&other).ok_or_else(|| malformed("the head", &other)),
        }
    }

    /// A reader of the stream from sequence number `from` on, on a connection of its own.
    pub fn follow(&self, from: u64) -> Result<Follower, ClusterError> {
        Follower::new(&self.inner.config, self.keys().clone(), self.epoch(), from)
    }
}

/// Our entries, without the foreign ones.
fn entries(parsed: Vec<Parsed>) -> Vec<LogEntry> {
    parsed
        .into_iter()
        .filter_map(|p| match p {
            Parsed::Entry(entry) => Some(entry),
            Parsed::Foreign(_) => None,
        })
        .collect()
}

pub(crate) fn lease_ms(cluster: &Cluster) -> u64 {
    u64::try_from(cluster.config().lease.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn window_ms(cluster: &Cluster) -> u64 {
    u64::try_from(cluster.config().resume_window.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A session record from `HGETALL`, `None` when empty.
fn parse_record(id: SessionId, value: &Value) -> Result<Option<SessionRecord>, ClusterError> {
    let flat = match value {
        Value::Array(flat) if flat.len().is_multiple_of(2) && flat.len() <= 64 => flat,
        Value::Nil => return Ok(None),
        other => return Err(malformed("a session record", other)),
    };
    if flat.is_empty() {
        return Ok(None);
    }
    let field = |name: &[u8]| {
        flat.chunks_exact(2)
            .find(|pair| reply::bytes(&pair[0]) == Some(name))
            .and_then(|pair| reply::bytes(&pair[1]))
    };
    let bad =
        |what: &str| ClusterError::Malformed(format!("session {id}'s record has no valid {what}"));
    let text = |name: &[u8], what: &str| {
        field(name)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
            .ok_or_else(|| bad(what))
    };
    let number = |name: &[u8], what: &str| {
        field(name)
            .and_then(reply::parse_u64)
            .ok_or_else(|| bad(what))
    };
    let secret_digest: [u8; 32] = field(b"h")
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| bad("secret digest"))?;
    let departed_at = number(b"at", "departure time")?;
    Ok(Some(SessionRecord {
        id,
        nick: text(b"nick", "nick")?,
        nick_key: field(b"key").ok_or_else(|| bad("nick key"))?.to_vec(),
        node: NodeId::from_stored(text(b"node", "node")?),
        in_room: field(b"in") == Some(b"1"),
        departed_at_ms: (departed_at != 0).then_some(departed_at),
        last_msg: (
            number(b"msg", "message id")?,
            number(b"mseq", "message seq")?,
        ),
        secret_digest,
    }))
}
