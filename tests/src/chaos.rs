//! Tools for the chaos suite (`tests/tests/chaos.rs`): an async raw protocol client that
//! many tasks can run at once in one runtime, the scale knob, the server's memory from
//! `/proc`, the open-files limit, a small deterministic random generator, and the
//! runtime and report line the chaos, scale and cluster suites share.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use protocol::secure::ClientStep;
use protocol::{
    ClientHandshake, ClientMessage, Cookie, Established, HandshakeError, NodeName, PREAMBLE, Reply,
    ServerMessage, codec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::WAIT;

/// True when `CHAOS_SCALE=long`: the chaos tests run their long form.
pub fn long_form() -> bool {
    std::env::var("CHAOS_SCALE").is_ok_and(|v| v.eq_ignore_ascii_case("long"))
}

/// `short` normally, `long` when `CHAOS_SCALE=long`.
pub fn scaled<T>(short: T, long: T) -> T {
    if long_form() { long } else { short }
}

/// A two-worker tokio runtime: the chaos, scale and cluster suites drive hundreds of
/// async clients from one test thread, and two workers keep them moving on a small
/// machine without taking it over.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// KiB as MiB, for the numbers the suites print.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints one scenario's numbers on stderr as `<suite> <scenario> [short|long]: k=v, ...`,
/// so that a run with `--nocapture` leaves a record of what each scenario did.
pub fn report(suite: &str, scenario: &str, numbers: &[(&str, String)]) {
    let body: Vec<String> = numbers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!(
        "{suite} {scenario} [{}]: {}",
        scaled("short", "long"),
        body.join(", ")
    );
}

/// A process's memory from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_kib: u64,
    /// Resident anonymous memory (`RssAnon`): the heap and stacks, without the program's
    /// code pages.
    pub anon_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`; panics if the process is gone.
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
    }
}

/// Raises this process's soft open-files limit to the hard limit (child processes, the
/// server included, inherit it). Returns the new soft limit.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A small xorshift generator: deterministic per seed, good enough to pick actions.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// An async raw protocol connection (for many clients in one tokio runtime). Reads and
/// writes go through separate halves; every wait is bounded by the caller. After the
/// handshake, messages go through the secure channel; [`AsyncRaw::write_sealed`] seals
/// arbitrary bytes, [`AsyncRaw::write_bytes`] writes them on the socket as they are.
pub struct AsyncRaw {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    framing: LengthDelimitedCodec,
    channel: Option<Established>,
    plain: BytesMut,
    /// Why the last read failed, when it failed rather than reaching the end.
    read_error: Option<String>,
    /// Bytes written so far.
    pub bytes_sent: u64,
}

impl AsyncRaw {
    /// Opens a TCP connection to 127.0.0.1:`port`, nothing more.
    /// The kernel picks the local port knowing the destination, as for any client
    /// (binding first would pick it blindly, and thousands of connections a second can
    /// then land on a pair of ports still in TIME_WAIT).
    pub async fn connect(port: u16) -> io::Result<AsyncRaw> {
        let stream = tokio::time::timeout(
            WAIT,
            TcpStream::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Self::over(stream)
    }

    /// Opens a TCP connection from the loopback address `from` (any of 127.0.0.0/8) to
    /// 127.0.0.1:`port`: a client on another host, as far as the server can tell.
    pub async fn connect_from(from: std::net::Ipv4Addr, port: u16) -> io::Result<AsyncRaw> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((from, 0).into())?;
        let stream = tokio::time::timeout(WAIT, socket.connect(([127, 0, 0, 1], port).into()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Self::over(stream)
    }

    /// A client over an open connection.
    fn over(stream: TcpStream) -> io::Result<AsyncRaw> {
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        Ok(AsyncRaw {
            rd,
            wr,
            buf: BytesMut::with_capacity(4096),
            framing: codec::framing(),
            channel: None,
            plain: BytesMut::new(),
            read_error: None,
            bytes_sent: 0,
        })
    }

    /// Connects and completes the handshake as `own` towards `server`.
    pub async fn open(
        port: u16,
        own: &str,
        server: &str,
        cookie: &str,
    ) -> Result<AsyncRaw, String> {
        let mut raw = AsyncRaw::connect(port).await.map_err(|e| e.to_string())?;
        raw.handshake(own, server, cookie).await?;
        Ok(raw)
    }

    /// Opens a session and joins as `nick`; fails unless the reply is `Joined`.
    pub async fn open_joined(
        port: u16,
        server: &str,
        cookie: &str,
        nick: &str,
    ) -> Result<AsyncRaw, String> {
        let own = format!("{}@localhost", crate::raw::sanitize(nick));
        let mut raw = AsyncRaw::open(port, &own, server, cookie).await?;
        match raw.join(nick).await? {
            Reply::Joined { .. } => Ok(raw),
            other => Err(format!("{nick}: join refused: {other:?}")),
        }
    }

    /// Writes `data` as is.
    pub async fn write_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        tokio::time::timeout(WAIT, self.wr.write_all(data))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        self.bytes_sent += data.len() as u64;
        Ok(())
    }

    /// Closes the connection with a TCP reset (SO_LINGER 0), as a crashed host or a cut
    /// link would look to the server, rather than an orderly close.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let fd = self.rd.as_ref().as_raw_fd();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads `linger` (valid for its size) on a socket we own.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self);
    }

    /// Closes the write side (the server reads EOF) and keeps reading possible.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.wr.shutdown().await
    }

    /// Seals `data` as it is into the channel's records and writes them (garbage or
    /// oversized frames that pass the record layer). An error before the handshake.
    pub async fn write_sealed(&mut self, data: &[u8]) -> io::Result<()> {
        let channel = self
            .channel
            .as_mut()
            .ok_or_else(|| io::Error::other("no channel before the handshake"))?;
        let mut records = BytesMut::new();
        channel
            .sealer
            .seal_stream([data], &mut records)
            .map_err(io::Error::other)?;
        self.write_bytes(&records).await
    }

    /// Sends one session message (sealed once the handshake is done).
    pub async fn send(&mut self, msg: &ClientMessage) -> io::Result<()> {
        let frame = codec::encode_frame(msg).map_err(io::Error::other)?;
        if self.channel.is_some() {
            self.write_sealed(&frame).await
        } else {
            self.write_bytes(&frame).await
        }
    }

    /// Runs the client side of the handshake (preamble included).
    pub async fn handshake(&mut self, own: &str, server: &str, cookie: &str) -> Result<(), String> {
        let own = NodeName::parse_long(own).map_err(|e| e.to_string())?;
        let server = NodeName::parse_long(server).map_err(|e| e.to_string())?;
        let cookie = Cookie::new(cookie).ok_or("empty cookie")?;
        let (mut machine, hello) = ClientHandshake::new(own, server, cookie);
        self.write_bytes(&PREAMBLE)
            .await
            .map_err(|e| e.to_string())?;
        self.write_bytes(&hello).await.map_err(|e| e.to_string())?;
        loop {
            let payload = match self.read_payload(WAIT).await {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    return Err(match self.read_error.take() {
                        Some(e) => format!("connection failed during the handshake: {e}"),
                        None => "connection closed during the handshake".into(),
                    });
                }
                Err(e) => return Err(e),
            };
            match machine.on_frame(&payload) {
                Ok(ClientStep::Send(reply)) => {
                    self.write_bytes(&reply).await.map_err(|e| e.to_string())?;
                }
                Ok(ClientStep::Done { channel, .. }) => {
                    self.channel = Some(*channel);
                    return Ok(());
                }
                Err(HandshakeError::Refused(reason)) => return Err(format!("refused: {reason}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Sends `Join` and waits for the reply (skipping events).
    pub async fn join(&mut self, nick: &str) -> Result<Reply, String> {
        self.send(&ClientMessage::Join {
            nick: nick.to_string(),
            backlog: 0,
        })
        .await
        .map_err(|e| e.to_string())?;
        self.expect_reply().await
    }

    /// Waits for the next reply, skipping everything else.
    pub async fn expect_reply(&mut self) -> Result<Reply, String> {
        loop {
            match self.recv(WAIT).await? {
                Some(ServerMessage::Reply(reply)) => return Ok(reply),
                Some(_) => {}
                None => return Err("closed while waiting for a reply".into()),
            }
        }
    }

    /// The next session message (pings are answered and skipped); `Ok(None)` when the
    /// server closed the connection; an error on timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<ServerMessage>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read::<ServerMessage>(left).await? {
                Some(ServerMessage::Ping) => {
                    if self.send(&ClientMessage::Pong).await.is_err() {
                        return Ok(None);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Reads one frame decoded as `T`; `Ok(None)` on EOF or reset; an error on timeout
    /// or an undecodable frame.
    pub async fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<T>, String> {
        match self.read_payload(timeout).await? {
            Some(payload) => codec::decode::<T>(&payload)
                .map(Some)
                .map_err(|e| format!("undecodable frame from the server: {e}")),
            None => Ok(None),
        }
    }

    /// Reads one frame's payload (opened from the channel once there is one); `Ok(None)`
    /// on EOF or reset; an error on timeout, bad framing or a record that fails to open.
    pub async fn read_payload(&mut self, timeout: Duration) -> Result<Option<BytesMut>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(channel) = self.channel.as_mut() {
                loop {
                    match self.framing.decode(&mut self.plain) {
                        Ok(Some(payload)) => return Ok(Some(payload)),
                        Ok(None) => {}
                        Err(e) => return Err(format!("bad framing from the server: {e}")),
                    }
                    match channel.opener.open_into(&mut self.buf, &mut self.plain) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => return Err(format!("bad record from the server: {e}")),
                    }
                }
            } else {
                match codec::handshake_framing().decode(&mut self.buf) {
                    Ok(Some(payload)) => return Ok(Some(payload)),
                    Ok(None) => {}
                    Err(e) => return Err(format!("bad framing from the server: {e}")),
                }
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.buf)).await {
                Err(_) => return Err(format!("nothing from the server within {timeout:?}")),
                Ok(Ok(0)) => return Ok(None),
                Ok(Err(e)) => {
                    self.read_error = Some(e.to_string());
                    return Ok(None);
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads and discards until EOF; an error if still open after `timeout`.
    pub async fn until_closed(&mut self, timeout: Duration) -> Result<(), String> {
        let mut scratch = vec![0u8; 16 * 1024];
        tokio::time::timeout(timeout, async {
            loop {
                match self.rd.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| format!("the server did not close the connection within {timeout:?}"))
    }
}
