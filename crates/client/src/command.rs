//! Parsing one line of user input into a [`Command`].
//!
//! Commands are recognised only at the very start of a line: `/help`, `/join`, `/leave`,
//! `/users`, `/pm <nick> <message>` and `/quit`, in any letter case, and IRC's names for
//! three of them: `/part` (leave), `/names` (users) and `/msg` (pm). A command that takes
//! no arguments refuses some (`/users extra` is a usage error, not `/users`). IRC's `/me`
//! is named as missing rather than unknown. Everything else is said to the room, so a
//! line that merely *contains* `/pm` is an ordinary message (the original client treated
//! it as a private message). A line starting with `//` says the rest literally, which is
//! how a message that starts with `/` gets sent. Blank lines are ignored.
//!
//! The list of commands lives here too: the `/help` text ([`help`]) and what Tab
//! completes ([`complete`]), as pure functions a line editor calls.

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
    /// A command that takes no arguments was given some; holds the command, lower case.
    NoArguments(&'static str),
    /// IRC's `/me`: there are no actions in this room.
    NoActions,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(word) => write!(f, "Unknown command {word}; type /help for the list"),
            Self::PmUsage => f.write_str("Usage: /pm <nick> <message>"),
            Self::NoArguments(command) => {
                write!(f, "Usage: {command} (it takes no arguments)")
            }
            Self::NoActions => {
                f.write_str("There is no /me here (no actions in this room); just say it")
            }
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
    let alone = |command: Command, name: &'static str| {
        if args.trim().is_empty() {
            Ok(command)
        } else {
            Err(CommandError::NoArguments(name))
        }
    };
    let command = match word.to_lowercase().as_str() {
        "help" => alone(Command::Help, "/help")?,
        "join" => alone(Command::Join, "/join")?,
        "leave" | "part" => alone(Command::Leave, "/leave")?,
        "users" | "names" => alone(Command::Users, "/users")?,
        "quit" => alone(Command::Quit, "/quit")?,
        "pm" | "msg" => parse_pm(args)?,
        "me" => return Err(CommandError::NoActions),
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

/// The commands, as typed at the start of a line (what Tab completes).
pub const COMMANDS: [&str; 6] = ["/help", "/join", "/leave", "/users", "/pm", "/quit"];

/// The IRC names accepted for commands, as (IRC name, command).
pub const ALIASES: [(&str, &str); 3] = [("/part", "/leave"), ("/names", "/users"), ("/msg", "/pm")];

/// The lines `/help` prints (and the man page's "commands in the chat"): one per
/// command, then two for everything else.
pub const HELP: [&str; 8] = [
    "/help                  show this list",
    "/join                  join the chatroom",
    "/leave                 leave the chatroom (you stay connected); IRC's /part works too",
    "/users                 list the users in the chatroom; IRC's /names works too",
    "/pm <nick> <message>   send a private message to <nick>; IRC's /msg works too",
    "/quit                  leave the chatroom and exit",
    "Any other text is said to everyone in the chatroom; //text says \"/text\".",
    "Commands work in any letter case (/PM); there is no /me: just say it.",
];

/// The lines `/help` prints, as [`HELP`].
pub fn help() -> Vec<String> {
    HELP.into_iter().map(String::from).collect()
}

/// Completion candidates for the text left of the cursor, given the nicks in the room.
///
/// Returns where the completed word starts (a byte offset into `before_cursor`) and its
/// possible replacements, each ending with a space so the user can type on: a command
/// while the line is a single word starting with `/` (`/he` -> `/help `), and a nick
/// (matched ignoring case) in the first argument of `/pm ` (or `/msg `, in any case).
/// Anything else has none.
pub fn complete(before_cursor: &str, nicks: &[String]) -> (usize, Vec<String>) {
    let none = (0, Vec::new());
    let Some(rest) = before_cursor.strip_prefix('/') else {
        return none;
    };
    if !rest.contains(char::is_whitespace) {
        let typed = before_cursor.to_lowercase();
        let candidates = COMMANDS
            .iter()
            .filter(|command| command.starts_with(&typed))
            .map(|command| format!("{command} "))
            .collect();
        return (0, candidates);
    }
    let command = rest.split(char::is_whitespace).next().unwrap_or(rest);
    if !matches!(command.to_lowercase().as_str(), "pm" | "msg") {
        return none;
    }
    let word = rest[command.len()..].trim_start();
    if word.contains(char::is_whitespace) {
        // Past the nick: the message itself.
        return none;
    }
    let prefix = word.to_lowercase();
    let candidates = nicks
        .iter()
        .filter(|nick| nick.to_lowercase().starts_with(&prefix))
        .map(|nick| format!("{nick} "))
        .collect();
    (before_cursor.len() - word.len(), candidates)
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
        assert_eq!(
            parse("/HELPME"),
            Err(CommandError::Unknown("/HELPME".into()))
        );
        assert_eq!(parse("/"), Err(CommandError::Unknown("/".into())));
        assert_eq!(
            CommandError::Unknown("/word".into()).to_string(),
            "Unknown command /word; type /help for the list"
        );
    }

    #[test]
    fn help_lists_every_command() {
        let help = help();
        for cmd in COMMANDS {
            assert!(
                help.iter().any(|line| line.starts_with(cmd)),
                "no line for {cmd}"
            );
        }
        assert!(
            help.iter()
                .any(|line| line.contains("/pm <nick> <message>"))
        );
        assert!(help.iter().any(|line| line.contains("//text")));
        for (alias, _) in ALIASES {
            assert!(help.iter().any(|line| line.contains(alias)), "{alias}");
        }
        assert!(help.iter().any(|line| line.contains("/me")));
        assert_eq!(help.len(), COMMANDS.len() + 2, "one line per command");
    }

    #[test]
    fn commands_ignore_letter_case() {
        assert_eq!(ok("/HELP"), Command::Help);
        assert_eq!(ok("/Quit"), Command::Quit);
        assert_eq!(
            ok("/PM bob Hi There"),
            Command::Private {
                to: "bob".into(),
                text: "Hi There".into()
            }
        );
    }

    #[test]
    fn irc_names_are_accepted() {
        assert_eq!(ok("/part"), Command::Leave);
        assert_eq!(ok("/names"), Command::Users);
        assert_eq!(
            ok("/msg bob hi"),
            Command::Private {
                to: "bob".into(),
                text: "hi".into()
            }
        );
        for (alias, command) in ALIASES {
            assert!(COMMANDS.contains(&command));
            assert!(parse(alias).is_ok() || parse(&format!("{alias} a b")).is_ok());
        }
        assert_eq!(parse("/me waves"), Err(CommandError::NoActions));
        assert!(CommandError::NoActions.to_string().contains("/me"));
    }

    #[test]
    fn commands_without_arguments_refuse_some() {
        assert_eq!(
            parse("/users extra"),
            Err(CommandError::NoArguments("/users"))
        );
        assert_eq!(parse("/NAMES x"), Err(CommandError::NoArguments("/users")));
        assert_eq!(parse("/quit now"), Err(CommandError::NoArguments("/quit")));
        assert_eq!(
            CommandError::NoArguments("/users").to_string(),
            "Usage: /users (it takes no arguments)"
        );
    }

    #[test]
    fn every_listed_command_is_known() {
        for cmd in COMMANDS {
            assert!(
                !matches!(parse(cmd), Err(CommandError::Unknown(_))),
                "{cmd}"
            );
        }
    }

    fn nicks(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_complete_at_the_start_of_a_line() {
        assert_eq!(complete("/he", &[]), (0, vec!["/help ".to_string()]));
        assert_eq!(complete("/p", &[]), (0, vec!["/pm ".to_string()]));
        assert_eq!(complete("/", &[]).1.len(), COMMANDS.len());
        assert_eq!(complete("/x", &[]), (0, vec![]));
        assert_eq!(complete("//he", &[]), (0, vec![]));
        assert_eq!(complete("he", &[]), (0, vec![]));
        assert_eq!(complete("", &[]), (0, vec![]));
        assert_eq!(complete(" /he", &[]), (0, vec![]));
        assert_eq!(complete("/help me", &[]), (0, vec![]));
        assert_eq!(complete("/HE", &[]), (0, vec!["/help ".to_string()]));
    }

    #[test]
    fn nicks_complete_after_pm() {
        let room = nicks(&["Ann", "anna", "bob"]);
        assert_eq!(
            complete("/pm an", &room),
            (4, vec!["Ann ".to_string(), "anna ".to_string()])
        );
        assert_eq!(complete("/pm  b", &room), (5, vec!["bob ".to_string()]));
        assert_eq!(complete("/pm ", &room).1.len(), 3);
        assert_eq!(complete("/pm ", &room).0, 4);
        assert_eq!(complete("/pm z", &room), (4, vec![]));
        // Not in the nick's place.
        assert_eq!(complete("/pm bob hi an", &room), (0, vec![]));
        assert_eq!(complete("/pmb", &room), (0, vec![]));
        assert_eq!(complete("/PM an", &room).1.len(), 2);
        assert_eq!(complete("/msg b", &room), (5, vec!["bob ".to_string()]));
        assert_eq!(complete("/users an", &room), (0, vec![]));
        assert_eq!(complete("say /pm an", &room), (0, vec![]));
        // Non-ASCII nicks are offsets in bytes.
        let room = nicks(&["Zoë"]);
        assert_eq!(complete("/pm zo", &room), (4, vec!["Zoë ".to_string()]));
        assert_eq!(complete("/pm Zoë", &room), (4, vec!["Zoë ".to_string()]));
    }
}
