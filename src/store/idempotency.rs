//! Idempotency keys: claiming one inside the unit's transaction, recording
//! the response before commit, and purging old ones.

use std::time::Duration;

use sqlx::PgConnection;

use crate::error::Error;

use super::db_error;

/// One use of an idempotency key: whose, for what, and a fingerprint of
/// the request it came with.
#[derive(Debug, Clone)]
pub struct KeyUse {
    /// The request's instance ('' for none).
    pub instance_id: String,
    /// The caller's token handle.
    pub caller: String,
    pub method: &'static str,
    pub key: String,
    /// SHA-256 of the encoded request.
    pub fingerprint: [u8; 32],
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours until the transaction ends.
    New,
    /// A committed first use with the same request: its response.
    Replay(Vec<u8>),
    /// A committed first use with another request.
    Mismatch,
}

/// Claims `key` in the caller's transaction. A first use that is still
/// running holds the row uncommitted, so this waits for it (up to the
/// session's lock timeout) and then replays what it committed; if it rolled
/// back, the key is free and this claims it.
pub async fn claim(conn: &mut PgConnection, key: &KeyUse) -> Result<Claim, Error> {
    let claimed: Option<i32> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (instance_id, caller, method, idempotency_key, request_hash)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING
         RETURNING 1",
    )
    .bind(&key.instance_id)
    .bind(&key.caller)
    .bind(key.method)
    .bind(&key.key)
    .bind(key.fingerprint.as_slice())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    if claimed.is_some() {
        return Ok(Claim::New);
    }
    // A new statement: at READ COMMITTED it sees the row that blocked us.
    let (hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys
         WHERE instance_id = $1 AND caller = $2 AND method = $3 AND idempotency_key = $4",
    )
    .bind(&key.instance_id)
    .bind(&key.caller)
    .bind(key.method)
    .bind(&key.key)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    if hash != key.fingerprint {
        return Ok(Claim::Mismatch);
    }
    response.map(Claim::Replay).ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "idempotency key of {} committed without a response",
            key.method
        ))
    })
}

/// Records the response of the claimed `key`, in the same transaction.
pub async fn record(conn: &mut PgConnection, key: &KeyUse, response: &[u8]) -> Result<(), Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response = $5
         WHERE instance_id = $1 AND caller = $2 AND method = $3 AND idempotency_key = $4",
    )
    .bind(&key.instance_id)
    .bind(&key.caller)
    .bind(key.method)
    .bind(&key.key)
    .bind(response)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Deletes up to `batch` keys older than `retention`; returns how many.
/// The one query not scoped by tenant: retention is the same for all, and
/// on a sharded database it runs on every shard alike.
pub async fn purge(conn: &mut PgConnection, retention: Duration, batch: i64) -> Result<u64, Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE (instance_id, caller, method, idempotency_key) IN (
             SELECT instance_id, caller, method, idempotency_key FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}
