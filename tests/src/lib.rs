//! Test harness for ExMessenger's integration tests: the real `chat-server` and
//! `chat-client` binaries, real sockets on 127.0.0.1, assertions on what users see.
//!
//! The output the tests assert on is the contract in `docs/cli-contract.md`.
//!
//! # Pieces
//!
//! - [`bins`]: builds the two binaries once per test process (`cargo build --bins -p
//!   chat-server -p chat-client`, same profile and target directory as the test binary)
//!   and says where they are. A plain `cargo test --workspace` therefore works.
//! - [`process::Proc`]: a child process whose stdout and stderr are read line by line by
//!   background threads. `expect_line(needle, timeout)` waits for a line and fails with
//!   everything the process printed; `expect_no_line_before(forbidden, marker, ..)` shows
//!   that something did *not* arrive; `send_line`, `close_stdin`, `wait_exit`, `signal`,
//!   `pid`. Dropping a `Proc` kills it with SIGKILL and reaps it; a failing test prints
//!   the output of every process it started.
//! - [`nodes`]: a test's world. [`Ctx::new`] makes a temporary `HOME` (no test touches
//!   the real `~/.erlang.cookie`) and starts the test's own port mapper
//!   (`chat-server port-mapper --port 0`); every process gets its port as
//!   `ERL_EPMD_PORT`, so no test uses 4369 or another test's mapper. [`Ctx::server`]
//!   starts `chat-server --name x@localhost --cookie ...` and waits for its ready line;
//!   [`Ctx::client`] / [`Ctx::join`] start `chat-client --nick N --server x@localhost
//!   --name N-k@localhost --cookie ... --no-reconnect` with stdin piped (the plain line
//!   mode) and wait for the join banner. Names are `x@localhost`, so the machine's host
//!   name does not matter.
//! - [`pty::Pty`] and [`nodes::PtyClient`]: the real `chat-client` in a pseudo-terminal
//!   (portable-pty; 100x30, `TERM=xterm`, `NO_COLOR=1` unless removed), its output fed
//!   to a terminal emulator (vt100) so that tests assert on the *screen*: printed lines
//!   (rows above the cursor, wrapped rows joined, scrollback included), the line being
//!   edited and the cursor, the colours of cells. Keys are typed as a terminal sends
//!   them ([`pty::keys`]); [`nodes::PtyClient::press`] types keys and waits for the line
//!   they make, one step of a key scenario. [`Ctx::join_pty`] /
//!   [`nodes::ClientBuilder::join_pty`] start one and wait for its banner and empty
//!   prompt. Dropping it kills the child.
//! - [`raw::RawClient`]: a client built on the `protocol` crate (tokio socket, preamble,
//!   `ClientHandshake`, then `ClientMessage`s and `ServerMessage`s with timeouts) that
//!   can also misbehave: write arbitrary bytes, stop reading, ignore pings, or never
//!   finish the handshake.
//! - [`beam`]: BEAM nodes: the Elixir ExMessenger client and server scripts of
//!   `tests/elixir/` (with the test's port mapper), and [`beam::RawBeam`], a distribution
//!   peer built on `protocol::erlang` that can misbehave. Skipped without Elixir unless
//!   `CHAT_REQUIRE_ELIXIR` is set.
//! - [`crowd`]: thousands of raw members in one runtime, each draining its socket and
//!   keeping a compact log of what it saw (the scale tests).
//! - [`redis::RedisServer`]: a real `redis-server` per test (free port below 32768, its
//!   own directory, readiness polled, SIGKILL and restart on the same port, killed on
//!   drop); `chat-server`'s cluster tests use it too, as a dev-dependency.
//! - [`talker::Talker`]: a raw member in the test's runtime that keeps every event and
//!   reply it receives, for comparing what members on several nodes saw.
//! - [`net`]: free ports, raw epmd `NAMES` requests, a recording TCP proxy, finding and
//!   killing processes by command line (the detached port mapper).
//! - [`faults::FaultProxy`]: a TCP proxy that cuts its connections silently (no FIN) or
//!   pauses them and delivers everything held at once (the resume and flood tests).
//!
//! # Rules the tests follow
//!
//! Waits are generous ([`WAIT`], [`LONG`]) and wait for something observable: a line, a
//! socket event, a process exit. No test sleeps to let something get ready or arrive.
//! To show that a user did *not* receive something, the tests use a barrier: the user
//! sends `/users`, and the answer, which the server necessarily sends after anything it
//! had sent before, must come before any forbidden line. Every test is independent and
//! runs in parallel with the others.

use std::time::Duration;

pub mod beam;
pub mod bins;
pub mod chaos;
pub mod crowd;
pub mod faults;
pub mod net;
pub mod nodes;
pub mod process;
pub mod pty;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod talker;

pub use nodes::{COOKIE, Client, Ctx, Mapper, PtyClient, Server, TempDir};
pub use process::{Proc, Signal, Stream};
pub use pty::{Pty, keys};
pub use raw::{Incoming, RawClient};
pub use redis::{RedisServer, redis_or_skip};

/// `chat-server` flags for the slow-consumer tests: texts of up to 16 KiB, so that a few
/// hundred messages fill a send queue, and a flood limit that no sender reaches.
pub const BIG_TEXTS_NO_FLOOD_LIMIT: [&str; 6] = [
    "--max-text",
    "16384",
    "--rate",
    "100000",
    "--burst",
    "100000",
];

/// How long to wait for something that should happen at once (a line, a reply).
pub const WAIT: Duration = Duration::from_secs(15);

/// How long to wait for something slower: a process start-up (the first one may wait
/// for the build), a process exit, a drop after timeouts.
pub const LONG: Duration = Duration::from_secs(30);
