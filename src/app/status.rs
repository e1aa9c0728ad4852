//! PollUserStatus and ReadyForService: an agent's state.

use sqlx::PgConnection;

use crate::domain::ids::{InstanceId, UserId};
use crate::domain::{Agent, Call, Changes, events};
use crate::error::Error;
use crate::store::changes;
use crate::store::status;

use super::conference::open_agents;
use super::unit::{Atomicity, Lane};
use super::{App, Before, Done, Idempotent, RequestContext, agent_row, change_event, shared};

#[derive(Debug, Clone)]
pub struct PollUserStatus {
    pub instance_id: InstanceId,
    pub user_id: UserId,
}

#[derive(Debug, Clone)]
pub struct ReadyForService {
    pub instance_id: InstanceId,
    pub user_id: UserId,
    pub outbound_scenario: bool,
}

/// An agent and its current or last call.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub agent: Agent,
    pub call: Option<Call>,
    pub context_id: i64,
}

impl App {
    pub async fn poll_user_status(
        &self,
        ctx: &RequestContext,
        cmd: &PollUserStatus,
    ) -> Result<AgentStatus, Error> {
        let owned = cmd.clone();
        let found = self
            .statement("PollUserStatus", Lane::Read, ctx.deadline, move |conn| {
                let cmd = owned.clone();
                Box::pin(async move { status::poll(conn, &cmd.instance_id, &cmd.user_id).await })
            })
            .await?;
        if !found.instance_exists {
            return Err(Error::InstanceNotFound(cmd.instance_id.to_string()));
        }
        let agent = found
            .agent
            .ok_or_else(|| Error::user_not_found(&cmd.user_id, &cmd.instance_id))?;
        Ok(AgentStatus {
            agent,
            call: found.call,
            context_id: events::latest_context_id([found.agent_version, found.call_version]),
        })
    }

    /// Returns the agent, READY, and the ContextId to report.
    pub async fn ready_for_service(
        &self,
        ctx: &RequestContext,
        cmd: &ReadyForService,
        idempotent: Option<Idempotent<(Agent, i64)>>,
    ) -> Result<Done<(Agent, i64)>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "ReadyForService",
            Some(agent_row(&cmd.instance_id, &cmd.user_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_ready_for_service(conn, &job.0, &job.1).await })
            },
        )
        .await
    }
}

async fn try_ready_for_service(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &ReadyForService,
) -> Result<(Agent, i64), Error> {
    let loaded = open_agents(conn, &cmd.instance_id, &cmd.user_id, &[]).await?;
    let agent = loaded
        .agent(&cmd.user_id)
        .ok_or_else(|| Error::user_not_found(&cmd.user_id, &cmd.instance_id))?;
    let ready = agent.ready_for_service(cmd.outbound_scenario)?;
    if &ready == agent {
        return Ok((ready, loaded.versions.of_agent(&cmd.user_id)));
    }
    let changes = Changes::of_agent(ready);
    let before = Before {
        call: None,
        agents: std::slice::from_ref(agent),
    };
    let event = change_event(ctx, "ReadyForService", Some(before), &changes)?;
    let context_id =
        changes::apply(conn, &cmd.instance_id, &event, &changes, &loaded.versions).await?;
    let [ready] = <[Agent; 1]>::try_from(changes.agents).expect("one agent changed");
    Ok((ready, context_id))
}
