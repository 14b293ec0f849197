//! One connection to Redis that comes back after a failure, without waiting for it.
//!
//! A call gets the current connection, or makes one (under a connect timeout) when
//! there is none and the backoff since the last failed attempt has passed. While the
//! backoff runs, calls fail at once with [`ClusterError::Unavailable`]: the registry can
//! refuse a message with a notice immediately instead of holding it. A request that
//! fails on the connection (I/O error, response timeout) drops that connection; the
//! next call makes a new one. The backoff doubles from `backoff_min` to `backoff_max`
//! and starts over after a success.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, Value};
use tokio::sync::Mutex;

use super::error::{ClusterError, escape};

/// How a [`Link`] connects and backs off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkTimings {
    /// Longest wait for a connection to be made.
    pub(crate) connect: Duration,
    /// Longest wait for an answer to a request.
    pub(crate) response: Duration,
    /// First wait after a failed connection attempt.
    pub(crate) backoff_min: Duration,
    /// Longest wait between attempts.
    pub(crate) backoff_max: Duration,
}

#[derive(Debug)]
struct State {
    conn: Option<(u64, MultiplexedConnection)>,
    /// Counts connections made, so a failure drops only the connection it happened on.
    generation: u64,
    /// No attempt before this.
    retry_at: Option<Instant>,
    /// The next backoff.
    delay: Duration,
}

/// A reconnecting connection to one Redis.
#[derive(Debug)]
pub(crate) struct Link {
    client: Client,
    timings: LinkTimings,
    state: Mutex<State>,
}

impl Link {
    /// A link to the Redis at `url` (not connected yet).
    pub(crate) fn new(url: &str, timings: LinkTimings) -> Result<Self, ClusterError> {
        let client = Client::open(url).map_err(|e| {
            ClusterError::Unavailable(format!("invalid Redis URL: {}", escape(&e.to_string())))
        })?;
        Ok(Self {
            client,
            timings,
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                retry_at: None,
                delay: timings.backoff_min,
            }),
        })
    }

    /// How long until the next connection attempt is allowed (zero if now, or if
    /// connected).
    pub(crate) async fn retry_in(&self) -> Duration {
        let state = self.state.lock().await;
        state
            .retry_at
            .filter(|_| state.conn.is_none())
            .map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), ClusterError> {
        let mut state = self.state.lock().await;
        if let Some((generation, conn)) = &state.conn {
            return Ok((*generation, conn.clone()));
        }
        if let Some(at) = state.retry_at {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                return Err(ClusterError::Unavailable(format!(
                    "reconnecting, next attempt in {} ms",
                    wait.as_millis()
                )));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timings.connect))
            .set_response_timeout(Some(self.timings.response));
        let attempt = tokio::time::timeout(
            // The client's own timeout covers the TCP connect; this covers the rest of
            // the set-up (the HELLO/SELECT exchange) too.
            self.timings.connect + self.timings.response,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                state.generation += 1;
                let generation = state.generation;
                state.conn = Some((generation, conn.clone()));
                state.retry_at = None;
                state.delay = self.timings.backoff_min;
                tracing::debug!(generation, "connected to Redis");
                Ok((generation, conn))
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => escape(&e.to_string()),
                    _ => "connection timed out".to_string(),
                };
                state.retry_at = Some(Instant::now() + state.delay);
                state.delay = (state.delay * 2).min(self.timings.backoff_max);
                Err(ClusterError::Unavailable(why))
            }
        }
    }

    /// Drops connection `generation` if it is still the current one.
    async fn drop_connection(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            state.conn = None;
            tracing::debug!(generation, "dropped the connection to Redis");
        }
    }

    async fn failed(&self, generation: u64, error: &redis::RedisError) -> ClusterError {
        if ClusterError::breaks_connection(error) {
            self.drop_connection(generation).await;
        }
        ClusterError::from_redis(error, true)
    }

    /// Sends one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, ClusterError> {
        let (generation, mut conn) = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.failed(generation, &e).await),
        }
    }

    /// Sends a pipeline (atomic if it was made with `.atomic()`).
    pub(crate) async fn pipe(&self, pipe: &Pipeline) -> Result<Value, ClusterError> {
        let (generation, mut conn) = self.connection().await?;
        match pipe.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.failed(generation, &e).await),
        }
    }

    /// Runs a Lua script (EVALSHA, loading it when Redis does not have it).
    pub(crate) async fn script(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, ClusterError> {
        let (generation, mut conn) = self.connection().await?;
        match invocation.invoke_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.failed(generation, &e).await),
        }
    }
}
