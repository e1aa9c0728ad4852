//! Loading a call for an action on it: the call row, its channels, and the
//! agents the action may move, locked call first, then agents by user ID.

use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::states::ChannelState;
use crate::domain::{Agent, Call};
use crate::error::Error;

use super::rows::{AgentRow, CallRow, ChannelRow, actor_context_id, decode};
use sqlx::PgConnection;

use super::db_error;

/// Everything a call action decides on, as of one snapshot, with the call
/// and agent rows locked until the transaction ends.
#[derive(Debug)]
pub struct LoadedCall {
    pub instance_exists: bool,
    pub call: Option<Call>,
    /// The acting agent (if it exists) and every agent with a live channel
    /// in the call, ordered by user ID.
    pub agents: Vec<Agent>,
    /// The last event that changed the call.
    pub call_context_id: i64,
    /// The last event that changed the acting agent (0 without one).
    pub actor_context_id: i64,
}

impl LoadedCall {
    pub fn agent(&self, user: &UserId) -> Option<&Agent> {
        self.agents.iter().find(|a| &a.user_id == user)
    }

    /// The latest event that changed the call or the acting agent: the
    /// ContextId of an action that changed nothing.
    pub fn latest_context_id(&self) -> i64 {
        self.call_context_id.max(self.actor_context_id)
    }
}

/// The one locking read of EndConference and ReportChannelEvent.
///
/// The CTEs run in dependency order: `c` locks the call row, `ch` reads its
/// channels (joined to `c`, so only once the call is locked), `ag` locks the
/// acting agent and the agents of live channels, sorted by user ID so two
/// transactions always lock agents in the same order. Which states are
/// "live" comes from the domain. The agents are named by one array (the
/// parties' IDs and the actor's), so they are found by primary key: an
/// `OR … IN (subquery)` here made PostgreSQL read every agent of the
/// instance (`tests/api/scale.rs`).
///
/// At READ COMMITTED a locking read that waited returns the newest version
/// of the rows it locked, but the channels are read from the snapshot the
/// statement started with. Every change to a channel also moves the call's
/// `context_id`, so comparing the locked row's with the snapshot's
/// (`seen_context_id`) tells whether the channels may be stale.
const LOAD: &str = r#"
WITH c AS MATERIALIZED (
    SELECT * FROM calls
    WHERE instance_id = $1 AND job_id = $2
    FOR NO KEY UPDATE
), ch AS MATERIALIZED (
    SELECT channels.* FROM channels JOIN c USING (instance_id, job_id)
), ag AS MATERIALIZED (
    SELECT agents.* FROM agents
    WHERE agents.instance_id = $1
      AND agents.user_id = ANY (
          ARRAY(SELECT user_id FROM ch WHERE channel_state = ANY($4)) || $3::text)
    ORDER BY agents.user_id
    FOR NO KEY UPDATE
)
SELECT
    EXISTS (SELECT 1 FROM instances WHERE instance_id = $1) AS instance_exists,
    (SELECT to_jsonb(c) FROM c) AS call,
    (SELECT context_id FROM calls WHERE instance_id = $1 AND job_id = $2) AS seen_context_id,
    (SELECT coalesce(jsonb_agg(to_jsonb(ch) ORDER BY ch.idx), '[]') FROM ch) AS channels,
    (SELECT coalesce(jsonb_agg(to_jsonb(ag) ORDER BY ag.user_id), '[]') FROM ag) AS agents
"#;

type Loaded = (
    bool,
    Option<serde_json::Value>,
    Option<i64>,
    serde_json::Value,
    serde_json::Value,
);

/// Locks and reads call `job` of `instance` with its channels, the agent
/// `actor` (if given) and every agent with a live channel in the call.
///
/// If the call changed while this waited for its lock, reads again: the
/// lock is held by then, so the second read is current. That costs a round
/// trip only to the actions that waited.
pub async fn load(
    conn: &mut PgConnection,
    instance: &InstanceId,
    job: &JobId,
    actor: Option<&UserId>,
) -> Result<LoadedCall, Error> {
    let live: Vec<&str> = ChannelState::LIVE.iter().map(|s| s.as_str()).collect();
    let mut reads = 0;
    let (instance_exists, call, channels, agents) = loop {
        let (instance_exists, call, seen_context_id, channels, agents): Loaded =
            sqlx::query_as(LOAD)
                .bind(instance.as_str())
                .bind(job.as_str())
                .bind(actor.map(UserId::as_str))
                .bind(&live)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
        let locked_context_id = call
            .as_ref()
            .and_then(|c| c.get("context_id"))
            .and_then(serde_json::Value::as_i64);
        if locked_context_id == seen_context_id {
            break (instance_exists, call, channels, agents);
        }
        reads += 1;
        if reads == 2 {
            // Cannot happen while we hold the lock; if it does, start over.
            return Err(Error::Contended(anyhow::anyhow!(
                "call {job} changed under its lock"
            )));
        }
        tracing::debug!(%job, "the call changed while waiting for its lock; reading again");
    };

    let (call, call_context_id) = match call {
        Some(row) => {
            let row: CallRow = decode(row)?;
            let context_id = row.context_id;
            let channels: Vec<ChannelRow> = decode(channels)?;
            (Some(row.into_call(channels)), context_id)
        }
        None => (None, 0),
    };
    let rows: Vec<AgentRow> = decode(agents)?;
    Ok(LoadedCall {
        instance_exists,
        call,
        actor_context_id: actor_context_id(&rows, actor),
        agents: rows.into_iter().map(AgentRow::into_agent).collect(),
        call_context_id,
    })
}
