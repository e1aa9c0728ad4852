//! Reading an agent's state and its current or last call, without locks:
//! PollUserStatus.

use crate::domain::ids::{InstanceId, UserId};
use crate::domain::{Agent, Call};
use crate::error::Error;

use super::rows::{AgentRow, CallRow, ChannelRow, decode};
use sqlx::PgConnection;

use super::db_error;

#[derive(Debug)]
pub struct UserStatus {
    pub instance_exists: bool,
    pub agent: Option<Agent>,
    /// The agent's current or last call.
    pub call: Option<Call>,
    /// The latest event that changed the agent or that call.
    pub context_id: i64,
}

/// One statement, so the agent and its call come from one snapshot.
const POLL: &str = r#"
WITH a AS (
    SELECT * FROM agents WHERE instance_id = $1 AND user_id = $2
), c AS (
    SELECT calls.* FROM calls JOIN a USING (instance_id, job_id)
)
SELECT
    EXISTS (SELECT 1 FROM instances WHERE instance_id = $1) AS instance_exists,
    (SELECT to_jsonb(a) FROM a) AS agent,
    (SELECT to_jsonb(c) FROM c) AS call,
    (SELECT coalesce(jsonb_agg(to_jsonb(ch) ORDER BY ch.idx), '[]')
     FROM channels ch JOIN c USING (instance_id, job_id)) AS channels
"#;

pub async fn poll(
    conn: &mut PgConnection,
    instance: &InstanceId,
    user: &UserId,
) -> Result<UserStatus, Error> {
    let (instance_exists, agent, call, channels): (
        bool,
        Option<serde_json::Value>,
        Option<serde_json::Value>,
        serde_json::Value,
    ) = sqlx::query_as(POLL)
        .bind(instance.as_str())
        .bind(user.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;

    let mut context_id = 0;
    let agent = match agent {
        Some(row) => {
            let row: AgentRow = decode(row)?;
            context_id = row.context_id;
            Some(row.into_agent())
        }
        None => None,
    };
    let call = match call {
        Some(row) => {
            let row: CallRow = decode(row)?;
            context_id = context_id.max(row.context_id);
            let channels: Vec<ChannelRow> = decode(channels)?;
            Some(row.into_call(channels))
        }
        None => None,
    };
    Ok(UserStatus {
        instance_exists,
        agent,
        call,
        context_id,
    })
}
