//! The Lua scripts that change a room in Redis, each in one atomic step.
//!
//! Redis runs a script without running anything else, so each of these sees and
//! changes the room alone: numbering an event and adding it to the stream, claiming a
//! nick together with the join it announces, releasing it with the departure. Every
//! script that writes takes the same first keys and arguments:
//!
//! - `KEYS[1]` the epoch, `KEYS[2]` the sequence counter, `KEYS[3]` the stream;
//! - `ARGV[1]` the epoch the caller works in, `ARGV[2]` the history size (`MAXLEN ~`).
//!
//! and answers `{'epoch', found}` when the epoch is not the caller's (Redis lost the
//! room), writing nothing. The stream entry is always the first write, through `pcall`:
//! if Redis refuses it (out of memory, say), the script stops before anything else
//! changed, and the counter is only moved after the entry exists, so the numbers have no
//! gaps. Numbers travel as decimal text; Lua's numbers are exact to 2^53, far beyond
//! any sequence number a room reaches.

use std::sync::LazyLock;

use redis::Script;

/// Helpers every writing script starts with.
const PRELUDE: &str = r#"
local function stale_epoch()
  local e = redis.call('GET', KEYS[1])
  if e ~= ARGV[1] then return {'epoch', e or ''} end
  return nil
end
local function next_seq()
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  return string.format('%d', n + 1)
end
local function add(seq, ...)
  local r = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', ARGV[1], ...)
  if type(r) == 'table' and r.err then return r end
  redis.call('SET', KEYS[2], seq)
  return nil
end
"#;

/// Sets the epoch unless there is one; answers the epoch in force.
/// KEYS: epoch. ARGV: a new epoch.
const INIT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#;

/// Registers a node: its lease and its name in the node set.
/// KEYS: epoch, lease, nodes. ARGV: epoch, node, lease ms.
const REGISTER: &str = r#"
local e = redis.call('GET', KEYS[1])
if e ~= ARGV[1] then return {'epoch', e or ''} end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
return {'ok'}
"#;

/// Appends a message, private message or notice.
/// KEYS: epoch, seq, log, the origin session's record.
/// ARGV: epoch, maxlen, kind, audience, node, session (0: the server), message id
/// (0: none), payload.
/// Answers {'ok', seq}, {'dup', seq or 0} for a message id already used, {'gone'} when
/// the session is not in the room on this node, or {'epoch', found}.
const APPEND: &str = r#"
local bad = stale_epoch() if bad then return bad end
local sid, mid = ARGV[6], ARGV[7]
if sid ~= '0' then
  local r = redis.call('HMGET', KEYS[4], 'node', 'in', 'msg', 'mseq')
  if r[1] ~= ARGV[5] or r[2] ~= '1' then return {'gone'} end
  if mid ~= '0' then
    local last = r[3] or '0'
    if #mid < #last or (#mid == #last and mid <= last) then
      if mid == last then return {'dup', r[4] or '0'} end
      return {'dup', '0'}
    end
  end
end
local seq = next_seq()
local err = add(seq, 'k', ARGV[3], 'a', ARGV[4], 'o', ARGV[5], 's', sid, 'i', mid, 'd', ARGV[8])
if err then return err end
if sid ~= '0' and mid ~= '0' then redis.call('HSET', KEYS[4], 'msg', mid, 'mseq', seq) end
return {'ok', seq}
"#;

/// Joins: claims the nick's key, creates the session, adds the member, appends the
/// join, all or nothing.
/// KEYS: epoch, seq, log, record, members, nick key, this node's held set, its lease.
/// ARGV: epoch, maxlen, node, session, nick, nick key, secret digest, payload.
/// Answers {'ok', seq}, {'taken', holder}, {'lease'} or {'epoch', found}.
const JOIN: &str = r#"
local bad = stale_epoch() if bad then return bad end
if redis.call('EXISTS', KEYS[8]) == 0 then return {'lease'} end
local holder = redis.call('GET', KEYS[6])
if holder then return {'taken', holder} end
local seq = next_seq()
local err = add(seq, 'k', 'p', 'j', '1', 'u', ARGV[5], 'a', 'r' .. ARGV[4], 'o', ARGV[3], 's', ARGV[4], 'i', '0', 'd', ARGV[8])
if err then return err end
redis.call('SET', KEYS[6], ARGV[4])
redis.call('HSET', KEYS[4], 'nick', ARGV[5], 'key', ARGV[6], 'h', ARGV[7], 'node', ARGV[3], 'in', '1', 'at', '0', 'msg', '0', 'mseq', '0')
redis.call('SADD', KEYS[7], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
return {'ok', seq}
"#;

/// Departs: if the session is in the room on the given node, appends its departure,
/// releases its nick, removes the member, and keeps the record for the resume window
/// (or deletes it). Either way the session leaves that node's held set.
/// KEYS: epoch, seq, log, record, members, nick key, the holding node's held set.
/// ARGV: epoch, maxlen, holding node, session, publishing node, payload, keep (1/0),
/// resume window ms.
/// Answers {'ok', seq, nick}, {'not'} or {'epoch', found}.
const DEPART: &str = r#"
local bad = stale_epoch() if bad then return bad end
local r = redis.call('HMGET', KEYS[4], 'node', 'in', 'nick')
if r[1] ~= ARGV[3] or r[2] ~= '1' then
  redis.call('SREM', KEYS[7], ARGV[4])
  return {'not'}
end
local seq = next_seq()
local err = add(seq, 'k', 'p', 'j', '0', 'u', r[3], 'a', 'r' .. ARGV[4], 'o', ARGV[5], 's', ARGV[4], 'i', '0', 'd', ARGV[6])
if err then return err end
redis.call('SREM', KEYS[7], ARGV[4])
redis.call('HDEL', KEYS[5], ARGV[4])
if redis.call('GET', KEYS[6]) == ARGV[4] then redis.call('DEL', KEYS[6]) end
if ARGV[7] == '1' then
  local t = redis.call('TIME')
  local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', KEYS[4], 'in', '0', 'at', ms)
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
else
  redis.call('DEL', KEYS[4])
end
return {'ok', seq, r[3]}
"#;

/// Takes a session over for this node (a resume), checking its secret's digest. A
/// session in the room on another node moves here with a control entry telling that
/// node; a departed one comes back into the room (if its nick is free) with a join.
/// KEYS: epoch, seq, log, record, members, nick key, this node's held set, its lease,
/// the old node's held set.
/// ARGV: epoch, maxlen, node, session, secret digest, the node the caller saw holding
/// it, payload of the join.
/// Answers {'ok', rejoined (1/0), seq (0: nothing appended), last message id, its seq},
/// {'unknown'}, {'moved'} (it changed hands since the caller looked), {'taken'},
/// {'lease'} or {'epoch', found}.
const TAKE_OVER: &str = r#"
local bad = stale_epoch() if bad then return bad end
if redis.call('EXISTS', KEYS[8]) == 0 then return {'lease'} end
local r = redis.call('HMGET', KEYS[4], 'h', 'node', 'in', 'nick', 'msg', 'mseq')
if not r[1] or r[1] ~= ARGV[5] then return {'unknown'} end
if r[2] ~= ARGV[6] then return {'moved'} end
local msg, mseq = r[5] or '0', r[6] or '0'
if r[3] == '1' then
  if r[2] == ARGV[3] then return {'ok', '0', '0', msg, mseq} end
  local seq = next_seq()
  local err = add(seq, 'k', 'c', 'c', 'takeover', 's', ARGV[4], 'f', r[2], 'o', ARGV[3], 'a', '-', 'i', '0', 'd', '')
  if err then return err end
  redis.call('SREM', KEYS[9], ARGV[4])
  redis.call('SADD', KEYS[7], ARGV[4])
  redis.call('HSET', KEYS[4], 'node', ARGV[3])
  return {'ok', '0', seq, msg, mseq}
end
local holder = redis.call('GET', KEYS[6])
if holder and holder ~= ARGV[4] then return {'taken'} end
local seq = next_seq()
local err = add(seq, 'k', 'p', 'j', '1', 'u', r[4], 'a', 'r' .. ARGV[4], 'o', ARGV[3], 's', ARGV[4], 'i', '0', 'd', ARGV[7])
if err then return err end
redis.call('SET', KEYS[6], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], r[4])
redis.call('SREM', KEYS[9], ARGV[4])
redis.call('SADD', KEYS[7], ARGV[4])
redis.call('HSET', KEYS[4], 'node', ARGV[3], 'in', '1', 'at', '0')
redis.call('PERSIST', KEYS[4])
return {'ok', '1', seq, msg, mseq}
"#;

/// The room as of one sequence number: the head, the members, the last entries.
/// KEYS: epoch, seq, log, members. ARGV: epoch, how many recent entries.
/// Answers {'ok', head, members (flat session/nick pairs), recent (newest first)} or
/// {'epoch', found}.
const SNAPSHOT: &str = r#"
local bad = stale_epoch() if bad then return bad end
local recent = {}
if ARGV[2] ~= '0' then
  recent = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])
end
return {'ok', redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[4]), recent}
"#;

/// Forgets a dead node once it holds no session, and frees the reaper's lock.
/// KEYS: the dead node's lease, its held set, nodes, the reap lock.
/// ARGV: the dead node, the reaping node.
/// Answers 1 if the node was forgotten.
const FORGET_NODE: &str = r#"
local done = 0
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  done = 1
end
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return done
"#;

/// Extends a lock if it is still the caller's.
/// KEYS: the lock. ARGV: the holder, ms. Answers 1 if extended.
const EXTEND_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// See [`INIT`].
pub(crate) static INIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INIT));
/// See [`REGISTER`].
pub(crate) static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER));
/// See [`APPEND`].
pub(crate) static APPEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(APPEND));
/// See [`JOIN`].
pub(crate) static JOIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(JOIN));
/// See [`DEPART`].
pub(crate) static DEPART_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(DEPART));
/// See [`TAKE_OVER`].
pub(crate) static TAKE_OVER_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(TAKE_OVER));
/// See [`SNAPSHOT`].
pub(crate) static SNAPSHOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(SNAPSHOT));
/// See [`FORGET_NODE`].
pub(crate) static FORGET_NODE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FORGET_NODE));
/// See [`EXTEND_LOCK`].
pub(crate) static EXTEND_LOCK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_LOCK));
