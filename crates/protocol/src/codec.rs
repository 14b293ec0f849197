//! Framing and encoding: the one place where bytes become messages and back.
//!
//! A frame is a 4-byte big-endian length followed by a bincode payload. Frames longer
//! than [`MAX_FRAME_LEN`] are refused from the length prefix alone, and bincode decodes
//! under the same limit, so a hostile peer can never make us allocate more than that.
//! Swapping the encoding means changing this module only.

use std::io;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

pub use crate::limits::MAX_FRAME_LEN;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Errors from framing or (de)serialising.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A length prefix or an encoded message exceeds [`MAX_FRAME_LEN`].
    #[error("frame longer than {MAX_FRAME_LEN} bytes")]
    FrameTooLarge,
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Decodes one payload (without its length header) into a message. Trailing bytes are
/// an error: a frame holds exactly one message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Appends one whole frame (header and payload) for `msg` to `dst`.
pub fn encode_into<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let written = bincode::serde::encode_into_std_write(msg, &mut writer, config());
    let dst = writer.into_inner();
    let len = match written {
        Ok(len) if len <= MAX_FRAME_LEN => len,
        Ok(_) => {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge);
        }
        Err(e) => {
            dst.truncate(start);
            return Err(CodecError::Encode(e.to_string()));
        }
    };
    let len = u32::try_from(len).map_err(|_| CodecError::FrameTooLarge)?;
    dst[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Encodes `msg` as one whole frame, ready to be written as is. The server encodes a
/// broadcast once with this and hands the same [`Bytes`] to every recipient.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// The length-delimited framing with our header and limit.
pub fn framing() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(HEADER_LEN)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// A `tokio_util` codec that decodes frames into `In` and encodes any serialisable
/// message. Use it with `Framed`/`FramedRead`; it does no I/O itself.
pub struct MessageCodec<In> {
    framing: LengthDelimitedCodec,
    _in: PhantomData<fn() -> In>,
}

impl<In> MessageCodec<In> {
    /// A codec with the protocol's frame limit.
    pub fn new() -> Self {
        Self {
            framing: framing(),
            _in: PhantomData,
        }
    }
}

impl<In> Default for MessageCodec<In> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned> Decoder for MessageCodec<In> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.framing.decode(src) {
            Ok(Some(payload)) => decode(&payload).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(framing_error(e)),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In> {
    type Error = CodecError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_into(&msg, dst)
    }
}

/// `LengthDelimitedCodec` reports an oversized prefix as an `io::Error` wrapping its own
/// error type; turn that into [`CodecError::FrameTooLarge`].
fn framing_error(e: io::Error) -> CodecError {
    let too_long = e
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
    if too_long {
        CodecError::FrameTooLarge
    } else {
        CodecError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientMessage, Event, EventKind, ServerMessage};

    #[test]
    fn round_trip_through_the_codec() {
        let mut codec = MessageCodec::<ClientMessage>::new();
        let mut buf = BytesMut::new();
        let msg = ClientMessage::Private {
            id: 1,
            to: "ann".into(),
            text: "hi ☃".into(),
        };
        codec.encode(msg.clone(), &mut buf).unwrap();
        codec.encode(ClientMessage::ListUsers, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(ClientMessage::ListUsers)
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn encode_frame_matches_codec() {
        let msg = ServerMessage::Event(Event {
            seq: 7,
            kind: EventKind::Joined { nick: "bo".into() },
        });
        let frame = encode_frame(&msg).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let mut codec = MessageCodec::<ServerMessage>::new();
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let frame = encode_frame(&ClientMessage::Say {
            id: 1,
            text: "hey".into(),
        })
        .unwrap();
        let mut codec = MessageCodec::<ClientMessage>::new();
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&frame[frame.len() - 1..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn hostile_length_prefix_is_refused_without_allocating() {
        let mut codec = MessageCodec::<ClientMessage>::new();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge)
        ));
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let mut codec = MessageCodec::<ClientMessage>::new();
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xde, 0xad, 0xbe][..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Decode(_))));
    }

    #[test]
    fn huge_inner_length_is_refused() {
        // A Say whose string claims to be 2^60 bytes long, inside a small frame.
        let mut payload = vec![2u8, 1]; // variant index of Say, then its id
        payload.push(255); // varint marker for u64
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode::<ClientMessage>(&payload),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let frame = encode_frame(&ClientMessage::Leave).unwrap();
        let mut payload = frame[4..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode::<ClientMessage>(&payload),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let msg = ClientMessage::Say {
            id: 1,
            text: "x".repeat(MAX_FRAME_LEN + 1),
        };
        assert!(encode_frame(&msg).is_err());
    }
}
