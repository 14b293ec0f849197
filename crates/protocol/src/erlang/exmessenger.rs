//! The terms of the original ExMessenger: what a client node sends to `message_server`
//! and what the server casts to each client's `message_handler`.
//!
//! ```text
//! {'$gen_call', {Pid, Tag}, {connect, Nick}}       -> {ok, <<"a:b:c">>} | nick_in_use | nick_not_allowed
//! {'$gen_call', {Pid, Tag}, {disconnect, Nick}}    -> ok | user_not_found | not_allowed
//! {'$gen_cast', {say, Nick, Text}}
//! {'$gen_cast', {private_message, From, To, Text}}
//! {'$gen_cast', {list_users, Nick}}
//! to message_handler: {'$gen_cast', {message, Nick, Body}}
//! ```
//!
//! A call is answered by sending `{Tag, Reply}` to `Pid`, `Tag` echoed as received (from
//! OTP 24 on it is the improper list `[alias | Ref]`). Strings are binaries. Joins and
//! leaves reach clients as `{message, Nick, <<"* Nick has joined *">>}`, the user list as
//! `{message, <<"server">>, <<"users: a, b">>}`. Our own convention on top: a private
//! message arrives from `<<"Nick (private)">>`, which an unmodified client prints as
//! `Nick (private): text`, and which a nick (no spaces) can never be.

use super::term::Term;

/// The name the server process is registered under.
pub const SERVER_PROCESS: &str = "message_server";

/// The name every client node registers its handler under.
pub const HANDLER_PROCESS: &str = "message_handler";

/// The nick the server speaks as.
pub const SERVER_NICK: &str = "server";

/// The suffix that marks a private message's sender.
pub const PRIVATE_SUFFIX: &str = " (private)";

/// What a client node asks of `message_server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Join as the nick (a call).
    Connect(String),
    /// Leave; the nick must be this node's (a call).
    Disconnect(String),
    /// Say text to the room as the nick (a cast).
    Say {
        /// The speaker.
        nick: String,
        /// The text.
        text: String,
    },
    /// Say text to one member (a cast).
    PrivateMessage {
        /// The sender's nick.
        from: String,
        /// The recipient's nick.
        to: String,
        /// The text.
        text: String,
    },
    /// Ask for the user list, answered with a message from `server` (a cast).
    ListUsers(String),
}

/// A message to `message_server`, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A `gen_call`: answer `{tag, reply}` to `from`.
    Call {
        /// The caller.
        from: Term,
        /// The tag to echo.
        tag: Term,
        /// The request, or `None` when it is not one of ours.
        request: Option<Request>,
    },
    /// A `gen_cast`; `None` when it is not one of ours.
    Cast(Option<Request>),
    /// Anything else sent to the process.
    Other,
}

/// Classifies a message sent to `message_server`.
pub fn classify(message: &Term) -> Incoming {
    let Some(items) = message.as_tuple() else {
        return Incoming::Other;
    };
    match items {
        [kind, from, request] if kind.is_atom("$gen_call") => match from.as_tuple() {
            Some([pid, tag]) => Incoming::Call {
                from: pid.clone(),
                tag: tag.clone(),
                request: parse_request(request),
            },
            _ => Incoming::Other,
        },
        [kind, request] if kind.is_atom("$gen_cast") => Incoming::Cast(parse_request(request)),
        _ => Incoming::Other,
    }
}

/// Reads a request tuple; strings may be binaries, charlists or atoms.
pub fn parse_request(term: &Term) -> Option<Request> {
    let items = term.as_tuple()?;
    let (name, args) = items.split_first()?;
    let text = |i: usize| args.get(i).and_then(Term::as_text);
    Some(match (name.as_atom()?, args.len()) {
        ("connect", 1) => Request::Connect(text(0)?),
        ("disconnect", 1) => Request::Disconnect(text(0)?),
        ("say", 2) => Request::Say {
            nick: text(0)?,
            text: text(1)?,
        },
        ("private_message", 3) => Request::PrivateMessage {
            from: text(0)?,
            to: text(1)?,
            text: text(2)?,
        },
        ("list_users", 1) => Request::ListUsers(text(0)?),
        _ => return None,
    })
}

impl Request {
    /// Whether the original makes this a call (else a cast).
    pub fn is_call(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Disconnect(_))
    }

    /// The request tuple, strings as binaries.
    pub fn to_term(&self) -> Term {
        let b = |s: &str| Term::binary(s);
        match self {
            Self::Connect(nick) => Term::tuple(vec![Term::atom("connect"), b(nick)]),
            Self::Disconnect(nick) => Term::tuple(vec![Term::atom("disconnect"), b(nick)]),
            Self::Say { nick, text } => Term::tuple(vec![Term::atom("say"), b(nick), b(text)]),
            Self::PrivateMessage { from, to, text } => {
                Term::tuple(vec![Term::atom("private_message"), b(from), b(to), b(text)])
            }
            Self::ListUsers(nick) => Term::tuple(vec![Term::atom("list_users"), b(nick)]),
        }
    }
}

/// `{'$gen_call', {from, tag}, request}`.
pub fn gen_call(from: Term, tag: Term, request: Term) -> Term {
    Term::tuple(vec![
        Term::atom("$gen_call"),
        Term::tuple(vec![from, tag]),
        request,
    ])
}

/// `{'$gen_cast', request}`.
pub fn gen_cast(request: Term) -> Term {
    Term::tuple(vec![Term::atom("$gen_cast"), request])
}

/// `{tag, reply}`: the answer to a call.
pub fn call_reply(tag: Term, reply: Term) -> Term {
    Term::tuple(vec![tag, reply])
}

/// `{'$gen_cast', {message, Nick, Body}}`: a line for a client's `message_handler`.
pub fn handler_message(nick: &str, body: &str) -> Term {
    gen_cast(Term::tuple(vec![
        Term::atom("message"),
        Term::binary(nick),
        Term::binary(body),
    ]))
}

/// Reads a `message_handler` cast back into (nick, body).
pub fn parse_handler_message(term: &Term) -> Option<(String, String)> {
    match term.as_tuple()? {
        [kind, body] if kind.is_atom("$gen_cast") => match body.as_tuple()? {
            [tag, nick, text] if tag.is_atom("message") => Some((nick.as_text()?, text.as_text()?)),
            _ => None,
        },
        _ => None,
    }
}

/// The body announcing a join, as the original words it.
pub fn joined_body(nick: &str) -> String {
    format!("* {nick} has joined *")
}

/// The body announcing a departure; `why` is appended for anything but leaving or
/// quitting (`* ann has left * (timed out)`).
pub fn left_body(nick: &str, why: Option<&str>) -> String {
    match why {
        None => format!("* {nick} has left *"),
        Some(why) => format!("* {nick} has left * ({why})"),
    }
}

/// The connect call's success answer: `{ok, <<"a:b:c">>}`.
pub fn connected_reply(users: &[String]) -> Term {
    Term::tuple(vec![Term::atom("ok"), Term::binary(users.join(":"))])
}

/// The `/users` answer's body: `users: a, b`.
pub fn users_body(users: &[String]) -> String {
    format!("users: {}", users.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erlang::term::{Atom, Pid};

    #[test]
    fn requests_round_trip_through_casts_and_calls() {
        let pid = Term::Pid(Box::new(Pid {
            node: Atom::new("c@h").unwrap(),
            id: 1,
            serial: 0,
            creation: 1,
        }));
        for request in [
            Request::Connect("john".into()),
            Request::Disconnect("john".into()),
            Request::Say {
                nick: "john".into(),
                text: "hi all".into(),
            },
            Request::PrivateMessage {
                from: "john".into(),
                to: "ann".into(),
                text: "psst".into(),
            },
            Request::ListUsers("john".into()),
        ] {
            let term = if request.is_call() {
                gen_call(pid.clone(), Term::Int(7), request.to_term())
            } else {
                gen_cast(request.to_term())
            };
            match classify(&term) {
                Incoming::Call {
                    request: Some(r), ..
                }
                | Incoming::Cast(Some(r)) => assert_eq!(r, request),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(classify(&Term::atom("hello")), Incoming::Other);
        assert_eq!(
            classify(&gen_cast(Term::atom("nonsense"))),
            Incoming::Cast(None)
        );
        // Charlists are accepted as strings (an Erlang shell sends them).
        let erlang_style = gen_cast(Term::tuple(vec![
            Term::atom("say"),
            Term::Charlist(b"joe".to_vec()),
            Term::Charlist(b"hello".to_vec()),
        ]));
        assert_eq!(
            classify(&erlang_style),
            Incoming::Cast(Some(Request::Say {
                nick: "joe".into(),
                text: "hello".into()
            }))
        );
    }

    #[test]
    fn handler_messages_round_trip() {
        let term = handler_message("ann", &joined_body("ann"));
        assert_eq!(
            parse_handler_message(&term),
            Some(("ann".into(), "* ann has joined *".into()))
        );
        assert_eq!(
            left_body("ann", Some("timed out")),
            "* ann has left * (timed out)"
        );
        assert_eq!(users_body(&["a".into(), "b".into()]), "users: a, b");
    }
}
