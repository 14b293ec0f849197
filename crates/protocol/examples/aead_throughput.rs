//! Measures candidate AEADs for the record layer on what the server seals: records of
//! batched ~100-byte frames (16 KiB, 4 KiB, 1 KiB and single-frame records), in place,
//! with the key expanded once per record as the record layer does (it keeps only the
//! key, so that an idle connection stays small).
//!
//! `cargo run --release -p protocol --example aead_throughput` (under `flock
//! /tmp/bench.lock` on a shared machine). Prints MB/s and ns per record for ring's
//! AES-256-GCM (what the record layer uses), RustCrypto's AES-256-GCM and RustCrypto's
//! ChaCha20-Poly1305.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use chacha20poly1305::ChaCha20Poly1305;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, UnboundKey};

/// Seals records of `len` bytes for about `budget` with `seal(counter, record)`; returns
/// (MB/s, ns per record).
fn measure(len: usize, budget: Duration, mut seal: impl FnMut(u64, &mut [u8])) -> (f64, f64) {
    let mut record = vec![0x5au8; len];
    let mut counter = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..256 {
            seal(counter, &mut record);
            counter += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = counter as f64 * len as f64;
    (bytes / secs / 1e6, secs * 1e9 / counter as f64)
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// RustCrypto's `AeadInPlace`, key expanded per record.
fn rust_crypto<C: AeadInPlace + KeyInit>(counter: u64, record: &mut [u8]) {
    let cipher = C::new_from_slice(&[7u8; 32]).expect("32-byte key");
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce(counter)), b"hdr", record)
        .expect("sealing never fails under the size limit");
    black_box(&tag);
}

/// ring's AES-256-GCM, key expanded per record.
fn ring_aes(counter: u64, record: &mut [u8]) {
    let key = UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("32-byte key");
    let tag = LessSafeKey::new(key)
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce(counter)),
            Aad::from(b"hdr"),
            record,
        )
        .expect("sealing never fails under the size limit");
    black_box(&tag);
}

fn main() {
    let budget = Duration::from_secs(2);
    println!(
        "record bytes | ring AES-256-GCM MB/s (ns/record) | aes-gcm MB/s (ns/record) | chacha20poly1305 MB/s (ns/record)"
    );
    for len in [16 * 1024, 4 * 1024, 1024, 104] {
        let (ring, ring_ns) = measure(len, budget, ring_aes);
        let (aes, aes_ns) = measure(len, budget, rust_crypto::<Aes256Gcm>);
        let (chacha, chacha_ns) = measure(len, budget, rust_crypto::<ChaCha20Poly1305>);
        println!(
            "{len:>12} | {ring:>8.0} ({ring_ns:>7.0}) | {aes:>8.0} ({aes_ns:>7.0}) | {chacha:>8.0} ({chacha_ns:>7.0})"
        );
    }
}
