//! PostgreSQL persistence, and nothing else: queries, row mapping and error
//! translation. No rule is decided here.
//!
//! Every function takes the connection (or transaction) of the unit of work
//! the app runs it in; none reaches for the pool itself, so a unit owns its
//! connection from start to end (see `app::unit`).
//!
//! Every call action is two statements and no transaction: one that reads
//! everything the decision needs ([`calls::load`], [`agents::load`]) and
//! one that writes the whole decision ([`changes::apply`]), guarded so it
//! writes only if the rows are still as they were read; if not, the action
//! reads and decides again. A lock wait is not a failure (see
//! [`changes`]).

pub mod agents;
pub mod calls;
pub mod changes;
pub mod events;
pub mod idempotency;
pub mod provisioning;
mod rows;
pub mod status;
pub mod tokens;
pub mod warm;

use std::sync::Arc;

use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::error::Error;

/// A transaction on a unit's connection.
pub type Tx<'c> = Transaction<'c, Postgres>;

/// A cheap-to-clone handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    warm: Arc<warm::Warm>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            warm: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// How long [`Store::acquire`] waits for a connection.
    pub fn acquire_timeout(&self) -> std::time::Duration {
        self.pool.options().get_acquire_timeout()
    }

    /// A connection for one unit of work: one kept from an earlier unit
    /// (`warm`), else one from the pool within its acquire timeout.
    pub async fn acquire(&self) -> Result<warm::Conn, Error> {
        self.warm.acquire(&self.pool).await.map_err(acquire_error)
    }

    /// A connection whose unit ran to its end without a failure: kept for
    /// the next unit if it is clean, else back to the pool (`warm`).
    pub fn reuse(&self, conn: warm::Conn) {
        self.warm.keep(conn);
    }

    /// Connections open and connections idle (in the pool or kept), as of
    /// now.
    pub fn connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle() + self.warm.count())
    }

    /// Gives kept connections that have gone unused back to the pool;
    /// called now and then while the replica serves.
    pub fn sweep(&self) {
        self.warm.sweep();
    }

    /// Closes the pool and every connection, waiting for those still in
    /// use.
    pub async fn close(&self) {
        // Closed first, so that the kept connections handed back close too.
        let closing = self.pool.close();
        self.warm.release_all();
        closing.await;
    }
}

/// A READ COMMITTED transaction: each statement sees what committed before
/// it started, and a locking read waits for the lock rather than failing.
pub async fn begin(conn: &mut PgConnection) -> Result<Tx<'_>, Error> {
    conn.begin().await.map_err(db_error)
}

pub async fn commit(tx: Tx<'_>) -> Result<(), Error> {
    tx.commit().await.map_err(db_error)
}

/// Translates a database failure into the contract's terms: lost races are
/// `Contended` (retried), an unreachable or overloaded database is
/// `Unavailable`, anything else `Internal`. The cause goes along for the log.
pub(crate) fn db_error(e: sqlx::Error) -> Error {
    let sqlstate = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    match sqlstate.as_deref() {
        // serialization_failure, deadlock_detected
        Some("40001" | "40P01") => Error::Contended(e.into()),
        // connection exceptions, too many connections, shutting down,
        // cannot connect now, statement or lock timeout, idle in transaction
        // for too long
        Some(s) if s.starts_with("08") || s.starts_with("57P") => Error::Unavailable(e.into()),
        Some("53300" | "57014" | "55P03" | "25P03") => Error::Unavailable(e.into()),
        Some(_) => Error::Internal(e.into()),
        None => match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Error::Unavailable(e.into()),
            other => Error::Internal(other.into()),
        },
    }
}

/// A connection could not be had: whatever the cause (no free connection
/// in time, a database down, restarting or refusing connections, a TLS
/// negotiation cut short, a refused login), the database is out of reach
/// for now, which is no fault of the caller's: `Unavailable`, retryable,
/// with the cause for the log. A reply to the TLS request that is not
/// PostgreSQL's (a server still starting, a proxy cutting connections)
/// is a protocol error to sqlx, and was INTERNAL before
/// (`faults::a_database_outage_gives_only_unavailable_and_loses_nothing`).
fn acquire_error(e: sqlx::Error) -> Error {
    match db_error(e) {
        Error::Internal(cause) => Error::Unavailable(cause),
        other => other,
    }
}

/// The constraint a unique violation tripped, if that is what `e` is.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    let d = e.as_database_error()?;
    if d.code().as_deref() == Some("23505") {
        d.constraint()
    } else {
        None
    }
}
