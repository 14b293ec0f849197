//! Property tests of the wire encoding.
//!
//! - Every `ClientMessage`, `ServerMessage` and `HandshakeMessage` variant survives
//!   encode -> decode unchanged, through `encode_frame`/`decode` and through the
//!   `MessageCodec` framing, whole or split at any point.
//! - Any byte stream sealed by the record layer, cut into records of any sizes and
//!   delivered in any chunks, opens to the same bytes; any single changed byte fails.
//! - A `SecureCodec` pair carries any sequence of messages unchanged.
//! - No input of any length makes a decoder allocate more than the frame limit: arbitrary
//!   bytes, huge length prefixes and huge inner lengths either fail or decode within
//!   [`MAX_FRAME_LEN`]. A counting global allocator measures what each decode allocates
//!   on its own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::codec::{self, CodecError, HEADER_LEN, MAX_FRAME_LEN};
use protocol::secure::RefuseReason;
use protocol::{
    ClientMessage, Event, EventKind, FloodLimits, HandshakeMessage, LeaveReason, MessageCodec,
    Reply, ResumeFailure, ServerMessage, SessionTicket,
};
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// Counting allocator: live bytes and their peak, per thread (tests run in parallel).

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    // `try_with`: allocations while a thread is being torn down are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at once (on this
/// thread, beyond what was live when it started).
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get) - start;
    (r, peak.max(0) as usize)
}

/// What a decode may allocate beyond the frame limit: an error message or two.
const SLACK: usize = 1024;

/// What decoding one message may allocate at once: the frame limit.
const BOUND: usize = MAX_FRAME_LEN + SLACK;

// ---------------------------------------------------------------------------------------
// Strategies: valid values of every message type.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9 _.,!?-]{1,40}",
        any::<String>(),
        ".{0,300}",
    ]
}

fn nonce() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn leave_reason() -> impl Strategy<Value = LeaveReason> {
    prop_oneof![
        Just(LeaveReason::Left),
        Just(LeaveReason::Quit),
        Just(LeaveReason::ConnectionLost),
        Just(LeaveReason::Timeout),
        Just(LeaveReason::SendQueueExceeded),
        Just(LeaveReason::Flooding),
        Just(LeaveReason::ProtocolError),
        Just(LeaveReason::ServerShutdown),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (text(), any::<u16>()).prop_map(|(nick, backlog)| ClientMessage::Join { nick, backlog }),
        Just(ClientMessage::Leave),
        (any::<u64>(), text()).prop_map(|(id, text)| ClientMessage::Say { id, text }),
        (any::<u64>(), text(), text()).prop_map(|(id, to, text)| ClientMessage::Private {
            id,
            to,
            text
        }),
        Just(ClientMessage::ListUsers),
        Just(ClientMessage::Ping),
        Just(ClientMessage::Pong),
        (ticket(), any::<u64>(), any::<u64>()).prop_map(|(ticket, epoch, last_seq)| {
            ClientMessage::Resume {
                ticket,
                epoch,
                last_seq,
            }
        }),
    ]
}

fn ticket() -> impl Strategy<Value = SessionTicket> {
    (any::<u64>(), any::<[u8; 16]>()).prop_map(|(id, secret)| SessionTicket { id, secret })
}

fn limits() -> impl Strategy<Value = FloodLimits> {
    (any::<u64>(), any::<u32>()).prop_map(|(interval_us, burst)| FloodLimits { interval_us, burst })
}

fn resume_failure() -> impl Strategy<Value = ResumeFailure> {
    prop_oneof![
        Just(ResumeFailure::UnknownSession),
        Just(ResumeFailure::EpochChanged),
        Just(ResumeFailure::NickInUse),
        Just(ResumeFailure::AlreadyJoined),
        Just(ResumeFailure::Unavailable),
    ]
}

fn nicks() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..20)
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            nicks(),
            any::<u32>(),
            ticket(),
            any::<u64>(),
            any::<u64>(),
            limits()
        )
            .prop_map(|(users, more, ticket, epoch, seq, limits)| Reply::Joined {
                users,
                more,
                ticket,
                epoch,
                seq,
                limits
            }),
        Just(Reply::NickInUse),
        Just(Reply::NickNotAllowed),
        text().prop_map(|reason| Reply::InvalidNick { reason }),
        text().prop_map(|nick| Reply::AlreadyJoined { nick }),
        Just(Reply::Left),
        Just(Reply::NotJoined),
        (nicks(), any::<u32>()).prop_map(|(users, more)| Reply::Users { users, more }),
        text().prop_map(|nick| Reply::NoSuchUser { nick }),
        text().prop_map(|reason| Reply::InvalidText { reason }),
        Just(Reply::SlowDown),
        (any::<u64>(), any::<u64>()).prop_map(|(id, seq)| Reply::Sent { id, seq }),
        (
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
            nicks(),
            any::<u32>(),
            any::<u64>(),
            limits()
        )
            .prop_map(|(missed, lost, rejoined, users, more, seq, limits)| {
                Reply::Resumed {
                    missed,
                    lost,
                    rejoined,
                    users,
                    more,
                    seq,
                    limits,
                }
            }),
        resume_failure().prop_map(|reason| Reply::ResumeFailed { reason }),
        text().prop_map(|nick| Reply::RecipientBusy { nick }),
        (any::<u64>(), any::<bool>()).prop_map(|(id, held)| Reply::Unavailable { id, held }),
    ]
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (text(), text()).prop_map(|(from, text)| EventKind::Message { from, text }),
        (text(), text()).prop_map(|(from, text)| EventKind::Private { from, text }),
        text().prop_map(|nick| EventKind::Joined { nick }),
        (text(), leave_reason()).prop_map(|(nick, reason)| EventKind::Left { nick, reason }),
        text().prop_map(|text| EventKind::Notice { text }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        reply().prop_map(ServerMessage::Reply),
        (any::<u64>(), event_kind())
            .prop_map(|(seq, kind)| ServerMessage::Event(Event { seq, kind })),
        Just(ServerMessage::Ping),
        Just(ServerMessage::Pong),
        leave_reason().prop_map(|reason| ServerMessage::Closing { reason }),
    ]
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::NotAllowed),
        text().prop_map(|this_node| RefuseReason::WrongNode { this_node }),
        any::<u8>().prop_map(|supported| RefuseReason::UnsupportedVersion { supported }),
        text().prop_map(|reason| RefuseReason::BadName { reason }),
        Just(RefuseReason::ServerFull),
        Just(RefuseReason::ShuttingDown),
    ]
}

fn handshake_message() -> impl Strategy<Value = HandshakeMessage> {
    prop_oneof![
        (any::<u8>(), text(), text(), nonce()).prop_map(|(version, from, to, pake)| {
            HandshakeMessage::Hello {
                version,
                from,
                to,
                pake,
            }
        }),
        (text(), nonce(), nonce()).prop_map(|(name, pake, confirm)| {
            HandshakeMessage::Challenge {
                name,
                pake,
                confirm,
            }
        }),
        nonce().prop_map(|confirm| HandshakeMessage::Confirm { confirm }),
        any::<u64>().prop_map(|tick_ms| HandshakeMessage::Accepted { tick_ms }),
        refuse_reason().prop_map(|reason| HandshakeMessage::Refused { reason }),
    ]
}

// ---------------------------------------------------------------------------------------
// Round-trips.

/// `encode_frame` -> `decode` gives the value back, and the frame's header is its length.
fn round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let frame = codec::encode_frame(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let len = u32::from_be_bytes(frame[..HEADER_LEN].try_into().unwrap()) as usize;
    prop_assert_eq!(len, frame.len() - HEADER_LEN);
    prop_assert!(len <= MAX_FRAME_LEN);
    let back: T =
        codec::decode(&frame[HEADER_LEN..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// Several messages through `MessageCodec`, the stream split at `split`: same messages.
fn codec_round_trip<T>(msgs: &[T], split: prop::sample::Index) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    let mut codec = MessageCodec::<T>::new();
    let mut wire = BytesMut::new();
    for m in msgs {
        codec
            .encode(m.clone(), &mut wire)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let at = split.index(wire.len() + 1);
    let mut buf = BytesMut::from(&wire[..at]);
    let mut out = Vec::new();
    while let Some(m) = codec
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
    {
        out.push(m);
    }
    buf.extend_from_slice(&wire[at..]);
    while let Some(m) = codec
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
    {
        out.push(m);
    }
    prop_assert!(buf.is_empty());
    prop_assert_eq!(out.as_slice(), msgs);
    Ok(())
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in client_message()) {
        round_trip(&msg)?;
    }

    #[test]
    fn server_messages_round_trip(msg in server_message()) {
        round_trip(&msg)?;
    }

    #[test]
    fn handshake_messages_round_trip(msg in handshake_message()) {
        round_trip(&msg)?;
    }

    #[test]
    fn client_streams_round_trip(
        msgs in prop::collection::vec(client_message(), 0..8),
        split in any::<prop::sample::Index>(),
    ) {
        codec_round_trip(&msgs, split)?;
    }

    #[test]
    fn server_streams_round_trip(
        msgs in prop::collection::vec(server_message(), 0..8),
        split in any::<prop::sample::Index>(),
    ) {
        codec_round_trip(&msgs, split)?;
    }
}

// ---------------------------------------------------------------------------------------
// Bounded decoding.

/// `decode` of one payload as each message type: fails, or succeeds, within the limit.
fn decode_is_bounded(payload: &[u8]) -> Result<(), TestCaseError> {
    fn one<T: serde::de::DeserializeOwned>(
        payload: &[u8],
        bound: usize,
    ) -> Result<(), TestCaseError> {
        let (result, peak) = peak_allocation(|| codec::decode::<T>(payload).map(drop));
        prop_assert!(
            peak <= bound,
            "decoding {} bytes allocated {} bytes at once ({:?})",
            payload.len(),
            peak,
            result.err()
        );
        Ok(())
    }
    one::<ClientMessage>(payload, BOUND)?;
    one::<ServerMessage>(payload, BOUND)?;
    one::<HandshakeMessage>(payload, BOUND)?;
    Ok(())
}

/// A varint as bincode's standard config writes it, for any `u64`.
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251u8][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// Payloads that start like a real message but claim a huge string or list inside.
fn hostile_payload() -> impl Strategy<Value = Vec<u8>> {
    let prefixes: Vec<Vec<u8>> = vec![
        vec![0],       // ClientMessage::Join { nick } / ServerMessage::Reply / Hello
        vec![2],       // ClientMessage::Say { text }
        vec![3],       // ClientMessage::Private { to, .. }
        vec![0, 0],    // Reply::Joined { users } / Hello { version: 0, from }
        vec![0, 7],    // Reply::Users { users }
        vec![0, 3],    // Reply::InvalidNick { reason }
        vec![1, 0, 0], // Event { seq: 0, Message { from } } / Challenge { name }
        vec![0, 1, 3], // Hello { version: 1, from: "???" .. }
    ];
    (
        prop::sample::select(prefixes),
        prop_oneof![
            any::<u64>(),
            (MAX_FRAME_LEN as u64 - 64)..(MAX_FRAME_LEN as u64 * 64),
            Just(u64::MAX),
            Just(1u64 << 60),
            Just(u32::MAX as u64),
        ],
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(prefix, len, tail)| [prefix, varint(len), tail].concat())
}

proptest! {
    #[test]
    fn arbitrary_payloads_decode_within_the_limit(
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_is_bounded(&payload)?;
    }

    #[test]
    fn huge_inner_lengths_decode_within_the_limit(payload in hostile_payload()) {
        decode_is_bounded(&payload)?;
    }

    /// A stream whose length prefix may be anything (huge ones included) followed by
    /// arbitrary bytes: the codec refuses an over-limit prefix, never yields a frame over
    /// the limit, and allocates within the limit beyond the bytes it was handed.
    #[test]
    fn arbitrary_streams_decode_within_the_limit(
        prefix in prop_oneof![
            any::<u32>(),
            Just(u32::MAX),
            Just(MAX_FRAME_LEN as u32),
            Just(MAX_FRAME_LEN as u32 + 1),
            0u32..600,
        ],
        body in prop::collection::vec(any::<u8>(), 0..600),
        server in any::<bool>(),
    ) {
        let mut wire = prefix.to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        let result = if server {
            stream_is_bounded::<ServerMessage>(&wire, BOUND)?
        } else {
            stream_is_bounded::<ClientMessage>(&wire, BOUND)?
        };
        if prefix as usize > MAX_FRAME_LEN {
            prop_assert!(matches!(result, Err(CodecError::FrameTooLarge)), "{:?}", result);
        }
    }
}

/// Decodes every frame of `wire` with `MessageCodec::<T>`. Each frame is within the
/// limit, and beyond the buffer it was handed the codec allocates at most one frame
/// (reserving room for a frame it has the header of) plus one decoded message (`bound`).
fn stream_is_bounded<T: serde::de::DeserializeOwned>(
    wire: &[u8],
    bound: usize,
) -> Result<Result<usize, CodecError>, TestCaseError> {
    let mut codec = MessageCodec::<T>::new();
    let mut buf = BytesMut::from(wire);
    let mut frames = 0usize;
    let mut pending = 0usize;
    loop {
        let before = buf.len();
        let (step, peak) = peak_allocation(|| codec.decode(&mut buf).map(|m| m.map(drop)));
        prop_assert!(
            peak <= MAX_FRAME_LEN + bound,
            "decoding from a {}-byte stream allocated {} bytes at once",
            wire.len(),
            peak
        );
        pending += before - buf.len();
        match step {
            Ok(Some(())) => {
                prop_assert!(std::mem::take(&mut pending) <= HEADER_LEN + MAX_FRAME_LEN);
                frames += 1;
            }
            Ok(None) => return Ok(Ok(frames)),
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// The frame limit's promise for server messages too. Found by
/// `huge_inner_lengths_decode_within_the_limit` (minimised: `[0, 0, 251, 206, 10, 177]`,
/// a `Reply::Joined` claiming 2766 users, allocated 66,561 bytes; 2^16 users, 1 MiB):
/// serde's `Vec` preallocated from the claimed length; user lists now grow only with
/// decoded entries.
#[test]
fn server_message_user_lists_stay_within_the_frame_limit() {
    for claimed in [2766, 1 << 16, 1 << 60, u64::MAX] {
        for variant in [0u8, 7] {
            let payload = [&[0u8, variant][..], &varint(claimed), b"\x01a"].concat();
            let (result, peak) =
                peak_allocation(|| codec::decode::<ServerMessage>(&payload).map(drop));
            assert!(result.is_err());
            assert!(
                peak <= BOUND,
                "claiming {claimed} users allocated {peak} bytes"
            );
        }
    }
}

/// What the server decodes from clients never holds a list: pinned hostile lengths stay
/// within the frame limit for every string field position.
#[test]
fn hostile_client_payloads_stay_within_the_frame_limit() {
    for claimed in [MAX_FRAME_LEN as u64 + 1, 1 << 32, 1 << 60, u64::MAX] {
        for prefix in [&[0u8][..], &[2], &[3], &[3, 1, b'a']] {
            let payload = [prefix, &varint(claimed), b"abc"].concat();
            let (result, peak) =
                peak_allocation(|| codec::decode::<ClientMessage>(&payload).map(drop));
            assert!(result.is_err());
            assert!(peak <= BOUND, "allocated {peak} bytes");
        }
        for prefix in [&[0u8, 1][..], &[1]] {
            let payload = [prefix, &varint(claimed), b"abc"].concat();
            let (result, peak) =
                peak_allocation(|| codec::decode::<HandshakeMessage>(&payload).map(drop));
            assert!(result.is_err());
            assert!(peak <= BOUND, "allocated {peak} bytes");
        }
    }
}

/// Found reading the handshake for its fuzz target: after refusing, a server machine
/// must never accept, even if a caller kept feeding it the right confirmation.
#[test]
fn a_refused_handshake_never_accepts() {
    use protocol::secure::{ClientStep, ServerStep};
    use protocol::{ClientHandshake, Cookie, NodeName, ServerHandshake};
    let name = |s: &str| NodeName::parse_long(s).unwrap();
    let cookie = Cookie::new("c").unwrap();
    let mut server = ServerHandshake::new(name("server@h"), cookie.clone(), 1000);
    let (mut client, hello) = ClientHandshake::new(name("john@h"), name("server@h"), cookie);
    let ServerStep::Send(challenge) = server.on_frame(&hello[HEADER_LEN..]) else {
        panic!("no challenge")
    };
    let Ok(ClientStep::Send(confirm)) = client.on_frame(&challenge[HEADER_LEN..]) else {
        panic!("no confirmation")
    };
    let wrong = codec::encode_frame(&HandshakeMessage::Confirm { confirm: [0; 32] }).unwrap();
    assert!(matches!(
        server.on_frame(&wrong[HEADER_LEN..]),
        ServerStep::Refuse { .. }
    ));
    let after = server.on_frame(&confirm[HEADER_LEN..]);
    assert!(
        matches!(after, ServerStep::Refuse { .. }),
        "accepted after refusing"
    );
}

// ---------------------------------------------------------------------------------------
// The record layer and the secure codec.

mod channel {
    use super::*;
    use protocol::secure::record::MAX_RECORD_PLAINTEXT;
    use protocol::secure::{Established, Opener, Sealer, SecureCodec};

    fn open_stream(opener: &mut Opener, wire: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let mut src = BytesMut::new();
        let mut plain = BytesMut::new();
        for piece in wire.chunks(chunk.max(1)) {
            src.extend_from_slice(piece);
            while opener
                .open_into(&mut src, &mut plain)
                .map_err(|e| e.to_string())?
            {}
        }
        if !src.is_empty() {
            return Err("a partial record is left".into());
        }
        Ok(plain.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sealed_streams_open_to_the_same_bytes(
            writes in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..(MAX_RECORD_PLAINTEXT + 100)),
                0..5,
            ),
            chunk in 1usize..5000,
            key in any::<[u8; 32]>(),
        ) {
            let mut sealer = Sealer::new(&key);
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            for write in &writes {
                sealer.seal_stream([&write[..]], &mut wire).unwrap();
                expected.extend_from_slice(write);
            }
            let opened = open_stream(&mut Opener::new(&key), &wire, chunk).unwrap();
            prop_assert_eq!(opened, expected);
        }

        #[test]
        fn any_changed_byte_is_caught(
            data in proptest::collection::vec(any::<u8>(), 1..3000),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = [9u8; 32];
            let mut wire = BytesMut::new();
            Sealer::new(&key).seal_stream([&data[..]], &mut wire).unwrap();
            let at = at.index(wire.len());
            wire[at] ^= flip;
            // Either an error, or (a changed header) a record that never completes:
            // never the data, never anything else.
            if let Ok(opened) = open_stream(&mut Opener::new(&key), &wire, 7) {
                prop_assert!(opened.is_empty());
            }
        }

        #[test]
        fn secure_codecs_carry_any_messages(
            messages in proptest::collection::vec(client_message(), 0..8),
            chunk in 1usize..200,
        ) {
            let pair = |out: [u8; 32], inn: [u8; 32]| Established {
                sealer: Sealer::new(&out),
                opener: Opener::new(&inn),
            };
            let mut client = SecureCodec::<ServerMessage>::new(pair([1; 32], [2; 32]));
            let mut server = SecureCodec::<ClientMessage>::new(pair([2; 32], [1; 32]));
            let mut wire = BytesMut::new();
            for msg in &messages {
                client.encode(msg.clone(), &mut wire).unwrap();
            }
            let mut got = Vec::new();
            let mut src = BytesMut::new();
            for piece in wire.chunks(chunk) {
                src.extend_from_slice(piece);
                while let Some(msg) = server.decode(&mut src).unwrap() {
                    got.push(msg);
                }
            }
            prop_assert_eq!(got, messages);
        }
    }
}
