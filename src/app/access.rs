//! Authentication (which token, whose) and token management: create, revoke,
//! list. Decisions about what a caller may do are in `domain::access`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgConnection;

use crate::domain::access::{self, AccessToken, Caller, Role, TokenGrant};
use crate::domain::ids::{InstanceId, UserId};
use crate::error::Error;
use crate::store::changes::{Event, JsonText};
use crate::store::provisioning;
use crate::store::tokens::{self, TokenRecord};

use super::unit::{Atomicity, Lane};
use super::{App, Done, Idempotent, RequestContext, now, shared};

/// Most tokens remembered at once; the cache is emptied when full.
const CACHE_CAPACITY: usize = 10_000;

/// Token hash → when it was looked up, and what was found (`None`: no such
/// token, remembered too so a flood of bad tokens does not reach the
/// database).
type Entries = HashMap<[u8; 32], (Instant, Option<TokenGrant>)>;

/// Remembers recent token lookups for a short time, so a busy agent does
/// not cost a database round trip per request. A revocation therefore takes
/// up to the TTL to reach other replicas (this one forgets at once); expiry
/// is checked on every use. A TTL of zero turns the cache off.
#[derive(Debug, Clone)]
pub struct TokenCache {
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Option<TokenGrant>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, grant)| grant.clone())
    }

    fn put(&self, hash: [u8; 32], grant: Option<TokenGrant>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(hash, (Instant::now(), grant));
    }

    fn forget_token(&self, token_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .retain(|_, (_, grant)| grant.as_ref().is_none_or(|g| g.caller.token_id != token_id));
    }
}

/// CreateAccessToken, from the API or the command line.
#[derive(Debug, Clone)]
pub struct CreateAccessToken {
    /// `None`: an operator token (command line only).
    pub instance_id: Option<InstanceId>,
    pub role: Role,
    pub user_id: Option<UserId>,
    pub expires_in_seconds: Option<i64>,
}

/// A new token: its record, and the secret, shown once.
#[derive(Debug)]
pub struct CreatedToken {
    pub record: TokenRecord,
    pub token: AccessToken,
}

impl App {
    /// Who holds `bearer`, if it is a live token. A lookup that misses the
    /// cache draws on the lookups' share of the pool (see `unit`).
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        deadline: Instant,
    ) -> Result<Caller, Error> {
        let token = bearer
            .and_then(AccessToken::parse)
            .ok_or(Error::Unauthenticated)?;
        let hash = token.hash();
        let cached = self.tokens.get(&hash);
        crate::measure::token_cache(cached.is_some());
        let grant = match cached {
            Some(cached) => cached,
            None => {
                let found = self
                    .statement("Authenticate", Lane::Lookup, deadline, move |conn| {
                        Box::pin(async move { tokens::find_by_hash(conn, &hash).await })
                    })
                    .await?
                    .map(|r| r.grant());
                self.tokens.put(hash, found.clone());
                found
            }
        };
        let caller = grant
            .as_ref()
            .and_then(|g| g.usable_at(now()))
            .ok_or(Error::Unauthenticated)?;
        tracing::debug!(token_id = %caller.token_id, role = %caller.role, "authenticated");
        Ok(caller.clone())
    }

    /// Creates a token. It takes no idempotency key: its response carries
    /// the secret, which is never stored.
    pub async fn create_access_token(
        &self,
        ctx: &RequestContext,
        cmd: &CreateAccessToken,
    ) -> Result<CreatedToken, Error> {
        let job = shared(ctx, cmd);
        let created = self
            .write(
                "CreateAccessToken",
                None,
                ctx.deadline,
                Atomicity::Transaction,
                None,
                move |conn| {
                    let job = job.clone();
                    Box::pin(async move { try_create_access_token(conn, &job.0, &job.1).await })
                },
            )
            .await?
            .fresh()?;
        let record = &created.record;
        let instance = record.instance_id.as_ref().map_or("", |i| i.as_str());
        tracing::info!(token_id = %record.token_id, role = %record.role, instance, "access token created");
        Ok(created)
    }

    /// Revokes token `token_id` of `instance` (`None`: an operator's).
    /// Revoking a revoked token changes nothing and succeeds.
    pub async fn revoke_access_token(
        &self,
        ctx: &RequestContext,
        instance: Option<&InstanceId>,
        token_id: &str,
        idempotent: Option<Idempotent<TokenRecord>>,
    ) -> Result<Done<TokenRecord>, Error> {
        let job = shared(ctx, &(instance.cloned(), token_id.to_owned()));
        let done = self
            .write(
                "RevokeAccessToken",
                None,
                ctx.deadline,
                Atomicity::Transaction,
                idempotent,
                move |conn| {
                    let job = job.clone();
                    Box::pin(async move {
                        let (ctx, (instance, token_id)) = &*job;
                        try_revoke_access_token(conn, ctx, instance.as_ref(), token_id).await
                    })
                },
            )
            .await?;
        self.tokens.forget_token(token_id);
        tracing::info!(token_id, "access token revoked");
        Ok(done)
    }

    /// The token with handle `token_id`, in whatever instance (the command
    /// line revokes by handle alone).
    pub async fn find_access_token(
        &self,
        ctx: &RequestContext,
        token_id: &str,
    ) -> Result<Option<TokenRecord>, Error> {
        let token_id = token_id.to_owned();
        self.statement("FindAccessToken", Lane::Read, ctx.deadline, move |conn| {
            let token_id = token_id.clone();
            Box::pin(async move { tokens::find_by_id(conn, &token_id).await })
        })
        .await
    }

    pub async fn list_access_tokens(
        &self,
        ctx: &RequestContext,
        instance: Option<&InstanceId>,
    ) -> Result<Vec<TokenRecord>, Error> {
        let instance = instance.cloned();
        self.statement("ListAccessTokens", Lane::Read, ctx.deadline, move |conn| {
            let instance = instance.clone();
            Box::pin(async move { tokens::list(conn, instance.as_ref()).await })
        })
        .await
    }
}

async fn try_create_access_token(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &CreateAccessToken,
) -> Result<CreatedToken, Error> {
    let token = AccessToken::from_random(rand::random());
    let now = now();
    let record = TokenRecord {
        token_id: access::token_id(rand::random()),
        role: cmd.role,
        instance_id: cmd.instance_id.clone(),
        user_id: cmd.user_id.clone(),
        created_at: now,
        created_by: ctx.actor.clone(),
        expires_at: cmd.expires_in_seconds.map(|s| now + s * 1000),
        revoked_at: None,
    };
    let event = Event {
        request_id: &ctx.request_id,
        action: "CreateAccessToken",
        actor: &ctx.actor,
        before: None,
        after: JsonText::of(&token_json(&record))?,
    };
    let (instance_exists, user_exists) =
        tokens::insert(conn, &record, &token.hash(), &event).await?;
    let instance = record.instance_id.as_ref().map_or("", |i| i.as_str());
    if !instance_exists {
        return Err(Error::InstanceNotFound(instance.to_owned()));
    }
    if !user_exists {
        let user = record.user_id.as_ref().map_or("", |u| u.as_str());
        return Err(Error::user_not_found(user, instance));
    }
    Ok(CreatedToken { record, token })
}

async fn try_revoke_access_token(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    instance: Option<&InstanceId>,
    token_id: &str,
) -> Result<TokenRecord, Error> {
    if let Some(id) = instance
        && !provisioning::instance_exists(conn, id).await?
    {
        return Err(Error::InstanceNotFound(id.to_string()));
    }
    let event = Event {
        request_id: &ctx.request_id,
        action: "RevokeAccessToken",
        actor: &ctx.actor,
        before: None,
        after: JsonText::of(&json!({ "token_id": token_id }))?,
    };
    tokens::revoke(conn, instance, token_id, now(), &event)
        .await?
        .ok_or_else(|| Error::TokenNotFound {
            token_id: token_id.to_owned(),
            instance_id: instance.map_or("", |i| i.as_str()).to_owned(),
        })
}

/// A token as events record it: no secret, no hash.
fn token_json(t: &TokenRecord) -> serde_json::Value {
    json!({
        "token": {
            "token_id": t.token_id,
            "role": t.role.as_str(),
            "instance_id": t.instance_id,
            "user_id": t.user_id,
            "expires_at": t.expires_at,
        }
    })
}
