//! Loading a call for an action on it: the call row, its channels, and the
//! agents the action may move, as of one snapshot and without locks (the
//! write that follows checks they did not change: `changes::apply`).

use std::sync::LazyLock;

use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::states::ChannelState;
use crate::domain::{Agent, Call, Channel};
use crate::error::Error;

use super::changes::Versions;
use super::rows::{Row, Versioned, agents_and_versions};
use sqlx::PgConnection;

use super::db_error;

/// Everything a call action decides on, as of one snapshot.
#[derive(Debug, Clone)]
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
///
/// Written with its parameters' positions given (instance, job, actor, the
/// live states), so the apply that reads the call when it finds it moved
/// (`changes::apply_or_read`) reads exactly this: `call_read_cte!` is the
/// channels' CTE, `call_read_columns!` the four columns of
/// [`LoadColumns`].
macro_rules! call_read_cte {
    ($instance:literal, $job:literal) => {
        concat!(
            "ch AS MATERIALIZED (
         SELECT idx, user_id, channel_state, ROW(",
            crate::store::rows::channel_columns!(),
            ") AS r
         FROM channels WHERE instance_id = ",
            $instance,
            " AND job_id = ",
            $job,
            "
     )"
        )
    };
}

/// See [`call_read_cte!`].
macro_rules! call_read_columns {
    ($instance:literal, $job:literal, $actor:literal, $live:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM instances WHERE instance_id = ",
            $instance,
            "),
         (SELECT ROW(",
            crate::store::rows::call_columns!(),
            ") FROM calls WHERE instance_id = ",
            $instance,
            " AND job_id = ",
            $job,
            "),
         ARRAY(SELECT r FROM ch ORDER BY idx),
         ARRAY(SELECT ROW(",
            crate::store::rows::agent_columns!(),
            ") FROM agents
               WHERE instance_id = ",
            $instance,
            "
                 AND user_id = ANY (
                     ARRAY(SELECT user_id FROM ch WHERE channel_state = ANY (",
            $live,
            ")) || ",
            $actor,
            "::text)
               ORDER BY user_id)"
        )
    };
}

pub(crate) use {call_read_columns, call_read_cte};

/// The read itself, on its own.
const LOAD: &str = concat!(
    "WITH ",
    call_read_cte!("$1", "$2"),
    "
     SELECT ",
    call_read_columns!("$1", "$2", "$3", "$4")
);

/// What [`LOAD`] returns: whether the instance exists, the call, its
/// channels and the agents.
pub(crate) type LoadColumns = (
    bool,
    Option<Versioned<Call>>,
    Vec<Row<Channel>>,
    Vec<Versioned<Agent>>,
);

/// The states in which a channel's agent is read with the call, as bound:
/// made once, not on every action.
pub(crate) static LIVE_STATES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| ChannelState::LIVE.iter().map(|s| s.as_str()).collect());

/// Reads call `job` of `instance` with its channels, the agent `actor` (if
/// given) and every agent with a live channel in the call.
pub async fn load(
    conn: &mut PgConnection,
    instance: &InstanceId,
    job: &JobId,
    actor: Option<&UserId>,
) -> Result<LoadedCall, Error> {
    let columns: LoadColumns = sqlx::query_as(LOAD)
        .bind(instance.as_str())
        .bind(job.as_str())
        .bind(actor.map(UserId::as_str))
        .bind(&*LIVE_STATES)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(loaded(columns))
}

/// The call as [`LOAD`] (or the same read in another statement) found it.
pub(crate) fn loaded(columns: LoadColumns) -> LoadedCall {
    let (instance_exists, call, channels, agents) = columns;
    let call_version = call.as_ref().map(|c| c.version);
    let (agents, agent_versions) = agents_and_versions(agents);
    LoadedCall {
        instance_exists,
        call: call.map(|c| c.into_call(channels)),
        agents,
        versions: Versions {
            call: call_version,
            agents: agent_versions,
        },
    }
}
