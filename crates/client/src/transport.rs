//! What a session runs on: any stream of [`ServerMessage`]s that is also a sink of
//! [`ClientMessage`]s.
//!
//! Against chat-server that is our framed protocol on a TCP socket; against an Erlang
//! node serving ExMessenger it is [`crate::erlang`]'s adapter, which turns the original's
//! calls, casts and replies into the same messages. The message handler, the writer, the
//! session and the front ends see only this, so the screens are the same against both.

use std::pin::Pin;

use futures_util::{Sink, Stream};
use protocol::{ClientMessage, CodecError, ServerMessage};

/// A session's messages in both directions.
pub trait Transport:
    Stream<Item = Result<ServerMessage, CodecError>> + Sink<ClientMessage, Error = CodecError> + Send
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<ServerMessage, CodecError>>
        + Sink<ClientMessage, Error = CodecError>
        + Send
{
}

/// A session's transport, whichever it is.
pub type SessionStream = Pin<Box<dyn Transport>>;
