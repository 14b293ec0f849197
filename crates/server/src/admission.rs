//! Who may start a handshake, and how many guesses of the cookie an address gets.
//!
//! - **The unauthenticated pool.** Connections that have not finished their handshake
//!   hold a [`PoolSlot`]: at most `max_handshakes` of them in all and
//!   `max_handshakes_per_address` from one address. Members hold the separate
//!   `--max-clients` permits, taken only once the cookie is proven, so idle sockets from
//!   one host cannot lock cookie holders out.
//! - **Failed handshakes per source address.** Each address (IPv4, or IPv6 /64) has a
//!   bucket of `failures` tokens refilling one per `retry` period. A failed key exchange
//!   (wrong cookie, silence, hang-up) spends a token, and may run the bucket into debt;
//!   a successful one spends nothing. An address whose bucket is full (no failure
//!   lately) may run as many exchanges at once as its share of the pool allows, so a
//!   host full of honest clients is never slowed down. Once it has failed, it may run
//!   no more exchanges at once than it has whole tokens; with none and nothing in flight
//!   it is refused (`try again later`), with some in flight it waits for them. So every
//!   guess costs a token: a burst of parallel guesses from a quiet address leaves a debt
//!   that takes `retry` per guess to repay before the next attempt.
//!
//! The table of addresses is bounded: past [`MAX_TRACKED`] addresses, new ones share one
//! overflow bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Most addresses with their own bucket; the rest share one.
pub const MAX_TRACKED: usize = 4096;

/// An address as the limits see it: IPv4 as is, IPv6 by its /64 (one host's share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Overflow,
}

fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// The limits, from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unauthenticated connections in all.
    pub max_handshakes: usize,
    /// Unauthenticated connections from one address.
    pub max_handshakes_per_address: usize,
    /// Failed handshakes an address may have before it must wait.
    pub failures: u32,
    /// Time for one failure to be forgotten.
    pub retry: Duration,
}

struct Entry {
    /// Connections of this address in the pool.
    pooled: usize,
    /// Key exchanges in flight.
    exchanging: u32,
    tokens: f64,
    refilled: Instant,
    /// Woken when an exchange of this address ends.
    changed: Arc<Notify>,
}

impl Entry {
    fn new(capacity: f64, now: Instant) -> Self {
        Self {
            pooled: 0,
            exchanging: 0,
            tokens: capacity,
            refilled: now,
            changed: Arc::new(Notify::new()),
        }
    }

    fn refill(&mut self, limits: &Limits, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let rate = 1.0 / limits.retry.as_secs_f64().max(1e-3);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limits.failures));
    }

    fn idle(&self, limits: &Limits) -> bool {
        self.pooled == 0 && self.exchanging == 0 && self.tokens >= f64::from(limits.failures)
    }
}

#[derive(Default)]
struct State {
    pooled: usize,
    entries: HashMap<Key, Entry>,
}

/// Admission control shared by every connection.
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

/// Why a connection may not enter the unauthenticated pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFull {
    /// The whole pool is full.
    All,
    /// This address has its share.
    Address,
}

/// A connection's place in the unauthenticated pool; freed on drop.
pub struct PoolSlot {
    admission: Arc<Admission>,
    key: Key,
}

/// A key exchange in flight. Dropped without [`Exchange::free`] once the server's
/// challenge went out ([`Exchange::challenge_sent`]), it counts as a failed guess of the
/// cookie: the challenge lets its receiver test one guess offline. Dropped before that
/// (a client that timed out waiting for its turn, or hung up after its hello), it cost
/// nothing: no guess could be tested.
pub struct Exchange {
    admission: Arc<Admission>,
    key: Key,
    succeeded: bool,
    guessed: bool,
}

impl Admission {
    /// Admission with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `ip`, created if there is room (else the shared overflow entry).
    fn entry<'a>(&self, state: &'a mut State, ip: IpAddr, now: Instant) -> (Key, &'a mut Entry) {
        let capacity = f64::from(self.limits.failures);
        let mut key = Key::Addr(key_of(ip));
        if !state.entries.contains_key(&key) && state.entries.len() >= MAX_TRACKED {
            let limits = self.limits;
            state.entries.retain(|_, entry| {
                entry.refill(&limits, now);
                !entry.idle(&limits)
            });
            if state.entries.len() >= MAX_TRACKED {
                key = Key::Overflow;
            }
        }
        let entry = state
            .entries
            .entry(key)
            .or_insert_with(|| Entry::new(capacity, now));
        entry.refill(&self.limits, now);
        (key, entry)
    }

    fn forget_if_idle(&self, state: &mut State, key: Key) {
        if state
            .entries
            .get(&key)
            .is_some_and(|e| e.idle(&self.limits))
        {
            state.entries.remove(&key);
        }
    }

    /// Takes a place in the unauthenticated pool for a connection from `ip`.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<PoolSlot, PoolFull> {
        let mut state = self.lock();
        if state.pooled >= self.limits.max_handshakes {
            return Err(PoolFull::All);
        }
        let per_address = self.limits.max_handshakes_per_address;
        let (key, entry) = self.entry(&mut state, ip, Instant::now());
        if entry.pooled >= per_address {
            self.forget_if_idle(&mut state, key);
            return Err(PoolFull::Address);
        }
        entry.pooled += 1;
        state.pooled += 1;
        Ok(PoolSlot {
            admission: Arc::clone(self),
            key,
        })
    }

    /// Waits for room to run a key exchange for `ip`; `None` when the address has spent
    /// its failures and has nothing in flight (refuse it: try again later).
    /// Cancel-safe: a caller that gives up holds nothing.
    pub async fn exchange(self: &Arc<Self>, ip: IpAddr) -> Option<Exchange> {
        loop {
            let changed: Arc<Notify>;
            let notified;
            {
                let mut state = self.lock();
                let capacity = f64::from(self.limits.failures);
                let (key, entry) = self.entry(&mut state, ip, Instant::now());
                // A quiet address is bounded by the pool only; one that failed lately by
                // its whole tokens.
                let clean = entry.tokens >= capacity;
                if clean || f64::from(entry.exchanging) + 1.0 <= entry.tokens {
                    entry.exchanging += 1;
                    return Some(Exchange {
                        admission: Arc::clone(self),
                        key,
                        succeeded: false,
                        guessed: false,
                    });
                }
                if entry.exchanging == 0 {
                    self.forget_if_idle(&mut state, key);
                    return None;
                }
                // Registered under the lock, so no wake-up is missed.
                changed = Arc::clone(&entry.changed);
                notified = changed.notified();
            }
            // Woken when an exchange of this address ends; then look again.
            notified.await;
        }
    }

    fn end_exchange(&self, key: Key, failed: bool) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(&key) {
            entry.refill(&self.limits, Instant::now());
            entry.exchanging = entry.exchanging.saturating_sub(1);
            if failed {
                // No floor: parallel failures leave a debt to repay.
                entry.tokens -= 1.0;
            }
            // Everyone waiting looks again: one may run now, or learn it must give up.
            entry.changed.notify_waiters();
        }
        self.forget_if_idle(&mut state, key);
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.pooled = state.pooled.saturating_sub(1);
        if let Some(entry) = state.entries.get_mut(&self.key) {
            entry.pooled = entry.pooled.saturating_sub(1);
        }
        self.admission.forget_if_idle(&mut state, self.key);
    }
}

impl Exchange {
    /// Ends the exchange at no cost: the client proved it knows the cookie, or was
    /// refused before any key exchange (no guess was made).
    pub fn free(mut self) {
        self.succeeded = true;
    }

    /// Records that the server's challenge (its key-exchange message and proof) is
    /// about to go out: from now on, ending without a proven cookie is a failed guess.
    pub fn challenge_sent(&mut self) {
        self.guessed = true;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.admission
            .end_exchange(self.key, self.guessed && !self.succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(failures: u32, retry_secs: u64) -> Arc<Admission> {
        Admission::new(Limits {
            max_handshakes: 10,
            max_handshakes_per_address: 3,
            failures,
            retry: Duration::from_secs(retry_secs),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_pool_has_a_total_and_a_per_address_cap() {
        let admission = admission(5, 10);
        let a: Vec<_> = (0..3).map(|_| admission.enter(A).unwrap()).collect();
        assert_eq!(admission.enter(A).err(), Some(PoolFull::Address));
        let b: Vec<_> = (0..3).map(|_| admission.enter(B).unwrap()).collect();
        drop(a);
        assert!(admission.enter(A).is_ok());
        drop(b);
        assert!(
            admission.lock().entries.is_empty(),
            "idle entries are forgotten"
        );
    }

    #[tokio::test]
    async fn failures_are_limited_per_address_and_successes_are_free() {
        let admission = admission(2, 3600);
        for _ in 0..5 {
            admission.exchange(A).await.unwrap().free();
        }
        failed(admission.exchange(A).await.unwrap());
        failed(admission.exchange(A).await.unwrap());
        assert!(admission.exchange(A).await.is_none(), "a third failure");
        assert!(admission.exchange(B).await.is_some(), "another address");
    }

    #[tokio::test]
    async fn a_quiet_address_runs_many_at_once_and_repays_their_failures() {
        let admission = admission(2, 3600);
        // Quiet: ten at once.
        let wave: Vec<_> = futures_wave(&admission, 10).await;
        assert_eq!(wave.len(), 10);
        // All fail: a debt of eight, so nothing more for a long while.
        wave.into_iter().for_each(failed);
        assert!(admission.exchange(A).await.is_none());
        assert!(admission.lock().entries[&Key::Addr(A)].tokens < -7.9);
    }

    /// Ends an exchange whose challenge went out without a proven cookie.
    fn failed(mut exchange: Exchange) {
        exchange.challenge_sent();
        drop(exchange);
    }

    #[tokio::test]
    async fn an_exchange_that_ends_before_its_challenge_costs_nothing() {
        let admission = admission(1, 3600);
        for _ in 0..10 {
            // A client that timed out waiting for its turn, or hung up after its hello.
            drop(admission.exchange(A).await.unwrap());
        }
        assert!(admission.exchange(A).await.is_some(), "no guess was made");
        failed(admission.exchange(A).await.unwrap());
        assert!(admission.exchange(A).await.is_none(), "one guess was made");
    }

    async fn futures_wave(admission: &Arc<Admission>, n: usize) -> Vec<Exchange> {
        let mut wave = Vec::new();
        for _ in 0..n {
            wave.push(
                admission
                    .exchange(A)
                    .await
                    .expect("room on a quiet address"),
            );
        }
        wave
    }

    #[tokio::test]
    async fn after_a_failure_parallel_exchanges_cannot_exceed_the_tokens() {
        let admission = admission(3, 3600);
        failed(admission.exchange(A).await.unwrap());
        // Two tokens left: two at once, a third waits.
        let first = admission.exchange(A).await.unwrap();
        let second = admission.exchange(A).await.unwrap();
        let waiting = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.exchange(A).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        failed(first);
        // One token and one in flight: still no room, the waiter waits.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        failed(second);
        // No token left and nothing in flight: the waiter must give up.
        assert!(!waiting.await.unwrap());
    }

    #[test]
    fn ipv6_hosts_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(key_of(a), key_of(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key_of(mapped), A);
    }
}
