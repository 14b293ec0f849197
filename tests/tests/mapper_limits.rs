//! The port mapper under pressure and the server's registration kept alive: a server
//! registers again when its mapper dies (starting a new one), a squatted name is
//! reported clearly, and the mapper bounds registrations, name lengths and idle
//! connections without ever failing a lookup.

use std::io::{Read, Write};
use std::net::TcpStream;

use chat_tests::net::{DetachedMapperGuard, epmd_names, free_port, poll_until};
use chat_tests::process::try_signal;
use chat_tests::{Ctx, LONG, Signal, WAIT};
use protocol::epmd::{self, NodeRegistration, RESULT_OK};

/// Registers `name` with the mapper on `port`; returns the held connection when the
/// mapper accepted it, `None` when it refused.
fn register(port: u16, name: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the mapper");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let request = epmd::encode_alive2_req(&NodeRegistration::normal(name, 4000))
        .expect("a registration encodes");
    stream.write_all(&request).expect("send ALIVE2_REQ");
    // ALIVE2_X_RESP (our mapper's answer to a version-6 node) is 6 bytes.
    let mut answer = [0u8; 6];
    stream.read_exact(&mut answer).expect("an ALIVE2 answer");
    let response = epmd::parse_alive2_response(&answer).expect("an ALIVE2 answer");
    (response.result == RESULT_OK).then_some(stream)
}

#[test]
fn a_server_registers_again_when_its_mapper_dies() {
    let port = free_port();
    let guard = DetachedMapperGuard::new(port);
    let ctx = Ctx::with_epmd_port(port);
    let mut server = ctx.start_server("server@localhost", &[]);
    let first = guard.pids();
    assert_eq!(first.len(), 1, "one detached mapper: {first:?}");

    for pid in &first {
        assert!(
            try_signal(*pid, Signal::Kill),
            "cannot kill the mapper {pid}"
        );
    }
    server
        .proc
        .expect_stderr_line("the port mapper went away; registering again", LONG);
    server
        .proc
        .expect_stderr_line("registered again with the port mapper", LONG);
    let second = guard.pids();
    assert_eq!(second.len(), 1, "a new mapper: {second:?}");
    assert_ne!(first, second, "the dead mapper is still listed");
    assert!(
        epmd_names(port).is_ok_and(|names| names.contains(&("server".into(), server.port()))),
        "not registered with the new mapper: {:?}",
        epmd_names(port)
    );
    // New clients find the server by name again.
    let _ann = ctx.join(&server, "ann");
}

#[test]
fn a_squatted_name_is_reported_clearly() {
    let ctx = Ctx::new();
    let _squatter = register(ctx.epmd_port(), "server").expect("the squatter registers");
    let mut server = ctx.server("server@localhost").spawn();
    let line = server.expect_stderr_line("already registered with the port mapper", LONG);
    for part in [
        "the name server",
        "some program took the name",
        "cannot read or forge anything without the cookie",
        "pick another --sname/--name",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert_eq!(server.expect_failure(LONG), 1);
}

#[test]
fn the_mapper_bounds_registrations_and_name_lengths() {
    let ctx = Ctx::new();
    let port = ctx.epmd_port();
    let long = register(port, &"n".repeat(255)).expect("a 255-byte name");
    assert!(
        register(port, &"n".repeat(256)).is_none(),
        "a 256-byte name"
    );
    let held: Vec<TcpStream> = (0..255)
        .map(|i| register(port, &format!("node{i}")).expect("room for 256 names"))
        .collect();
    assert!(register(port, "one-too-many").is_none(), "past 256 names");
    // Lookups still work, and a name freed can be taken again.
    assert_eq!(epmd_names(port).expect("NAMES answers").len(), 256);
    drop((held, long));
    assert!(poll_until(WAIT, || register(port, "one-too-many").is_some()));
}

#[test]
fn idle_connections_never_starve_lookups() {
    let ctx = Ctx::new();
    let port = ctx.epmd_port();
    let server = ctx.start_server("server@localhost", &[]);
    // Far more silent connections than the mapper keeps: it closes the oldest ones.
    let idle: Vec<TcpStream> = (0..1500)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let names = epmd_names(port).expect("a lookup during the flood");
    assert!(names.contains(&("server".into(), server.port())));
    let _ann = ctx.join(&server, "ann");
    drop(idle);
}
