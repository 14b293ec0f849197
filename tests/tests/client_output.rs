//! The client shows nothing raw: a hostile server's refusal, nicks and texts carrying
//! terminal escapes, bells and direction overrides reach the user's terminal escaped or
//! replaced, never as they were sent.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use bytes::BytesMut;
use chat_tests::{Ctx, LONG, Stream, WAIT};
use protocol::codec::{self, HEADER_LEN};
use protocol::secure::{RefuseReason, ServerStep};
use protocol::{
    ClientMessage, Cookie, Event, EventKind, HandshakeMessage, NodeName, Reply, SecureCodec,
    ServerHandshake, ServerMessage,
};
use tokio_util::codec::{Decoder, Encoder};

/// Characters that must never reach a terminal from the network.
const RAW: [char; 4] = ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'];

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).expect("a frame header");
    let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
    stream.read_exact(&mut payload).expect("a frame");
    payload
}

/// Accepts one client on `listener` and runs the real handshake with the test cookie;
/// returns the socket and the server's side of the channel.
fn accept(listener: &TcpListener) -> (TcpStream, SecureCodec<ClientMessage>) {
    let (mut stream, _) = listener.accept().expect("the client connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut preamble = [0u8; 4];
    stream.read_exact(&mut preamble).expect("preamble");
    let mut machine = ServerHandshake::new(
        NodeName::parse_long("server@localhost").unwrap(),
        Cookie::new(chat_tests::COOKIE).unwrap(),
        60_000,
    );
    let ServerStep::Send(challenge) = machine.on_frame(&read_frame(&mut stream)) else {
        panic!("the hello was refused");
    };
    stream.write_all(&challenge).expect("challenge");
    let ServerStep::Accept { reply, channel, .. } = machine.on_frame(&read_frame(&mut stream))
    else {
        panic!("the confirmation was refused");
    };
    stream.write_all(&reply).expect("acceptance");
    (stream, SecureCodec::new(*channel))
}

#[test]
fn a_hostile_refusal_is_printed_escaped() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the client connects");
        let mut preamble = [0u8; 4];
        stream.read_exact(&mut preamble).expect("preamble");
        let _hello = read_frame(&mut stream);
        let refusal = codec::encode_frame(&HandshakeMessage::Refused {
            reason: RefuseReason::WrongNode {
                this_node: "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}".into(),
            },
        })
        .unwrap();
        stream.write_all(&refusal).expect("refusal");
    });
    let ctx = Ctx::new();
    let mut client = ctx
        .client("ann")
        .server_arg(&format!("server@localhost:{port}"), "server@localhost")
        .spawn();
    let line = client
        .proc
        .expect_stderr_line("Could not connect to server@localhost", LONG);
    assert_eq!(client.proc.expect_failure(LONG), 1);
    fake.join().expect("the fake server");
    assert!(
        line.contains("\\u{1b}]0;pwned"),
        "not shown escaped: {line:?}"
    );
    for stream in [Stream::Stdout, Stream::Stderr] {
        for line in client.proc.lines(stream) {
            assert!(!line.contains(RAW), "raw control in {line:?}");
        }
    }
}

#[test]
fn hostile_nicks_and_texts_are_shown_without_controls() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let fake = thread::spawn(move || {
        let (mut stream, mut codec) = accept(&listener);
        // Answer the join, then send events a well-behaved server never would.
        let mut src = BytesMut::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(ClientMessage::Join { nick, .. }) =
                codec.decode(&mut src).expect("a message")
            {
                assert_eq!(nick, "ann");
                break;
            }
            let n = stream.read(&mut buf).expect("the join");
            assert!(n > 0, "the client hung up before joining");
            src.extend_from_slice(&buf[..n]);
        }
        let evil_nick = "m\u{1b}[31mallory\u{9b}2J".to_string();
        let mut out = BytesMut::new();
        let messages = [
            ServerMessage::Reply(Reply::Joined {
                users: vec!["ann".into(), evil_nick.clone()],
                more: 0,
                ticket: protocol::SessionTicket {
                    id: 1,
                    secret: [0; 16],
                },
                epoch: 1,
                seq: 0,
                limits: protocol::FloodLimits {
                    interval_us: 100_000,
                    burst: 20,
                },
            }),
            ServerMessage::Event(Event {
                seq: 1,
                kind: EventKind::Message {
                    from: evil_nick.clone(),
                    text: "look\u{7}\u{1b}]0;owned\u{7} at \u{202e}fdp.exe".into(),
                },
            }),
            ServerMessage::Event(Event {
                seq: 2,
                kind: EventKind::Notice {
                    text: "notice \u{1b}[2J end".into(),
                },
            }),
            ServerMessage::Event(Event {
                seq: 3,
                kind: EventKind::Message {
                    from: "bob".into(),
                    text: "the last line".into(),
                },
            }),
        ];
        for message in messages {
            codec.encode(message, &mut out).expect("encode");
        }
        stream.write_all(&out).expect("events");
        // Hold the connection until the client is done.
        let _ = stream.read(&mut buf);
    });
    let ctx = Ctx::new();
    let mut client = ctx
        .client("ann")
        .server_arg(&format!("server@localhost:{port}"), "server@localhost")
        .spawn();
    client.proc.expect_line("bob: the last line", LONG);
    for line in client.proc.lines(Stream::Stdout) {
        assert!(!line.contains(RAW), "raw control in {line:?}");
    }
    assert!(
        client.proc.seen("fdp.exe"),
        "the text itself is still shown"
    );
    client.proc.close_stdin();
    let _ = client.proc.wait_exit(LONG);
    drop(fake);
}
