//! Access tokens: stored by hash only, found by hash, revoked by handle.

use crate::domain::access::{Caller, Role, TokenGrant};
use crate::domain::ids::{InstanceId, Millis, UserId};
use crate::error::Error;

use super::changes::Event;
use sqlx::PgConnection;

use super::db_error;

/// A token as listed: everything but the secret (which is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub role: Role,
    /// `None`: an operator token.
    pub instance_id: Option<InstanceId>,
    pub user_id: Option<UserId>,
    pub created_at: Millis,
    pub created_by: String,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

type Row = (
    String,
    String,
    String,
    Option<String>,
    Millis,
    String,
    Option<Millis>,
    Option<Millis>,
);

const COLUMNS: &str =
    "instance_id, token_id, role, user_id, created_at, created_by, expires_at, revoked_at";

fn record(row: Row) -> Result<TokenRecord, Error> {
    let (instance_id, token_id, role, user_id, created_at, created_by, expires_at, revoked_at) =
        row;
    let role = Role::parse(&role)
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("unknown stored role {role:?}")))?;
    Ok(TokenRecord {
        token_id,
        role,
        instance_id: (!instance_id.is_empty()).then(|| InstanceId::from_trusted(instance_id)),
        user_id: user_id.map(UserId::from_trusted),
        created_at,
        created_by,
        expires_at,
        revoked_at,
    })
}

impl TokenRecord {
    pub fn grant(&self) -> TokenGrant {
        TokenGrant {
            caller: Caller {
                token_id: self.token_id.clone(),
                role: self.role,
                instance: self.instance_id.clone(),
                user: self.user_id.clone(),
            },
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// The token whose hash is `hash`, revoked or not.
pub async fn find_by_hash(
    conn: &mut PgConnection,
    hash: &[u8; 32],
) -> Result<Option<TokenRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM access_tokens WHERE token_hash = $1"
    ))
    .bind(hash.as_slice())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    row.map(record).transpose()
}

/// The token with handle `token_id`, in whatever instance.
pub async fn find_by_id(
    conn: &mut PgConnection,
    token_id: &str,
) -> Result<Option<TokenRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM access_tokens WHERE token_id = $1"
    ))
    .bind(token_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    row.map(record).transpose()
}

/// Stores a new token by its hash. For an instance's token it also checks,
/// in the same statement, that the instance (and for an agent token, the
/// agent) exists, and appends `event` (an operator's token has no instance
/// to record it in). Returns `(instance exists, agent exists)` as found;
/// nothing is written unless both hold.
pub async fn insert(
    conn: &mut PgConnection,
    token: &TokenRecord,
    hash: &[u8; 32],
    event: &Event<'_>,
) -> Result<(bool, bool), Error> {
    let instance = token.instance_id.as_ref().map_or("", |i| i.as_str());
    sqlx::query_as(
        r#"
        WITH ok AS (
            SELECT
                ($1 = '' OR EXISTS (SELECT 1 FROM instances WHERE instance_id = $1)) AS instance_exists,
                ($4::text IS NULL OR EXISTS (SELECT 1 FROM agents WHERE instance_id = $1 AND user_id = $4)) AS user_exists
        ), t AS (
            INSERT INTO access_tokens (instance_id, token_id, role, user_id, token_hash,
                                       created_at, created_by, expires_at)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM ok
            WHERE ok.instance_exists AND ok.user_exists
            RETURNING instance_id
        ), ev AS (
            INSERT INTO events (instance_id, request_id, action, actor, after)
            SELECT t.instance_id, $9, $10, $7, $11 FROM t
            WHERE t.instance_id <> ''
        )
        SELECT instance_exists, user_exists FROM ok
        "#,
    )
    .bind(instance)
    .bind(&token.token_id)
    .bind(token.role.as_str())
    .bind(token.user_id.as_ref().map(UserId::as_str))
    .bind(hash.as_slice())
    .bind(token.created_at)
    .bind(&token.created_by)
    .bind(token.expires_at)
    .bind(event.request_id)
    .bind(event.action)
    .bind(&event.after)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)
}

/// Marks token `token_id` of `instance` (`None`: an operator's) revoked at
/// `now`, if it is not already, appending `event` when it newly is (and has
/// an instance); returns the token as it is afterwards, or `None` if there
/// is no such token.
pub async fn revoke(
    conn: &mut PgConnection,
    instance: Option<&InstanceId>,
    token_id: &str,
    now: Millis,
    event: &Event<'_>,
) -> Result<Option<TokenRecord>, Error> {
    let instance = instance.map_or("", |i| i.as_str());
    let row: Option<Row> = sqlx::query_as(&format!(
        r#"
        WITH upd AS (
            UPDATE access_tokens SET revoked_at = coalesce(revoked_at, $3)
            WHERE instance_id = $1 AND token_id = $2
            RETURNING *, (revoked_at = $3) AS newly
        ), ev AS (
            INSERT INTO events (instance_id, request_id, action, actor, after)
            SELECT upd.instance_id, $4, $5, $6, $7 FROM upd
            WHERE upd.newly AND upd.instance_id <> ''
        )
        SELECT {COLUMNS} FROM upd
        "#
    ))
    .bind(instance)
    .bind(token_id)
    .bind(now)
    .bind(event.request_id)
    .bind(event.action)
    .bind(event.actor)
    .bind(&event.after)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    row.map(record).transpose()
}

/// Every token of `instance` (all instances when `None`), oldest first.
pub async fn list(
    conn: &mut PgConnection,
    instance: Option<&InstanceId>,
) -> Result<Vec<TokenRecord>, Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM access_tokens
         WHERE $1::text IS NULL OR instance_id = $1
         ORDER BY created_at, token_id"
    ))
    .bind(instance.map(InstanceId::as_str))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    rows.into_iter().map(record).collect()
}
