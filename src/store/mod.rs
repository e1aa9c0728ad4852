//! PostgreSQL persistence, and nothing else: queries, row mapping and error
//! translation. No rule is decided here.
//!
//! Every call action is one transaction of exactly two statements: one that
//! locks and reads everything the decision needs ([`calls::load`],
//! [`agents::load`]) and one that writes the whole decision
//! ([`changes::apply`]). Those transactions run at REPEATABLE READ: the
//! locking read and the rest of its statement see one snapshot, and if a
//! locked row changed after that snapshot PostgreSQL refuses with a
//! serialization failure ([`Error::Contended`]) that the caller retries, so a
//! decision is never made on stale rows.

pub mod agents;
pub mod calls;
pub mod changes;
pub mod provisioning;
mod rows;
pub mod status;
pub mod tokens;

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::Error;

pub type Tx = Transaction<'static, Postgres>;

/// A cheap-to-clone handle on the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction for a call action: REPEATABLE READ, see the module doc.
    pub async fn begin_action(&self) -> Result<Tx, Error> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(db_error)
    }

    /// A READ COMMITTED transaction, where each statement sees what committed
    /// before it started (provisioning relies on that after taking a lock).
    pub async fn begin(&self) -> Result<Tx, Error> {
        self.pool.begin().await.map_err(db_error)
    }

    /// Whether the database answers; for the health service.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

pub async fn commit(tx: Tx) -> Result<(), Error> {
    tx.commit().await.map_err(db_error)
}

pub async fn rollback(tx: Tx) -> Result<(), Error> {
    tx.rollback().await.map_err(db_error)
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
        // cannot connect now, statement or lock timeout
        Some(s) if s.starts_with("08") || s.starts_with("57P") => Error::Unavailable(e.into()),
        Some("53300" | "57014" | "55P03") => Error::Unavailable(e.into()),
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

/// The constraint a unique violation tripped, if that is what `e` is.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    let d = e.as_database_error()?;
    if d.code().as_deref() == Some("23505") {
        d.constraint()
    } else {
        None
    }
}
