//! Writing what an action decided: the call (new or updated), the channels
//! that changed, the agents that changed and the event row that records it,
//! all in one statement, guarded: it writes only if the rows the decision
//! was made on are as they were read ([`Versions`]). For a decision made on
//! what the replica knew, the statement reads the call instead when they
//! are not ([`apply_or_read`]).

use serde::Serialize;
use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgTypeInfo};
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres, Type};

use crate::domain::ids::{InstanceId, UserId};
use crate::domain::{Agent, Call, Changes, Channel};
use crate::error::Error;

use super::calls::{LIVE_STATES, LoadedCall, loaded};
use super::rows::{Row, Versioned};
use super::{db_error, unique_violation};

/// The event row an action appends: who did what, and the changed state
/// before and after.
#[derive(Debug)]
pub struct Event<'a> {
    pub request_id: &'a str,
    /// The action's name, e.g. `EndConference`.
    pub action: &'static str,
    /// Who asked: the acting agent, or the calling service.
    pub actor: &'a str,
    /// What changed, as it was; `None` for a creation.
    pub before: Option<JsonText>,
    /// What changed, as it is now.
    pub after: JsonText,
}

/// An event's `before` or `after`: JSON text, serialized once from the
/// caller's own types and bound as PostgreSQL's `json`, which the server
/// checks and stores as it is. A `serde_json::Value` would be built first
/// (an allocation per field) and bind as `jsonb`, which the server parses
/// into its binary form and the tail turns back into text at more cost;
/// this type leaves no way to bind a payload like that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        serde_json::to_string(value).map(Self).map_err(|e| {
            Error::Internal(anyhow::anyhow!("an event payload did not serialize: {e}"))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Type<Postgres> for JsonText {
    fn type_info() -> PgTypeInfo {
        // json's OID is fixed (pg_type.dat), so no lookup by name.
        PgTypeInfo::with_oid(Oid(114))
    }
}

impl Encode<'_, Postgres> for JsonText {
    /// `json`'s binary form is its text.
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

/// The versions (`context_id`, the last event that changed them) of the
/// rows a decision was made on: the call, if there was one, and every agent
/// loaded with it. A write holds the call and, of the agents, those the
/// decision consulted (`Changes::consulted`).
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub call: Option<i64>,
    pub agents: Vec<(UserId, i64)>,
}

impl Versions {
    /// The version of agent `user` as read; 0 if it was not read.
    pub fn of_agent(&self, user: &UserId) -> i64 {
        self.agents
            .iter()
            .find(|(u, _)| u == user)
            .map_or(0, |(_, v)| *v)
    }

    /// Whether `self` and `other` hold the same versions of what a write
    /// guards: the call, and `agents` (the ones a decision consulted).
    fn agree_on(&self, other: &Versions, agents: &[UserId]) -> bool {
        self.call == other.call && agents.iter().all(|u| self.of_agent(u) == other.of_agent(u))
    }
}

/// The guard: `gc` and `ga` lock the call and the agents the decision
/// consulted (call first, agents by user ID, as everywhere), and `ok` says
/// whether they are still the versions read (`$20`, `$21`/`$22`). A lock
/// wait ends with the newest versions, so a concurrent change makes `ok`
/// false, nothing is written, and no row comes back: the caller reads and
/// decides again. `$21` names each agent once (`Changes::consulted`), so
/// all are current when as many locked rows match their versions.
///
/// `guard!(call)` for a change to a call that exists; `guard!(no call)`
/// for one that makes its call or has none, which has no call to hold
/// (`$20` is then NULL and unused).
///
/// Row counts are `cardinality(ARRAY(…))`, here and in `written_row!`, not
/// `count(*)`: an ARRAY sublink is set up as the scan alone, an aggregate
/// as a node of its own, and a join to the versions as three more, on
/// every execution (docs/performance.md, "Fewer plan nodes in the apply").
macro_rules! guard {
    (call) => {
        concat!(
            r#"
WITH gc AS MATERIALIZED (
    SELECT context_id FROM calls
    WHERE instance_id = $1 AND job_id = $5
    FOR NO KEY UPDATE
), "#,
            guard!(
                agents,
                "($20::int8 IS NULL OR (SELECT context_id FROM gc) = $20) AND"
            )
        )
    };
    (no call) => {
        concat!("\nWITH ", guard!(agents, ""))
    };
    (agents, $call_is_current:expr) => {
        concat!(
            r#"ga AS MATERIALIZED (
    SELECT user_id, context_id FROM agents
    WHERE instance_id = $1 AND user_id = ANY ($21::text[])
    ORDER BY user_id
    FOR NO KEY UPDATE
), ok AS MATERIALIZED (
    SELECT "#,
            $call_is_current,
            r#"
       cardinality(ARRAY(
           SELECT 1 FROM ga
           WHERE context_id = ($22::int8[])[array_position($21::text[], user_id)]
       )) = cardinality($21::text[]) AS ok"#
        )
    };
}

/// One statement for each kind of change: it inserts the call
/// ([`APPLY_NEW_CALL`]), updates it ([`APPLY_CALL`]) or has none
/// ([`APPLY_NO_CALL`]). They differ only in the guard (`guard!`),
/// `call_rows` and `chan`: PostgreSQL sets up every part of a statement on
/// each execution, used or not, so each statement holds only the parts its
/// kind of change can use.
///
/// The event goes in first, and only if the guard's `ok`; every other row
/// written hangs off it (`ev`) and points at it (`context_id`), which is
/// how ContextId reaches calls and agents without another round trip. Each
/// part reports how many rows it wrote, so a mismatch with the decision is
/// caught.
macro_rules! apply {
    ($guard:expr, $call_rows:expr, $chan:expr) => {
        apply!(
            $guard,
            $call_rows,
            $chan,
            "",
            concat!(written_row!(), "\nFROM ev\n")
        )
    };
    ($guard:expr, $call_rows:expr, $chan:expr, $more:expr, $result:expr) => {
        concat!(
            $guard,
            r#"
), ev AS (
    INSERT INTO events (instance_id, request_id, action, actor, job_id, user_ids, before, after)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM ok WHERE ok.ok
    RETURNING event_id
), call_rows AS ("#,
            $call_rows,
            r#"
), chan AS ("#,
            $chan,
            r#"
), ag AS (
    UPDATE agents
    SET user_state = ($16::text[])[array_position($15::text[], user_id)],
        job_id = ($17::text[])[array_position($15::text[], user_id)],
        break_code = ($18::text[])[array_position($15::text[], user_id)],
        outbound_scenario = ($19::bool[])[array_position($15::text[], user_id)],
        context_id = ev.event_id
    FROM ev
    WHERE agents.instance_id = $1 AND agents.user_id = ANY ($15::text[])
    RETURNING 1
)"#,
            $more,
            $result
        )
    };
}

/// What a write returns: the event's ID and the rows each part wrote.
macro_rules! written_row {
    () => {
        r#"
SELECT ev.event_id,
       cardinality(ARRAY(SELECT 1 FROM call_rows))::int8,
       cardinality(ARRAY(SELECT 1 FROM chan))::int8,
       cardinality(ARRAY(SELECT 1 FROM ag))::int8"#
    };
}

/// Inserts the channels of a new call: the columns every change binds
/// (`$10`–`$14`) and those only a new call's channels have (`$28`–`$33`).
macro_rules! insert_channels {
    () => {
        r#"
    INSERT INTO channels (instance_id, job_id, channel_id, idx, user_id, user_extension,
                          originator, destination, channel_state, call_type,
                          release_initiator, release_reason, changed_at)
    SELECT $1, $5, u.*
    FROM unnest($10::text[], $28::int4[], $29::text[], $30::text[], $31::text[], $32::text[],
                $11::text[], $33::text[], $12::text[], $13::text[], $14::int8[]) AS u
    WHERE EXISTS (SELECT 1 FROM ev)
    RETURNING 1"#
    };
}

/// Updates the changed channels of a call that exists: what a channel can
/// change after it is made (`$11`–`$14`, by `$10`). No action adds
/// a channel to a call that exists; one that did would be caught by the
/// count of rows written. An update, not an upsert: `ON CONFLICT` probes
/// the key for an insert first, then locks and updates the row it finds,
/// more work per channel than the update alone (docs/performance.md, "The
/// guard on what was consulted").
///
/// Each row finds its new values by its key's position in `$10`, as the
/// agents' update does in `$15`: a join with `unnest` of the arrays would
/// set up a function scan, a hash join and its hash, and build the hash
/// table, on every execution, for a handful of rows.
macro_rules! update_channels {
    () => {
        r#"
    UPDATE channels
    SET channel_state = ($11::text[])[array_position($10::text[], channel_id)],
        release_initiator = ($12::text[])[array_position($10::text[], channel_id)],
        release_reason = ($13::text[])[array_position($10::text[], channel_id)],
        changed_at = ($14::int8[])[array_position($10::text[], channel_id)]
    FROM ev
    WHERE channels.instance_id = $1 AND channels.job_id = $5
      AND channels.channel_id = ANY ($10::text[])
    RETURNING 1"#
    };
}

/// Updates a call that exists.
macro_rules! update_call {
    () => {
        r#"
    UPDATE calls SET ended_at = $9, context_id = ev.event_id
    FROM ev
    WHERE calls.instance_id = $1 AND calls.job_id = $5
    RETURNING 1"#
    };
}

/// A change that creates its call (StartConference).
const APPLY_NEW_CALL: &str = apply!(
    guard!(no call),
    r#"
    INSERT INTO calls (instance_id, job_id, call_type, initiator, tags, timeout_seconds,
                       created_at, ended_at, context_id)
    SELECT $1, $5, $23, $24, $25, $26, $27, $9, ev.event_id FROM ev
    RETURNING 1"#,
    insert_channels!()
);

/// A change to a call that exists (EndConference, ReportChannelEvent).
const APPLY_CALL: &str = apply!(guard!(call), update_call!(), update_channels!());

/// [`APPLY_CALL`] for a change decided on a call as the replica knew it
/// (`app::known`): when the guard finds the call or an agent moved on, the
/// statement reads the call instead, as `store::calls::load` does (`$23`
/// the actor, `$24` the live states), so deciding again costs no second
/// read. Exactly one row: the write's (event ID and counts) or the read's.
/// The read sees the statement's snapshot: a write that committed while
/// the guard waited for its lock is not in it, so the read can show the
/// very versions the decision was made on, and [`apply_or_read`] then
/// returns no call, to be read afresh.
const APPLY_CALL_OR_READ: &str = apply!(
    guard!(call),
    update_call!(),
    update_channels!(),
    concat!(", ", crate::store::calls::call_read_cte!("$1", "$5")),
    concat!(
        written_row!(),
        r#",
       NULL::bool, NULL::record, NULL::record[], NULL::record[]
FROM ev
UNION ALL
SELECT NULL, NULL, NULL, NULL, "#,
        crate::store::calls::call_read_columns!("$1", "$5", "$23", "$24"),
        r#"
FROM ok WHERE NOT ok.ok
"#
    )
);

/// A change of agents only (ReadyForService).
const APPLY_NO_CALL: &str = apply!(
    guard!(no call),
    "SELECT 1 WHERE false",
    "SELECT 1 WHERE false"
);

/// Writes `changes` and `event` for `instance` if the rows are still at
/// `read`; returns the event's ID, the new ContextId. If they changed it
/// writes nothing and fails with [`Error::Contended`]: decide again.
pub async fn apply(
    conn: &mut PgConnection,
    instance: &InstanceId,
    event: &Event<'_>,
    changes: &Changes,
    read: &Versions,
) -> Result<i64, Error> {
    match apply_if_current(conn, instance, event, changes, read).await? {
        Applied::Written(event_id) => Ok(event_id),
        Applied::Moved(_) => Err(moved(event)),
    }
}

/// [`apply`], with the rows having moved on an answer rather than an
/// error: [`Applied::Moved`] without the call.
pub async fn apply_if_current(
    conn: &mut PgConnection,
    instance: &InstanceId,
    event: &Event<'_>,
    changes: &Changes,
    read: &Versions,
) -> Result<Applied, Error> {
    let params = Params::of(instance, event, changes, read);
    let statement = match (params.call, params.made) {
        (None, _) => APPLY_NO_CALL,
        (Some(_), Some(_)) => APPLY_NEW_CALL,
        (Some(_), None) => APPLY_CALL,
    };
    let written: Option<(i64, i64, i64, i64)> = params
        .bind_made(params.bind(sqlx::query_as(statement)))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| match unique_violation(&e) {
            // Two new calls drew the same JobId (same millisecond, same six
            // random digits): a lost race like any other; the retry draws
            // a new one.
            Some("calls_pkey") => Error::Contended(e.into()),
            _ => db_error(e),
        })?;
    let Some((event_id, calls, channels, agents)) = written else {
        return Ok(Applied::Moved(None));
    };
    check_written(event, changes, (calls, channels, agents))?;
    Ok(Applied::Written(event_id))
}

/// What a guarded write did.
#[derive(Debug)]
pub enum Applied {
    /// Written, as this event: the new ContextId.
    Written(i64),
    /// Nothing written: the call or an agent had moved on. The call as the
    /// statement found it, to decide again on, when it was asked to read it
    /// ([`apply_or_read`]) and the read is newer than what was decided on;
    /// otherwise `None`: read it.
    Moved(Option<Box<LoadedCall>>),
}

/// [`apply`] for `changes` to a call that exists, decided on what the
/// replica knew of it (`read`): if the rows moved on, the same statement
/// reads the call, its channels, `actor` and the agents of live channels
/// (none when that read shows `read` itself).
/// (A new call, or none, is not for it: it would be written as an update
/// and fail the count check.)
pub async fn apply_or_read(
    conn: &mut PgConnection,
    instance: &InstanceId,
    event: &Event<'_>,
    changes: &Changes,
    read: &Versions,
    actor: Option<&UserId>,
) -> Result<Applied, Error> {
    let params = Params::of(instance, event, changes, read);
    let row: WrittenOrRead = params
        .bind(sqlx::query_as(APPLY_CALL_OR_READ))
        .bind(actor.map(UserId::as_str))
        .bind(&*LIVE_STATES)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    match row {
        (Some(event_id), Some(calls), Some(channels), Some(agents), ..) => {
            check_written(event, changes, (calls, channels, agents))?;
            Ok(Applied::Written(event_id))
        }
        (None, _, _, _, Some(exists), call, Some(channels), Some(agents)) => {
            let stored = loaded((exists, call, channels, agents));
            // At the versions read, the read is older than the write that
            // moved them (see APPLY_CALL_OR_READ): of no use to decide on.
            let newer = !stored.versions.agree_on(read, &changes.consulted);
            Ok(Applied::Moved(newer.then(|| Box::new(stored))))
        }
        _ => Err(Error::Internal(anyhow::anyhow!(
            "{}: the guarded write neither wrote nor read",
            event.action
        ))),
    }
}

/// What [`APPLY_CALL_OR_READ`] returns: the write's event ID and counts,
/// or the read's columns (`store::calls::LoadColumns`).
type WrittenOrRead = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<Versioned<Call>>,
    Option<Vec<Row<Channel>>>,
    Option<Vec<Versioned<Agent>>>,
);

/// The rows had moved on: nothing was written.
fn moved(event: &Event<'_>) -> Error {
    Error::Contended(anyhow::anyhow!(
        "{}: the rows changed after they were read",
        event.action
    ))
}

/// Fails if what was written is not what was decided.
fn check_written(
    event: &Event<'_>,
    changes: &Changes,
    written: (i64, i64, i64),
) -> Result<(), Error> {
    let expected = (
        i64::from(changes.call.is_some()),
        changes.channels.len() as i64,
        changes.agents.len() as i64,
    );
    if written != expected {
        return Err(Error::Internal(anyhow::anyhow!(
            "{}: wrote (calls, channels, agents) = {:?}, decided {:?}",
            event.action,
            written,
            expected
        )));
    }
    crate::measure::event_appended(event.action);
    Ok(())
}

/// The parameters every apply statement takes, `$1`–`$22`, as bound; a
/// statement's own follow (`Params::bind_made` for a new call's,
/// [`apply_or_read`]'s read), so none binds a parameter it does not use.
struct Params<'a> {
    instance: &'a InstanceId,
    event: &'a Event<'a>,
    call: Option<&'a Call>,
    /// The call, if the change creates it: its statement takes `$23`–`$33`.
    made: Option<&'a Call>,
    user_ids: Vec<&'a str>,
    ch: ChannelColumns<'a>,
    ag: AgentColumns<'a>,
    read_call: Option<i64>,
    read_agents: Vec<&'a str>,
    read_agent_versions: Vec<i64>,
}

impl<'a> Params<'a> {
    fn of(
        instance: &'a InstanceId,
        event: &'a Event<'a>,
        changes: &'a Changes,
        read: &'a Versions,
    ) -> Self {
        // The agents the decision went by, at the versions read; the
        // others read with the call are not held (`Changes::consulted`).
        let (read_agents, read_agent_versions) = changes
            .consulted
            .iter()
            .map(|user| (user.as_str(), read.of_agent(user)))
            .unzip();
        let call = changes.call.as_ref();
        let made = call.filter(|_| changes.call_created);
        Self {
            instance,
            event,
            call,
            made,
            user_ids: changes.agents.iter().map(|a| a.user_id.as_str()).collect(),
            ch: ChannelColumns::of(changes.changed_channels(), made.is_some()),
            ag: AgentColumns::of(&changes.agents),
            read_call: read.call,
            read_agents,
            read_agent_versions,
        }
    }

    /// `$1`–`$22`.
    fn bind<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        let (ch, ag, event) = (&self.ch, &self.ag, self.event);
        query
            .bind(self.instance.as_str())
            .bind(event.request_id)
            .bind(event.action)
            .bind(event.actor)
            .bind(self.call.map(|c| c.job_id.as_str()))
            .bind(&self.user_ids)
            .bind(event.before.as_ref())
            .bind(&event.after)
            .bind(self.call.and_then(|c| c.ended_at))
            .bind(&ch.channel_id)
            .bind(&ch.state)
            .bind(&ch.release_initiator)
            .bind(&ch.release_reason)
            .bind(&ch.changed_at)
            .bind(&ag.user_id)
            .bind(&ag.user_state)
            .bind(&ag.job_id)
            .bind(&ag.break_code)
            .bind(&ag.outbound_scenario)
            .bind(self.read_call)
            .bind(&self.read_agents)
            .bind(&self.read_agent_versions)
    }

    /// `$23`–`$33`, after [`Params::bind`]: what only a new call and its
    /// channels have; nothing for a change that makes no call.
    fn bind_made<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        let (Some(call), ch) = (self.made, &self.ch) else {
            return query;
        };
        query
            .bind(call.call_type.as_str())
            .bind(call.initiator.as_str())
            .bind(call.tags.as_str())
            .bind(call.timeout_seconds)
            .bind(call.created_at)
            .bind(&ch.idx)
            .bind(&ch.user_id)
            .bind(&ch.user_extension)
            .bind(&ch.originator)
            .bind(&ch.destination)
            .bind(&ch.call_type)
    }
}

/// Channels as parallel arrays: unnested into a new call's rows, or looked
/// up by each row's position in `channel_id` to update. The channels of a
/// call that exists are updated, which takes only what can change once a
/// channel is made (`update_channels!`); the columns only a new channel
/// has are filled for new channels alone (`Params::bind_made`).
#[derive(Default)]
struct ChannelColumns<'a> {
    channel_id: Vec<&'a str>,
    idx: Vec<i32>,
    user_id: Vec<Option<&'a str>>,
    user_extension: Vec<&'a str>,
    originator: Vec<&'a str>,
    destination: Vec<&'a str>,
    state: Vec<&'static str>,
    call_type: Vec<&'static str>,
    release_initiator: Vec<&'a str>,
    release_reason: Vec<&'a str>,
    changed_at: Vec<i64>,
}

impl<'a> ChannelColumns<'a> {
    /// `made`: the channels are new (`insert_channels!`), so every
    /// column is filled.
    fn of(channels: impl Iterator<Item = &'a Channel>, made: bool) -> Self {
        let mut cols = Self::default();
        for c in channels {
            cols.channel_id.push(c.channel_id.as_str());
            cols.state.push(c.state.as_str());
            cols.release_initiator.push(&c.release_initiator);
            cols.release_reason.push(&c.release_reason);
            cols.changed_at.push(c.timestamp);
            if made {
                cols.idx.push(c.index);
                cols.user_id.push(c.user_id.as_ref().map(UserId::as_str));
                cols.user_extension
                    .push(c.user_extension.as_ref().map_or("", |e| e.as_str()));
                cols.originator.push(&c.originator);
                cols.destination.push(&c.destination);
                cols.call_type.push(c.call_type.as_str());
            }
        }
        cols
    }
}

/// The mutable part of agents as parallel arrays, looked up by each row's
/// position in `user_id`.
#[derive(Default)]
struct AgentColumns<'a> {
    user_id: Vec<&'a str>,
    user_state: Vec<&'static str>,
    job_id: Vec<Option<&'a str>>,
    break_code: Vec<&'a str>,
    outbound_scenario: Vec<bool>,
}

impl<'a> AgentColumns<'a> {
    fn of(agents: &'a [Agent]) -> Self {
        let mut cols = Self::default();
        for a in agents {
            cols.user_id.push(a.user_id.as_str());
            cols.user_state.push(a.user_state.as_str());
            cols.job_id.push(a.job_id.as_ref().map(|j| j.as_str()));
            cols.break_code.push(&a.break_code);
            cols.outbound_scenario.push(a.outbound_scenario);
        }
        cols
    }
}
