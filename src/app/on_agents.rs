//! Actions decided on agents alone, before there is a call:
//! StartConference and ReadyForService. [`act_on_agents`] decides one on
//! the agents as this replica knows them when it can
//! (`super::known::KnownAgents`), and writes that guarded: one round trip.
//! Otherwise, or when one of them had moved on, it reads them first.

use sqlx::PgConnection;

use crate::domain::Changes;
use crate::domain::ids::{Extension, InstanceId, UserId};
use crate::error::Error;
use crate::measure::{self, KnownUse};
use crate::store::agents::{self, LoadedAgents};
use crate::store::changes::{self, Applied, Event};

use super::known::Known;
use super::{Decided, RequestContext};

/// An action on agents: whom it reads and how it decides.
pub(super) trait OnAgents: Sync {
    type Answer: Send;

    /// The tenant.
    fn instance(&self) -> &InstanceId;

    /// The agent acting.
    fn user(&self) -> &UserId;

    /// The other agents it may go by, by extension.
    fn extensions(&self) -> Vec<Extension>;

    /// Decides on `found` (the acting agent and those of the extensions,
    /// as a read returns them).
    fn decide(&self, found: &LoadedAgents) -> Result<Decided<Self::Answer>, Error>;

    /// The event that records `changes`, decided on `found`.
    fn event<'a>(
        &self,
        ctx: &'a RequestContext,
        found: &LoadedAgents,
        changes: &Changes,
    ) -> Result<Event<'a>, Error>;

    /// The answer once `changes`, decided on `found`, are written as event
    /// `context_id`.
    fn answer(&self, found: &LoadedAgents, changes: Changes, context_id: i64) -> Self::Answer;
}

/// Runs `action`: decided on the agents as known and written guarded when
/// every one is known, agents are not lately found stale, and what is
/// known calls for a write; otherwise (and when the guard finds one moved
/// on) decided on the agents as read. A repeat or a refusal is always
/// answered from a read, since no guard would catch it being stale.
pub(super) async fn act_on_agents<A: OnAgents>(
    conn: &mut PgConnection,
    ctx: &RequestContext,
    action: &A,
    known: &Known,
) -> Result<A::Answer, Error> {
    let (instance, user, extensions) = (action.instance(), action.user(), action.extensions());
    let recalled = known.agents.recall(instance, user, &extensions);
    let trusted = known.agents.trusted();
    match (&recalled, trusted) {
        (None, _) => measure::known_agents(KnownUse::Unknown),
        (Some(_), false) => measure::known_agents(KnownUse::Untried),
        (Some(found), true) => match action.decide(found) {
            Ok(Decided::Changed(changes)) => {
                let event = action.event(ctx, found, &changes)?;
                let read = &found.versions;
                let applied =
                    changes::apply_if_current(conn, instance, &event, &changes, read).await?;
                let stale = matches!(applied, Applied::Moved(_));
                known.agents.found(stale);
                if let Applied::Written(context_id) = applied {
                    measure::known_agents(KnownUse::Hit);
                    return Ok(written(action, known, found, changes, context_id));
                }
                measure::known_agents(KnownUse::Stale);
            }
            Ok(Decided::Unchanged(_)) | Err(_) => measure::known_agents(KnownUse::Unsure),
        },
    }

    let found = read(conn, instance, user, &extensions).await?;
    if let (Some(recalled), false) = (&recalled, trusted) {
        // Not tried, but the read tells whether it would have been as known.
        known
            .agents
            .found(recalled.versions.agents != found.versions.agents);
    }
    known.agents.read(&found.agents, &found.versions);
    match action.decide(&found)? {
        Decided::Unchanged(answer) => Ok(answer),
        Decided::Changed(changes) => {
            let event = action.event(ctx, &found, &changes)?;
            let context_id =
                changes::apply(conn, instance, &event, &changes, &found.versions).await?;
            Ok(written(action, known, &found, changes, context_id))
        }
    }
}

/// The answer once `changes`, decided on `found`, are written as event
/// `context_id`; the replica keeps what they made as they left it.
fn written<A: OnAgents>(
    action: &A,
    known: &Known,
    found: &LoadedAgents,
    changes: Changes,
    context_id: i64,
) -> A::Answer {
    known.written(&found.agents, &found.versions, &changes, context_id);
    action.answer(found, changes, context_id)
}

/// Reads `user` and the agents with `extensions`; fails if the instance is
/// unknown.
async fn read(
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
