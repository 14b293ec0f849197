//! Tools for the chaos suite (`tests/tests/chaos.rs`): an async raw protocol client that
//! many tasks can run at once in one runtime, the scale knob, the server's memory from
//! `/proc`, the open-files limit, and a small deterministic random generator.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use protocol::handshake::ClientStep;
use protocol::{
    ClientHandshake, ClientMessage, Cookie, HandshakeError, HandshakeMessage, NodeName, PREAMBLE,
    Reply, ServerMessage, codec,
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
/// writes go through separate halves; every wait is bounded by the caller.
pub struct AsyncRaw {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    framing: LengthDelimitedCodec,
    /// Bytes written so far.
    pub bytes_sent: u64,
}

impl AsyncRaw {
    /// Opens a TCP connection to 127.0.0.1:`port`, nothing more.
    pub async fn connect(port: u16) -> io::Result<AsyncRaw> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        Ok(AsyncRaw {
            rd,
            wr,
            buf: BytesMut::with_capacity(4096),
            framing: codec::framing(),
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

    /// Sends one session message.
    pub async fn send(&mut self, msg: &ClientMessage) -> io::Result<()> {
        let frame = codec::encode_frame(msg).map_err(io::Error::other)?;
        self.write_bytes(&frame).await
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
        self.write_handshake(&hello).await?;
        loop {
            let msg = match self.read::<HandshakeMessage>(WAIT).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err("connection closed during the handshake".into()),
                Err(e) => return Err(e),
            };
            match machine.on_message(msg) {
                Ok(ClientStep::Send(reply)) => self.write_handshake(&reply).await?,
                Ok(ClientStep::Done { .. }) => return Ok(()),
                Err(HandshakeError::Refused(reason)) => return Err(format!("refused: {reason}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn write_handshake(&mut self, msg: &HandshakeMessage) -> Result<(), String> {
        let frame = codec::encode_frame(msg).map_err(|e| e.to_string())?;
        self.write_bytes(&frame).await.map_err(|e| e.to_string())
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.framing.decode(&mut self.buf) {
                Ok(Some(payload)) => {
                    return codec::decode::<T>(&payload)
                        .map(Some)
                        .map_err(|e| format!("undecodable frame from the server: {e}"));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad framing from the server: {e}")),
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.buf)).await {
                Err(_) => return Err(format!("nothing from the server within {timeout:?}")),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
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
