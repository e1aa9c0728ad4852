//! Units of database work: how an action's reads and writes reach
//! PostgreSQL so that nothing a caller does can cut them in half.
//!
//! A unit runs in a task of its own that owns its connection from acquire
//! to commit. The request only waits for it: if the caller cancels or its
//! deadline passes, the request answers (or goes away) and the unit still
//! runs to its end, commits or rolls back, and returns a connection in a
//! known state. A unit that does not finish within the database timeout is
//! dropped and its connection closed, never reused: its state is unknown.
//! Shutdown waits for the units still running (see [`App::finish_units`]).
//!
//! Units also bound what they may take: writes (which can wait on row
//! locks) and token lookups (which a flood of unknown tokens could
//! multiply) each get a share of the pool, so neither can hold all of it.
//! And writes to the same call or agent queue here, in the replica, one at
//! a time: a pile-on of callers on one hot row waits on one connection,
//! not on every connection of the pool.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;
use crate::measure::{self, UnitOutcome};
use crate::store::idempotency::{self, Claim, KeyUse};
use crate::store::{self, Store, warm};

use super::App;

/// How often a unit that lost a race is tried in all, at most: in practice
/// it is the database timeout that bounds the retries (a lost race costs a
/// read and a backed-off pause of up to 64 ms).
const ATTEMPTS: u32 = 64;

/// A unit's work on its connection (inside the unit's transaction, for
/// writes). Called again, from the start, after a lost race.
pub type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The limits a replica's requests and units of work keep to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The deadline of a request that brings none (and the longest one).
    pub request_timeout: Duration,
    /// Longest a unit may take once it has a connection.
    pub db_timeout: Duration,
    /// Most requests served at once (see [`App::admit`]).
    pub max_concurrent_requests: usize,
    /// Most calls whose state the replica keeps to decide on (`known`).
    pub known_calls: usize,
    /// Most agents whose state the replica keeps to decide on (`known`).
    pub known_agents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            db_timeout: Duration::from_secs(5),
            max_concurrent_requests: 512,
            known_calls: 4096,
            known_agents: 8192,
        }
    }
}

/// Which share of the pool a unit draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// A transaction that may wait on row locks.
    Write,
    /// A token lookup, before the caller is known.
    Lookup,
    /// A single read that takes no locks.
    Read,
}

impl Lane {
    /// Its name in the unit's span.
    fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Lookup => "lookup",
            Self::Read => "read",
        }
    }
}

/// The row a write is about (a call, an agent, an instance), as
/// `instance/kind/id`: writes with the same key take turns in the replica.
pub(super) type RowKey = String;

type Turns = Arc<Mutex<HashMap<RowKey, Arc<tokio::sync::Mutex<()>>>>>;

/// A write's turn on its row; the queue forgets the row when the last
/// writer waiting for it is done.
struct Turn {
    turns: Turns,
    key: RowKey,
    slot: Arc<tokio::sync::Mutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.held.take();
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits for this row.
        if Arc::strong_count(&self.slot) == 2 {
            turns.remove(&self.key);
        }
    }
}

/// The units' shared state; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Units {
    tracker: TaskTracker,
    turns: Turns,
    writes: Arc<Semaphore>,
    lookups: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    request_timeout: Duration,
    db_timeout: Duration,
    acquire_timeout: Duration,
}

impl Units {
    /// Writes may hold all but a quarter of the pool, lookups a quarter, so
    /// reads (and lookups) always find a connection while writes wait on a
    /// hot row, and unknown tokens cannot starve the actions.
    pub(super) fn new(store: &Store, limits: &Limits) -> Self {
        let pool = store.max_connections().max(1) as usize;
        let reserve = (pool / 4).max(1);
        Self {
            tracker: TaskTracker::new(),
            turns: Turns::default(),
            writes: Arc::new(Semaphore::new(pool.saturating_sub(reserve).max(1))),
            lookups: Arc::new(Semaphore::new(reserve)),
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            request_timeout: limits.request_timeout,
            db_timeout: limits.db_timeout,
            acquire_timeout: store.acquire_timeout(),
        }
    }

    /// One attempt of a unit's work: its lane's share, a connection, the
    /// work. Not started once `deadline` has passed; bounded, with the
    /// attempts before it, by the database timeout (`give_up`, set by the
    /// first attempt that starts). Work cut off by that timeout leaves its
    /// connection in an unknown state: it is closed, never reused.
    async fn attempt<T, F>(
        &self,
        action: &'static str,
        store: &Store,
        lane: Lane,
        deadline: Instant,
        progress: &mut Progress,
        work: &mut F,
    ) -> Result<T, Error>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>>,
    {
        progress.tries += 1;
        progress.ran = None;
        let _share = self.enter(lane, deadline).await?;
        let mut conn = Leased::new({
            let _waiting = measure::PoolWaiting::enter();
            tokio::time::timeout_at(deadline.into(), store.acquire())
                .await
                .map_err(|_| Error::DeadlineExceeded)??
        });
        // Past this point the work starts, and then always ends.
        if Instant::now() >= deadline {
            // Nothing ran on it: it goes back as it came.
            conn.reuse(store);
            return Err(Error::DeadlineExceeded);
        }
        let (open, idle) = store.connections();
        measure::pool(open, idle);
        let give_up = *progress
            .give_up
            .get_or_insert_with(|| Instant::now() + self.db_timeout);
        let started = Instant::now();
        let ended = tokio::time::timeout_at(give_up.into(), work(conn.raw())).await;
        match &ended {
            Ok(Ok(_)) => conn.reuse(store),
            Ok(Err(_)) => conn.give_back(),
            Err(_) => {}
        }
        let (outcome, done) = match ended {
            Ok(Err(Error::Contended(cause))) => {
                (UnitOutcome::ConflictRetried, Err(Error::Contended(cause)))
            }
            Ok(Err(e)) => (UnitOutcome::Failed, Err(e)),
            Ok(done) => (UnitOutcome::Done, done),
            Err(_) => {
                // Dropped below without `ended`: the connection is closed.
                drop(conn);
                let cause = anyhow::anyhow!(
                    "{action}: the database did not answer within {:?}",
                    self.db_timeout
                );
                (UnitOutcome::TimedOut, Err(Error::Unavailable(cause)))
            }
        };
        measure::unit(action, outcome, started.elapsed());
        progress.ran = Some(outcome);
        done
    }

    /// Waits for the turn on `key`, no longer than the deadline.
    async fn take_turn(&self, key: RowKey, deadline: Instant) -> Result<Turn, Error> {
        let slot = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            turns.entry(key.clone()).or_default().clone()
        };
        let mut turn = Turn {
            turns: self.turns.clone(),
            key,
            slot,
            held: None,
        };
        let wait = turn.slot.clone().lock_owned();
        turn.held = Some(
            tokio::time::timeout_at(deadline.into(), wait)
                .await
                .map_err(|_| Error::DeadlineExceeded)?,
        );
        Ok(turn)
    }

    /// Waits for the lane's share, no longer than the acquire timeout or
    /// the deadline.
    async fn enter(
        &self,
        lane: Lane,
        deadline: Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, Error> {
        let lane_share = match lane {
            Lane::Write => &self.writes,
            Lane::Lookup => &self.lookups,
            Lane::Read => return Ok(None),
        };
        let limit = deadline.min(Instant::now() + self.acquire_timeout);
        match tokio::time::timeout_at(limit.into(), lane_share.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(closed)) => Err(Error::Unavailable(closed.into())),
            Err(_) if Instant::now() >= deadline => Err(Error::DeadlineExceeded),
            Err(_) => Err(Error::Unavailable(anyhow::anyhow!(
                "no database connection free for {lane:?} work within {:?}",
                self.acquire_timeout
            ))),
        }
    }
}

/// A unit's connection. Once the unit's work has run to its end without
/// a failure it is kept for the next unit (`store::warm`, no round trip);
/// after a failure it goes back to the pool, which pings it (and flushes
/// the ROLLBACK of a transaction the failure dropped). Dropped any other
/// way (the unit cut off by its database timeout, a panic, the task
/// abandoned at shutdown) it is closed, so a connection whose state is
/// unknown, such as one left inside a transaction by a dropped `begin()`
/// (sqlx 0.8.6), is never reused. This is the pool's defence, and it costs
/// no round trip: a check statement on every acquire would add one to
/// every call action.
struct Leased {
    /// Until the unit's work ends one way or the other.
    conn: Option<warm::Conn>,
}

impl Leased {
    fn new(conn: warm::Conn) -> Self {
        Self { conn: Some(conn) }
    }

    fn raw(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("held until dropped").raw()
    }

    /// The unit's work ran to its end and failed: the connection goes back
    /// to the pool, which checks it.
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.give_back();
        }
    }

    /// The unit's work ran to its end (or never started): the next unit
    /// may take the connection as it is.
    fn reuse(&mut self, store: &Store) {
        if let Some(conn) = self.conn.take() {
            store.reuse(conn);
        }
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            measure::connection_discarded();
            conn.discard();
        }
    }
}

/// How far a unit has got.
#[derive(Debug, Default)]
struct Progress {
    /// Attempts started.
    tries: u32,
    /// When the database timeout ends, from the first attempt that starts
    /// its work.
    give_up: Option<Instant>,
    /// How the last attempt's work ended, if it started.
    ran: Option<UnitOutcome>,
}

impl Progress {
    /// Records on the unit's span (the current one) how it ended:
    /// `outcome` of its last attempt (`committed`: the work ran to its end
    /// and what it wrote stands, a read's answer too; `rolled_back`: it
    /// failed and nothing it wrote stands; `timed_out`: cut off, its
    /// connection closed, so PostgreSQL rolls it back; `conflict`: it lost
    /// a race once too often; `not_started`: no share, connection or time
    /// left for it), and how many lost races it retried. Once each: the
    /// log appends every value recorded.
    fn settled<T>(&self, result: &Result<T, Error>) {
        let outcome = match self.ran {
            Some(UnitOutcome::Done) => "committed",
            Some(UnitOutcome::Failed) => "rolled_back",
            Some(UnitOutcome::TimedOut) => "timed_out",
            Some(UnitOutcome::ConflictRetried) => "conflict",
            None => "not_started",
        };
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        span.record("conflict_retries", i64::from(self.tries.saturating_sub(1)));
        if let Err(e @ (Error::Internal(_) | Error::Unavailable(_) | Error::Contended(_))) = result
        {
            span.set_status(opentelemetry::trace::Status::error(e.code()));
        }
    }
}

/// What a write's work needs to be all or nothing.
#[derive(Debug, Clone, Copy)]
pub(super) enum Atomicity {
    /// Several statements that must commit together: a transaction.
    Transaction,
    /// One guarded statement (`store::changes::apply`), all or nothing by
    /// itself: a transaction only to hold an idempotency key with it.
    Statement,
}

/// What a write unit answers: its result, or the response a first use of
/// the same idempotency key committed.
#[derive(Debug)]
pub enum Done<T> {
    Fresh(T),
    Replayed(Vec<u8>),
}

impl<T> Done<T> {
    /// The result of a unit that ran without an idempotency key.
    pub fn fresh(self) -> Result<T, Error> {
        match self {
            Self::Fresh(t) => Ok(t),
            Self::Replayed(_) => Err(Error::Internal(anyhow::anyhow!(
                "a replay answered a request without an idempotency key"
            ))),
        }
    }
}

/// Turns a unit's result into the encoded response to keep.
pub type Encode<T> = Arc<dyn Fn(&T) -> Vec<u8> + Send + Sync>;

/// An idempotency key with the way to encode the response it must keep.
pub struct Idempotent<T> {
    pub key: KeyUse,
    pub encode: Encode<T>,
}

impl<T> std::fmt::Debug for Idempotent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotent")
            .field("key", &self.key)
            .finish()
    }
}

impl App {
    /// Admits a request, or refuses it at once when this replica already
    /// serves its limit: shedding load beats queueing it without bound.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.units
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Throttled)
    }

    /// The deadline of a request that brings none.
    pub fn request_timeout(&self) -> Duration {
        self.units.request_timeout
    }

    /// Runs `work` as a write unit, after the writes before it on the same
    /// `row` (if any), retried whole after a lost race. Work of one guarded
    /// statement (`Atomicity::Statement`) runs without a transaction, in as
    /// few round trips as its statements; otherwise, or to hold an
    /// idempotency key, in one READ COMMITTED transaction that claims the
    /// key first and records the response last.
    pub(super) async fn write<T, F>(
        &self,
        action: &'static str,
        row: Option<RowKey>,
        deadline: Instant,
        atomicity: Atomicity,
        idempotent: Option<Idempotent<T>>,
        work: F,
    ) -> Result<Done<T>, Error>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>>
            + Send
            + Sync
            + 'static,
    {
        if matches!(atomicity, Atomicity::Statement) && idempotent.is_none() {
            return self
                .unit(action, Lane::Write, row, deadline, work)
                .await
                .map(Done::Fresh);
        }
        let work = Arc::new(work);
        let idempotent = idempotent.map(Arc::new);
        self.unit(action, Lane::Write, row, deadline, move |conn| {
            let (work, idempotent) = (work.clone(), idempotent.clone());
            Box::pin(async move {
                let mut tx = store::begin(conn).await?;
                if let Some(i) = &idempotent {
                    match idempotency::claim(&mut tx, &i.key).await? {
                        Claim::New => {}
                        Claim::Replay(response) => return Ok(Done::Replayed(response)),
                        Claim::Mismatch => return Err(Error::IdempotentParameterMismatch),
                    }
                }
                let out = work(&mut tx).await?;
                if let Some(i) = &idempotent {
                    idempotency::record(&mut tx, &i.key, &(i.encode)(&out)).await?;
                }
                store::commit(tx).await?;
                Ok(Done::Fresh(out))
            })
        })
        .await
    }

    /// Runs `work` as a unit without a transaction: single statements, which
    /// PostgreSQL commits (or not) on their own.
    pub(super) async fn statement<T, F>(
        &self,
        action: &'static str,
        lane: Lane,
        deadline: Instant,
        work: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        self.unit(action, lane, None, deadline, work).await
    }

    /// The unit runner: see the module doc.
    async fn unit<T, F>(
        &self,
        action: &'static str,
        lane: Lane,
        row: Option<RowKey>,
        deadline: Instant,
        mut work: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded);
        }
        let units = self.units.clone();
        let store = self.store.clone();
        // A child of the request's span (the current one here), though the
        // unit may outlive the request.
        let span = tracing::info_span!(
            "unit",
            action,
            lane = lane.name(),
            outcome = tracing::field::Empty,
            conflict_retries = tracing::field::Empty,
        );
        let task = self.units.tracker.spawn(
            async move {
                let mut progress = Progress::default();
                let result = async {
                    let _turn = match row {
                        Some(key) => Some(units.take_turn(key, deadline).await?),
                        None => None,
                    };
                    loop {
                        let attempt =
                            units.attempt(action, &store, lane, deadline, &mut progress, &mut work);
                        match attempt.await {
                            // A lost race wrote nothing: try again, on a
                            // connection taken anew after a pause (none is
                            // held while waiting), unless the caller's time
                            // is up.
                            Err(Error::Contended(cause)) if progress.tries < ATTEMPTS => {
                                let tries = progress.tries;
                                tracing::debug!(
                                    action, tries, cause = %cause, "lost a race; retrying"
                                );
                                let pause = rand::random_range(0..(1u64 << tries.min(6)));
                                tokio::time::sleep(Duration::from_millis(pause)).await;
                            }
                            other => return other,
                        }
                    }
                }
                .await;
                progress.settled(&result);
                result
            }
            .instrument(span),
        );
        tokio::select! {
            joined = task => joined.unwrap_or_else(|e| {
                Err(Error::Internal(anyhow::anyhow!("{action}: the unit of work failed: {e}")))
            }),
            () = tokio::time::sleep_until(deadline.into()) => Err(Error::DeadlineExceeded),
        }
    }

    /// Stops taking new units and waits for the running ones, at most until
    /// `deadline`; returns how many were still running then. Those are
    /// abandoned: their connections close when the process exits, and
    /// PostgreSQL rolls back whatever they had not committed.
    pub async fn finish_units(&self, deadline: Instant) -> usize {
        let tracker = &self.units.tracker;
        tracker.close();
        let _ = tokio::time::timeout_at(deadline.into(), tracker.wait()).await;
        tracker.len()
    }
}
