//! The frame decoder: arbitrary bytes, fed in arbitrary chunks, through
//! `MessageCodec::<ClientMessage>` and `MessageCodec::<ServerMessage>`.
//!
//! Invariants:
//! - no frame consumed is longer than `MAX_FRAME_LEN` (plus its header), and a
//!   `FrameTooLarge` error only comes from a length prefix that really is over the limit;
//! - chunking does not matter: feeding the bytes in pieces yields the same messages and
//!   the same outcome as feeding them at once;
//! - every decoded message re-encodes (within the limit) and decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::codec::{self, CodecError, HEADER_LEN, MAX_FRAME_LEN};
use protocol::{ClientMessage, MessageCodec, ServerMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

#[derive(Debug, PartialEq)]
enum End {
    /// Ran out of bytes (maybe mid-frame).
    NeedMore,
    FrameTooLarge,
    Decode,
}

fn classify(e: CodecError) -> End {
    match e {
        CodecError::FrameTooLarge => End::FrameTooLarge,
        CodecError::Decode(_) => End::Decode,
        other => panic!("decoder produced an unexpected error: {other:?}"),
    }
}

/// Decodes everything from `chunks`, checking each frame against the raw bytes.
fn run<T>(data: &[u8], chunks: &[usize]) -> (Vec<T>, End)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let mut codec = MessageCodec::<T>::new();
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut consumed = 0usize; // bytes of the frames decoded so far
    let mut pending = 0usize; // bytes of the current frame taken from the buffer so far
    let mut out = Vec::new();
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        // Decode as much as the buffered bytes allow.
        loop {
            let before = buf.len();
            let result = codec.decode(&mut buf);
            pending += before - buf.len();
            match result {
                Ok(Some(msg)) => {
                    // The decoder may take the header in one call and the payload later.
                    let used = std::mem::take(&mut pending);
                    // The frame just consumed: header + payload, within the limit.
                    assert!(used >= HEADER_LEN);
                    assert!(used - HEADER_LEN <= MAX_FRAME_LEN, "frame of {used} bytes");
                    let header: [u8; 4] = data[consumed..consumed + HEADER_LEN].try_into().unwrap();
                    assert_eq!(u32::from_be_bytes(header) as usize, used - HEADER_LEN);
                    consumed += used;
                    out.push(msg);
                }
                Ok(None) => break,
                Err(e) => {
                    let end = classify(e);
                    if end == End::FrameTooLarge {
                        let header: [u8; 4] =
                            data[consumed..consumed + HEADER_LEN].try_into().unwrap();
                        assert!(u32::from_be_bytes(header) as usize > MAX_FRAME_LEN);
                    }
                    return (out, end);
                }
            }
        }
        if fed == data.len() {
            return (out, End::NeedMore);
        }
        let n = sizes
            .next()
            .unwrap_or(data.len())
            .max(1)
            .min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
    }
}

fn check<T>(data: &[u8], chunks: &[usize])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let (whole, whole_end) = run::<T>(data, &[data.len().max(1)]);
    let (pieces, pieces_end) = run::<T>(data, chunks);
    assert_eq!(whole, pieces, "chunking changed the messages");
    assert_eq!(whole_end, pieces_end, "chunking changed the outcome");
    for msg in &whole {
        let frame = codec::encode_frame(msg).expect("a decoded message re-encodes");
        assert!(frame.len() - HEADER_LEN <= MAX_FRAME_LEN);
        let again: T = codec::decode(&frame[HEADER_LEN..]).expect("re-encoded message decodes");
        assert_eq!(&again, msg);
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk sizes; the rest is the stream.
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let chunks = [usize::from(seed % 7) + 1, usize::from(seed >> 3) + 1, 3];
    check::<ClientMessage>(data, &chunks);
    check::<ServerMessage>(data, &chunks);
});
