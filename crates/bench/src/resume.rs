//! The mass-resume workload: K clients join, every link is cut at once without a word
//! (the server sees nothing: no FIN, no reset, as when a router dies), something is said
//! while they are away, and all of them come back at once and resume their sessions.
//!
//! It reports how long it takes until every client has resumed and received exactly
//! what was said while it was away (each message once, in order), and the server's
//! resident memory before, at its peak during the resume, and after. A client told the
//! server is full (the handshake pool has room for 128 handshakes from one address), or
//! whose connection is reset or closed before the handshake ends, tries again after a
//! short pause, as chat-client does; the retries are counted.
//!
//! This workload speaks the current protocol only, through the protocol crate's own
//! client handshake and codec: it measures the server's resume path, not the generator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::secure::{ClientHandshake, ClientStep, RefuseReason};
use protocol::{
    ClientMessage, Cookie, EventKind, HandshakeError, NodeName, PREAMBLE, Reply, SecureCodec,
    ServerMessage, SessionTicket, codec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

use crate::launch::Running;
use crate::procfs;
use crate::report::Row;

/// A session stream of the current protocol.
type Session = Framed<TcpStream, SecureCodec<ServerMessage>>;

/// How long one step (a join, a resume with its replay) may take.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// First pause before a client told the server is full tries again; it doubles up to
/// [`RETRY_MAX`], with jitter, as chat-client's backoff does (shorter: a bench waits).
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Longest pause between tries.
const RETRY_MAX: Duration = Duration::from_secs(4);

/// Joins at once while the room fills.
const JOINS_IN_FLIGHT: usize = 100;

/// Resumes in progress at once. Every client wants back at the same moment, but they
/// all live in this one process on the server's machine: thousands of handshakes at
/// once would starve each other here (a client too slow to answer the server's challenge
/// within its timeout counts as a failed guess of the cookie), which real clients on
/// their own machines are not.
const RESUMES_IN_FLIGHT: usize = 256;

/// A joined client, as it was when its link was cut.
struct Away {
    /// The client's number.
    index: usize,
    /// Its session.
    ticket: SessionTicket,
    /// The room's epoch.
    epoch: u64,
}

/// Runs the workload with `clients` clients and `said` messages said while they are away.
pub async fn run(clients: usize, said: usize, target: &Running, row: &mut Row) -> Result<()> {
    let endpoint = &target.endpoint;
    let addr = endpoint.addr;
    let server = NodeName::parse_long(&endpoint.server_name).context("the server's name")?;
    let cookie = Cookie::new(&endpoint.cookie).context("the cookie is empty")?;

    let gate = Arc::new(Semaphore::new(JOINS_IN_FLIGHT));
    let joins: Vec<_> = (0..clients)
        .map(|index| {
            let (server, cookie, gate) = (server.clone(), cookie.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                join(addr, &server, &cookie, index).await
            })
        })
        .collect();
    // Until the cut every client reads what it is sent, as a live client does.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let mut reading = Vec::with_capacity(clients);
    for task in joins {
        let (session, joined) = task.await.context("a join task panicked")??;
        let Reply::Joined { ticket, epoch, .. } = joined else {
            bail!("not joined: {joined:?}");
        };
        let index = reading.len();
        reading.push(tokio::spawn(read_until_cut(
            session,
            cut_rx.clone(),
            index,
            ticket,
            epoch,
        )));
    }
    // One speaker, joined last (nothing reads it while the crowd joins), says what the
    // others miss.
    let (mut speaker, _) = join(addr, &server, &cookie, usize::MAX).await?;
    // The clients say they saw everything up to the speaker's line after the last join
    // (whether or not their readers got to it before the cut, nothing after it is
    // missing from what the resume must replay).
    let last_seen = say_acknowledged(&mut speaker, 1, "everyone is in").await?;

    // The cut: every client stops reading, and nothing is said on its socket.
    let _ = cut_tx.send(true);
    // The cut connections stay open, unread, until their client has resumed: closing one
    // before would be a departure the others see.
    let mut away = Vec::with_capacity(clients);
    let mut cut = Vec::with_capacity(clients);
    for task in reading {
        let (client, session) = task.await.context("a reading task panicked")??;
        away.push(client);
        cut.push(session);
    }
    let before = procfs::rss_bytes(target.pid.context("the server's pid is unknown")?)?;
    for k in 0..said {
        say_acknowledged(&mut speaker, 2 + k as u64, &format!("while away {k}")).await?;
    }

    let peak = Arc::new(AtomicU64::new(before));
    let sampling = tokio::spawn(sample_peak(target.pid, peak.clone()));
    let started = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(RESUMES_IN_FLIGHT));
    let resumes: Vec<_> = away
        .into_iter()
        .zip(cut)
        .map(|(client, cut)| {
            let (server, cookie, retries) = (server.clone(), cookie.clone(), retries.clone());
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let resumed = tokio::time::timeout(
                    STEP_LIMIT,
                    resume(addr, &server, &cookie, client, last_seen, said, &retries),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("left hanging")));
                // Once its session is back the cut link is already closed by the server
                // and can go; a client that failed keeps it, as a silent cut would.
                match resumed {
                    Ok(done) => Ok(done),
                    Err(e) => Err((e, cut)),
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut latest = Duration::ZERO;
    // Resumed sessions stay open until all have resumed: one that left would be an event
    // the later ones missed.
    let mut back = Vec::with_capacity(clients);
    let mut still_cut = Vec::new();
    for task in resumes {
        match task.await.context("a resume task panicked")? {
            Ok((took, session)) => {
                latest = latest.max(took);
                back.push(session);
            }
            Err((e, cut)) => {
                failures.push(format!("{e:#}"));
                still_cut.push(cut);
            }
        }
    }
    let all_resumed = started.elapsed();
    sampling.abort();
    let after = procfs::rss_bytes(target.pid.unwrap_or_default()).unwrap_or_default();
    drop(back);
    drop(still_cut);

    row.rate = Some(clients as f64 / all_resumed.as_secs_f64());
    row.elapsed_s = Some(all_resumed.as_secs_f64());
    row.rss_kib = Some(after / 1024);
    row.extra("all_resumed_s", all_resumed.as_secs_f64());
    row.extra("slowest_resume_s", latest.as_secs_f64());
    row.extra("missed_per_client", said as u64);
    row.extra("retries", retries.load(Ordering::Relaxed));
    row.extra("rss_before_kib", before / 1024);
    row.extra("rss_peak_kib", peak.load(Ordering::Relaxed) / 1024);
    row.other_errors = failures.len() as u64;
    row.ok = failures.is_empty();
    if let Some(first) = failures.first() {
        row.error = Some(format!("{} clients failed, e.g. {first}", failures.len()));
    }
    Ok(())
}

/// Reads (and drops) what the server sends, answering pings, until the cut; then hands
/// the connection back, never to be read again. Fails if the server closes it first.
async fn read_until_cut(
    mut session: Session,
    mut cut: tokio::sync::watch::Receiver<bool>,
    index: usize,
    ticket: SessionTicket,
    epoch: u64,
) -> Result<(Away, Session)> {
    loop {
        if *cut.borrow_and_update() {
            return Ok((
                Away {
                    index,
                    ticket,
                    epoch,
                },
                session,
            ));
        }
        tokio::select! {
            // Any change is the cut; the loop looks again.
            _ = cut.changed() => {}
            next = session.next() => match next {
                Some(Ok(ServerMessage::Ping)) => session.send(ClientMessage::Pong).await?,
                Some(Ok(ServerMessage::Closing { reason })) => {
                    bail!("r{index} closed by the server: {}", reason.describe())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("r{index}: the server closed the connection"),
            },
        }
    }
}

/// Samples the server's RSS every 20 ms, keeping the highest.
async fn sample_peak(pid: Option<u32>, peak: Arc<AtomicU64>) {
    let Some(pid) = pid else { return };
    loop {
        if let Ok(rss) = procfs::rss_bytes(pid) {
            peak.fetch_max(rss, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why opening a session failed.
enum OpenError {
    /// The server is full for now, or the connection was reset before the handshake
    /// finished (as a crowd of refused connections can be): try again.
    Again,
    /// Anything else.
    Other(anyhow::Error),
}

/// Connects and runs the handshake as `bench-resume<index>@localhost`.
async fn open(
    addr: SocketAddr,
    server: &NodeName,
    cookie: &Cookie,
    index: usize,
) -> Result<Session, OpenError> {
    let other = |e: anyhow::Error| {
        let reset = e.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        });
        if reset {
            OpenError::Again
        } else {
            OpenError::Other(e)
        }
    };
    let own = NodeName::parse_long(&format!("bench-resume{index}@localhost"))
        .map_err(|e| other(e.into()))?;
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| other(e.into()))?;
    tcp.set_nodelay(true).map_err(|e| other(e.into()))?;
    tcp.write_all(&PREAMBLE)
        .await
        .map_err(|e| other(e.into()))?;
    let (mut machine, hello) = ClientHandshake::new(own, server.clone(), cookie.clone());
    tcp.write_all(&hello).await.map_err(|e| other(e.into()))?;
    let mut framed = Framed::new(tcp, codec::handshake_framing());
    loop {
        let payload = match framed.next().await {
            Some(Ok(payload)) => payload,
            Some(Err(e)) => return Err(other(e.into())),
            None => return Err(OpenError::Again),
        };
        match machine.on_frame(&payload) {
            Ok(ClientStep::Send(reply)) => framed
                .get_mut()
                .write_all(&reply)
                .await
                .map_err(|e| other(e.into()))?,
            Ok(ClientStep::Done { channel, .. }) => {
                return Ok(framed.map_codec(|_| SecureCodec::new(*channel)));
            }
            Err(HandshakeError::Refused(RefuseReason::ServerFull)) => {
                return Err(OpenError::Again);
            }
            Err(e) => return Err(other(e.into())),
        }
    }
}

/// Opens a session, trying again while the server is full.
async fn open_retrying(
    addr: SocketAddr,
    server: &NodeName,
    cookie: &Cookie,
    index: usize,
    retries: &AtomicU64,
) -> Result<Session> {
    let mut pause = RETRY_PAUSE;
    loop {
        match open(addr, server, cookie, index).await {
            Ok(session) => return Ok(session),
            Err(OpenError::Again) => {
                retries.fetch_add(1, Ordering::Relaxed);
                let jitter = rand::random_range(0.5..1.5);
                tokio::time::sleep(pause.mul_f64(jitter)).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(OpenError::Other(e)) => return Err(e),
        }
    }
}

/// The next reply, answering pings and skipping events.
async fn next_reply(session: &mut Session) -> Result<Reply> {
    loop {
        match session.next().await {
            Some(Ok(ServerMessage::Reply(reply))) => return Ok(reply),
            Some(Ok(ServerMessage::Ping)) => session.send(ClientMessage::Pong).await?,
            Some(Ok(ServerMessage::Closing { reason })) => {
                bail!("closed by the server: {}", reason.describe())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the connection"),
        }
    }
}

/// Joins as `r<index>` (the speaker: `speaker`); returns the session and the answer.
async fn join(
    addr: SocketAddr,
    server: &NodeName,
    cookie: &Cookie,
    index: usize,
) -> Result<(Session, Reply)> {
    let nick = if index == usize::MAX {
        "speaker".to_string()
    } else {
        format!("r{index}")
    };
    let retries = AtomicU64::new(0);
    let mut session = open_retrying(addr, server, cookie, index, &retries).await?;
    session
        .send(ClientMessage::Join {
            nick: nick.clone(),
            backlog: 0,
        })
        .await?;
    let answer = tokio::time::timeout(STEP_LIMIT, next_reply(&mut session))
        .await
        .with_context(|| format!("{nick}: no answer to the join"))??;
    match answer {
        Reply::Joined { .. } => Ok((session, answer)),
        other => bail!("{nick}: join refused: {other:?}"),
    }
}

/// Says `text` with message id `id` and waits for the acknowledgement; returns its
/// sequence number.
async fn say_acknowledged(session: &mut Session, id: u64, text: &str) -> Result<u64> {
    session
        .send(ClientMessage::Say {
            id,
            text: text.to_string(),
        })
        .await?;
    loop {
        match tokio::time::timeout(STEP_LIMIT, next_reply(session)).await?? {
            Reply::Sent { id: acked, seq } if acked == id => return Ok(seq),
            Reply::SlowDown => bail!("the speaker hit the flood limit"),
            _ => {}
        }
    }
}

/// Resumes `client` from `last_seen` and checks that exactly the `said` messages follow,
/// each once, in order. Returns how long it took, and the resumed session.
async fn resume(
    addr: SocketAddr,
    server: &NodeName,
    cookie: &Cookie,
    client: Away,
    last_seen: u64,
    said: usize,
    retries: &AtomicU64,
) -> Result<(Duration, Session)> {
    let start = Instant::now();
    let mut session = open_retrying(addr, server, cookie, client.index, retries).await?;
    session
        .send(ClientMessage::Resume {
            ticket: client.ticket,
            epoch: client.epoch,
            last_seq: last_seen,
        })
        .await?;
    let missed = match next_reply(&mut session).await? {
        Reply::Resumed { missed, lost, .. } => {
            if lost > 0 {
                bail!("r{}: {lost} events lost", client.index);
            }
            missed as usize
        }
        other => bail!("r{}: resume refused: {other:?}", client.index),
    };
    if missed != said {
        bail!("r{}: told {missed} missed, {said} were said", client.index);
    }
    let mut last_seq = last_seen;
    let mut next = 0;
    while next < said {
        match session.next().await {
            Some(Ok(ServerMessage::Event(event))) => {
                if event.seq <= last_seq {
                    bail!(
                        "r{}: event {} again or out of order",
                        client.index,
                        event.seq
                    );
                }
                last_seq = event.seq;
                if let EventKind::Message { text, .. } = event.kind {
                    if text != format!("while away {next}") {
                        bail!("r{}: expected message {next}, got {text:?}", client.index);
                    }
                    next += 1;
                }
            }
            Some(Ok(ServerMessage::Ping)) => session.send(ClientMessage::Pong).await?,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("r{}: closed during the replay", client.index),
        }
    }
    Ok((start.elapsed(), session))
}
