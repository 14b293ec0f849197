//! Getting the connection back after losing it: the backoff policy and the reconnect
//! task.
//!
//! A reconnecting [`Session`](crate::session::Session) runs the reconnect task beside its
//! current link. When the link is lost, the task stops what is left of it, prints
//! `Connection to <server> lost: <why>; reconnecting...`, and tries again with
//! exponential backoff ([`ReconnectPolicy`]: 1 s doubling to 10 s, +-20% jitter). Every
//! attempt goes through [`connect::connect`], so the name is resolved through the port
//! mapper again and the handshake is redone. While it waits, it asks the port mapper
//! (once a second) whether the server's name is registered again after having been gone,
//! and then tries at once. A failed attempt's reason is printed once with the wait before
//! the next (`Could not reconnect to <server>: <why>; retrying in N s`); later failures
//! for the same reason print only a changed wait.
//!
//! With several nodes (`--server a,b,c`: one room on a cluster), an attempt tries each
//! node in turn, starting with the one after the node just lost, and the first that
//! answers takes over: lines from then on show its name.
//!
//! A link turned away (the room unavailable: a cluster node whose store is away refuses
//! every rejoin) right after a link that was turned away too prints neither line again:
//! the user was told once, and the room's answer, when it comes, says the rest.
//!
//! Once connected it prints `* Reconnected to <server> *` and, if the user was in the
//! room, queues a resume of the session (or a join with the same nick when there is no
//! session to resume); if not (a rejoin refused earlier, `/leave`), it says so
//! (`You are not in the chatroom; use /join`). Then it hands the new link to the front
//! end. These lines are status lines: timestamped with `--timestamps`. The answer (back in the
//! room with what was missed, a fresh join, or a refusal) is handled and printed by the
//! new link's message handler.
//!
//! The task runs until the session quits or is dropped, which abort it, or until
//! reconnecting cannot work: a reason that will not go away by itself (the cookie, a
//! different node answering), or a server that disconnected us for flooding. Then it
//! ends the session with that reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::secure::RefuseReason;
use protocol::{Cookie, HandshakeError, LeaveReason, NodeName};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::connect::{self, ConnectError, Connection, ServerTarget};
use crate::link::{self, Context, Link, LinkWatch};
use crate::render;
use crate::shared::SessionError;

/// Longest a port-mapper look-up made while waiting may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// The wait before the first attempt; it doubles after every failed one.
    pub initial: Duration,
    /// The longest wait (before jitter). A connection that stayed up at least this long
    /// starts the next round of attempts from `initial` again.
    pub max: Duration,
    /// Each wait is multiplied by a random factor in `1 - jitter ..= 1 + jitter`, so
    /// that clients dropped together do not all come back at the same moment.
    pub jitter: f64,
    /// While waiting, how often to ask the port mapper whether the server is back
    /// (when the server is found through it); `Duration::ZERO` never asks.
    pub lookup_every: Duration,
}

impl Default for ReconnectPolicy {
    /// 1 s doubling to 10 s, with +-20% jitter; the port mapper asked every second.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter: 0.2,
            lookup_every: Duration::from_secs(1),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt number `attempt` (0 for the first), without jitter:
    /// `initial * 2^attempt`, at most `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before attempt number `attempt`, with jitter drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        self.jittered(self.base_delay(attempt), rng)
    }

    /// `base` multiplied by a random factor within the jitter.
    fn jittered(&self, base: Duration, rng: &mut impl Rng) -> Duration {
        let jitter = self.jitter.min(1.0);
        if jitter.is_nan() || jitter <= 0.0 {
            return base;
        }
        let factor = rng.random_range(1.0 - jitter..=1.0 + jitter);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// What the reconnect task needs to connect again.
#[derive(Debug, Clone)]
pub struct Redial {
    /// The server, resolved again on every attempt.
    pub target: ServerTarget,
    /// Other nodes serving the same room (a cluster): an attempt that cannot reach one
    /// node tries the next, starting after the one just lost, so a client whose node
    /// died fails over to another and resumes its session there.
    pub fallbacks: Vec<ServerTarget>,
    /// This client's node name, for the handshake.
    pub own: NodeName,
    /// The shared secret, for the handshake.
    pub cookie: Cookie,
    /// The waits between attempts.
    pub policy: ReconnectPolicy,
}

/// Whether a failed attempt's reason will not go away by retrying: the cookie is wrong,
/// or the node that answers is not the one asked for (or cannot talk to us).
pub fn is_lasting(error: &ConnectError) -> bool {
    match error {
        ConnectError::NotAllowed | ConnectError::WrongNode { .. } => true,
        ConnectError::Handshake(e) => matches!(
            e,
            HandshakeError::WrongServer { .. }
                | HandshakeError::Refused(
                    RefuseReason::WrongNode { .. }
                        | RefuseReason::UnsupportedVersion { .. }
                        | RefuseReason::BadName { .. }
                )
        ),
        // An Erlang node that refuses our cookie, or is not the node asked for.
        ConnectError::Erlang(e) => matches!(
            e,
            protocol::erlang::handshake::HandshakeError::NotAllowed
                | protocol::erlang::handshake::HandshakeError::BadPeerDigest
                | protocol::erlang::handshake::HandshakeError::WrongNode { .. }
        ),
        _ => false,
    }
}

/// The reconnect task: watches the current link and replaces it when it is lost,
/// handing every new link to the front end through `links`. Ends when the front end is
/// gone, or, announcing why on `ended`, when reconnecting cannot work.
pub(crate) async fn supervise(
    redial: Redial,
    context: Context,
    mut current: LinkWatch,
    links: mpsc::UnboundedSender<Link>,
    ended: watch::Sender<Option<SessionError>>,
) {
    let shared = &Arc::clone(&context.shared);
    let mut attempt = 0;
    let targets: Vec<ServerTarget> = std::iter::once(redial.target.clone())
        .chain(redial.fallbacks.iter().cloned())
        .collect();
    // The node the current link is to, and the context its lines are printed with.
    let mut at = 0;
    let mut context = context;
    // The previous link was turned away by a node that cannot serve the room just now.
    let mut turned_away = false;
    loop {
        let loss = current.lost().await;
        if current.uptime() >= redial.policy.max {
            attempt = 0;
        }
        current.stop().await;
        // A link turned away again by a node that cannot serve the room (a cluster node
        // whose store is away refuses every rejoin): the user was told once; the tries
        // go on quietly until the room answers.
        let repeating = loss.turned_away && turned_away;
        turned_away = loss.turned_away;
        // Out of the room until the server says otherwise; whether the user wants to be
        // in it is kept, so that lines typed meanwhile are queued and the room resumed.
        shared.joined.store(false, Ordering::SeqCst);
        shared.members.replace(&[]);
        shared.sends.touch();
        if loss.closing == Some(LeaveReason::Flooding) {
            // Coming back would only flood again.
            let _ = ended.send(Some(SessionError::Lost(loss.why)));
            return;
        }
        if !repeating {
            context.output.status(&render::connection_lost_reconnecting(
                &context.server,
                &loss.why,
            ));
        }

        let (connection, to) =
            match connect_with_backoff(&redial, &targets, at, &context, &mut attempt).await {
                Ok(connected) => connected,
                Err(lasting) => {
                    let _ = ended.send(Some(SessionError::Unreachable(lasting.to_string())));
                    return;
                }
            };
        if to != at {
            at = to;
            context.server = targets[at].name.to_string();
        }
        if !repeating {
            context.output.status(&render::reconnected(&context.server));
        }
        let (link, watch) = link::start(connection, &context);
        if !shared.wants_room.load(Ordering::SeqCst) {
            // Out of the room before the loss (a refused rejoin, /leave): "Reconnected"
            // alone would suggest otherwise.
            context.output.status(&render::not_joined());
        } else {
            let resume = shared.position().resume_message();
            let call = resume.unwrap_or_else(|| {
                shared.auto_join.store(true, Ordering::SeqCst);
                shared.join_message()
            });
            // Queued before the front end gets the link, so it goes first.
            if link.try_send(call).is_err() {
                debug!("the new connection closed before the rejoin was queued");
            }
        }
        if links.send(link).is_err() {
            debug!("the session is gone; no more reconnecting");
            return;
        }
        shared.sends.touch();
        current = watch;
    }
}

/// Tries to connect until it works, waiting longer after every failure; gives up on a
/// lasting reason ([`is_lasting`]) from every node. Each attempt tries the nodes of
/// `targets` in turn, starting after `lost` (the node of the lost link; itself only when
/// it is the only one). Returns the connection and the index of its node. `attempt`
/// counts the attempts of this round.
async fn connect_with_backoff(
    redial: &Redial,
    targets: &[ServerTarget],
    lost: usize,
    context: &Context,
    attempt: &mut u32,
) -> Result<(Connection, usize), ConnectError> {
    let mut watcher = Watcher::new(redial);
    let mut told: Option<(String, u64)> = None;
    let mut delay = redial.policy.delay(*attempt, &mut rand::rng());
    loop {
        debug!(attempt = *attempt, ?delay, "waiting before reconnecting");
        watcher.wait(Instant::now() + delay).await;
        *attempt = attempt.saturating_add(1);
        let mut last = None;
        let mut lasting = 0;
        for step in 1..=targets.len() {
            let index = (lost + step) % targets.len();
            let target = &targets[index];
            match connect::connect(target, &redial.own, redial.cookie.clone()).await {
                Ok(connection) => {
                    debug!(attempt = *attempt, server = %target, "reconnected");
                    return Ok((connection, index));
                }
                Err(e) => {
                    debug!(server = %target, error = %e, "this node cannot be reached");
                    lasting += usize::from(is_lasting(&e));
                    last = Some(e);
                }
            }
        }
        // (There is always at least one node: the one first given.)
        let Some(error) = last else {
            continue;
        };
        if lasting == targets.len() {
            return Err(error);
        }
        debug!(attempt = *attempt, %error, "reconnecting failed");
        watcher.failed(&error);
        delay = redial.policy.delay(*attempt, &mut rand::rng());
        let why = error.to_string();
        let seconds = delay.as_secs_f64().round() as u64;
        // One node: as given, with the port when --server had one; several: the room's.
        let tried = match targets {
            [only] => only.to_string(),
            _ => context.server.clone(),
        };
        let line = match &told {
            Some((told_why, _)) if *told_why == why => (told.as_ref().map(|t| t.1)
                != Some(seconds))
            .then(|| render::retrying(&tried, delay)),
            _ => Some(render::reconnect_failed(&tried, &why, delay)),
        };
        if let Some(line) = line {
            context.output.status(&line);
            told = Some((why, seconds));
        }
    }
}

/// Watches the port mapper while waiting to reconnect, to try at once when the
/// server's name shows up again after it was gone.
struct Watcher<'a> {
    redial: &'a Redial,
    /// The mapper said the name was not registered (or did not answer) since the last
    /// attempt.
    gone: bool,
}

impl<'a> Watcher<'a> {
    fn new(redial: &'a Redial) -> Self {
        Self {
            redial,
            gone: false,
        }
    }

    /// Notes what a failed attempt says about the name's registration.
    fn failed(&mut self, error: &ConnectError) {
        if matches!(
            error,
            ConnectError::NoSuchNode { .. } | ConnectError::NoPortMapper { .. }
        ) {
            self.gone = true;
        }
    }

    /// Waits until `deadline`, or less when the name, once gone, is registered again.
    /// One look-up at a time, at most one per `lookup_every` (jittered).
    async fn wait(&mut self, deadline: Instant) {
        let policy = &self.redial.policy;
        if self.redial.target.port.is_some() || policy.lookup_every.is_zero() {
            sleep_until(deadline).await;
            return;
        }
        loop {
            let next = Instant::now() + policy.jittered(policy.lookup_every, &mut rand::rng());
            if next >= deadline {
                sleep_until(deadline).await;
                return;
            }
            sleep_until(next).await;
            let name = &self.redial.target.name;
            let found = timeout(
                LOOKUP_TIMEOUT,
                connect::lookup_node(name, portmap::mapper_port_from_env()),
            )
            .await;
            match found {
                Ok(Ok(_)) if self.gone => {
                    debug!("the server's name is registered again; reconnecting now");
                    self.gone = false;
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => self.gone = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_maximum() {
        let policy = ReconnectPolicy::default();
        let delays: Vec<u64> = (0..7).map(|n| policy.base_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(policy.base_delay(u32::MAX), 10 * SEC);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = ReconnectPolicy::default();
        let mut rng = rand::rng();
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..1000 {
            let d = policy.delay(0, &mut rng);
            assert!(d >= SEC.mul_f64(0.8) && d <= SEC.mul_f64(1.2), "{d:?}");
            seen_low |= d < SEC.mul_f64(0.95);
            seen_high |= d > SEC.mul_f64(1.05);
            let d = policy.delay(10, &mut rng);
            assert!(d >= 8 * SEC && d <= 12 * SEC, "{d:?}");
        }
        assert!(seen_low && seen_high, "the jitter is not spread");
    }

    #[test]
    fn odd_jitter_values_do_not_panic() {
        let mut rng = rand::rng();
        for jitter in [0.0, -1.0, f64::NAN, 5.0] {
            let policy = ReconnectPolicy {
                jitter,
                ..ReconnectPolicy::default()
            };
            assert!(policy.delay(3, &mut rng) <= 16 * SEC);
        }
        let policy = ReconnectPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter: 0.2,
            lookup_every: Duration::ZERO,
        };
        assert!(policy.delay(3, &mut rng) > SEC);
    }
}
