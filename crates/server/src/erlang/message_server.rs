//! The `message_server` emulation: what one BEAM node sends to our registered processes,
//! turned into [`registry::Command`]s.
//!
//! Each nick the node joins gets a [`BeamMember`] with its own `ConnId` (from the counter
//! the listener uses), so the registry treats it like any member. Requests are accepted
//! only for nicks this node owns; texts follow the same rules as native ones; every
//! request counts against the node's flood limit. `net_kernel`'s `is_auth` call is
//! answered too, so `Node.ping/1` from a BEAM with the right cookie gets `:pong`.

use std::sync::Arc;
use std::time::Instant;

use protocol::erlang::dist::{Control, DistMessage};
use protocol::erlang::exmessenger::{self, Incoming, Request, SERVER_NICK, SERVER_PROCESS};
use protocol::erlang::term::{Pid, Term};
use protocol::{LeaveReason, limits};

use crate::connection::Shared;
use crate::erlang::link::Link;
use crate::erlang::member::{BeamMember, Pending};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::registry::Command;

/// Most nicks one BEAM node may hold at once (the original allows one per client node;
/// a load generator may want many).
pub const MAX_NICKS_PER_NODE: usize = 128;

/// Why a node's connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop(pub LeaveReason);

/// One node's processes as we emulate them.
pub struct MessageServer<'a> {
    link: Arc<Link>,
    shared: &'a Shared,
    members: Vec<Arc<BeamMember>>,
    bucket: TokenBucket,
}

impl<'a> MessageServer<'a> {
    /// The processes for the node behind `link`.
    pub fn new(link: Arc<Link>, shared: &'a Shared) -> Self {
        let config = &shared.config;
        Self {
            link,
            shared,
            members: Vec::new(),
            bucket: TokenBucket::new(config.rate_per_sec, config.burst),
        }
    }

    /// Handles one distribution message.
    pub async fn on_message(&mut self, message: DistMessage) -> Result<(), Stop> {
        let DistMessage { control, message } = message;
        let (to, message) = match (control, message) {
            (Control::RegSend { to, .. }, Some(message)) => (to, message),
            (control, _) => {
                // Links, monitors, messages to pids we never gave out: nothing to do.
                tracing::debug!(node = %self.link.node(), ?control, "ignoring a control message");
                return Ok(());
            }
        };
        match to.as_str() {
            SERVER_PROCESS => {}
            "net_kernel" => return self.net_kernel(&message),
            _ => {
                // An atom's Display escapes it: it came from the network.
                tracing::debug!(node = %self.link.node(), to = %to, "message to an unknown process");
                return Ok(());
            }
        }
        let incoming = exmessenger::classify(&message);
        let call = match &incoming {
            Incoming::Call { from, tag, .. } => from.as_pid().map(|pid| (pid.clone(), tag.clone())),
            _ => None,
        };
        if !self.within_flood_limit(call.as_ref())? {
            return Ok(());
        }
        match incoming {
            Incoming::Call { request, .. } => {
                let Some((from, tag)) = call else {
                    tracing::debug!(node = %self.link.node(), "a call without a caller pid");
                    return Ok(());
                };
                match request {
                    Some(Request::Connect(nick)) => self.connect(from, tag, nick).await,
                    Some(Request::Disconnect(nick)) => self.disconnect(from, tag, nick).await,
                    Some(other) => {
                        // The original only casts these; a call gets its answer at once.
                        self.cast(other).await?;
                        self.answer(&from, tag, Term::atom("ok"));
                        Ok(())
                    }
                    None => {
                        tracing::debug!(node = %self.link.node(), "unknown call");
                        self.answer(&from, tag, Term::atom("unknown_request"));
                        Ok(())
                    }
                }
            }
            Incoming::Cast(Some(request)) => self.cast(request).await,
            Incoming::Cast(None) | Incoming::Other => {
                tracing::debug!(node = %self.link.node(), "ignoring an unknown message");
                Ok(())
            }
        }
    }

    /// `Node.ping/1` asks `net_kernel` `{is_auth, Node}`; the handshake already proved
    /// the cookie, so the answer is `yes`.
    fn net_kernel(&mut self, message: &Term) -> Result<(), Stop> {
        if let Incoming::Call { from, tag, .. } = exmessenger::classify(message)
            && let Some(pid) = from.as_pid()
        {
            let pid = pid.clone();
            if self.within_flood_limit(Some(&(pid.clone(), tag.clone())))? {
                self.answer(&pid, tag, Term::atom("yes"));
            }
        }
        Ok(())
    }

    /// Applies the token bucket. A refused call is answered `slow_down` (so the caller
    /// does not hang); the first refusal of a run is told as a line from `server`.
    fn within_flood_limit(&mut self, call: Option<&(Pid, Term)>) -> Result<bool, Stop> {
        match self.bucket.check(Instant::now()) {
            Verdict::Allow => Ok(true),
            Verdict::Refuse { first } => {
                if let Some((from, tag)) = call {
                    self.answer(from, tag.clone(), Term::atom("slow_down"));
                }
                if first {
                    let _ = self
                        .link
                        .tell(SERVER_NICK, "slow down, message dropped (flood limit)");
                }
                Ok(false)
            }
            Verdict::Disconnect => {
                tracing::debug!(node = %self.link.node(), "excess flood; dropping");
                self.link.close(LeaveReason::Flooding);
                Err(Stop(LeaveReason::Flooding))
            }
        }
    }

    fn answer(&self, to: &Pid, tag: Term, reply: Term) {
        // A full queue shows at the registry's next delivery, which drops the node.
        let _ = self.link.answer(to, tag, reply);
    }

    async fn send(&self, command: Command) -> Result<(), Stop> {
        if self.shared.registry.send(command).await {
            Ok(())
        } else {
            Err(Stop(LeaveReason::ServerShutdown))
        }
    }

    /// The member holding (or joining as) `nick`.
    fn member_as(&self, nick: &str) -> Option<Arc<BeamMember>> {
        self.members
            .iter()
            .find(|m| m.state().speaks_as(nick))
            .cloned()
    }

    /// A member free for a join: an idle one, else a new one attached to the registry.
    async fn spare(&mut self) -> Result<Option<Arc<BeamMember>>, Stop> {
        if let Some(idle) = self.members.iter().find(|m| m.state().is_idle()) {
            return Ok(Some(idle.clone()));
        }
        if self.members.len() >= MAX_NICKS_PER_NODE {
            return Ok(None);
        }
        let id = self.shared.next_conn_id();
        let member = Arc::new(BeamMember::new(id, self.link.clone()));
        self.send(Command::Attach {
            id,
            peer: member.clone(),
        })
        .await?;
        self.members.push(member.clone());
        Ok(Some(member))
    }

    async fn connect(&mut self, from: Pid, tag: Term, nick: String) -> Result<(), Stop> {
        if self.member_as(&nick).is_some() {
            self.answer(&from, tag, Term::atom("nick_in_use"));
            return Ok(());
        }
        let Some(member) = self.spare().await? else {
            self.answer(&from, tag, Term::atom("too_many_nicks"));
            return Ok(());
        };
        {
            let mut state = member.state();
            state.joining = Some(nick.clone());
            state.pending.push_back(Pending::Connect {
                from,
                tag,
                nick: nick.clone(),
            });
        }
        self.send(Command::Join {
            id: member.id(),
            nick,
            backlog: 0,
        })
        .await
    }

    async fn disconnect(&mut self, from: Pid, tag: Term, nick: String) -> Result<(), Stop> {
        if let Some(member) = self.member_as(&nick) {
            member
                .state()
                .pending
                .push_back(Pending::Disconnect { from, tag });
            return self.send(Command::Leave { id: member.id() }).await;
        }
        // Not ours: someone else's (not_allowed) or nobody's (user_not_found). The user
        // list, asked through any member of this node, tells which.
        let member = match self.members.first().cloned() {
            Some(member) => member,
            None => match self.spare().await? {
                Some(member) => member,
                None => return Ok(()),
            },
        };
        member
            .state()
            .pending
            .push_back(Pending::DisconnectOther { from, tag, nick });
        self.send(Command::ListUsers { id: member.id() }).await
    }

    /// A cast: accepted only for a nick this node holds.
    async fn cast(&mut self, request: Request) -> Result<(), Stop> {
        let speaker = match &request {
            Request::Say { nick, .. } | Request::ListUsers(nick) => nick,
            Request::PrivateMessage { from, .. } => from,
            Request::Connect(_) | Request::Disconnect(_) => {
                tracing::debug!(node = %self.link.node(), "connect or disconnect as a cast; ignored");
                return Ok(());
            }
        };
        let Some(member) = self.member_as(speaker) else {
            tracing::debug!(node = %self.link.node(), "a request for a nick this node does not hold; ignored");
            return Ok(());
        };
        let id = member.id();
        let command = match request {
            Request::Say { text, .. } => {
                if !self.text_allowed(&text) {
                    return Ok(());
                }
                Command::Say {
                    id,
                    msg_id: 0,
                    text,
                }
            }
            Request::PrivateMessage { to, text, .. } => {
                if !self.text_allowed(&text) {
                    return Ok(());
                }
                Command::Private {
                    id,
                    msg_id: 0,
                    to,
                    text,
                }
            }
            Request::ListUsers(_) => {
                member.state().pending.push_back(Pending::ListUsers);
                Command::ListUsers { id }
            }
            Request::Connect(_) | Request::Disconnect(_) => return Ok(()),
        };
        self.send(command).await
    }

    /// True when `text` may be sent; otherwise the node is told why not.
    fn text_allowed(&self, text: &str) -> bool {
        match limits::validate_text(text, self.shared.config.max_text_len) {
            Ok(()) => true,
            Err(e) => {
                let _ = self
                    .link
                    .tell(SERVER_NICK, &format!("message not sent ({e})"));
                false
            }
        }
    }

    /// The connection ended: every nick of the node leaves at once, for `reason`.
    pub async fn detach_all(&mut self, reason: LeaveReason) {
        for member in self.members.drain(..) {
            let id = member.id();
            if !self
                .shared
                .registry
                .send(Command::Detach { id, reason })
                .await
            {
                return;
            }
        }
    }
}
