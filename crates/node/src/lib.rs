//! Start-up concerns shared by `chat-server` and `chat-client`: finding the cookie the way
//! Erlang does ([`cookie`]) and setting up `tracing` ([`logging`]).

pub mod cookie;
pub mod logging;
