//! Creating instances and agents, each with its event row.

use crate::domain::Agent;
use crate::domain::ids::{Extension, InstanceId, LoginName, Millis, PhoneNumber};
use crate::error::Error;

use super::changes::Event;
use sqlx::PgConnection;

use super::{db_error, unique_violation};

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub instance_id: InstanceId,
    pub name: String,
    pub description: String,
    pub created_at: Millis,
}

const CREATE_INSTANCE: &str = r#"
WITH i AS (
    INSERT INTO instances (instance_id, name, description, created_at)
    VALUES ($1, $2, $3, $4)
    RETURNING instance_id
), ev AS (
    INSERT INTO events (instance_id, request_id, action, actor, after)
    SELECT i.instance_id, $5, $6, $7, $8 FROM i
    RETURNING event_id
)
SELECT event_id FROM ev
"#;

/// Inserts `instance` and `event`; returns the event's ID.
pub async fn create_instance(
    conn: &mut PgConnection,
    instance: &Instance,
    event: &Event<'_>,
) -> Result<i64, Error> {
    sqlx::query_scalar(CREATE_INSTANCE)
        .bind(instance.instance_id.as_str())
        .bind(&instance.name)
        .bind(&instance.description)
        .bind(instance.created_at)
        .bind(event.request_id)
        .bind(event.action)
        .bind(event.actor)
        .bind(&event.after)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match unique_violation(&e) {
            Some("instances_pkey") => Error::DuplicatedInstance(instance.instance_id.to_string()),
            _ => db_error(e),
        })
}

/// What provisioning knows of an agent beyond its state.
#[derive(Debug, Clone)]
pub struct Profile {
    pub login_name: LoginName,
    pub display_name: String,
    pub mobile: Option<PhoneNumber>,
}

pub async fn instance_exists(conn: &mut PgConnection, id: &InstanceId) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM instances WHERE instance_id = $1)")
        .bind(id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)
}

/// Locks instance `id` for the rest of the transaction, so agent creations
/// in one instance run one at a time; `false` if there is no such instance.
pub async fn lock_instance(conn: &mut PgConnection, id: &InstanceId) -> Result<bool, Error> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    Ok(found.is_some())
}

/// The lowest extension from 8001 on that no agent of the instance has
/// (among n agents, one of 8001..=8001+n is free). Run it under
/// [`lock_instance`] in a READ COMMITTED transaction, so it sees every
/// agent committed before.
pub async fn lowest_free_extension(
    conn: &mut PgConnection,
    id: &InstanceId,
) -> Result<Extension, Error> {
    let free: String = sqlx::query_scalar(
        r#"SELECT min(n)::text
           FROM generate_series(8001, 8001 + (SELECT count(*) FROM agents WHERE instance_id = $1)) AS n
           WHERE NOT EXISTS (SELECT 1 FROM agents WHERE instance_id = $1 AND extension = n::text)"#,
    )
    .bind(id.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(Extension::from_trusted(free))
}

/// The event goes in first so the agent row can point at it.
const INSERT_AGENT: &str = r#"
WITH ev AS (
    INSERT INTO events (instance_id, request_id, action, actor, user_ids, after)
    VALUES ($1, $14, $15, $16, ARRAY[$2::text], $17)
    RETURNING event_id
)
INSERT INTO agents (instance_id, user_id, login_name, display_name, extension, mobile,
                    work_mode, device_id, device_state, user_state, break_code,
                    outbound_scenario, signed_skill_groups, context_id)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, ev.event_id
FROM ev
RETURNING context_id
"#;

/// Inserts `agent` with its `profile`, and `event`; returns the event's ID.
pub async fn insert_agent(
    conn: &mut PgConnection,
    agent: &Agent,
    profile: &Profile,
    event: &Event<'_>,
) -> Result<i64, Error> {
    sqlx::query_scalar(INSERT_AGENT)
        .bind(agent.instance_id.as_str())
        .bind(agent.user_id.as_str())
        .bind(profile.login_name.as_str())
        .bind(&profile.display_name)
        .bind(agent.extension.as_str())
        .bind(profile.mobile.as_ref().map_or("", |m| m.as_str()))
        .bind(agent.work_mode.as_str())
        .bind(&agent.device_id)
        .bind(agent.device_state.as_str())
        .bind(agent.user_state.as_str())
        .bind(&agent.break_code)
        .bind(agent.outbound_scenario)
        .bind(&agent.signed_skill_groups)
        .bind(event.request_id)
        .bind(event.action)
        .bind(event.actor)
        .bind(&event.after)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match unique_violation(&e) {
            Some("agents_pkey" | "agents_login_name_key") => Error::DuplicatedLoginName {
                login_name: profile.login_name.to_string(),
                instance_id: agent.instance_id.to_string(),
            },
            Some("agents_extension_key") => Error::DuplicatedExtension {
                extension: agent.extension.to_string(),
                instance_id: agent.instance_id.to_string(),
            },
            _ => db_error(e),
        })
}
