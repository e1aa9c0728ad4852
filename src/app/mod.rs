//! The actions, grouped by what they touch, all of the same shape: a unit
//! of database work (`unit`) that reads what the decision needs (one
//! statement), lets the domain decide, and writes the outcome (one
//! statement that first checks the rows it read did not change). Lost
//! races are retried there, whole. Provisioning, and any request with an
//! idempotency key, runs in a transaction the unit begins and commits.
//! Authentication and token management live in `access`.

mod access;
mod conference;
mod events;
mod known;
mod on_agents;
mod provisioning;
mod status;
mod unit;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use access::{CreateAccessToken, CreatedToken, TokenCache};
pub use conference::{EndConference, ReportChannelEvent, ReportedCall, StartConference};
pub use events::{Item as WatchItem, Maintained, WatchEvents, WatchOptions, Watcher};
pub use provisioning::{CreateInstance, CreateUser, CreatedUser};
pub use status::{PollUserStatus, ReadyForService};
pub use unit::{BoxFuture, Done, Idempotent, Limits};

use crate::domain::ids::{InstanceId, JobId, Millis, UserId};
use crate::domain::{Agent, Call, Changes, Channel};
use crate::error::Error;
use crate::store::Store;
use crate::store::changes::{Event, JsonText};

/// The actions, over a store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    store: Store,
    tokens: TokenCache,
    units: unit::Units,
    events: events::Events,
    known: known::Known,
}

/// Who asked, under which request ID, and by when the answer is due.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub actor: String,
    /// Work not started by then is not started at all.
    pub deadline: Instant,
}

impl RequestContext {
    /// A context for tools and tests: a minute to answer.
    pub fn local(request_id: &str, actor: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            actor: actor.to_owned(),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }
}

/// A call and one agent after an action, with the ContextId to report.
#[derive(Debug, Clone)]
pub struct CallAndAgent {
    pub call: Call,
    pub agent: Agent,
    pub context_id: i64,
}

impl CallAndAgent {
    /// The call `changes` made or changed and `agent` as they left it,
    /// written as event `context_id`.
    fn after(changes: Changes, agent: &Agent, context_id: i64) -> Self {
        let agent = changes.agent_after(agent).clone();
        Self {
            call: changes.call.expect("a call action changes its call"),
            agent,
            context_id,
        }
    }
}

impl App {
    pub fn new(store: Store, tokens: TokenCache) -> Self {
        Self::with_limits(store, tokens, &Limits::default())
    }

    pub fn with_limits(store: Store, tokens: TokenCache, limits: &Limits) -> Self {
        let units = unit::Units::new(&store, limits);
        let events = events::Events::new(&store, WatchOptions::default(), limits.db_timeout);
        Self {
            store,
            tokens,
            units,
            events,
            known: known::Known::new(limits.known_calls, limits.known_agents),
        }
    }

    /// The same actions, serving watchers as `options` says. Call before
    /// the first watch.
    pub fn with_watch_options(mut self, options: WatchOptions, limits: &Limits) -> Self {
        self.events = events::Events::new(&self.store, options, limits.db_timeout);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Deletes idempotency keys older than `retention`, a batch at a time;
    /// returns how many went.
    pub async fn purge_idempotency_keys(&self, retention: Duration) -> Result<u64, Error> {
        const BATCH: i64 = 1000;
        let mut purged = 0;
        loop {
            let deadline = Instant::now() + Duration::from_secs(30);
            let done = self
                .statement(
                    "PurgeIdempotencyKeys",
                    unit::Lane::Write,
                    deadline,
                    move |conn| Box::pin(crate::store::idempotency::purge(conn, retention, BATCH)),
                )
                .await?;
            purged += done;
            if done < BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

/// The queue key of a call's writes.
fn call_row(instance: &InstanceId, job: &JobId) -> unit::RowKey {
    format!("{instance}/call/{job}")
}

/// The queue key of an agent's writes that are not about a call.
fn agent_row(instance: &InstanceId, user: &UserId) -> unit::RowKey {
    format!("{instance}/agent/{user}")
}

/// The queue key of writes that lock the instance row.
fn instance_row(instance: &InstanceId) -> unit::RowKey {
    format!("{instance}/instance")
}

/// An action's inputs, shared by every attempt of its unit of work.
fn shared<C: Clone>(ctx: &RequestContext, cmd: &C) -> Arc<(RequestContext, C)> {
    Arc::new((ctx.clone(), cmd.clone()))
}

fn now() -> Millis {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// What an action decided.
// Made and matched at once, never stored: boxing `Changes` would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
enum Decided<T> {
    /// Nothing to change (a retry): this is the answer.
    Unchanged(T),
    Changed(Changes),
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
) -> Result<Event<'a>, Error> {
    let before = match before {
        None => None,
        Some(b) => Some(
            Snapshot {
                call: b.call,
                channels: b.call.map_or_else(Vec::new, |call| {
                    changes
                        .channels
                        .iter()
                        .map(|&p| &call.channels[p])
                        .collect()
                }),
                agents: b
                    .agents
                    .iter()
                    .filter(|a| changes.agents.iter().any(|c| c.user_id == a.user_id))
                    .collect(),
            }
            .text()?,
        ),
    };
    let after = Snapshot {
        call: changes.call.as_ref(),
        channels: changes.changed_channels().collect(),
        agents: changes.agents.iter().collect(),
    }
    .text()?;
    Ok(Event {
        request_id: &ctx.request_id,
        action,
        actor: &ctx.actor,
        before,
        after,
    })
}

/// What a call action's event records (read back by `store::events`):
/// the call's header (a `Call` serializes without its channels) and only
/// the channels and agents that changed.
#[derive(Serialize)]
struct Snapshot<'a> {
    call: Option<&'a Call>,
    channels: Vec<&'a Channel>,
    agents: Vec<&'a Agent>,
}

impl Snapshot<'_> {
    fn text(&self) -> Result<JsonText, Error> {
        JsonText::of(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::call::tests::conference;
    use crate::domain::states::ChannelState::{Answered, Released};

    fn parse(text: &JsonText) -> Value {
        serde_json::from_str(text.as_str()).unwrap()
    }

    /// The tail rebuilds a call from its header and the channels each
    /// event changed, so an event must carry exactly those.
    #[test]
    fn an_event_records_the_header_and_only_the_changed_channels() {
        let before = conference(&[(Answered, true), (Answered, true), (Answered, false)]);
        let mut after = before.clone();
        after.channels[1].state = Released;
        let changes = Changes {
            call: Some(after.clone()),
            call_created: false,
            channels: vec![1],
            agents: Vec::new(),
            consulted: Vec::new(),
        };
        let ctx = RequestContext::local("r-1", "a2@i");
        let found = Before {
            call: Some(&before),
            agents: &[],
        };

        let event = change_event(&ctx, "EndConference", Some(found), &changes).unwrap();

        let mut header = serde_json::to_value(&after).unwrap();
        header.as_object_mut().unwrap().remove("channels");
        assert_eq!(
            parse(&event.after),
            json!({ "call": header, "channels": [after.channels[1]], "agents": [] })
        );
        assert_eq!(
            parse(event.before.as_ref().unwrap())["channels"],
            json!([before.channels[1]])
        );
        assert!(parse(&event.after)["call"].get("channels").is_none());
    }
}
