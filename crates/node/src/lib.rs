//! Start-up concerns shared by `chat-server` and `chat-client`: finding the cookie the way
//! Erlang does ([`cookie`]), setting up `tracing` ([`logging`]), and printing shell
//! completions and man pages ([`docs`]).

pub mod cookie;
pub mod docs;
pub mod logging;
