//! Reading an agent's state and its current or last call, without locks:
//! PollUserStatus.

use crate::domain::ids::{InstanceId, UserId};
use crate::domain::{Agent, Call, Channel};
use crate::error::Error;

use super::rows::{Row, Versioned, agent_columns, call_columns, channel_columns};
use sqlx::PgConnection;

use super::db_error;

#[derive(Debug)]
pub struct UserStatus {
    pub instance_exists: bool,
    pub agent: Option<Agent>,
    /// The agent's current or last call.
    pub call: Option<Call>,
    /// The last event that changed the agent, and the call.
    pub agent_version: Option<i64>,
    pub call_version: Option<i64>,
}

/// One statement, so the agent and its call come from one snapshot.
const POLL: &str = concat!(
    "WITH a AS MATERIALIZED (
         SELECT job_id, ROW(",
    agent_columns!(),
    ") AS r FROM agents WHERE instance_id = $1 AND user_id = $2
     )
     SELECT
         EXISTS (SELECT 1 FROM instances WHERE instance_id = $1),
         (SELECT r FROM a),
         (SELECT ROW(",
    call_columns!(),
    ") FROM calls WHERE instance_id = $1 AND job_id = (SELECT job_id FROM a)),
         ARRAY(SELECT ROW(",
    channel_columns!(),
    ") FROM channels WHERE instance_id = $1 AND job_id = (SELECT job_id FROM a)
               ORDER BY idx)"
);

/// What [`POLL`] returns: whether the instance exists, the agent, its call
/// and the call's channels.
type PollColumns = (
    bool,
    Option<Versioned<Agent>>,
    Option<Versioned<Call>>,
    Vec<Row<Channel>>,
);

pub async fn poll(
    conn: &mut PgConnection,
    instance: &InstanceId,
    user: &UserId,
) -> Result<UserStatus, Error> {
    let (instance_exists, agent, call, channels): PollColumns = sqlx::query_as(POLL)
        .bind(instance.as_str())
        .bind(user.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;

    Ok(UserStatus {
        instance_exists,
        agent_version: agent.as_ref().map(|a| a.version),
        call_version: call.as_ref().map(|c| c.version),
        agent: agent.map(|a| a.row),
        call: call.map(|c| c.into_call(channels)),
    })
}
