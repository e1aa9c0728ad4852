//! The actions, grouped by what they touch, all of the same shape: open a
//! transaction, load and lock what the decision needs (one statement), let
//! the domain decide, write the outcome (one statement), commit. Lost races
//! are retried here, whole, from a fresh snapshot. Authentication and token
//! management live in `access`.

mod access;
mod conference;
mod provisioning;
mod status;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub use access::{CreateAccessToken, CreatedToken, TokenCache};
pub use conference::{EndConference, ReportChannelEvent, StartConference};
pub use provisioning::{CreateInstance, CreateUser};
pub use status::{PollUserStatus, ReadyForService};

use crate::domain::ids::{InstanceId, Millis};
use crate::domain::{Agent, Call, Changes};
use crate::error::Error;
use crate::store::changes::Event;
use crate::store::{Store, Tx};

/// How often an action that lost a race is tried in all.
const ATTEMPTS: u32 = 8;

/// The actions, over a store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    store: Store,
    tokens: TokenCache,
}

/// Who asked, and under which request ID: recorded with every change.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub actor: String,
}

/// A call and one agent after an action, with the ContextId to report.
#[derive(Debug, Clone)]
pub struct CallAndAgent {
    pub call: Call,
    pub agent: Agent,
    pub context_id: i64,
}

impl App {
    pub fn new(store: Store, tokens: TokenCache) -> Self {
        Self { store, tokens }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn now() -> Millis {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `attempt` until it does not lose a race, at most [`ATTEMPTS`] times,
/// with a short random pause between tries so the losers spread out.
async fn retrying<T, F, Fut>(action: &'static str, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(Error::Contended(cause)) if tries < ATTEMPTS => {
                tracing::debug!(action, tries, cause = %cause, "lost a race; retrying");
                let pause = rand::random_range(0..(1u64 << tries.min(6)));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Writes an action's decision and its event, then commits; returns the
/// event's ID, the new ContextId.
async fn persist(
    mut tx: Tx,
    instance: &InstanceId,
    event: &Event<'_>,
    changes: &Changes,
) -> Result<i64, Error> {
    let context_id = crate::store::changes::apply(&mut tx, instance, event, changes).await?;
    crate::store::commit(tx).await?;
    Ok(context_id)
}

/// The state an action found, for its event's `before`.
struct Before<'a> {
    call: Option<&'a Call>,
    /// The agents loaded; only those that changed are recorded.
    agents: &'a [Agent],
}

/// The event of an action: the call header, the changed channels and the
/// changed agents, before (`None` for a new call) and after.
fn change_event<'a>(
    ctx: &'a RequestContext,
    action: &'static str,
    before: Option<Before<'_>>,
    changes: &Changes,
) -> Event<'a> {
    let before = before.map(|b| {
        let channels: Vec<_> = match b.call {
            Some(call) => changes
                .channels
                .iter()
                .map(|&p| &call.channels[p])
                .collect(),
            None => Vec::new(),
        };
        let agents: Vec<_> = b
            .agents
            .iter()
            .filter(|a| changes.agents.iter().any(|c| c.user_id == a.user_id))
            .collect();
        snapshot(b.call, &channels, &agents)
    });
    let channels: Vec<_> = changes.changed_channels().collect();
    let agents: Vec<_> = changes.agents.iter().collect();
    Event {
        request_id: &ctx.request_id,
        action,
        actor: &ctx.actor,
        before,
        after: snapshot(changes.call.as_ref(), &channels, &agents),
    }
}

fn snapshot(call: Option<&Call>, channels: &[&crate::domain::Channel], agents: &[&Agent]) -> Value {
    let header = call.map(|c| {
        let mut v = json!(c);
        if let Some(o) = v.as_object_mut() {
            o.remove("channels");
        }
        v
    });
    json!({ "call": header, "channels": channels, "agents": agents })
}
