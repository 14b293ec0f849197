//! Start-up concerns shared by `chat-server` and `chat-client`: finding the cookie the way
//! Erlang does ([`cookie`]), setting up `tracing` ([`logging`]), printing shell
//! completions and man pages ([`docs`]), and saying why they cannot go on ([`report`]).

pub mod cookie;
pub mod docs;
pub mod logging;
pub mod report;
