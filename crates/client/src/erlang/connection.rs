//! chat-client as a hidden Erlang node: the distribution handshake over TCP, then a task
//! that speaks the original ExMessenger's terms and hands the session the same
//! [`ServerMessage`]s chat-server would send.
//!
//! The task owns the socket. It turns each [`ClientMessage`] into a call or cast to
//! `{message_server, Server}` ([`Adapter`]), matches call replies (`{Tag, Reply}` sent
//! to our pid) with the calls that wait for them, and turns every cast to our
//! `message_handler` into an event. Liveness is Erlang's: a tick after [`TICK`] of
//! outbound silence; every tick the node sends reaches the session as a ping, so the
//! message handler's silence limit applies unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{Sink, Stream};
use protocol::erlang::dist::{self, Control};
use protocol::erlang::exmessenger::{self, HANDLER_PROCESS, SERVER_PROCESS};
use protocol::erlang::handshake::{self, HandshakeError, InitStep, Initiator};
use protocol::erlang::term::{Atom, Pid, Reference, Term};
use protocol::{ClientMessage, CodecError, Cookie, NodeName, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tracing::debug;

use crate::connect::ConnectError;
use crate::erlang::adapter::{Adapter, CallKind, Outgoing, PendingCalls};

/// Erlang's tick period (a quarter of the default `net_ticktime` of 60 s): we tick after
/// this long without sending, and the session gives up on a node silent for four.
pub const TICK: Duration = Duration::from_secs(15);

/// Messages buffered between the task and the session, each way.
const QUEUE: usize = 64;

/// Bytes reserved for each read.
const READ_CHUNK: usize = 8192;

/// How long a join may go unanswered before the connection counts as lost. An Erlang
/// node drops messages to a name nobody registered: a server node that is up but whose
/// `message_server` is not (yet) never answers, and reconnecting is the way out.
pub const JOIN_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Runs the handshake on `tcp` as `own` towards `server`; returns the bytes read past it.
/// An Erlang node closes the connection without a word when our cookie digest is wrong,
/// so a close right after our reply reads as `not allowed`.
pub async fn handshake(
    tcp: &mut TcpStream,
    own: &NodeName,
    server: &NodeName,
    cookie: Cookie,
    creation: u32,
) -> Result<BytesMut, ConnectError> {
    let (mut machine, hello) = Initiator::new(own, server, cookie, creation);
    tcp.write_all(&hello).await?;
    let mut buf = BytesMut::new();
    let mut replied = false;
    loop {
        while let Some(body) = handshake::split_message(&mut buf).map_err(ConnectError::Erlang)? {
            match machine.on_message(&body) {
                Ok(InitStep::Wait) => {}
                Ok(InitStep::Send(reply)) => {
                    tcp.write_all(&reply).await?;
                    replied = true;
                }
                Ok(InitStep::Done { .. }) => return Ok(buf),
                Err(HandshakeError::Refused(status)) if status == "not_allowed" => {
                    return Err(ConnectError::NotAllowed);
                }
                Err(HandshakeError::BadPeerDigest) => return Err(ConnectError::NotAllowed),
                Err(other) => return Err(ConnectError::Erlang(other)),
            }
        }
        buf.reserve(256);
        let closed = match tcp.read_buf(&mut buf).await {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => return Err(e.into()),
        };
        if closed {
            return Err(if replied {
                ConnectError::NotAllowed
            } else {
                ConnectError::ClosedInHandshake
            });
        }
    }
}

/// The session's side of a connection to an Erlang node.
pub struct BeamTransport {
    incoming: mpsc::Receiver<Result<ServerMessage, CodecError>>,
    outgoing: PollSender<ClientMessage>,
}

/// Starts the task on an authenticated connection; `leftover` is what the handshake
/// read past its end.
pub fn start(tcp: TcpStream, leftover: BytesMut, own: &NodeName, creation: u32) -> BeamTransport {
    let (incoming_tx, incoming) = mpsc::channel(QUEUE);
    let (outgoing_tx, outgoing_rx) = mpsc::channel(QUEUE);
    let node = Atom::lossy(&own.to_string());
    let pid = Pid {
        node: node.clone(),
        id: 1,
        serial: 0,
        creation,
    };
    let task = Task {
        pid,
        node,
        creation,
        next_ref: 0,
        adapter: Adapter::default(),
        pending: PendingCalls::default(),
        incoming: incoming_tx,
    };
    tokio::spawn(task.run(tcp, leftover, outgoing_rx));
    BeamTransport {
        incoming,
        outgoing: PollSender::new(outgoing_tx),
    }
}

fn closed<T>(_: T) -> CodecError {
    CodecError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the connection to the Erlang node is closed",
    ))
}

impl Stream for BeamTransport {
    type Item = Result<ServerMessage, CodecError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().incoming.poll_recv(cx)
    }
}

impl Sink<ClientMessage> for BeamTransport {
    type Error = CodecError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().outgoing)
            .poll_ready(cx)
            .map_err(closed)
    }

    fn start_send(self: Pin<&mut Self>, item: ClientMessage) -> Result<(), CodecError> {
        Pin::new(&mut self.get_mut().outgoing)
            .start_send(item)
            .map_err(closed)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().outgoing)
            .poll_flush(cx)
            .map_err(closed)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().outgoing)
            .poll_close(cx)
            .map_err(closed)
    }
}

/// The task's state.
struct Task {
    pid: Pid,
    node: Atom,
    creation: u32,
    next_ref: u32,
    adapter: Adapter,
    pending: PendingCalls,
    incoming: mpsc::Sender<Result<ServerMessage, CodecError>>,
}

/// What the task does after handling something.
enum Next {
    Continue,
    Stop,
}

impl Task {
    async fn run(
        mut self,
        tcp: TcpStream,
        mut buf: BytesMut,
        mut outgoing: mpsc::Receiver<ClientMessage>,
    ) {
        let (mut read, mut write) = tcp.into_split();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wrote = false;
        // When the oldest unanswered join was sent.
        let mut join_deadline: Option<tokio::time::Instant> = None;
        loop {
            if !self.pending.has_connect() {
                join_deadline = None;
            }
            // Frames already buffered first (the handshake may have read some).
            match self.drain_frames(&mut buf).await {
                Next::Continue => {}
                Next::Stop => return,
            }
            tokio::select! {
                message = outgoing.recv() => {
                    let Some(message) = message else {
                        // The session let go: close the connection.
                        let _ = write.shutdown().await;
                        return;
                    };
                    let frame = match self.adapter.outgoing(message) {
                        Outgoing::Call(kind, request) => {
                            if matches!(kind, CallKind::Connect(_)) && join_deadline.is_none() {
                                join_deadline =
                                    Some(tokio::time::Instant::now() + JOIN_ANSWER_LIMIT);
                            }
                            let tag = self.new_ref();
                            self.pending.push(tag.clone(), kind);
                            let from = Term::Pid(Box::new(self.pid.clone()));
                            let call = exmessenger::gen_call(from, tag, request.to_term());
                            dist::reg_send(&self.pid, SERVER_PROCESS, &call)
                        }
                        Outgoing::Cast(request, ack) => {
                            let cast = exmessenger::gen_cast(request.to_term());
                            let frame = dist::reg_send(&self.pid, SERVER_PROCESS, &cast);
                            if let Some(ack) = ack {
                                if let Err(e) = write.write_all(&frame).await {
                                    let _ = self.incoming.send(Err(e.into())).await;
                                    return;
                                }
                                if self.incoming.send(Ok(ack)).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            frame
                        }
                        Outgoing::Answer(answer) => {
                            if self.incoming.send(Ok(answer)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Outgoing::Nothing => continue,
                    };
                    if let Err(e) = write.write_all(&frame).await {
                        let _ = self.incoming.send(Err(e.into())).await;
                        return;
                    }
                    wrote = true;
                }
                () = sleep_until(join_deadline) => {
                    let why = io::Error::new(
                        io::ErrorKind::TimedOut,
                        "message_server did not answer the join",
                    );
                    let _ = self.incoming.send(Err(why.into())).await;
                    return;
                }
                _ = ticks.tick() => {
                    if !wrote && write.write_all(&dist::TICK).await.is_err() {
                        return;
                    }
                    wrote = false;
                }
                read_result = read.read_buf(reserve(&mut buf)) => match read_result {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = self.incoming.send(Err(e.into())).await;
                        return;
                    }
                },
            }
        }
    }

    /// Handles every whole frame in `buf`.
    async fn drain_frames(&mut self, buf: &mut BytesMut) -> Next {
        loop {
            let payload = match dist::split_frame(buf) {
                Ok(Some(payload)) => payload,
                Ok(None) => return Next::Continue,
                Err(e) => return self.fail(e.to_string()).await,
            };
            let message = if payload.is_empty() {
                // A tick: proof of life for the session's silence limit.
                Some(ServerMessage::Ping)
            } else {
                match dist::parse_message(&payload) {
                    Ok(message) => self.on_message(message.control, message.message),
                    Err(e) => return self.fail(e.to_string()).await,
                }
            };
            if let Some(message) = message
                && self.incoming.send(Ok(message)).await.is_err()
            {
                return Next::Stop;
            }
        }
    }

    async fn fail(&mut self, why: String) -> Next {
        let _ = self.incoming.send(Err(CodecError::Decode(why))).await;
        Next::Stop
    }

    /// The session message for one distribution message, if any.
    fn on_message(&mut self, control: Control, message: Option<Term>) -> Option<ServerMessage> {
        let message = message?;
        match control {
            Control::Send { to } if to == self.pid => {
                let [tag, reply] = message.as_tuple()? else {
                    return None;
                };
                let kind = self.pending.take(tag)?;
                Some(ServerMessage::Reply(
                    self.adapter.call_answered(kind, reply),
                ))
            }
            Control::RegSend { to, .. } if to.as_str() == HANDLER_PROCESS => {
                match exmessenger::parse_handler_message(&message) {
                    Some((nick, body)) => Some(self.adapter.handler_message(&nick, &body)),
                    None => {
                        debug!("an unexpected message for message_handler");
                        None
                    }
                }
            }
            other => {
                debug!(control = ?other, "ignoring a distribution message");
                None
            }
        }
    }

    /// A fresh reference: the tag of a call.
    fn new_ref(&mut self) -> Term {
        self.next_ref = self.next_ref.wrapping_add(1);
        Term::Ref(Box::new(Reference {
            node: self.node.clone(),
            creation: self.creation,
            ids: vec![self.next_ref, rand::random(), rand::random()],
        }))
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `buf` with room for a read.
fn reserve(buf: &mut BytesMut) -> &mut BytesMut {
    buf.reserve(READ_CHUNK);
    buf
}
