//! Name resolution through the port mapper: several servers on one mapper, servers that
//! exit vanish from the map, a mapper started on demand, client errors, and interop with
//! Erlang's own `epmd`.

use std::path::PathBuf;
use std::process::Command;

use chat_tests::net::{DetachedMapperGuard, epmd_names, free_port, poll_until, wait_for_listener};
use chat_tests::nodes::strings;
use chat_tests::{Ctx, LONG, Proc, Server, Signal, Stream, WAIT};

/// The names registered with the mapper on `port` (panics if it does not answer).
#[track_caller]
fn names(port: u16) -> Vec<(String, u16)> {
    epmd_names(port).unwrap_or_else(|e| panic!("NAMES request to port {port} failed: {e}"))
}

#[track_caller]
fn assert_registered(port: u16, server: &Server) {
    let list = names(port);
    assert!(
        list.contains(&(server.alive().to_string(), server.port())),
        "{} (port {}) is not in the map of {port}: {list:?}",
        server.name(),
        server.port()
    );
}

/// Waits until the mapper on `port` no longer lists `alive`.
#[track_caller]
fn assert_unregistered_soon(port: u16, alive: &str) {
    let gone = poll_until(WAIT, || {
        epmd_names(port).is_ok_and(|list| list.iter().all(|(n, _)| n != alive))
    });
    assert!(gone, "{alive} is still registered: {:?}", epmd_names(port));
}

#[test]
fn two_servers_on_one_mapper_are_reached_by_name() {
    let mut ctx = Ctx::new();
    let alpha = ctx.start_server("alpha@localhost", &[]);
    let beta = ctx.start_server("beta@localhost", &[]);
    assert_ne!(alpha.port(), beta.port());
    assert_registered(ctx.epmd_port(), &alpha);
    assert_registered(ctx.epmd_port(), &beta);

    let mut ann = ctx.join(&alpha, "ann");
    let mut bob = ctx.join(&beta, "bob");
    let mut carol = ctx.join(&alpha, "carol");
    ann.expect_joined("carol");
    // Separate rooms.
    assert_eq!(ann.users(), strings(&["ann", "carol"]));
    assert_eq!(bob.users(), strings(&["bob"]));
    ann.send("only in alpha");
    carol.expect("alpha@localhost> ann: only in alpha");
    bob.expect_not_received("only in alpha");
    bob.expect_not_received("has joined");
    // Lines are prefixed by the right server's name.
    let mut dan = ctx.join(&beta, "dan");
    bob.expect("beta@localhost> * dan has joined *");
    dan.send("hello beta");
    bob.expect("beta@localhost> dan: hello beta");

    // The foreground mapper is still alive and well.
    let mapper = ctx.mapper().expect("own mapper");
    assert!(mapper.proc().try_status().is_none(), "the mapper exited");
}

#[test]
fn a_server_that_exits_disappears_from_the_map() {
    let ctx = Ctx::new();
    let mut alpha = ctx.start_server("alpha@localhost", &[]);
    let mut beta = ctx.start_server("beta@localhost", &[]);
    assert_registered(ctx.epmd_port(), &beta);

    beta.terminate();
    assert_unregistered_soon(ctx.epmd_port(), "beta");
    assert_registered(ctx.epmd_port(), &alpha);

    let mut lost = ctx
        .client("ann")
        .server_arg("beta@localhost", "beta@localhost")
        .spawn();
    lost.proc.expect_stderr_line(
        "Could not connect to beta@localhost: no node named beta on localhost",
        LONG,
    );
    assert_eq!(lost.proc.expect_failure(LONG), 1);

    // A server that dies without any clean-up vanishes too: the registration is its
    // connection to the mapper.
    alpha.proc.signal(Signal::Kill);
    assert_unregistered_soon(ctx.epmd_port(), "alpha");

    // The name can be registered again by a new server.
    let alpha2 = ctx.start_server("alpha@localhost", &[]);
    assert_registered(ctx.epmd_port(), &alpha2);
    let _ann = ctx.join(&alpha2, "ann");
}

#[test]
fn without_a_mapper_the_server_starts_one_detached() {
    let port = free_port();
    let guard = DetachedMapperGuard::new(port);
    let ctx = Ctx::with_epmd_port(port);
    assert!(
        epmd_names(port).is_err(),
        "something already listens on {port}"
    );

    let mut server = ctx.start_server("server@localhost", &[]);
    assert_registered(port, &server);
    let pids = guard.pids();
    assert_eq!(
        pids.len(),
        1,
        "expected one `chat-server port-mapper --port {port}` process, found {pids:?}"
    );
    let mut ann = ctx.join(&server, "ann");
    assert_eq!(ann.users(), strings(&["ann"]));
    // Said once in the log, with how to stop it (every line before `joined` is read).
    server.proc.expect_stderr_line("joined nick=ann", WAIT);
    let said = server.proc.lines_containing(Stream::Stderr, "port mapper");
    assert!(
        said.len() == 1
            && said[0].contains("started a port mapper in the background")
            && said[0].contains(&format!("kill {}", pids[0])),
        "expected one line about starting the port mapper, with its pid: {said:#?}"
    );

    // The mapper outlives the server that started it, and forgets the server.
    server.terminate();
    assert_unregistered_soon(port, "server");
    assert_eq!(
        guard.pids(),
        pids,
        "the detached mapper died with its server"
    );

    // A second server uses the running mapper instead of starting another.
    let server2 = ctx.start_server("server@localhost", &[]);
    assert_registered(port, &server2);
    assert_eq!(guard.pids(), pids, "a second mapper was started");
}

#[test]
fn client_error_unknown_node_name() {
    let ctx = Ctx::new();
    let _server = ctx.start_server("server@localhost", &[]);
    let mut client = ctx
        .client("ann")
        .server_arg("nosuch@localhost", "nosuch@localhost")
        .spawn();
    let line = client.proc.expect_stderr_line(
        "Could not connect to nosuch@localhost: no node named nosuch on localhost",
        LONG,
    );
    assert!(
        line.contains(&format!("port mapper at localhost:{}", ctx.epmd_port())),
        "the message does not say which port mapper was asked: {line:?}"
    );
    // What to do about it, and the names that are there (a typo shows).
    assert!(
        line.contains("start chat-server there, or check the name given to --server"),
        "no hint: {line:?}"
    );
    assert!(
        line.ends_with("the names registered there: server"),
        "the names registered are not listed: {line:?}"
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
}

#[test]
fn client_error_another_node_answers_names_it() {
    // `--server alive@host:PORT` skips the port mapper: whoever listens there answers.
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut client = ctx
        .client("ann")
        .server_arg(
            &format!("chat@localhost:{}", server.port()),
            "chat@localhost",
        )
        .spawn();
    client.proc.expect_stderr_line(
        &format!(
            "Could not connect to chat@localhost:{port}: server@localhost answered, not \
             chat@localhost; to talk to it, use --server server@localhost:{port}",
            port = server.port()
        ),
        LONG,
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
}

#[test]
fn client_error_no_port_mapper() {
    let port = free_port();
    let ctx = Ctx::with_epmd_port(port);
    let mut client = ctx
        .client("ann")
        .server_arg("server@localhost", "server@localhost")
        .spawn();
    client.proc.expect_stderr_line(
        &format!(
            "Could not connect to server@localhost: no port mapper on localhost:{port} \
             (is chat-server running?)"
        ),
        LONG,
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
    // The client does not start a mapper (only servers do).
    assert!(
        DetachedMapperGuard::new(port).pids().is_empty(),
        "the client started a port mapper"
    );
}

#[test]
fn client_error_connection_refused() {
    let ctx = Ctx::new();
    let port = free_port();
    let mut client = ctx
        .client("ann")
        .server_arg(&format!("server@localhost:{port}"), "server@localhost")
        .spawn();
    let line = client
        .proc
        .expect_stderr_line("Could not connect to server@localhost", LONG);
    assert_eq!(
        line,
        format!(
            "Could not connect to server@localhost:{port}: connection refused by localhost:{port}"
        ),
        "expected the target as given and `connection refused` with the port"
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
}

#[test]
fn server_address_with_port_skips_the_mapper() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    // The client's mapper is a port where nothing listens: it must not be asked.
    let other = Ctx::with_epmd_port(free_port());
    let mut ann = other
        .client("ann")
        .server_arg(
            &format!("server@localhost:{}", server.port()),
            "server@localhost",
        )
        .join();
    assert_eq!(ann.users(), strings(&["ann"]));
}

/// `program` (from Erlang's `erlang-base`) found on PATH, or `None` after saying the
/// test is skipped. With `CHAT_REQUIRE_EPMD` set, a missing program fails the test.
fn erlang_tool_or_skip(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CHAT_REQUIRE_EPMD").is_some() {
            panic!("{program} is not installed and CHAT_REQUIRE_EPMD is set");
        }
        println!("skipped: {program} not installed");
    }
    found
}

/// `epmd` from PATH, or `None` (after printing `skipped: epmd not installed`).
fn epmd_or_skip() -> Option<PathBuf> {
    erlang_tool_or_skip("epmd")
}

/// Runs `epmd -names` against `port` (through `ERL_EPMD_PORT`, as Erlang users do).
fn erlang_epmd_names(epmd: &PathBuf, port: u16) -> String {
    let out = Command::new(epmd)
        .arg("-names")
        .env("ERL_EPMD_PORT", port.to_string())
        .output()
        .expect("cannot run epmd -names");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "epmd -names failed: {text}");
    text
}

#[test]
fn erlang_epmd_names_lists_our_servers() {
    let Some(epmd) = epmd_or_skip() else { return };
    let ctx = Ctx::new();
    let alpha = ctx.start_server("alpha@localhost", &[]);
    let beta = ctx.start_server("beta@localhost", &[]);
    let text = erlang_epmd_names(&epmd, ctx.epmd_port());
    assert!(
        text.contains(&format!("up and running on port {}", ctx.epmd_port())),
        "{text}"
    );
    for server in [&alpha, &beta] {
        let line = format!("name {} at port {}", server.alive(), server.port());
        assert!(text.contains(&line), "`{line}` missing from:\n{text}");
    }
}

#[test]
fn a_chat_server_registers_with_a_real_epmd() {
    let Some(epmd) = epmd_or_skip() else { return };
    let port = free_port();
    let guard = DetachedMapperGuard::new(port);
    let mut cmd = Command::new(&epmd);
    cmd.arg("-port").arg(port.to_string());
    let mut real_epmd = Proc::spawn("epmd", cmd);
    if let Err(e) = wait_for_listener(port, WAIT) {
        real_epmd.fail(&format!("epmd did not start: {e}"));
    }

    let ctx = Ctx::with_epmd_port(port);
    let mut server = ctx.start_server("server@localhost", &[]);
    let text = erlang_epmd_names(&epmd, port);
    let line = format!("name server at port {}", server.port());
    assert!(text.contains(&line), "`{line}` missing from:\n{text}");
    assert!(
        guard.pids().is_empty(),
        "the server started its own mapper although epmd runs"
    );

    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("resolved through Erlang's epmd");
    ann.expect_say("bob", "resolved through Erlang's epmd");

    server.terminate();
    let gone = poll_until(WAIT, || {
        !erlang_epmd_names(&epmd, port).contains("name server at port")
    });
    assert!(gone, "epmd still lists the server after it exited");
    assert!(real_epmd.try_status().is_none(), "epmd died");
}

#[test]
fn real_erlang_nodes_find_each_other_through_our_mapper() {
    let Some(erl) = erlang_tool_or_skip("erl") else {
        return;
    };
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);

    // An Erlang node registers with our mapper (ALIVE2 as the BEAM sends it)...
    let mut cmd = ctx.command(&erl);
    cmd.args([
        "-noshell",
        "-name",
        "beam_a@127.0.0.1",
        "-setcookie",
        "interop-cookie",
        "-eval",
        "io:format(\"node up~n\")",
    ]);
    let mut node_a = Proc::spawn("erl beam_a", cmd);
    node_a.expect_line("node up", LONG);
    let list = names(ctx.epmd_port());
    assert!(
        list.iter().any(|(n, _)| n == "beam_a"),
        "beam_a is not registered: {list:?}"
    );
    assert_registered(ctx.epmd_port(), &server);

    // ...and another one finds it through our mapper (PORT_PLEASE2) and connects.
    let mut cmd = ctx.command(&erl);
    cmd.args([
        "-noshell",
        "-name",
        "beam_b@127.0.0.1",
        "-setcookie",
        "interop-cookie",
        "-eval",
        "io:format(\"ping: ~p~n\", [net_adm:ping(list_to_atom(\"beam_a@127.0.0.1\"))]), halt().",
    ]);
    let mut node_b = Proc::spawn("erl beam_b", cmd);
    node_b.expect_line("ping: pong", LONG);
    node_b.expect_success(LONG);
}
