//! The message decoder: `protocol::codec::decode` on one payload, for every message type.
//!
//! Invariants: a payload that decodes re-encodes within the frame limit to at most as
//! many bytes (the encoding is the smallest form of the value), and that encoding decodes
//! to the same value; an error is always `CodecError::Decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::codec::{self, CodecError, HEADER_LEN, MAX_FRAME_LEN};
use protocol::{ClientMessage, HandshakeMessage, ServerMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T>(payload: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    match codec::decode::<T>(payload) {
        Ok(msg) => {
            let frame = codec::encode_frame(&msg).expect("a decoded message re-encodes");
            let encoded = &frame[HEADER_LEN..];
            assert!(encoded.len() <= MAX_FRAME_LEN);
            assert!(
                encoded.len() <= payload.len(),
                "re-encoding grew: {} > {}",
                encoded.len(),
                payload.len()
            );
            let again: T = codec::decode(encoded).expect("re-encoded message decodes");
            assert_eq!(again, msg);
        }
        Err(CodecError::Decode(_)) => {}
        Err(other) => panic!("decode returned {other:?}"),
    }
}

fuzz_target!(|payload: &[u8]| {
    check::<ClientMessage>(payload);
    check::<ServerMessage>(payload);
    check::<HandshakeMessage>(payload);
});
