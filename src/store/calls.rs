//! Loading a call for an action on it: the call row, its channels, and the
//! agents the action may move, as of one snapshot and without locks (the
//! write that follows checks they did not change: `changes::apply`).

use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::states::ChannelState;
use crate::domain::{Agent, Call, Channel};
use crate::error::Error;

use super::changes::Versions;
use super::rows::{
    Row, Versioned, agent_columns, agents_and_versions, call_columns, channel_columns,
};
use sqlx::PgConnection;

use super::db_error;

/// Everything a call action decides on, as of one snapshot.
#[derive(Debug)]
pub struct LoadedCall {
    pub instance_exists: bool,
    pub call: Option<Call>,
    /// The acting agent (if it exists) and every agent with a live channel
    /// in the call, ordered by user ID.
    pub agents: Vec<Agent>,
    /// What the write must find unchanged: the last event that changed the
    /// call and each agent.
    pub versions: Versions,
}

impl LoadedCall {
    pub fn agent(&self, user: &UserId) -> Option<&Agent> {
        self.agents.iter().find(|a| &a.user_id == user)
    }
}

/// The one read of EndConference and ReportChannelEvent: the call, its
/// channels, the acting agent and the agents of live channels (which states
/// are "live" comes from the domain). One statement, so one snapshot. The
/// agents are named by one array (the parties' IDs and the actor's), so
/// they are found by primary key: an `OR … IN (subquery)` here made
/// PostgreSQL read every agent of the instance (`tests/api/scale.rs`).
const LOAD: &str = concat!(
    "WITH ch AS MATERIALIZED (
         SELECT idx, user_id, channel_state, ROW(",
    channel_columns!(),
    ") AS r
         FROM channels WHERE instance_id = $1 AND job_id = $2
     )
     SELECT
         EXISTS (SELECT 1 FROM instances WHERE instance_id = $1),
         (SELECT ROW(",
    call_columns!(),
    ") FROM calls WHERE instance_id = $1 AND job_id = $2),
         ARRAY(SELECT r FROM ch ORDER BY idx),
         ARRAY(SELECT ROW(",
    agent_columns!(),
    ") FROM agents
               WHERE instance_id = $1
                 AND user_id = ANY (
                     ARRAY(SELECT user_id FROM ch WHERE channel_state = ANY ($4)) || $3::text)
               ORDER BY user_id)"
);

/// What [`LOAD`] returns: whether the instance exists, the call, its
/// channels and the agents.
type LoadColumns = (
    bool,
    Option<Versioned<Call>>,
    Vec<Row<Channel>>,
    Vec<Versioned<Agent>>,
);

/// Reads call `job` of `instance` with its channels, the agent `actor` (if
/// given) and every agent with a live channel in the call.
pub async fn load(
    conn: &mut PgConnection,
    instance: &InstanceId,
    job: &JobId,
    actor: Option<&UserId>,
) -> Result<LoadedCall, Error> {
    let live: Vec<&str> = ChannelState::LIVE.iter().map(|s| s.as_str()).collect();
    let (instance_exists, call, channels, agents): LoadColumns = sqlx::query_as(LOAD)
        .bind(instance.as_str())
        .bind(job.as_str())
        .bind(actor.map(UserId::as_str))
        .bind(&live)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;

    let call_version = call.as_ref().map(|c| c.version);
    let (agents, agent_versions) = agents_and_versions(agents);
    Ok(LoadedCall {
        instance_exists,
        call: call.map(|c| c.into_call(channels)),
        agents,
        versions: Versions {
            call: call_version,
            agents: agent_versions,
        },
    })
}
