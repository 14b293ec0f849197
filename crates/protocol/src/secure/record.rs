//! The record layer: a byte stream cut into records, each sealed with AES-256-GCM.
//!
//! A record is a 4-byte big-endian length, then that many bytes of ciphertext and its
//! 16-byte tag. The nonce is a per-direction 64-bit counter that is never sent: the
//! `n`-th record in a direction must be sealed with nonce `n`, so a dropped, replayed,
//! reordered, altered or injected record fails to open, and the connection closes. The
//! length header is the associated data. Records carry at most
//! [`MAX_RECORD_PLAINTEXT`] bytes, checked from the header before anything is buffered.
//!
//! Records say nothing about frames: the plaintext of all records in a direction is one
//! stream of length-delimited frames, so a record holds many frames and a frame may span
//! records. [`Sealer`] seals in place: a writer copies what it sends once, into its own
//! buffer, and the cipher runs over that buffer.
//!
//! Sealers and openers keep only the 32-byte key and the counter, and expand the key for
//! each batch or record: an idle connection then holds 40 bytes per direction rather
//! than a kilobyte of round keys and GHASH tables.
//!
//! The cipher is `ring`'s AES-256-GCM (the AEAD behind rustls), whose assembly uses the
//! processor's AES and carry-less multiply (VAES/AVX-512 where present): about 4 GB/s on
//! 16 KiB records here, where RustCrypto's `aes-gcm` ran 0.7 GB/s and spent a fifth of
//! the server's time hashing one block at a time (ARCHITECTURE.md, "Secure channel").

use bytes::{Buf, BufMut, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Length of a record's header.
pub const RECORD_HEADER_LEN: usize = 4;

/// Length of a record's authentication tag.
pub const TAG_LEN: usize = 16;

/// Most plaintext bytes in one record (as TLS, 16 KiB).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Most bytes a record's header may announce: the largest plaintext and its tag.
pub const MAX_RECORD_LEN: usize = MAX_RECORD_PLAINTEXT + TAG_LEN;

/// A traffic key for one direction.
pub type TrafficKey = [u8; 32];

/// Why a record could not be sealed or opened. Each one ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The header announces a record shorter than a tag or longer than the limit.
    #[error("record length {0} is out of range")]
    BadLength(usize),
    /// The record did not authenticate: altered, forged, replayed, reordered or dropped
    /// on the way.
    #[error("a record failed to authenticate")]
    Forged,
    /// A record to seal is larger than the limit (a bug in the caller).
    #[error("record plaintext longer than {MAX_RECORD_PLAINTEXT} bytes")]
    TooLarge,
    /// The direction has used every nonce (2^64 records).
    #[error("record counter exhausted")]
    Exhausted,
}

fn nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    // Unique: a direction's counter never repeats (it fails when exhausted), and each
    // direction has its own key.
    Nonce::assume_unique_for_key(nonce)
}

/// Expands a traffic key for one batch of records.
fn cipher(key: &TrafficKey) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes 32-byte keys"))
}

/// The bytes [`Sealer::seal_stream`] produces for `plaintext` bytes.
pub fn sealed_len(plaintext: usize) -> usize {
    let records = plaintext.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
    plaintext + records * (RECORD_HEADER_LEN + TAG_LEN)
}

/// Seals records for one direction.
pub struct Sealer {
    key: TrafficKey,
    next: u64,
}

impl Sealer {
    /// A sealer whose first record uses nonce 0.
    pub fn new(key: &TrafficKey) -> Self {
        Self { key: *key, next: 0 }
    }

    fn cipher(&self) -> LessSafeKey {
        cipher(&self.key)
    }

    /// Starts a record at the end of `buf` by reserving its header; returns where the
    /// record starts, for [`Sealer::seal_from`]. Append the plaintext after it.
    pub fn begin(buf: &mut BytesMut) -> usize {
        let start = buf.len();
        buf.put_u32(0);
        start
    }

    /// Seals, in place, the record begun at `start`: everything after its header is the
    /// plaintext (at most [`MAX_RECORD_PLAINTEXT`] bytes). Writes the header, encrypts,
    /// appends the tag.
    pub fn seal_from(&mut self, buf: &mut BytesMut, start: usize) -> Result<(), RecordError> {
        let cipher = self.cipher();
        self.seal_with(&cipher, buf, start)
    }

    fn seal_with(
        &mut self,
        cipher: &LessSafeKey,
        buf: &mut BytesMut,
        start: usize,
    ) -> Result<(), RecordError> {
        let body_start = start + RECORD_HEADER_LEN;
        let plain_len = buf.len().saturating_sub(body_start);
        if plain_len > MAX_RECORD_PLAINTEXT || buf.len() < body_start {
            return Err(RecordError::TooLarge);
        }
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(RecordError::Exhausted)?;
        // Fits in u32: at most MAX_RECORD_LEN.
        let header = ((plain_len + TAG_LEN) as u32).to_be_bytes();
        let (head, body) = buf[start..].split_at_mut(RECORD_HEADER_LEN);
        head.copy_from_slice(&header);
        let tag = cipher
            .seal_in_place_separate_tag(nonce(counter), Aad::from(header), body)
            .map_err(|_| RecordError::TooLarge)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Appends `chunks`, taken as one byte stream, to `out` as sealed records: each byte
    /// is copied once, into `out`, and records are as large as the limit allows. Sealing
    /// nothing appends nothing.
    pub fn seal_stream<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        out: &mut BytesMut,
    ) -> Result<(), RecordError> {
        let mut start: Option<usize> = None;
        let mut cipher: Option<LessSafeKey> = None;
        for mut chunk in chunks {
            while !chunk.is_empty() {
                let begun = *start.get_or_insert_with(|| Self::begin(out));
                let room = MAX_RECORD_PLAINTEXT - (out.len() - begun - RECORD_HEADER_LEN);
                let take = room.min(chunk.len());
                out.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if take == room {
                    let cipher = cipher.get_or_insert_with(|| self.cipher());
                    self.seal_with(cipher, out, begun)?;
                    start = None;
                }
            }
        }
        if let Some(begun) = start {
            let cipher = cipher.get_or_insert_with(|| self.cipher());
            self.seal_with(cipher, out, begun)?;
        }
        Ok(())
    }
}

/// Opens records from one direction, in order.
pub struct Opener {
    key: TrafficKey,
    next: u64,
    failed: bool,
}

impl Opener {
    /// An opener expecting nonce 0 first.
    pub fn new(key: &TrafficKey) -> Self {
        Self {
            key: *key,
            next: 0,
            failed: false,
        }
    }

    /// The length of the record at the front of `src`, header included, once its header
    /// is there; an error if the header is out of range.
    pub fn peek_len(src: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = src.get(..RECORD_HEADER_LEN) else {
            return Ok(None);
        };
        let mut len = [0u8; RECORD_HEADER_LEN];
        len.copy_from_slice(header);
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Err(RecordError::BadLength(len));
        }
        Ok(Some(RECORD_HEADER_LEN + len))
    }

    /// Opens one whole record (header included) in place; returns its plaintext. After
    /// a failure every later record fails too.
    pub fn open_in_place<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a [u8], RecordError> {
        if self.failed {
            return Err(RecordError::Forged);
        }
        let result = self.open_checked(record);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn open_checked<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a [u8], RecordError> {
        let total = Self::peek_len(record)?.ok_or(RecordError::BadLength(record.len()))?;
        if total != record.len() {
            return Err(RecordError::BadLength(record.len()));
        }
        let (head, body) = record.split_at_mut(RECORD_HEADER_LEN);
        let counter = self.next;
        let text = cipher(&self.key)
            .open_in_place(nonce(counter), Aad::from(&*head), body)
            .map_err(|_| RecordError::Forged)?;
        self.next = counter.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(text)
    }

    /// If a whole record is at the front of `src`, takes it off, opens it and appends its
    /// plaintext to `dst`; `Ok(false)` when the record is not all there yet. An
    /// out-of-range header fails before anything is buffered for it.
    pub fn open_into(
        &mut self,
        src: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<bool, RecordError> {
        let Some(total) = Self::peek_len(src)? else {
            return Ok(false);
        };
        if src.len() < total {
            return Ok(false);
        }
        let plaintext = self.open_in_place(&mut src[..total])?;
        dst.extend_from_slice(plaintext);
        src.advance(total);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&[3; 32]), Opener::new(&[3; 32]))
    }

    fn open_all(opener: &mut Opener, mut wire: BytesMut) -> Result<Vec<u8>, RecordError> {
        let mut plain = BytesMut::new();
        while opener.open_into(&mut wire, &mut plain)? {}
        assert!(wire.is_empty(), "a partial record is left");
        Ok(plain.to_vec())
    }

    #[test]
    fn a_stream_round_trips_across_record_boundaries() {
        let (mut sealer, mut opener) = pair();
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        sealer
            .seal_stream([&data[..100], &data[100..], &b""[..]], &mut wire)
            .unwrap();
        assert_eq!(wire.len(), sealed_len(data.len()));
        assert_eq!(open_all(&mut opener, wire).unwrap(), data);
    }

    #[test]
    fn the_same_plaintext_never_seals_alike() {
        let (mut sealer, _) = pair();
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        sealer.seal_stream([&b"hello"[..]], &mut a).unwrap();
        sealer.seal_stream([&b"hello"[..]], &mut b).unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn any_change_drop_replay_or_reorder_fails() {
        let (mut sealer, _) = pair();
        let mut one = BytesMut::new();
        let mut two = BytesMut::new();
        sealer.seal_stream([&b"first"[..]], &mut one).unwrap();
        sealer.seal_stream([&b"second"[..]], &mut two).unwrap();
        for i in 0..one.len() {
            let mut flipped = one.clone();
            flipped[i] ^= 0x01;
            let mut opener = Opener::new(&[3; 32]);
            let mut plain = BytesMut::new();
            // A changed header fails or makes the record look incomplete; nothing opens.
            let opened = opener.open_into(&mut flipped, &mut plain);
            assert!(!matches!(opened, Ok(true)), "byte {i} flipped still opened");
            assert!(plain.is_empty(), "byte {i} flipped still opened");
        }
        // Dropped: the second record alone.
        assert_eq!(
            open_all(&mut Opener::new(&[3; 32]), two.clone()),
            Err(RecordError::Forged)
        );
        // Replayed: the first twice.
        let mut replay = one.clone();
        replay.extend_from_slice(&one);
        assert_eq!(
            open_all(&mut Opener::new(&[3; 32]), replay),
            Err(RecordError::Forged)
        );
        // Reordered.
        let mut swapped = two.clone();
        swapped.extend_from_slice(&one);
        assert_eq!(
            open_all(&mut Opener::new(&[3; 32]), swapped),
            Err(RecordError::Forged)
        );
        // Another key.
        assert_eq!(
            open_all(&mut Opener::new(&[4; 32]), one),
            Err(RecordError::Forged)
        );
    }

    #[test]
    fn a_failed_opener_stays_failed() {
        let (mut sealer, mut opener) = pair();
        let mut good = BytesMut::new();
        sealer.seal_stream([&b"x"[..]], &mut good).unwrap();
        let mut bad = good.clone();
        bad[5] ^= 1;
        let mut plain = BytesMut::new();
        assert!(opener.open_into(&mut bad, &mut plain).is_err());
        assert_eq!(
            opener.open_into(&mut good, &mut plain),
            Err(RecordError::Forged)
        );
    }

    #[test]
    fn out_of_range_headers_fail_before_buffering() {
        let mut opener = Opener::new(&[3; 32]);
        let mut plain = BytesMut::new();
        for len in [0u32, 15, (MAX_RECORD_LEN + 1) as u32, u32::MAX] {
            let mut src = BytesMut::from(&len.to_be_bytes()[..]);
            assert_eq!(
                opener.open_into(&mut src, &mut plain),
                Err(RecordError::BadLength(len as usize))
            );
        }
    }

    #[test]
    fn oversized_records_are_not_sealed() {
        let (mut sealer, _) = pair();
        let mut buf = BytesMut::new();
        let start = Sealer::begin(&mut buf);
        buf.resize(buf.len() + MAX_RECORD_PLAINTEXT + 1, 0);
        assert_eq!(
            sealer.seal_from(&mut buf, start),
            Err(RecordError::TooLarge)
        );
    }
}
