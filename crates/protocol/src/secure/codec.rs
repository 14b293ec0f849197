//! [`SecureCodec`]: our length-delimited messages inside the record layer, as a
//! `tokio_util` codec (for `Framed`), so a client drives the channel like any stream.
//!
//! Decoding opens records into a plaintext buffer and takes frames from it, one record
//! at a time, so the plaintext never holds more than a partial frame and one record.
//! Encoding seals each message as its own record (the client sends little; the server's
//! writer batches instead, see `chat-server`'s `writer.rs`).

use std::marker::PhantomData;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::pake::Established;
use super::record::{MAX_RECORD_PLAINTEXT, Opener, RECORD_HEADER_LEN, Sealer};
use crate::codec::{self, CodecError};

/// Messages of type `In` in, any serialisable message out, through the secure channel.
pub struct SecureCodec<In> {
    sealer: Sealer,
    opener: Opener,
    plain: BytesMut,
    framing: LengthDelimitedCodec,
    _in: PhantomData<fn() -> In>,
}

impl<In> SecureCodec<In> {
    /// The codec for an established channel.
    pub fn new(channel: Established) -> Self {
        Self {
            sealer: channel.sealer,
            opener: channel.opener,
            plain: BytesMut::new(),
            framing: codec::framing(),
            _in: PhantomData,
        }
    }

    /// Seals `bytes` as they are (any bytes, not necessarily frames) and appends the
    /// records to `dst`: for tests that must send garbage *inside* the channel.
    pub fn seal_raw(&mut self, bytes: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.sealer.seal_stream([bytes], dst)?;
        Ok(())
    }

    /// The same channel decoding another message type; buffered plaintext is kept.
    pub fn into_kind<Other>(self) -> SecureCodec<Other> {
        SecureCodec {
            sealer: self.sealer,
            opener: self.opener,
            plain: self.plain,
            framing: self.framing,
            _in: PhantomData,
        }
    }
}

impl<In: DeserializeOwned> Decoder for SecureCodec<In> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        loop {
            if let Some(payload) = self
                .framing
                .decode(&mut self.plain)
                .map_err(codec::framing_error)?
            {
                return codec::decode(&payload).map(Some);
            }
            if !self.opener.open_into(src, &mut self.plain)? {
                if self.plain.is_empty() && self.plain.capacity() > 0 {
                    self.plain = BytesMut::new();
                }
                return Ok(None);
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for SecureCodec<In> {
    type Error = CodecError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = Sealer::begin(dst);
        if let Err(e) = codec::encode_into(&msg, dst) {
            dst.truncate(start);
            return Err(e);
        }
        if dst.len() - start - RECORD_HEADER_LEN <= MAX_RECORD_PLAINTEXT {
            self.sealer.seal_from(dst, start)?;
        } else {
            // A big message spans records: seal it from a copy.
            let frame = dst.split_off(start + RECORD_HEADER_LEN);
            dst.truncate(start);
            self.sealer.seal_stream([&frame[..]], dst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientMessage, ServerMessage};
    use crate::secure::record::TrafficKey;

    fn channel(out: TrafficKey, inn: TrafficKey) -> Established {
        Established {
            sealer: Sealer::new(&out),
            opener: Opener::new(&inn),
        }
    }

    #[test]
    fn messages_round_trip_big_and_small() {
        let mut client = SecureCodec::<ServerMessage>::new(channel([1; 32], [2; 32]));
        let mut server = SecureCodec::<ClientMessage>::new(channel([2; 32], [1; 32]));
        let mut wire = BytesMut::new();
        let big = ClientMessage::Say {
            id: 1,
            text: "x".repeat(40_000),
        };
        client.encode(ClientMessage::Ping, &mut wire).unwrap();
        client.encode(big.clone(), &mut wire).unwrap();
        assert!(!wire.windows(100).any(|w| w.iter().all(|&b| b == b'x')));
        // Byte by byte, as a slow network would deliver it.
        let mut got = Vec::new();
        let mut src = BytesMut::new();
        for byte in wire {
            src.extend_from_slice(&[byte]);
            while let Some(msg) = server.decode(&mut src).unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, [ClientMessage::Ping, big]);
    }

    #[test]
    fn a_flipped_bit_is_an_error_not_a_message() {
        let mut client = SecureCodec::<ServerMessage>::new(channel([1; 32], [2; 32]));
        let mut server = SecureCodec::<ClientMessage>::new(channel([2; 32], [1; 32]));
        let mut wire = BytesMut::new();
        client
            .encode(
                ClientMessage::Say {
                    id: 1,
                    text: "hi".into(),
                },
                &mut wire,
            )
            .unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 0x80;
        assert!(matches!(
            server.decode(&mut wire),
            Err(CodecError::Channel(_))
        ));
    }
}
