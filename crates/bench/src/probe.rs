//! What a bench message's text carries: who sent it, its number in that sender's stream,
//! and when it was sent, in a fixed-width form that is cheap to write and to read back.
//!
//! The text is 28 lowercase hex digits, `SSSSSS QQQQQQQQQQ TTTTTTTTTTTT` without the
//! spaces: the sender's client index (6 digits), its sequence number from 0 (10 digits)
//! and the send (or scheduled send) time in nanoseconds since the run's clock base (12
//! digits, 78 hours). Optional padding (`' '` then `x`s) follows. Hex digits are printable,
//! so the server's text rules accept them; fixed widths make reading a table lookup per
//! digit, with no search for separators.

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

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Hex digit values, 0xff for anything else.
const DIGIT: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn put_hex(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        let v = DIGIT[d as usize];
        bad |= v;
        value = (value << 4) | u64::from(v & 0xf);
    }
    // Any invalid digit has its high bit set.
    (bad & 0x80 == 0).then_some(value)
}

/// Writes the text of `probe` into `out` (cleared first), padded to at least `text_len`
/// bytes. Values wider than their field are truncated to it (the timestamp after 78
/// hours; sender indices are checked against [`MAX_SENDER`] before a run).
pub fn write(out: &mut Vec<u8>, probe: Probe, text_len: usize) {
    out.clear();
    out.resize(PROBE_LEN, b'0');
    put_hex(&mut out[..SENDER_DIGITS], u64::from(probe.sender));
    put_hex(
        &mut out[SENDER_DIGITS..SENDER_DIGITS + SEQ_DIGITS],
        probe.seq,
    );
    put_hex(&mut out[SENDER_DIGITS + SEQ_DIGITS..], probe.sent_ns);
    if text_len > PROBE_LEN {
        out.push(b' ');
        out.resize(text_len, b'x');
    }
}

/// Reads a text written by [`write`]; `None` for anything else.
pub fn read(text: &[u8]) -> Option<Probe> {
    let digits = text.get(..PROBE_LEN)?;
    if text.len() > PROBE_LEN && text[PROBE_LEN] != b' ' {
        return None;
    }
    let (sender, rest) = digits.split_at(SENDER_DIGITS);
    let (seq, time) = rest.split_at(SEQ_DIGITS);
    Some(Probe {
        sender: read_hex(sender)? as u32,
        seq: read_hex(seq)?,
        sent_ns: read_hex(time)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(text.iter().all(u8::is_ascii_hexdigit));
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
        assert_eq!(read(&[b'0'; PROBE_LEN - 1]), None);
        let mut text = vec![b'0'; PROBE_LEN];
        text[3] = b'g';
        assert_eq!(read(&text), None);
        text[3] = b'A';
        assert_eq!(read(&text), None);
        let mut text = vec![b'0'; PROBE_LEN + 1];
        assert!(read(&text[..PROBE_LEN]).is_some());
        text[PROBE_LEN] = b'0';
        assert_eq!(read(&text), None);
    }
}
