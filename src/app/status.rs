//! PollUserStatus and ReadyForService: an agent's state.

use crate::domain::ids::{Extension, InstanceId, UserId};
use crate::domain::{Agent, Call, Changes, events};
use crate::error::Error;
use crate::store::agents::LoadedAgents;
use crate::store::changes::Event;
use crate::store::status;

use super::on_agents::{OnAgents, act_on_agents};
use super::unit::{Atomicity, Lane};
use super::{
    App, Before, Decided, Done, Idempotent, RequestContext, agent_row, change_event, shared,
};

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
        let (job, known) = (shared(ctx, cmd), self.known.clone());
        self.write(
            "ReadyForService",
            Some(agent_row(&cmd.instance_id, &cmd.user_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let (job, known) = (job.clone(), known.clone());
                Box::pin(async move { act_on_agents(conn, &job.0, &job.1, &known).await })
            },
        )
        .await
    }
}

impl OnAgents for ReadyForService {
    type Answer = (Agent, i64);

    fn instance(&self) -> &InstanceId {
        &self.instance_id
    }

    fn user(&self) -> &UserId {
        &self.user_id
    }

    fn extensions(&self) -> Vec<Extension> {
        Vec::new()
    }

    fn decide(&self, found: &LoadedAgents) -> Result<Decided<(Agent, i64)>, Error> {
        let agent = found
            .agent(&self.user_id)
            .ok_or_else(|| Error::user_not_found(&self.user_id, &self.instance_id))?;
        let ready = agent.ready_for_service(self.outbound_scenario)?;
        Ok(if &ready == agent {
            Decided::Unchanged((ready, found.versions.of_agent(&self.user_id)))
        } else {
            Decided::Changed(Changes::of_agent(ready))
        })
    }

    fn event<'a>(
        &self,
        ctx: &'a RequestContext,
        found: &LoadedAgents,
        changes: &Changes,
    ) -> Result<Event<'a>, Error> {
        let before = Before {
            call: None,
            agents: &found.agents,
        };
        change_event(ctx, "ReadyForService", Some(before), changes)
    }

    fn answer(&self, _found: &LoadedAgents, changes: Changes, context_id: i64) -> (Agent, i64) {
        let [ready] = <[Agent; 1]>::try_from(changes.agents).expect("one agent changed");
        (ready, context_id)
    }
}
