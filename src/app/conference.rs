//! StartConference, EndConference and ReportChannelEvent.

use crate::domain::conference::{self, NewCall};
use crate::domain::events;
use crate::domain::ids::{ChannelId, Extension, InstanceId, JobId, UserId};
use crate::domain::states::ChannelState;
use sqlx::PgConnection;

use crate::error::Error;
use crate::store::agents::{self, LoadedAgents};
use crate::store::calls::{self, LoadedCall};
use crate::store::changes;

use super::unit::Atomicity;
use super::{
    App, Before, CallAndAgent, Done, Idempotent, RequestContext, agent_row, call_row, change_event,
    now, shared,
};

#[derive(Debug, Clone)]
pub struct StartConference {
    pub instance_id: InstanceId,
    pub user_id: UserId,
    /// The parsed ParticipantListJson entries.
    pub participants: Vec<String>,
    pub timeout_seconds: i32,
    pub tags: String,
}

#[derive(Debug, Clone)]
pub struct EndConference {
    pub instance_id: InstanceId,
    pub user_id: UserId,
    pub job_id: JobId,
}

#[derive(Debug, Clone)]
pub struct ReportChannelEvent {
    pub instance_id: InstanceId,
    pub job_id: JobId,
    pub channel_id: ChannelId,
    pub state: ChannelState,
    pub release_initiator: Option<String>,
    pub release_reason: Option<String>,
}

/// A call after ReportChannelEvent, with the ContextId to report.
#[derive(Debug, Clone)]
pub struct ReportedCall {
    pub call: crate::domain::Call,
    pub context_id: i64,
}

impl App {
    pub async fn start_conference(
        &self,
        ctx: &RequestContext,
        cmd: &StartConference,
        idempotent: Option<Idempotent<CallAndAgent>>,
    ) -> Result<Done<CallAndAgent>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "StartConference",
            Some(agent_row(&cmd.instance_id, &cmd.user_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_start_conference(conn, &job.0, &job.1).await })
            },
        )
        .await
    }

    pub async fn end_conference(
        &self,
        ctx: &RequestContext,
        cmd: &EndConference,
        idempotent: Option<Idempotent<CallAndAgent>>,
    ) -> Result<Done<CallAndAgent>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "EndConference",
            Some(call_row(&cmd.instance_id, &cmd.job_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_end_conference(conn, &job.0, &job.1).await })
            },
        )
        .await
    }

    pub async fn report_channel_event(
        &self,
        ctx: &RequestContext,
        cmd: &ReportChannelEvent,
        idempotent: Option<Idempotent<ReportedCall>>,
    ) -> Result<Done<ReportedCall>, Error> {
        let job = shared(ctx, cmd);
        self.write(
            "ReportChannelEvent",
            Some(call_row(&cmd.instance_id, &cmd.job_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let job = job.clone();
                Box::pin(async move { try_report_channel_event(conn, &job.0, &job.1).await })
            },
        )
        .await
    }
}

async fn try_start_conference(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &StartConference,
) -> Result<CallAndAgent, Error> {
    // Only entries shaped like an extension can name an agent.
    let extensions: Vec<Extension> = cmd
        .participants
        .iter()
        .filter_map(|p| Extension::recognize(p))
        .collect();
    let loaded = open_agents(conn, &cmd.instance_id, &cmd.user_id, &extensions).await?;
    let initiator = loaded
        .agent(&cmd.user_id)
        .ok_or_else(|| Error::user_not_found(&cmd.user_id, &cmd.instance_id))?;
    let now = now();
    let new = NewCall {
        job_id: JobId::generate(now, rand::random()),
        now,
        timeout_seconds: cmd.timeout_seconds,
        tags: cmd.tags.clone(),
    };
    let changes = conference::start(initiator, &cmd.participants, &loaded.agents, new)?;
    let event = change_event(ctx, "StartConference", None, &changes)?;
    let context_id =
        changes::apply(conn, &cmd.instance_id, &event, &changes, &loaded.versions).await?;
    let agent = changes.agent_after(initiator).clone();
    let call = changes.call.expect("a started conference is a call");
    Ok(CallAndAgent {
        call,
        agent,
        context_id,
    })
}

async fn try_end_conference(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &EndConference,
) -> Result<CallAndAgent, Error> {
    let loaded = open_call(conn, &cmd.instance_id, &cmd.job_id, Some(&cmd.user_id)).await?;
    let leaver = loaded
        .agent(&cmd.user_id)
        .ok_or_else(|| Error::user_not_found(&cmd.user_id, &cmd.instance_id))?;
    let call = loaded
        .call
        .as_ref()
        .ok_or_else(|| Error::CallNotFound(cmd.job_id.to_string()))?;

    let Some(changes) = conference::leave(call, &loaded.agents, leaver, now())? else {
        // Already left: a retry. Nothing to write; report what is.
        return Ok(CallAndAgent {
            call: call.clone(),
            agent: leaver.clone(),
            context_id: events::latest_context_id([
                loaded.versions.call,
                Some(loaded.versions.of_agent(&cmd.user_id)),
            ]),
        });
    };
    let event = change_event(
        ctx,
        "EndConference",
        Some(Before {
            call: Some(call),
            agents: &loaded.agents,
        }),
        &changes,
    )?;
    let context_id =
        changes::apply(conn, &cmd.instance_id, &event, &changes, &loaded.versions).await?;
    let agent = changes.agent_after(leaver).clone();
    let call = changes.call.expect("leaving changes the call");
    Ok(CallAndAgent {
        call,
        agent,
        context_id,
    })
}

async fn try_report_channel_event(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    cmd: &ReportChannelEvent,
) -> Result<ReportedCall, Error> {
    let loaded = open_call(conn, &cmd.instance_id, &cmd.job_id, None).await?;
    let call = loaded
        .call
        .as_ref()
        .ok_or_else(|| Error::CallNotFound(cmd.job_id.to_string()))?;
    let release_by = (
        cmd.release_initiator.as_deref(),
        cmd.release_reason.as_deref(),
    );
    let Some(changes) = conference::report(
        call,
        &loaded.agents,
        &cmd.channel_id,
        cmd.state,
        release_by,
        now(),
    )?
    else {
        return Ok(ReportedCall {
            call: call.clone(),
            context_id: events::latest_context_id([loaded.versions.call]),
        });
    };
    let event = change_event(
        ctx,
        "ReportChannelEvent",
        Some(Before {
            call: Some(call),
            agents: &loaded.agents,
        }),
        &changes,
    )?;
    let context_id =
        changes::apply(conn, &cmd.instance_id, &event, &changes, &loaded.versions).await?;
    let call = changes.call.expect("a channel event changes the call");
    Ok(ReportedCall { call, context_id })
}

/// Loads the call, its channels and agents, and `actor`; fails
/// if the instance is unknown.
async fn open_call(
    conn: &mut PgConnection,
    instance: &InstanceId,
    job: &JobId,
    actor: Option<&UserId>,
) -> Result<LoadedCall, Error> {
    let loaded = calls::load(conn, instance, job, actor).await?;
    if !loaded.instance_exists {
        return Err(Error::InstanceNotFound(instance.to_string()));
    }
    Ok(loaded)
}

/// Loads `user` and the agents with `extensions`; fails if the
/// instance is unknown.
pub(super) async fn open_agents(
    conn: &mut PgConnection,
    instance: &InstanceId,
    user: &UserId,
    extensions: &[Extension],
) -> Result<LoadedAgents, Error> {
    let loaded = agents::load(conn, instance, user, extensions).await?;
    if !loaded.instance_exists {
        return Err(Error::InstanceNotFound(instance.to_string()));
    }
    Ok(loaded)
}
