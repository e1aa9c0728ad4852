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
//! [`check_on_release`] pings it within a bound and closes it if the
//! database does not answer, so a stall or a partition at that moment
//! cannot hold the pool's slots.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Notify;

/// A kept connection unused this long goes back to sqlx's pool: traffic
/// has dropped, and sqlx's idle timeout may close it.
pub const WARM_FOR: Duration = Duration::from_secs(5);

/// A connection goes back to sqlx's pool at the end of the first unit after
/// it has been out this long, so sqlx's maximum lifetime still applies to
/// it: one ping a minute per connection, not one per unit.
pub const CIRCULATE_FOR: Duration = Duration::from_secs(60);

/// The check of a connection coming back to sqlx's pool
/// (`PgPoolOptions::after_release`): a ping answered within `bound`, else
/// the connection is closed without another byte sent to the server.
///
/// sqlx pings every connection that comes back, after this check, with no
/// time limit (sqlx issue #4349): a database that stalls, or a network that
/// drops packets, right then holds the connection's slot until TCP gives
/// up, which is minutes, and a sweep gives back every connection idle at
/// once. This ping fails first, within `bound`. sqlx's own then follows one
/// answered just before, so only a stall that begins in between can still
/// hold a slot. The second ping costs one round trip on the paths that
/// give a connection back, not on a unit's.
pub fn check_on_release(
    bound: Duration,
) -> impl for<'c> Fn(
    &'c mut PgConnection,
    PoolConnectionMetadata,
) -> BoxFuture<'c, Result<bool, sqlx::Error>>
+ Send
+ Sync
+ 'static {
    move |conn, _| {
        Box::pin(async move {
            match tokio::time::timeout(bound, conn.ping()).await {
                Ok(answered) => answered.map(|()| true),
                // An error closes the connection at once, without the
                // Terminate a clean close would send first.
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to a ping within {bound:?}"),
                ))),
            }
        })
    }
}

/// A connection out of sqlx's pool, for one unit at a time.
#[derive(Debug)]
pub struct Conn {
    inner: PoolConnection<Postgres>,
    /// When it left sqlx's pool.
    out_since: Instant,
}

impl Conn {
    pub fn raw(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    /// Hands the connection back to sqlx's pool, which pings it before
    /// anyone else gets it.
    pub fn give_back(self) {
        drop(self.inner);
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
}

#[derive(Debug)]
struct Kept {
    conn: Conn,
    since: Instant,
}

impl Warm {
    /// A connection: a kept one if any, else one from sqlx's pool (within
    /// its acquire timeout).
    pub async fn acquire(&self, pool: &PgPool) -> Result<Conn, sqlx::Error> {
        loop {
            let kept_one = self.kept_one.notified();
            tokio::pin!(kept_one);
            // Registered before looking, so a connection kept in between
            // still wakes this unit.
            kept_one.as_mut().enable();
            if let Some(conn) = self.take() {
                return Ok(conn);
            }
            tokio::select! {
                () = &mut kept_one => {}
                conn = pool.acquire() => {
                    return conn.map(|inner| Conn { inner, out_since: Instant::now() });
                }
            }
        }
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
        // Dropped outside the lock: each goes back to sqlx's pool.
        drop(stale);
    }

    /// Gives every kept connection back to sqlx's pool (which closes them
    /// once it is closed itself).
    pub fn release_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
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
        let warm = Warm::default();
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
