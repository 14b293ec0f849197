//! Measures the two candidate AEADs for the record layer on what the server seals: records
//! of batched ~100-byte frames (16 KiB, 4 KiB and single-frame records), in place.
//!
//! `cargo run --release -p protocol --example aead_throughput` (under `flock
//! /tmp/bench.lock` on a shared machine). Prints MB/s and ns per record for each.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use chacha20poly1305::ChaCha20Poly1305;

/// Seals records of `len` bytes for about `budget`; returns (MB/s, ns per record).
fn measure<C: AeadInPlace + KeyInit>(len: usize, budget: Duration) -> (f64, f64) {
    let cipher = C::new_from_slice(&[7u8; 32]).expect("32-byte key");
    let mut record = vec![0x5au8; len];
    let mut counter = 0u64;
    let start = Instant::now();
    let mut sealed = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            counter += 1;
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"hdr", &mut record)
                .expect("sealing never fails under the size limit");
            black_box(&tag);
            sealed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = sealed as f64 * len as f64;
    (bytes / secs / 1e6, secs * 1e9 / sealed as f64)
}

/// Nanoseconds to expand a key (what the record layer does once per batch or record).
fn key_setup<C: KeyInit>(budget: Duration) -> f64 {
    let start = Instant::now();
    let mut made = 0u64;
    while start.elapsed() < budget {
        for i in 0..256u32 {
            let mut key = [7u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            black_box(C::new_from_slice(&key).expect("32-byte key"));
            made += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e9 / made as f64
}

fn main() {
    let budget = Duration::from_secs(2);
    println!(
        "key setup: AES-256-GCM {:.0} ns, ChaCha20-Poly1305 {:.0} ns",
        key_setup::<Aes256Gcm>(budget),
        key_setup::<ChaCha20Poly1305>(budget)
    );
    println!("record bytes | AES-256-GCM MB/s (ns/record) | ChaCha20-Poly1305 MB/s (ns/record)");
    for len in [16 * 1024, 4 * 1024, 1024, 104] {
        let (aes, aes_ns) = measure::<Aes256Gcm>(len, budget);
        let (chacha, chacha_ns) = measure::<ChaCha20Poly1305>(len, budget);
        println!("{len:>12} | {aes:>8.0} ({aes_ns:>7.0}) | {chacha:>8.0} ({chacha_ns:>7.0})");
    }
}
