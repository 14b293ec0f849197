//! One BEAM node's distribution connection as the rest of the server sees it: its send
//! queue, its stop token, and why it is closing. Every nick the node joins is a
//! [`crate::erlang::member::BeamMember`] holding the same `Link`, so the node's lines all
//! go through one queue and one socket, and closing the link ends every nick at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use protocol::erlang::dist;
use protocol::erlang::exmessenger::{self, HANDLER_PROCESS};
use protocol::erlang::term::{Pid, Term};
use protocol::{LeaveReason, NodeName};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Action, Item};
use crate::peer::DeliveryError;
use crate::writer::Pipe;

/// A distribution connection's shared state.
#[derive(Debug)]
pub struct Link {
    node: NodeName,
    addr: SocketAddr,
    pipe: Arc<Pipe>,
    stop: CancellationToken,
    /// Our `message_server`'s pid: the sender of everything we send.
    server_pid: Pid,
    /// Something was queued since the liveness ticker last looked.
    wrote: AtomicBool,
    /// Why the link is closing, once something decided it should.
    closing: Mutex<Option<LeaveReason>>,
}

impl Link {
    /// The link to `node` at `addr`, writing through `pipe`'s queue.
    pub fn new(
        node: NodeName,
        addr: SocketAddr,
        pipe: Arc<Pipe>,
        stop: CancellationToken,
        server_pid: Pid,
    ) -> Self {
        Self {
            node,
            addr,
            pipe,
            stop,
            server_pid,
            wrote: AtomicBool::new(false),
            closing: Mutex::new(None),
        }
    }

    /// The peer node's name.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The peer's address, for logs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Our `message_server`'s pid.
    pub fn server_pid(&self) -> &Pid {
        &self.server_pid
    }

    /// Queues a whole frame; never waits.
    pub fn push(&self, frame: Bytes) -> Result<(), DeliveryError> {
        self.wrote.store(true, Ordering::Relaxed);
        // Stamps do not matter: this writer never reads the history.
        self.pipe.outbox.push(Item {
            after: 0,
            action: Action::Frame(frame),
        })
    }

    /// Sends `{Tag, Reply}` to the caller `to`: the answer to a `gen_call`.
    pub fn answer(&self, to: &Pid, tag: Term, reply: Term) -> Result<(), DeliveryError> {
        self.push(dist::send(to, &exmessenger::call_reply(tag, reply)))
    }

    /// Casts `{message, nick, body}` to the node's `message_handler`.
    pub fn tell(&self, nick: &str, body: &str) -> Result<(), DeliveryError> {
        let message = exmessenger::handler_message(nick, body);
        self.push(dist::reg_send(&self.server_pid, HANDLER_PROCESS, &message))
    }

    /// Whether anything was queued since the last call (the liveness ticker's question).
    pub fn wrote_since_last_look(&self) -> bool {
        self.wrote.swap(false, Ordering::Relaxed)
    }

    /// Ends the link for `reason`; the first reason sticks. A slow consumer is cut off
    /// at once; anyone else is told why (as a line from `server`), and the link closes
    /// once that is written.
    pub fn close(&self, reason: LeaveReason) {
        {
            let mut closing = self
                .closing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if closing.is_some() {
                return;
            }
            *closing = Some(reason);
        }
        let told = reason != LeaveReason::SendQueueExceeded
            && self
                .tell(exmessenger::SERVER_NICK, &closing_line(reason))
                .is_ok();
        if told {
            self.pipe.outbox.finish();
        } else {
            self.stop.cancel();
        }
    }

    /// Why the link is closing, if it is.
    pub fn closing_reason(&self) -> Option<LeaveReason> {
        *self
            .closing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops both tasks now, dropping whatever is queued.
    pub fn abort(&self) {
        self.stop.cancel();
    }
}

/// The line a BEAM user gets when the server closes its connection.
fn closing_line(reason: LeaveReason) -> String {
    format!("disconnected: {}", reason.describe())
}
