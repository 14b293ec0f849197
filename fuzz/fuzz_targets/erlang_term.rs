//! Erlang's term format and distribution frames, fed arbitrary bytes.
//!
//! Invariants:
//! - decoding never panics and never uses more memory than the limit allows (libFuzzer's
//!   RSS limit catches a breach; the limit here is a small one, so crossing it is an
//!   error, not an allocation);
//! - a decoded term used no more bytes than it was given;
//! - whatever decodes re-encodes, and the re-encoding decodes and re-encodes to the very
//!   same bytes (the encoding of a decoded term is canonical);
//! - a distribution frame parses or is refused; its frame splitter never hands out more
//!   than the frame limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::erlang::dist;
use protocol::erlang::term::{self, Limits};
use protocol::limits::MAX_FRAME_LEN;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_memory: 16 * 1024,
        max_depth: 32,
    };
    if let Ok((decoded, used)) = term::decode_with(data, limits) {
        assert!(used <= data.len());
        let mut once = Vec::new();
        term::encode(&decoded, &mut once);
        // Re-encoded forms can be larger (latin-1 atoms become UTF-8, small bignums
        // become integers); decode them with the default, larger limits.
        let (again, used_again) = term::decode(&once).expect("our encoding decodes");
        assert_eq!(used_again, once.len());
        let mut twice = Vec::new();
        term::encode(&again, &mut twice);
        assert_eq!(once, twice, "re-encoding is canonical");
    }
    let _ = term::decode_versioned(data);
    let _ = dist::parse_message(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = dist::split_frame(&mut buf) {
        assert!(frame.len() <= MAX_FRAME_LEN);
        if !frame.is_empty() {
            let _ = dist::parse_message(&frame);
        }
    }
});
