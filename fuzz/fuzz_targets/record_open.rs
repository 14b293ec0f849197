//! The record layer's decoder: an `Opener` fed, in chunks, a genuinely sealed stream
//! that the fuzzer may alter, cut or extend with garbage; and a `SecureCodec` fed the
//! same bytes.
//!
//! Invariants:
//! - it never panics, and never buffers a record its header says is out of range;
//! - what opens is always a prefix of what was sealed, in order: an altered, dropped,
//!   reordered or injected byte never yields a single wrong plaintext byte;
//! - an untouched stream opens to exactly what was sealed, whatever the chunking;
//! - after an error, nothing more opens.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::secure::record::MAX_RECORD_LEN;
use protocol::secure::{Established, Opener, SecureCodec, Sealer};
use protocol::ClientMessage;
use tokio_util::codec::Decoder;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Plaintext of each write (each write is sealed on its own: records of any size).
    writes: Vec<Vec<u8>>,
    /// Change the sealed stream: flip a byte at a position, drop a range, insert bytes.
    flips: Vec<(u16, u8)>,
    drop: Option<(u16, u16)>,
    insert: Option<(u16, Vec<u8>)>,
    /// Bytes handed to the decoder at a time.
    chunk: u8,
}

const KEY: [u8; 32] = [5; 32];

fuzz_target!(|input: Input| {
    let mut sealer = Sealer::new(&KEY);
    let mut wire = BytesMut::new();
    let mut sealed = Vec::new();
    for write in input.writes.iter().take(8) {
        sealer.seal_stream([&write[..]], &mut wire).unwrap();
        sealed.extend_from_slice(write);
    }
    let mut wire = wire.to_vec();
    let mut touched = false;
    for &(at, flip) in input.flips.iter().take(4) {
        if flip != 0 && !wire.is_empty() {
            let at = usize::from(at) % wire.len();
            wire[at] ^= flip;
            touched = true;
        }
    }
    if let Some((at, len)) = input.drop {
        if !wire.is_empty() && len > 0 {
            let at = usize::from(at) % wire.len();
            let end = (at + usize::from(len)).min(wire.len());
            wire.drain(at..end);
            touched = true;
        }
    }
    if let Some((at, bytes)) = &input.insert {
        if !bytes.is_empty() {
            let at = usize::from(*at) % (wire.len() + 1);
            wire.splice(at..at, bytes.iter().copied());
            touched = true;
        }
    }

    let mut opener = Opener::new(&KEY);
    let mut src = BytesMut::new();
    let mut plain = BytesMut::new();
    let mut failed = false;
    for piece in wire.chunks(usize::from(input.chunk).max(1)) {
        src.extend_from_slice(piece);
        loop {
            match opener.open_into(&mut src, &mut plain) {
                Ok(true) => assert!(!failed, "opened after an error"),
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
        assert!(src.len() <= MAX_RECORD_LEN + 4 + usize::from(input.chunk).max(1));
    }
    assert!(sealed.starts_with(&plain), "opened bytes that were never sealed");
    if !touched {
        assert!(!failed && src.is_empty());
        assert_eq!(&plain[..], &sealed[..]);
    }

    // The codec over the same bytes: errors or messages, never a panic.
    let mut codec = SecureCodec::<ClientMessage>::new(Established {
        sealer: Sealer::new(&KEY),
        opener: Opener::new(&KEY),
    });
    let mut src = BytesMut::from(&wire[..]);
    while let Ok(Some(_)) = codec.decode(&mut src) {}
});
