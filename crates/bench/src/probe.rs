//! What a bench message's text carries: who sent it, its number in that sender's stream,
//! and when it was sent, in a fixed-width form that is cheap to write and to read back.
//!
//! The text is 28 base-16 digits written with the letters `a` (0) to `p` (15),
//! `SSSSSS QQQQQQQQQQ TTTTTTTTTTTT` without the spaces: the sender's client index (6
//! digits), its sequence number from 0 (10 digits) and the send (or scheduled send) time
//! in nanoseconds since the run's clock base (12 digits, 78 hours). Optional padding
//! (`' '` then `x`s) follows. Letters are printable, so the server's text rules accept
//! them; a contiguous alphabet and fixed widths let [`read`] check and convert eight
//! digits at a time with a few integer operations on a `u64` (no table, no search for
//! separators): it runs once per delivery.

/// Digits of the sender index.
const SENDER_DIGITS: usize = 6;
/// Digits of the sequence number.
const SEQ_DIGITS: usize = 10;
/// Digits of the timestamp.
const TIME_DIGITS: usize = 12;

/// Length of a text without padding.
pub const PROBE_LEN: usize = SENDER_DIGITS + SEQ_DIGITS + TIME_DIGITS;

/// Largest sender index a text can carry.
pub const MAX_SENDER: usize = (1 << (4 * SENDER_DIGITS)) - 1;

/// What a message text says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The sending client's index.
    pub sender: u32,
    /// Its sequence number in that sender's stream.
    pub seq: u64,
    /// Send time, nanoseconds since the run's clock base.
    pub sent_ns: u64,
}

/// The digit for 0; digits are `ZERO..ZERO + 16`.
const ZERO: u8 = b'a';

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = ZERO + (value & 0xf) as u8;
        value >>= 4;
    }
}

/// The value of eight digits (the first the most significant), or `None` if any byte
/// is not a digit.
fn eight_digits(bytes: &[u8; 8]) -> Option<u64> {
    let word = u64::from_le_bytes(*bytes);
    if word & HIGH != 0 {
        return None;
    }
    // With every byte's high bit set, subtracting ZERO from each byte borrows across
    // none; a byte below ZERO loses its high bit.
    let shifted = (word | HIGH) - ONES * u64::from(ZERO);
    if shifted & HIGH != HIGH {
        return None;
    }
    let nibbles = shifted & !HIGH;
    if nibbles & (ONES * 0xf0) != 0 {
        return None;
    }
    // Byte i holds digit i; put digit 0 in the top byte, then pack pairs of bytes,
    // pairs of pairs, and so on into one 32-bit number.
    let mut x = nibbles.swap_bytes();
    x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    x = (x | (x >> 16)) & 0xffff_ffff;
    Some(x)
}

fn chunk(text: &[u8], at: usize) -> &[u8; 8] {
    text[at..at + 8].try_into().expect("eight bytes")
}

/// Writes the text of `probe` into `out` (cleared first), padded to at least `text_len`
/// bytes. Values wider than their field are truncated to it (the timestamp after 78
/// hours; sender indices are checked against [`MAX_SENDER`] before a run).
pub fn write(out: &mut Vec<u8>, probe: Probe, text_len: usize) {
    out.clear();
    out.resize(PROBE_LEN, ZERO);
    put_digits(&mut out[..SENDER_DIGITS], u64::from(probe.sender));
    put_digits(
        &mut out[SENDER_DIGITS..SENDER_DIGITS + SEQ_DIGITS],
        probe.seq,
    );
    put_digits(&mut out[SENDER_DIGITS + SEQ_DIGITS..], probe.sent_ns);
    if text_len > PROBE_LEN {
        out.push(b' ');
        out.resize(text_len, b'x');
    }
}

/// Reads a text written by [`write`]; `None` for anything else.
pub fn read(text: &[u8]) -> Option<Probe> {
    if text.len() < PROBE_LEN || (text.len() > PROBE_LEN && text[PROBE_LEN] != b' ') {
        return None;
    }
    // Digits 0..16 are the sender (24 bits) and seq (40 bits); 16..28 the time, read as
    // 16..24 and the overlapping 20..28 (whose last four digits are the low 16 bits).
    let head = (eight_digits(chunk(text, 0))? << 32) | eight_digits(chunk(text, 8))?;
    let time_high = eight_digits(chunk(text, 16))?;
    let time_low = eight_digits(chunk(text, 20))? & 0xffff;
    Some(Probe {
        sender: (head >> (4 * SEQ_DIGITS)) as u32,
        seq: head & ((1 << (4 * SEQ_DIGITS)) - 1),
        sent_ns: (time_high << 16) | time_low,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_digit_round_trips_in_every_position() {
        let mut text = Vec::new();
        for digit in 0..16u64 {
            for at in 0..12 {
                let probe = Probe {
                    sender: ((digit << (4 * (at % 6))) & 0xff_ffff) as u32,
                    seq: digit << (4 * (at % 10)),
                    sent_ns: digit << (4 * at),
                };
                write(&mut text, probe, 0);
                assert_eq!(read(&text), Some(probe));
            }
        }
    }

    #[test]
    fn texts_round_trip() {
        let mut text = Vec::new();
        let probe = Probe {
            sender: 9_999,
            seq: 123_456_789,
            sent_ns: 3_600_000_000_000,
        };
        write(&mut text, probe, 0);
        assert_eq!(text.len(), PROBE_LEN);
        assert!(text.iter().all(|b| (b'a'..=b'p').contains(b)));
        assert_eq!(read(&text), Some(probe));
        write(&mut text, probe, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(read(&text), Some(probe));
        let max = Probe {
            sender: MAX_SENDER as u32,
            seq: (1 << 40) - 1,
            sent_ns: (1 << 48) - 1,
        };
        write(&mut text, max, 0);
        assert_eq!(read(&text), Some(max));
    }

    #[test]
    fn foreign_texts_are_refused() {
        assert_eq!(read(b"hello"), None);
        assert_eq!(read(&[b'a'; PROBE_LEN - 1]), None);
        for at in 0..PROBE_LEN {
            for bad in [b'`', b'q', b'0', b'A', b' ', 0xc3, 0xff] {
                let mut text = vec![b'a'; PROBE_LEN];
                assert!(read(&text).is_some());
                text[at] = bad;
                assert_eq!(read(&text), None, "byte {bad:#x} at {at}");
            }
        }
        let mut text = vec![b'a'; PROBE_LEN + 1];
        assert!(read(&text[..PROBE_LEN]).is_some());
        text[PROBE_LEN] = b'a';
        assert_eq!(read(&text), None);
    }
}
