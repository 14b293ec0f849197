//! What the user sees: every server message turned into the exact lines of the CLI
//! contract (`docs/cli-contract.md`).
//!
//! These are pure functions from messages to `String`s, so the output format is tested
//! without a terminal or a server. Room output keeps the original's shape,
//! `<server node>> <nick>: <text>`. Text that came from the server is shown in full, but
//! any control character in it other than tab, and any invisible, format or bidi
//! character, is replaced with U+FFFD: the server validates texts and nicks, and this
//! makes sure a terminal escape or a text-direction override can never reach the user's
//! terminal even if a server does not.

use std::borrow::Cow;
use std::time::Duration;

use protocol::{EventKind, LeaveReason, Reply, ResumeFailure};

use crate::sends::Undelivered;

/// The nick the server speaks as in its own messages.
const SERVER: &str = "server";

/// Replaces every control character except tab, and every invisible, format or bidi
/// character, with U+FFFD, so untrusted text cannot move the cursor, change colours,
/// retitle the terminal, hide itself or read backwards.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if text.chars().any(is_forbidden) {
        Cow::Owned(
            text.chars()
                .map(|c| if is_forbidden(c) { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

fn is_forbidden(c: char) -> bool {
    c != '\t' && protocol::unicode::is_invisible(c)
}

/// What a line is about, so a terminal front end can colour it and timestamp what came
/// from the server. The text of a line never depends on its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Someone said something to the room.
    Message,
    /// A private message to us.
    Private,
    /// Someone joined or left.
    Presence,
    /// The server speaking: notices, user lists, refusals of what we sent.
    Server,
    /// The client's own status lines (banners, confirmations, local errors).
    Local,
}

/// The kind of the line [`event`] renders.
pub fn event_kind(event: &EventKind) -> LineKind {
    match event {
        EventKind::Message { .. } => LineKind::Message,
        EventKind::Private { .. } => LineKind::Private,
        EventKind::Joined { .. } | EventKind::Left { .. } => LineKind::Presence,
        EventKind::Notice { .. } => LineKind::Server,
    }
}

/// The kind of the lines [`reply`] renders.
pub fn reply_kind(reply: &Reply) -> LineKind {
    match reply {
        Reply::NoSuchUser { .. }
        | Reply::InvalidText { .. }
        | Reply::SlowDown
        | Reply::RecipientBusy { .. }
        | Reply::Unavailable { .. } => LineKind::Server,
        Reply::Joined { .. }
        | Reply::Users { .. }
        | Reply::NickInUse
        | Reply::NickNotAllowed
        | Reply::InvalidNick { .. }
        | Reply::AlreadyJoined { .. }
        | Reply::Left
        | Reply::NotJoined
        | Reply::Sent { .. }
        | Reply::Resumed { .. }
        | Reply::ResumeFailed { .. } => LineKind::Local,
    }
}

/// The line for a room event, prefixed with the server's node name `server`.
pub fn event(server: &str, event: &EventKind) -> String {
    match event {
        EventKind::Message { from, text } => {
            format!("{server}> {}: {}", sanitize(from), sanitize(text))
        }
        EventKind::Private { from, text } => {
            format!("{server}> {} (private): {}", sanitize(from), sanitize(text))
        }
        EventKind::Joined { nick } => format!("{server}> * {} has joined *", sanitize(nick)),
        EventKind::Left { nick, reason } => match reason {
            LeaveReason::Left | LeaveReason::Quit => {
                format!("{server}> * {} has left *", sanitize(nick))
            }
            other => format!(
                "{server}> * {} has left * ({})",
                sanitize(nick),
                other.describe()
            ),
        },
        EventKind::Notice { text } => from_server(server, &sanitize(text)),
    }
}

/// What the lines for a reply depend on besides the reply itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyView<'a> {
    /// The nick this client joins with, named when a join is refused.
    pub nick: &'a str,
    /// Leaving to exit: the "you can rejoin" hint would be nonsense.
    pub quitting: bool,
    /// The first join of this process: only its banner points to `/help`.
    pub first_join: bool,
}

/// The lines for the reply to one of our calls, as `view` says.
pub fn reply(server: &str, reply: &Reply, view: &ReplyView<'_>) -> Vec<String> {
    match reply {
        Reply::Joined { users, more, .. } => joined(users, *more, view.first_join),
        Reply::Sent { .. } | Reply::Resumed { .. } | Reply::ResumeFailed { .. } => Vec::new(),
        Reply::NickInUse
        | Reply::NickNotAllowed
        | Reply::InvalidNick { .. }
        | Reply::AlreadyJoined { .. } => {
            vec![join_refused(
                &join_refusal_reason(reply, view.nick).unwrap_or_default(),
            )]
        }
        Reply::Left if view.quitting => Vec::new(),
        Reply::Left => vec![left_room()],
        Reply::NotJoined => vec![not_joined()],
        Reply::Users { users, more } => vec![users_line(users, *more)],
        Reply::NoSuchUser { nick } => vec![from_server(
            server,
            &format!(
                "no user named {} in the room; message not sent",
                sanitize(nick)
            ),
        )],
        Reply::InvalidText { reason } => vec![from_server(
            server,
            &format!("message not sent ({})", sanitize(reason)),
        )],
        Reply::SlowDown => vec![from_server(
            server,
            "slow down, message dropped (flood limit)",
        )],
        Reply::RecipientBusy { nick } => vec![from_server(
            server,
            &format!(
                "{} is receiving too many private messages; message not sent",
                sanitize(nick)
            ),
        )],
        Reply::Unavailable { held: true, .. } => vec![from_server(
            server,
            "the room's store is unreachable; your messages are held and go out when it is back",
        )],
        Reply::Unavailable { id: 0, .. } => vec![from_server(
            server,
            "the room's store is unreachable; try again later",
        )],
        Reply::Unavailable { .. } => vec![from_server(
            server,
            "the room's store is unreachable; message not sent",
        )],
    }
}

/// For a reply that refuses a join as `nick`, why, in words, with what to do about it
/// (`nick john is in use; pick another with --nick`); `None` for any other reply.
pub fn join_refusal_reason(reply: &Reply, nick: &str) -> Option<String> {
    let nick = sanitize(nick);
    match reply {
        Reply::NickInUse => Some(format!("nick {nick} is in use; pick another with --nick")),
        Reply::NickNotAllowed => Some(format!(
            "nick {nick} is reserved for the server; pick another with --nick"
        )),
        Reply::InvalidNick { reason } => Some(format!(
            "nick {nick} is not allowed ({}); pick another with --nick",
            sanitize(reason)
        )),
        Reply::AlreadyJoined { .. } => Some("you are already in the room".into()),
        _ => None,
    }
}

/// The banner printed on joining: joined, who is here, and on the first join of the
/// process (`hint`), where to find help. `more` counts members a big room's answer left
/// out.
pub fn joined(users: &[String], more: u32, hint: bool) -> Vec<String> {
    let mut lines = vec![
        "* Joined the chatroom *".to_string(),
        users_line(users, more),
    ];
    if hint {
        lines.push("* Type /help for options *".to_string());
    }
    lines
}

/// Who is in the room, in the one format of the join banner and the `/users` answer.
pub fn users_line(users: &[String], more: u32) -> String {
    format!("* Users in the room: {} *", user_list(users, more))
}

/// The line for a refused join; `reason` as from [`join_refusal_reason`]. It starts as
/// the original client's did (`Could not join chatroom`).
pub fn join_refused(reason: &str) -> String {
    format!("Could not join chatroom: {reason}")
}

/// The echo of a private message the user sent (as irssi shows it): `-> ann: text`.
pub fn private_sent(to: &str, text: &str) -> String {
    format!("-> {}: {}", sanitize(to), sanitize(text))
}

/// The line confirming `/leave`.
pub fn left_room() -> String {
    "You have exited the chatroom, you can rejoin with /join or quit with /quit".to_string()
}

/// The line for a command that needs the client to be in the room.
pub fn not_joined() -> String {
    "You are not in the chatroom; use /join".to_string()
}

/// The line for a message too long to send.
pub fn text_too_long(max: usize) -> String {
    format!("Message not sent: it is longer than {max} bytes")
}

/// The first start-up line, printed before connecting.
pub fn connecting(server: &str, own: &str) -> String {
    format!("Connecting to {server} from {own} ...")
}

/// The second start-up line, printed once the handshake succeeded.
pub fn connected() -> String {
    "Connected".to_string()
}

/// The standard-error line for a failed connection attempt.
pub fn connect_failed(server: &str, why: &str) -> String {
    format!("Could not connect to {server}: {why}")
}

/// The standard-error line for a connection that broke after it was established.
pub fn connection_lost(server: &str, why: &str) -> String {
    format!("Connection to {server} lost: {why}")
}

/// The line for a connection that broke when the client will reconnect by itself.
pub fn connection_lost_reconnecting(server: &str, why: &str) -> String {
    format!("Connection to {server} lost: {why}; reconnecting...")
}

/// The line for a connection re-established after a loss.
pub fn reconnected(server: &str) -> String {
    format!("* Reconnected to {server} *")
}

/// The line for input that needs the server while the client is reconnecting.
pub fn not_connected(server: &str) -> String {
    format!("Not connected to {server} (reconnecting); not sent")
}

/// The prompt shown before each line typed on a terminal.
pub fn prompt(own: &str) -> String {
    format!("{own}> ")
}

/// A line spoken by the server itself: `S> server: <text>`.
fn from_server(server: &str, text: &str) -> String {
    format!("{server}> {SERVER}: {text}")
}

fn user_list(users: &[String], more: u32) -> String {
    let listed = users
        .iter()
        .map(|u| sanitize(u))
        .collect::<Vec<_>>()
        .join(", ");
    if more == 0 {
        listed
    } else {
        format!("{listed} and {more} more")
    }
}

/// `n message` or `n messages`.
fn messages(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 message".to_string(),
        n => format!("{n} messages"),
    }
}

/// A backlog line (an event from before the join), marked as earlier than the join.
pub fn earlier(line: &str) -> String {
    format!("[earlier] {line}")
}

/// The lines that say a session was resumed: back in the room, how many events fell out
/// of the server's history (`lost`), and how many missed ones follow (`missed`).
pub fn resumed(lost: u64, missed: u32) -> Vec<String> {
    let mut lines = vec!["* Back in the chatroom *".to_string()];
    if lost > 0 {
        let noun = if lost == 1 {
            "message is"
        } else {
            "messages are"
        };
        lines.push(format!("* {lost} earlier {noun} no longer available *"));
    }
    if missed > 0 {
        lines.push(format!("* {} while you were away *", messages(missed)));
    }
    lines
}

/// The line for a resume the server refused, for the session of `nick`; `None` when
/// there is nothing to tell.
pub fn resume_failed(reason: ResumeFailure, nick: &str) -> Option<String> {
    match reason {
        ResumeFailure::EpochChanged => Some(
            "* server restarted; what was said while it was down is not available *".to_string(),
        ),
        ResumeFailure::UnknownSession => Some(
            "* the server no longer knows this session; joining again (what was said meanwhile is not available) *"
                .to_string(),
        ),
        ResumeFailure::NickInUse => Some(format!(
            "* the nick {} was taken while you were away *",
            sanitize(nick)
        )),
        // The link ends and the session is resumed on the next attempt (link.rs).
        ResumeFailure::AlreadyJoined | ResumeFailure::Unavailable => None,
    }
}

/// Why a link is given up when the node cannot serve the room just now (a cluster node
/// whose store is unreachable): the session reconnects, to another node if it has
/// several, and resumes.
pub fn room_unavailable() -> String {
    "the room is unavailable on this node just now (its store cannot be reached)".to_string()
}

/// Where the user stands after a reconnect that could not get back into the room.
pub fn not_in_room_after_reconnect() -> String {
    "You are not in the chatroom; use /join to try again".to_string()
}

/// The line for a message typed while reconnecting: queued, `waiting` in all.
pub fn pending(server: &str, waiting: usize) -> String {
    format!("Not connected to {server} (reconnecting); will be sent once back ({waiting} pending)")
}

/// The line for a message typed while reconnecting when `limit` already wait.
pub fn queue_full(server: &str, limit: usize) -> String {
    format!(
        "Not connected to {server} (reconnecting); not sent: {} are waiting already",
        messages(u64::try_from(limit).unwrap_or(u64::MAX))
    )
}

/// The line saying that the `n` messages typed while disconnected went out.
pub fn pending_sent(n: u32) -> String {
    format!("* {} typed while away sent *", messages(n))
}

/// The line for messages sent just before a connection was lost that a fresh session
/// cannot send again without risking repeating them.
pub fn given_up(n: u32) -> String {
    format!(
        "* {} sent just before the connection was lost may not have reached the room *",
        messages(n)
    )
}

/// The line for messages dropped because the client is no longer in the room.
pub fn dropped_not_in_room(n: u32) -> String {
    format!(
        "{} waiting to be sent were dropped: you are not in the chatroom",
        messages(n)
    )
}

/// Why the server closed the connection, for the connection-lost line.
pub fn closed_by_server(reason: LeaveReason) -> String {
    match reason {
        LeaveReason::Flooding => {
            "the server disconnected this client for sending too fast (excess flood)".to_string()
        }
        other => other.describe().to_string(),
    }
}

/// The line for a failed reconnection attempt (printed once per distinct reason).
pub fn reconnect_failed(server: &str, why: &str, wait: Duration) -> String {
    format!(
        "Could not reconnect to {server}: {why}; retrying in {} s",
        whole_seconds(wait)
    )
}

/// The line for another failed attempt for the same reason, when the wait changes.
pub fn retrying(server: &str, wait: Duration) -> String {
    format!(
        "Still no connection to {server}; retrying in {} s",
        whole_seconds(wait)
    )
}

fn whole_seconds(wait: Duration) -> u64 {
    // Rounded, and never "0 s" for a wait that is not over yet.
    (wait.as_secs_f64().round() as u64).max(1)
}

/// The standard-error line at exit when some messages did not reach the room; `None`
/// when all did.
pub fn undelivered(report: &Undelivered) -> Option<String> {
    if report.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if report.flood > 0 {
        parts.push(format!(
            "{} dropped by the server's flood limit",
            report.flood
        ));
    }
    if report.unacknowledged > 0 {
        parts.push(format!(
            "{} never acknowledged by the server (they may have arrived)",
            report.unacknowledged
        ));
    }
    if report.not_sent > 0 {
        parts.push(format!("{} never sent", report.not_sent));
    }
    Some(format!(
        "{} of yours did not reach the room: {}",
        messages(report.total()),
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "server@host";

    /// A join that is not the process's first, not quitting, as `john`.
    const VIEW: ReplyView<'static> = ReplyView {
        nick: "john",
        quitting: false,
        first_join: false,
    };

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn room_events() {
        let say = EventKind::Message {
            from: "ann".into(),
            text: "hello".into(),
        };
        assert_eq!(event(S, &say), "server@host> ann: hello");
        let pm = EventKind::Private {
            from: "ann".into(),
            text: "psst".into(),
        };
        assert_eq!(event(S, &pm), "server@host> ann (private): psst");
        let joined = EventKind::Joined { nick: "ann".into() };
        assert_eq!(event(S, &joined), "server@host> * ann has joined *");
        let notice = EventKind::Notice {
            text: "restart at noon".into(),
        };
        assert_eq!(event(S, &notice), "server@host> server: restart at noon");
    }

    #[test]
    fn departures_name_unusual_reasons() {
        let left = |reason| EventKind::Left {
            nick: "ann".into(),
            reason,
        };
        assert_eq!(
            event(S, &left(LeaveReason::Left)),
            "server@host> * ann has left *"
        );
        assert_eq!(
            event(S, &left(LeaveReason::Quit)),
            "server@host> * ann has left *"
        );
        assert_eq!(
            event(S, &left(LeaveReason::Timeout)),
            "server@host> * ann has left * (timed out)"
        );
        assert_eq!(
            event(S, &left(LeaveReason::ConnectionLost)),
            "server@host> * ann has left * (connection lost)"
        );
        assert_eq!(
            event(S, &left(LeaveReason::SendQueueExceeded)),
            "server@host> * ann has left * (send queue exceeded)"
        );
    }

    #[test]
    fn text_keeps_its_spacing() {
        let say = EventKind::Message {
            from: "ann".into(),
            text: "  a\tb  ".into(),
        };
        assert_eq!(event(S, &say), "server@host> ann:   a\tb  ");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let say = EventKind::Message {
            from: "ev\u{1b}il".into(),
            text: "\u{1b}[2Jgone\r\n\u{7f}\u{9b}x".into(),
        };
        assert_eq!(
            event(S, &say),
            "server@host> ev\u{FFFD}il: \u{FFFD}[2Jgone\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}x"
        );
        assert!(matches!(sanitize("plain\ttext"), Cow::Borrowed(_)));
        let users = reply(
            S,
            &Reply::Users {
                users: users(&["a\u{7}"]),
                more: 0,
            },
            &VIEW,
        );
        assert_eq!(users, ["* Users in the room: a\u{FFFD} *"]);
    }

    #[test]
    fn big_rooms_say_how_many_were_left_out() {
        let lines = reply(
            S,
            &Reply::Users {
                users: users(&["ann", "bob"]),
                more: 998,
            },
            &VIEW,
        );
        assert_eq!(lines, ["* Users in the room: ann, bob and 998 more *"]);
        assert_eq!(
            joined(&users(&["ann"]), 5, false)[1],
            "* Users in the room: ann and 5 more *"
        );
    }

    #[test]
    fn join_replies() {
        let first = ReplyView {
            first_join: true,
            ..VIEW
        };
        let joined_reply = Reply::Joined {
            users: users(&["ann", "bob", "john"]),
            more: 0,
            ticket: protocol::SessionTicket {
                id: 1,
                secret: [0; 16],
            },
            epoch: 1,
            seq: 0,
            limits: protocol::FloodLimits {
                interval_us: 100_000,
                burst: 20,
            },
        };
        // Only the first join of the process points to /help.
        assert_eq!(
            reply(S, &joined_reply, &VIEW),
            [
                "* Joined the chatroom *",
                "* Users in the room: ann, bob, john *"
            ]
        );
        assert_eq!(
            reply(S, &joined_reply, &first),
            [
                "* Joined the chatroom *",
                "* Users in the room: ann, bob, john *",
                "* Type /help for options *"
            ]
        );
        assert_eq!(
            reply(S, &Reply::NickInUse, &VIEW),
            ["Could not join chatroom: nick john is in use; pick another with --nick"]
        );
        assert_eq!(
            reply(S, &Reply::NickNotAllowed, &VIEW),
            [
                "Could not join chatroom: nick john is reserved for the server; pick another with --nick"
            ]
        );
        assert_eq!(
            reply(
                S,
                &Reply::InvalidNick {
                    reason: "nick must not be empty".into()
                },
                &VIEW
            ),
            [
                "Could not join chatroom: nick john is not allowed (nick must not be empty); pick another with --nick"
            ]
        );
        assert_eq!(
            reply(
                S,
                &Reply::AlreadyJoined {
                    nick: "john".into()
                },
                &VIEW
            ),
            ["Could not join chatroom: you are already in the room"]
        );
        assert_eq!(join_refusal_reason(&Reply::Left, "john"), None);
        assert_eq!(
            join_refusal_reason(&Reply::NickInUse, "j\u{1b}[2J"),
            Some("nick j\u{FFFD}[2J is in use; pick another with --nick".to_string())
        );
    }

    #[test]
    fn a_private_message_sent_is_echoed() {
        assert_eq!(private_sent("ann", "see you at 5"), "-> ann: see you at 5");
    }

    #[test]
    fn other_replies() {
        assert_eq!(
            reply(S, &Reply::Left, &VIEW),
            ["You have exited the chatroom, you can rejoin with /join or quit with /quit"]
        );
        assert!(
            reply(
                S,
                &Reply::Left,
                &ReplyView {
                    quitting: true,
                    ..VIEW
                }
            )
            .is_empty()
        );
        assert_eq!(
            reply(S, &Reply::NotJoined, &VIEW),
            ["You are not in the chatroom; use /join"]
        );
        assert_eq!(
            reply(
                S,
                &Reply::Users {
                    users: users(&["ann", "bob", "john"]),
                    more: 0,
                },
                &VIEW
            ),
            ["* Users in the room: ann, bob, john *"]
        );
        assert_eq!(
            reply(S, &Reply::NoSuchUser { nick: "bob".into() }, &VIEW),
            ["server@host> server: no user named bob in the room; message not sent"]
        );
        assert_eq!(
            reply(S, &Reply::SlowDown, &VIEW),
            ["server@host> server: slow down, message dropped (flood limit)"]
        );
        assert_eq!(
            reply(
                S,
                &Reply::InvalidText {
                    reason: "message is empty".into()
                },
                &VIEW
            ),
            ["server@host> server: message not sent (message is empty)"]
        );
    }

    #[test]
    fn start_up_and_failure_lines() {
        assert_eq!(
            connecting(S, "john@host"),
            "Connecting to server@host from john@host ..."
        );
        assert_eq!(connected(), "Connected");
        assert_eq!(
            connect_failed(S, "connection refused"),
            "Could not connect to server@host: connection refused"
        );
        assert_eq!(
            connection_lost(S, "server shutting down"),
            "Connection to server@host lost: server shutting down"
        );
        assert_eq!(prompt("john@host"), "john@host> ");
    }

    #[test]
    fn reconnect_lines() {
        assert_eq!(
            connection_lost_reconnecting(S, "server shutting down"),
            "Connection to server@host lost: server shutting down; reconnecting..."
        );
        assert_eq!(reconnected(S), "* Reconnected to server@host *");
        assert_eq!(
            not_connected(S),
            "Not connected to server@host (reconnecting); not sent"
        );
    }
}

/// The lines of sessions, resumes, acknowledged sends and reconnect attempts.
#[cfg(test)]
mod session_line_tests {
    use super::*;

    const S: &str = "server@host";

    #[test]
    fn resume_lines() {
        assert_eq!(resumed(0, 0), ["* Back in the chatroom *"]);
        assert_eq!(
            resumed(15, 5),
            [
                "* Back in the chatroom *",
                "* 15 earlier messages are no longer available *",
                "* 5 messages while you were away *"
            ]
        );
        assert_eq!(
            resumed(1, 1)[1],
            "* 1 earlier message is no longer available *"
        );
        assert_eq!(resumed(0, 1)[1], "* 1 message while you were away *");
        assert_eq!(
            resume_failed(ResumeFailure::EpochChanged, "ann").unwrap(),
            "* server restarted; what was said while it was down is not available *"
        );
        assert_eq!(
            resume_failed(ResumeFailure::NickInUse, "ann").unwrap(),
            "* the nick ann was taken while you were away *"
        );
        assert_eq!(resume_failed(ResumeFailure::AlreadyJoined, "ann"), None);
        assert_eq!(
            earlier("server@host> ann: hi"),
            "[earlier] server@host> ann: hi"
        );
    }

    #[test]
    fn pending_and_undelivered_lines() {
        assert_eq!(
            pending(S, 3),
            "Not connected to server@host (reconnecting); will be sent once back (3 pending)"
        );
        assert_eq!(
            queue_full(S, 100),
            "Not connected to server@host (reconnecting); not sent: 100 messages are waiting already"
        );
        assert_eq!(pending_sent(1), "* 1 message typed while away sent *");
        assert_eq!(undelivered(&Undelivered::default()), None);
        assert_eq!(
            undelivered(&Undelivered {
                flood: 2,
                unacknowledged: 1,
                not_sent: 0
            })
            .unwrap(),
            "3 messages of yours did not reach the room: 2 dropped by the server's flood limit, \
             1 never acknowledged by the server (they may have arrived)"
        );
    }

    #[test]
    fn reconnect_attempt_lines() {
        assert_eq!(
            reconnect_failed(S, "connection refused", Duration::from_millis(1900)),
            "Could not reconnect to server@host: connection refused; retrying in 2 s"
        );
        assert_eq!(
            retrying(S, Duration::from_millis(200)),
            "Still no connection to server@host; retrying in 1 s"
        );
        assert_eq!(
            closed_by_server(LeaveReason::Flooding),
            "the server disconnected this client for sending too fast (excess flood)"
        );
        assert_eq!(
            closed_by_server(LeaveReason::ServerShutdown),
            "server shutting down"
        );
    }
}
