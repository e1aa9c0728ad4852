//! StartConference, EndConference and ReportChannelEvent. The two actions
//! on a call that exists run through [`act_on_call`], which decides on the
//! call as this replica last wrote it when it can (`super::known`);
//! StartConference, decided on agents alone, through `super::on_agents`.

use crate::domain::conference::{self, NewCall};
use crate::domain::events;
use crate::domain::ids::{ChannelId, Extension, InstanceId, JobId, UserId};
use crate::domain::states::ChannelState;
use crate::domain::{Call, Changes};
use crate::measure::{self, KnownUse};
use sqlx::PgConnection;
use std::ops::ControlFlow;

use crate::error::Error;
use crate::store::agents::LoadedAgents;
use crate::store::calls::{self, LoadedCall};
use crate::store::changes::{self, Applied};

use super::known::Known;
use super::on_agents::{OnAgents, act_on_agents};
use super::unit::Atomicity;
use super::{
    App, Before, CallAndAgent, Decided, Done, Idempotent, RequestContext, agent_row, call_row,
    change_event, now, shared,
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
        let (job, known) = (shared(ctx, cmd), self.known.clone());
        self.write(
            "StartConference",
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

    pub async fn end_conference(
        &self,
        ctx: &RequestContext,
        cmd: &EndConference,
        idempotent: Option<Idempotent<CallAndAgent>>,
    ) -> Result<Done<CallAndAgent>, Error> {
        let (job, known) = (shared(ctx, cmd), self.known.clone());
        self.write(
            "EndConference",
            Some(call_row(&cmd.instance_id, &cmd.job_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let (job, known) = (job.clone(), known.clone());
                Box::pin(async move { act_on_call(conn, &job.0, &job.1, &known).await })
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
        let (job, known) = (shared(ctx, cmd), self.known.clone());
        self.write(
            "ReportChannelEvent",
            Some(call_row(&cmd.instance_id, &cmd.job_id)),
            ctx.deadline,
            Atomicity::Statement,
            idempotent,
            move |conn| {
                let (job, known) = (job.clone(), known.clone());
                Box::pin(async move { act_on_call(conn, &job.0, &job.1, &known).await })
            },
        )
        .await
    }
}

impl OnAgents for StartConference {
    type Answer = CallAndAgent;

    fn instance(&self) -> &InstanceId {
        &self.instance_id
    }

    fn user(&self) -> &UserId {
        &self.user_id
    }

    fn extensions(&self) -> Vec<Extension> {
        // Only entries shaped like an extension can name an agent.
        self.participants
            .iter()
            .filter_map(|p| Extension::recognize(p))
            .collect()
    }

    /// A new call, with a JobId of its own.
    fn decide(&self, found: &LoadedAgents) -> Result<Decided<CallAndAgent>, Error> {
        let initiator = found
            .agent(&self.user_id)
            .ok_or_else(|| Error::user_not_found(&self.user_id, &self.instance_id))?;
        let now = now();
        let new = NewCall {
            job_id: JobId::generate(now, rand::random()),
            now,
            timeout_seconds: self.timeout_seconds,
            tags: self.tags.clone(),
        };
        conference::start(initiator, &self.participants, &found.agents, new).map(Decided::Changed)
    }

    fn event<'a>(
        &self,
        ctx: &'a RequestContext,
        _found: &LoadedAgents,
        changes: &Changes,
    ) -> Result<changes::Event<'a>, Error> {
        change_event(ctx, "StartConference", None, changes)
    }

    fn answer(&self, found: &LoadedAgents, changes: Changes, context_id: i64) -> CallAndAgent {
        let initiator = found.agent(&self.user_id).expect("decided on");
        CallAndAgent::after(changes, initiator, context_id)
    }
}

/// An action on a call that exists: what it reads with the call and how it
/// decides. [`act_on_call`] runs it, on the call as this replica knows it
/// when it can.
trait OnCall: Sync {
    type Answer: Send;
    const NAME: &'static str;

    /// The call, by tenant first.
    fn call(&self) -> (&InstanceId, &JobId);

    /// The agent acting, read with the call's parties.
    fn actor(&self) -> Option<&UserId>;

    /// Decides on `found` (the call, its parties and the actor).
    fn decide(&self, found: &LoadedCall) -> Result<Decided<Self::Answer>, Error>;

    /// The answer once `changes`, decided on `found`, are written as event
    /// `context_id`.
    fn answer(&self, found: &LoadedCall, changes: Changes, context_id: i64) -> Self::Answer;
}

/// The call found, or CallNotFound.
fn found_call<'a>(found: &'a LoadedCall, job: &JobId) -> Result<&'a Call, Error> {
    found
        .call
        .as_ref()
        .ok_or_else(|| Error::CallNotFound(job.to_string()))
}

impl OnCall for EndConference {
    type Answer = CallAndAgent;
    const NAME: &'static str = "EndConference";

    fn call(&self) -> (&InstanceId, &JobId) {
        (&self.instance_id, &self.job_id)
    }

    fn actor(&self) -> Option<&UserId> {
        Some(&self.user_id)
    }

    fn decide(&self, found: &LoadedCall) -> Result<Decided<CallAndAgent>, Error> {
        // The documented order: the agent's absence first, then the call's.
        let leaver = found
            .agent(&self.user_id)
            .ok_or_else(|| Error::user_not_found(&self.user_id, &self.instance_id))?;
        let call = found_call(found, &self.job_id)?;
        Ok(
            match conference::leave(call, &found.agents, leaver, now())? {
                Some(changes) => Decided::Changed(changes),
                // Already left: a retry. Nothing to write; report what is.
                None => Decided::Unchanged(CallAndAgent {
                    call: call.clone(),
                    agent: leaver.clone(),
                    context_id: events::latest_context_id([
                        found.versions.call,
                        Some(found.versions.of_agent(&self.user_id)),
                    ]),
                }),
            },
        )
    }

    fn answer(&self, found: &LoadedCall, changes: Changes, context_id: i64) -> CallAndAgent {
        let leaver = found.agent(&self.user_id).expect("decided on");
        CallAndAgent::after(changes, leaver, context_id)
    }
}

impl OnCall for ReportChannelEvent {
    type Answer = ReportedCall;
    const NAME: &'static str = "ReportChannelEvent";

    fn call(&self) -> (&InstanceId, &JobId) {
        (&self.instance_id, &self.job_id)
    }

    fn actor(&self) -> Option<&UserId> {
        None
    }

    fn decide(&self, found: &LoadedCall) -> Result<Decided<ReportedCall>, Error> {
        let call = found_call(found, &self.job_id)?;
        let release_by = (
            self.release_initiator.as_deref(),
            self.release_reason.as_deref(),
        );
        let changes = conference::report(
            call,
            &found.agents,
            &self.channel_id,
            self.state,
            release_by,
            now(),
        )?;
        Ok(match changes {
            Some(changes) => Decided::Changed(changes),
            None => Decided::Unchanged(ReportedCall {
                call: call.clone(),
                context_id: events::latest_context_id([found.versions.call]),
            }),
        })
    }

    fn answer(&self, _found: &LoadedCall, changes: Changes, context_id: i64) -> ReportedCall {
        ReportedCall {
            call: changes.call.expect("a channel event changes the call"),
            context_id,
        }
    }
}

/// Runs `action` on its call. When this replica knows the call (`known`)
/// and the action would change it, the change is written straight away,
/// guarded: one round trip. When the guard finds the call or an agent
/// moved on since (another replica acted), the call is read as stored and
/// the action decides again on that: by the same statement when known
/// calls have lately been stale (two round trips), by a read of its own
/// when they have not (three, but the usual write carries no read). When
/// the call is not known, or what is known leads to no write (a repeat, a
/// refusal: answers no guard would check), the call is read first.
async fn act_on_call<A: OnCall>(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    action: &A,
    known: &Known,
) -> Result<A::Answer, Error> {
    let (instance, job) = action.call();
    let key = (instance.clone(), job.clone());
    let stored = match known.calls.take(&key) {
        None => {
            measure::known_call(KnownUse::Unknown);
            None
        }
        Some(found) => match on_known(conn, ctx, action, known, &found).await? {
            ControlFlow::Break((changes, context_id)) => {
                return Ok(written(action, known, &found, changes, context_id));
            }
            ControlFlow::Continue(stored) => stored,
        },
    };

    let found = match stored {
        Some(stored) => opened(*stored, instance)?,
        None => open_call(conn, instance, job, action.actor()).await?,
    };
    known.agents.read(&found.agents, &found.versions);
    match action.decide(&found)? {
        Decided::Unchanged(answer) => Ok(answer),
        Decided::Changed(changes) => {
            let event = event_of(ctx, A::NAME, &found, &changes)?;
            let context_id =
                changes::apply(conn, instance, &event, &changes, &found.versions).await?;
            Ok(written(action, known, &found, changes, context_id))
        }
    }
}

/// The answer once `changes`, decided on `found`, are written as event
/// `context_id`; the replica keeps the call and its agents as they left
/// them.
fn written<A: OnCall>(
    action: &A,
    known: &Known,
    found: &LoadedCall,
    changes: Changes,
    context_id: i64,
) -> A::Answer {
    known.written(&found.agents, &found.versions, &changes, context_id);
    action.answer(found, changes, context_id)
}

/// `action` decided on the call as this replica knew it (`found`) and, if
/// that is a change, written guarded: the changes and their event once
/// written; otherwise the call as the write read it, if it did, to decide
/// again on.
async fn on_known<A: OnCall>(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    action: &A,
    known: &Known,
    found: &LoadedCall,
) -> Result<ControlFlow<(Changes, i64), Option<Box<LoadedCall>>>, Error> {
    let Ok(Decided::Changed(changes)) = action.decide(found) else {
        measure::known_call(KnownUse::Unsure);
        return Ok(ControlFlow::Continue(None));
    };
    let event = event_of(ctx, A::NAME, found, &changes)?;
    let (instance, read) = (action.call().0, &found.versions);
    let applied = if known.calls.expect_stale() {
        changes::apply_or_read(conn, instance, &event, &changes, read, action.actor()).await?
    } else {
        changes::apply_if_current(conn, instance, &event, &changes, read).await?
    };
    Ok(match applied {
        Applied::Written(context_id) => {
            measure::known_call(KnownUse::Hit);
            known.calls.found(false);
            ControlFlow::Break((changes, context_id))
        }
        Applied::Moved(stored) => {
            measure::known_call(KnownUse::Stale);
            known.calls.found(true);
            ControlFlow::Continue(stored)
        }
    })
}

/// The event that records `changes`, decided on `found`.
fn event_of<'a>(
    ctx: &'a RequestContext,
    action: &'static str,
    found: &LoadedCall,
    changes: &Changes,
) -> Result<changes::Event<'a>, Error> {
    let before = Before {
        call: found.call.as_ref(),
        agents: &found.agents,
    };
    change_event(ctx, action, Some(before), changes)
}

/// Loads the call, its channels and agents, and `actor`; fails
/// if the instance is unknown.
async fn open_call(
    conn: &mut PgConnection,
    instance: &InstanceId,
    job: &JobId,
    actor: Option<&UserId>,
) -> Result<LoadedCall, Error> {
    opened(calls::load(conn, instance, job, actor).await?, instance)
}

/// The call as read, or InstanceNotFound.
fn opened(loaded: LoadedCall, instance: &InstanceId) -> Result<LoadedCall, Error> {
    if !loaded.instance_exists {
        return Err(Error::InstanceNotFound(instance.to_string()));
    }
    Ok(loaded)
}
