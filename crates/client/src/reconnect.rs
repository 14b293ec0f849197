//! Getting the connection back after losing it: the backoff policy and the reconnect
//! task.
//!
//! A reconnecting [`Session`](crate::session::Session) runs the reconnect task beside its
//! current link. When the link is lost, the task stops what is left of it, prints
//! `Connection to <server> lost: <why>; reconnecting...`, and tries again with
//! exponential backoff ([`ReconnectPolicy`]: 1 s doubling to 30 s, +-20% jitter). Every
//! attempt goes through [`connect::connect`], so the name is resolved through the port
//! mapper again and the handshake is redone. Once connected it prints
//! `* Reconnected to <server> *`, queues a join with the same nick if the user was in
//! the room, and hands the new link to the front end. The join's answer (the banner, or
//! the refusal) is printed by the new link's message handler like any other.
//!
//! The task runs until the session quits or is dropped, which abort it: it never gives
//! up on its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::{ClientMessage, Cookie, NodeName};
use rand::Rng;
use tokio::sync::mpsc;
use tracing::debug;

use crate::connect::{self, Connection, ServerTarget};
use crate::link::{self, Context, Link, LinkWatch};
use crate::render;
use crate::shared::Shared;

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
}

impl Default for ReconnectPolicy {
    /// 1 s doubling to 30 s, with +-20% jitter.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.2,
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
        let base = self.base_delay(attempt);
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
    /// This client's node name, for the handshake.
    pub own: NodeName,
    /// The shared secret, for the handshake.
    pub cookie: Cookie,
    /// The waits between attempts.
    pub policy: ReconnectPolicy,
}

/// The reconnect task: watches the current link and replaces it when it is lost,
/// handing every new link to the front end through `links`. Ends when the front end is
/// gone.
pub(crate) async fn supervise(
    redial: Redial,
    nick: String,
    context: Context,
    mut current: LinkWatch,
    links: mpsc::UnboundedSender<Link>,
) {
    let mut attempt = 0;
    loop {
        let why = current.lost().await;
        if current.uptime() >= redial.policy.max {
            attempt = 0;
        }
        current.stop().await;
        let rejoin = leave_room(&context.shared);
        context
            .output
            .line(&render::connection_lost_reconnecting(&context.server, &why));

        let connection = connect_with_backoff(&redial, &mut attempt).await;
        context.output.line(&render::reconnected(&context.server));
        let (link, watch) = link::start(connection, &context);
        if rejoin {
            // Queued before the front end gets the link, so the join goes first.
            if link
                .try_send(ClientMessage::Join {
                    nick: nick.clone(),
                    backlog: 0,
                })
                .is_ok()
            {
                context.shared.wants_room.store(true, Ordering::SeqCst);
            } else {
                debug!("the new connection closed before the rejoin was queued");
            }
        }
        if links.send(link).is_err() {
            debug!("the session is gone; no more reconnecting");
            return;
        }
        current = watch;
    }
}

/// Records that the connection, and with it the room, is gone; returns whether the user
/// was in the room (or on the way in), i.e. whether to rejoin.
fn leave_room(shared: &Arc<Shared>) -> bool {
    shared.joined.store(false, Ordering::SeqCst);
    shared.members.replace(&[]);
    shared.wants_room.swap(false, Ordering::SeqCst)
}

/// Tries to connect until it works, waiting longer after every failure. `attempt`
/// counts the attempts of this round.
async fn connect_with_backoff(redial: &Redial, attempt: &mut u32) -> Connection {
    loop {
        let delay = redial.policy.delay(*attempt, &mut rand::rng());
        debug!(attempt = *attempt, ?delay, "waiting before reconnecting");
        tokio::time::sleep(delay).await;
        *attempt = attempt.saturating_add(1);
        match connect::connect(&redial.target, &redial.own, redial.cookie.clone()).await {
            Ok(connection) => {
                debug!(attempt = *attempt, "reconnected");
                return connection;
            }
            Err(e) => debug!(attempt = *attempt, error = %e, "reconnecting failed"),
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
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.base_delay(u32::MAX), 30 * SEC);
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
            assert!(d >= 24 * SEC && d <= 36 * SEC, "{d:?}");
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
        };
        assert!(policy.delay(3, &mut rng) > SEC);
    }
}
