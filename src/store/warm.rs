//! Connections kept between units of work, so that a busy replica does not
//! pay sqlx's ping every time a connection goes back to its pool.
//!
//! sqlx pings each connection returned to its pool (sqlx 0.8.6,
//! `return_to_pool`), whatever the connection just did: one round trip in
//! three of a call action, and a wake-up of the backend (`scripts/bench/ab`,
//! "Connections kept warm" in docs/performance.md). That ping is also
//! unbounded in time: a database that stalls right then holds the pool's
//! slot until TCP gives up (sqlx issue #4349). A connection whose unit
//! ended cleanly, outside any transaction, with nothing queued to send,
//! needs no such check; it stays checked out of sqlx's pool, kept here, and
//! the next unit takes it as it is, the most recently used first.
//!
//! What sqlx's pool does for its idle connections still happens, a little
//! later: a connection not reused within [`WARM_FOR`] (by the next
//! [`Warm::sweep`], which the replica runs that often), or one that has
//! circulated here for [`CIRCULATE_FOR`], goes back to sqlx, which pings it
//! and applies its idle timeout and maximum lifetime. Before sqlx's ping,
//! [`Conn::give_back`] pings it within a bound and closes it if the
//! database does not answer, so a stall or a partition at that moment
//! cannot hold the pool's slots.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Notify;

/// A kept connection unused this long goes back to sqlx's pool: traffic
/// has dropped, and sqlx's idle timeout may close it.
pub const WARM_FOR: Duration = Duration::from_secs(5);

/// A connection goes back to sqlx's pool at the end of the first unit after
/// it has been out this long, so sqlx's maximum lifetime still applies to
/// it: one ping a minute per connection, not one per unit.
pub const CIRCULATE_FOR: Duration = Duration::from_secs(60);

/// A connection out of sqlx's pool, for one unit at a time.
#[derive(Debug)]
pub struct Conn {
    inner: PoolConnection<Postgres>,
    /// When it left sqlx's pool.
    out_since: Instant,
    /// How long the database may take to answer the ping before the
    /// connection goes back: the pool's acquire timeout, since a slot
    /// waited on longer is of no use to a unit anyway.
    answer_within: Duration,
}

impl Conn {
    fn new(inner: PoolConnection<Postgres>, answer_within: Duration) -> Self {
        Self {
            inner,
            out_since: Instant::now(),
            answer_within,
        }
    }

    pub fn raw(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    /// Hands the connection back to sqlx's pool, which pings it before
    /// anyone else gets it, once the database has answered a ping within
    /// `answer_within`; without an answer it is closed, without another
    /// byte sent, and its slot is free at once.
    ///
    /// sqlx's own ping has no time limit (sqlx issue #4349): a database
    /// that stalls, or a network that drops packets, just then would hold
    /// the slot until TCP gives up, which is minutes, and a sweep gives
    /// back every connection idle at once. Nor would sqlx's `after_release`
    /// hook do: when it fails, sqlx closes the connection gracefully, and
    /// over TLS that waits to read from the silent server too. sqlx's ping
    /// follows one answered just before, so only a stall that begins in
    /// between can still hold a slot. The check costs a round trip on the
    /// paths that give a connection back (a failed unit, a sweep, once a
    /// minute per busy connection), none on a unit that ended cleanly.
    pub fn give_back(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to wait on: shutting down; sqlx closes it.
            drop(self.inner);
            return;
        };
        let Self {
            mut inner,
            answer_within,
            ..
        } = self;
        runtime.spawn(async move {
            match tokio::time::timeout(answer_within, inner.ping()).await {
                Ok(Ok(())) => drop(inner),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a connection going back to the pool failed its ping; closed");
                    drop(inner.detach());
                }
                Err(_) => {
                    tracing::warn!(
                        answer_within_ms = answer_within.as_millis() as u64,
                        "a connection going back to the pool got no answer to its ping; closed"
                    );
                    drop(inner.detach());
                }
            }
        });
    }

    /// Closes the connection instead of reusing it: its state is unknown.
    /// PostgreSQL rolls back whatever it had open.
    pub fn discard(self) {
        // Detached, the raw connection closes its socket when dropped.
        drop(self.inner.detach());
    }

    /// Whether the next unit may run on it as it is: not inside a
    /// transaction, and nothing queued for the server (sqlx queues the
    /// ROLLBACK of a transaction dropped without commit, and sends it only
    /// with the next statement; its ping would flush it now).
    fn is_clean(&self) -> bool {
        !self.inner.is_in_transaction() && !self.inner.should_flush()
    }
}

/// The kept connections.
#[derive(Debug, Default)]
pub struct Warm {
    /// Most recently used last.
    kept: Mutex<Vec<Kept>>,
    /// A connection was kept: a unit waiting on sqlx's pool, which may
    /// have none left to give (they are all out, some of them here), looks
    /// here again.
    kept_one: Notify,
    /// Requests to sqlx's pool finishing without their unit.
    finishing: AtomicUsize,
}

/// A request for a connection from sqlx's pool.
type Acquiring = dyn Future<Output = Result<PoolConnection<Postgres>, sqlx::Error>> + Send;

/// The most requests to sqlx's pool left to finish without their units at
/// once: enough for a pool to grow by several connections at a time, few
/// enough that a full pool (where a request only waits) keeps no crowd of
/// them waiting.
const FINISHING_AT_ONCE: usize = 4;

#[derive(Debug)]
struct Kept {
    conn: Conn,
    since: Instant,
}

impl Warm {
    /// A connection: a kept one if any, else one from sqlx's pool (within
    /// its acquire timeout).
    ///
    /// A unit waits on both with one request to sqlx's pool, kept across
    /// its wake-ups, and takes whichever comes first; if that is a kept
    /// connection, the request is left to finish in the background
    /// ([`Warm::finish_acquiring`]) and what it gets is kept for the next
    /// unit. A request dropped cuts short the connection sqlx was opening
    /// for it: a backend started, a TLS handshake made, then thrown away.
    /// Up to 0.2.0 a unit dropped its request at every connection kept,
    /// so where opening one takes longer than a unit (TLS, a database
    /// across a network) the pool never grew to its size and the database
    /// spent CPU starting backends for nothing: ReportChannelEvent at 8 in
    /// flight over TLS ran at a third of its plaintext throughput
    /// (docs/performance.md, "TLS to PostgreSQL";
    /// `kept_connections::the_pool_grows_to_its_size_when_connecting_is_slower_than_a_unit`).
    pub async fn acquire(self: &Arc<Self>, pool: &PgPool) -> Result<Conn, sqlx::Error> {
        let answer_within = pool.options().get_acquire_timeout();
        let mut asked: Option<Pin<Box<Acquiring>>> = None;
        loop {
            let kept_one = self.kept_one.notified();
            tokio::pin!(kept_one);
            // Registered before looking, so a connection kept in between
            // still wakes this unit.
            kept_one.as_mut().enable();
            if let Some(conn) = self.take() {
                if let Some(asked) = asked {
                    self.finish_acquiring(asked, answer_within);
                }
                return Ok(conn);
            }
            let pending = asked.get_or_insert_with(|| Box::pin(pool.acquire()));
            tokio::select! {
                () = &mut kept_one => {}
                conn = pending => {
                    return conn.map(|inner| Conn::new(inner, answer_within));
                }
            }
        }
    }

    /// Lets a unit's request to sqlx's pool finish without the unit, and
    /// keeps the connection it gets. At most [`FINISHING_AT_ONCE`] at a
    /// time; past that the request is dropped, as before. Each ends within
    /// sqlx's acquire timeout, with a connection or without.
    fn finish_acquiring(self: &Arc<Self>, asked: Pin<Box<Acquiring>>, answer_within: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let claimed = self
            .finishing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < FINISHING_AT_ONCE).then_some(n + 1)
            });
        if claimed.is_err() {
            return;
        }
        let warm = Arc::clone(self);
        runtime.spawn(async move {
            if let Ok(inner) = asked.await {
                warm.keep(Conn::new(inner, answer_within));
            }
            warm.finishing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Keeps `conn` for the next unit if it is clean and has not been out
    /// too long; else it goes back to sqlx's pool, which checks it.
    pub fn keep(&self, conn: Conn) {
        if !conn.is_clean() || conn.out_since.elapsed() >= CIRCULATE_FOR {
            conn.give_back();
            return;
        }
        self.lock().push(Kept {
            conn,
            since: Instant::now(),
        });
        self.kept_one.notify_one();
    }

    /// Gives the connections unused for [`WARM_FOR`] back to sqlx's pool.
    pub fn sweep(&self) {
        let stale = {
            let mut kept = self.lock();
            let fresh = kept
                .iter()
                .position(|k| k.since.elapsed() < WARM_FOR)
                .unwrap_or(kept.len());
            kept.drain(..fresh).collect::<Vec<_>>()
        };
        // Outside the lock.
        for k in stale {
            k.conn.give_back();
        }
    }

    /// Gives every kept connection back to sqlx's pool (which closes them
    /// once it is closed itself).
    pub fn release_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        for k in all {
            k.conn.give_back();
        }
    }

    /// How many are kept now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The most recently kept connection.
    fn take(&self) -> Option<Conn> {
        self.lock().pop().map(|k| k.conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units on a connection kept here would never let sqlx see it, so its
    /// maximum lifetime would never apply: one out of sqlx's pool for
    /// [`CIRCULATE_FOR`] goes back at the end of its next unit however
    /// clean, as does one a transaction was dropped on however new.
    #[sqlx::test(migrations = false)]
    async fn connections_go_back_to_sqlx_when_out_too_long_or_unclean(pool: PgPool) {
        let warm = Arc::new(Warm::default());
        let fresh = warm.acquire(&pool).await.unwrap();
        warm.keep(fresh);
        assert_eq!(warm.count(), 1, "clean and new: kept");

        let mut old = warm.acquire(&pool).await.unwrap();
        assert_eq!(warm.count(), 0);
        old.out_since = Instant::now()
            .checked_sub(CIRCULATE_FOR)
            .expect("a monotonic clock older than CIRCULATE_FOR");
        warm.keep(old);
        assert_eq!(warm.count(), 0, "out for CIRCULATE_FOR: given back");

        // A unit cut off inside its transaction: sqlx queues the ROLLBACK
        // and sends it only with the connection's next statement.
        let mut cut = warm.acquire(&pool).await.unwrap();
        drop(cut.raw().begin().await.unwrap());
        warm.keep(cut);
        assert_eq!(warm.count(), 0, "a ROLLBACK queued: given back");
    }
}
