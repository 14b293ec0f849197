//! What chat-client's man page and `--help` say besides the flags: the synopsis with
//! every value, the commands typed in the chat, the environment and the files.

use chat_node::docs::{self, Page};

use crate::command;

/// chat-client's page (see [`chat_node::docs::Page`]).
pub const PAGE: Page = Page {
    synopsis: "chat-client [--server ALIVE@HOST[:PORT][,ALIVE@HOST[:PORT]...]] [--nick NICK]
            [--name ALIVE@HOST | --sname ALIVE] [--cookie COOKIE] [--cookie-file PATH]
            [--no-reconnect] [--timestamps] [--backlog N] [--erlang]
chat-client --completions SHELL | --manpage",
    sections: &[("Commands in the chat", &command::HELP)],
    environment: &[
        docs::CHAT_COOKIE,
        docs::ERL_EPMD_PORT,
        (
            "NO_COLOR",
            "set (to anything, even empty): no colours on a terminal",
        ),
        ("USER, LOGNAME", "the default nick ($USER, else $LOGNAME)"),
        docs::RUST_LOG,
    ],
    files: &[docs::COOKIE_FILE],
};

/// The end of `--help`: environment and files.
pub fn help_footer() -> String {
    PAGE.help_footer()
}
