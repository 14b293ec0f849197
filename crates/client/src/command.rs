//! Parsing one line of user input into a [`Command`].
//!
//! Commands are recognised only at the very start of a line: `/help`, `/join`, `/leave`,
//! `/users`, `/pm <nick> <message>` and `/quit`. Everything else is said to the room, so a
//! line that merely *contains* `/pm` is an ordinary message (the original client treated
//! it as a private message). A line starting with `//` says the rest literally, which is
//! how a message that starts with `/` gets sent. Blank lines are ignored.

use std::fmt;

/// What the user asked for with one line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show the list of commands.
    Help,
    /// Join the room (again) under the start-up nick.
    Join,
    /// Leave the room but stay connected.
    Leave,
    /// Ask the server who is in the room.
    Users,
    /// Send `text` to `to` alone.
    Private {
        /// The recipient's nick.
        to: String,
        /// The message, with its inner spacing kept.
        text: String,
    },
    /// Leave the room and exit.
    Quit,
    /// Say the text to everyone in the room.
    Say(String),
}

/// A line that starts like a command but is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// `/word` where `word` is no command; holds the `/word` as typed.
    Unknown(String),
    /// `/pm` without a nick or without a message.
    PmUsage,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(word) => write!(f, "Unknown command {word}; type /help for the list"),
            Self::PmUsage => f.write_str("Usage: /pm <nick> <message>"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Parses one line (with or without its line terminator).
///
/// Returns `Ok(None)` for a line to ignore (empty or only whitespace), `Ok(Some(_))` for a
/// command or a message, and `Err(_)` for a malformed command, whose `Display` is the
/// text to show the user.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    let line = line
        .strip_suffix('\n')
        .map_or(line, |l| l.strip_suffix('\r').unwrap_or(l));
    if line.trim().is_empty() {
        return Ok(None);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Say(line.to_string())));
    };
    if rest.starts_with('/') {
        // `//text` says `/text`.
        return Ok(Some(Command::Say(rest.to_string())));
    }
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let command = match word {
        "help" => Command::Help,
        "join" => Command::Join,
        "leave" => Command::Leave,
        "users" => Command::Users,
        "quit" => Command::Quit,
        "pm" => parse_pm(args)?,
        _ => return Err(CommandError::Unknown(format!("/{word}"))),
    };
    Ok(Some(command))
}

/// Parses the arguments of `/pm`: a nick, whitespace, then the message as typed.
fn parse_pm(args: &str) -> Result<Command, CommandError> {
    let args = args.trim_start();
    let (to, text) = args
        .split_once(char::is_whitespace)
        .ok_or(CommandError::PmUsage)?;
    let text = text.trim_start();
    if to.is_empty() || text.trim().is_empty() {
        return Err(CommandError::PmUsage);
    }
    Ok(Command::Private {
        to: to.to_string(),
        text: text.to_string(),
    })
}

/// The lines `/help` prints.
pub fn help() -> Vec<String> {
    [
        "Commands:",
        "  /help                  show this list",
        "  /join                  join the chatroom",
        "  /leave                 leave the chatroom (you stay connected)",
        "  /users                 list the users in the chatroom",
        "  /pm <nick> <message>   send a private message to <nick>",
        "  /quit                  leave the chatroom and exit",
        "  //text                 say \"/text\" (a message that starts with '/')",
        "Anything else is said to everyone in the chatroom.",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(ok("/help"), Command::Help);
        assert_eq!(ok("/join"), Command::Join);
        assert_eq!(ok("/leave"), Command::Leave);
        assert_eq!(ok("/users"), Command::Users);
        assert_eq!(ok("/quit"), Command::Quit);
        assert_eq!(ok("/quit\n"), Command::Quit);
        assert_eq!(ok("/quit\r\n"), Command::Quit);
        assert_eq!(ok("/users  "), Command::Users);
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("\n"), Ok(None));
        assert_eq!(parse("   \t "), Ok(None));
    }

    #[test]
    fn plain_text_is_said_as_is() {
        assert_eq!(ok("hello"), Command::Say("hello".into()));
        assert_eq!(ok("  two  spaces "), Command::Say("  two  spaces ".into()));
        assert_eq!(ok("hi ☃\n"), Command::Say("hi ☃".into()));
    }

    #[test]
    fn pm_in_the_middle_is_just_a_message() {
        assert_eq!(ok("see /pm bob hi"), Command::Say("see /pm bob hi".into()));
        assert_eq!(ok(" /pm bob hi"), Command::Say(" /pm bob hi".into()));
    }

    #[test]
    fn double_slash_says_the_rest() {
        assert_eq!(ok("//text"), Command::Say("/text".into()));
        assert_eq!(ok("//quit"), Command::Say("/quit".into()));
        assert_eq!(ok("///"), Command::Say("//".into()));
    }

    #[test]
    fn private_messages_keep_inner_spacing() {
        assert_eq!(
            ok("/pm bob hello   there  you"),
            Command::Private {
                to: "bob".into(),
                text: "hello   there  you".into()
            }
        );
        assert_eq!(
            ok("/pm   bob \t hi"),
            Command::Private {
                to: "bob".into(),
                text: "hi".into()
            }
        );
    }

    #[test]
    fn pm_without_nick_or_text_is_a_usage_error() {
        for line in ["/pm", "/pm ", "/pm bob", "/pm bob   ", "/pm   "] {
            assert_eq!(parse(line), Err(CommandError::PmUsage), "{line:?}");
        }
        assert_eq!(
            CommandError::PmUsage.to_string(),
            "Usage: /pm <nick> <message>"
        );
    }

    #[test]
    fn unknown_commands_are_errors() {
        assert_eq!(parse("/word"), Err(CommandError::Unknown("/word".into())));
        assert_eq!(
            parse("/pmbob hi"),
            Err(CommandError::Unknown("/pmbob".into()))
        );
        assert_eq!(parse("/HELP"), Err(CommandError::Unknown("/HELP".into())));
        assert_eq!(parse("/"), Err(CommandError::Unknown("/".into())));
        assert_eq!(
            CommandError::Unknown("/word".into()).to_string(),
            "Unknown command /word; type /help for the list"
        );
    }

    #[test]
    fn help_lists_every_command() {
        let help = help().join("\n");
        for cmd in ["/help", "/join", "/leave", "/users", "/pm", "/quit", "//"] {
            assert!(help.contains(cmd), "{cmd}");
        }
    }
}
