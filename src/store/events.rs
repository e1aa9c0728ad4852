//! Reading the event log for the event stream: where it is final up to
//! ([`probe`]), the changes in a range of it ([`read`]), and what a watch
//! names ([`targets`]).
//!
//! Event IDs come from a sequence, so they are handed out in one order and
//! committed in another: a transaction that drew ID 10 may commit after
//! the one that drew 11. A reader that moved past 11 would skip 10 for
//! good. [`probe`] gives what it takes to know when a prefix of the log is
//! final: the highest ID handed out so far, and the transactions that may
//! still be writing events. Every transaction that drew an ID at or below
//! that one took its lock on `events` before drawing it (PostgreSQL locks
//! a statement's tables before running it) and keeps the lock until it
//! ends, so once every transaction listed has ended, every ID up to the
//! one read is committed or rolled back for good.

use std::collections::HashSet;

use serde::Deserialize;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::domain::events::{Change, Replays};
use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::{Agent, Call, Channel};
use crate::error::Error;

use super::db_error;

/// The highest event ID handed out, and the virtual transaction IDs of the
/// sessions (other than this one) that hold `events` open for writing.
///
/// The sequence is read first and the locks after (the lock list is a
/// subquery of the sequence's row, so PostgreSQL cannot run it earlier):
/// a transaction that drew an ID at or below the one read is either
/// finished by then or in the list.
///
/// `$1` is how far the caller already knows the log to be final (NULL:
/// not known). When the sequence has not moved past it, the lock list is
/// not read (the condition on the outer row alone is a one-time filter, so
/// `pg_locks` is not scanned) and comes back empty. That loses nothing:
/// every ID up to `$1` is final, so every transaction that drew one has
/// ended; a transaction that still holds the lock has drawn no ID yet, or
/// drew it after the sequence was read here, and so above the value read.
/// Its ID moves the sequence, and the first probe that sees it moved reads
/// the locks again and lists the writer while it runs. The reading of the
/// log can only move past a value this probe returns once a probe with the
/// locks read has shown the writers of every ID up to it ended.
/// Nothing changed, the common case when idle, costs one sequence read.
const PROBE: &str = r#"
SELECT s.handed_out,
       (SELECT coalesce(array_agg(l.virtualtransaction), '{}')
        FROM pg_locks l
        WHERE s.handed_out IS NOT NULL
          AND ($1::int8 IS NULL OR s.handed_out > $1::int8)
          AND l.locktype = 'relation'
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.relation = 'events'::regclass
          AND l.mode = 'RowExclusiveLock'
          AND l.pid <> pg_backend_pid()) AS writers
FROM (SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'event_id')::regclass), 0)
             AS handed_out
      OFFSET 0) s
"#;

/// See [`PROBE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub handed_out: i64,
    pub writers: Vec<String>,
}

/// See [`PROBE`]; `final_upto`: how far the log is already known to be
/// final, if known.
pub async fn probe(conn: &mut PgConnection, final_upto: Option<i64>) -> Result<Probe, Error> {
    let (handed_out, writers): (i64, Vec<String>) = sqlx::query_as(PROBE)
        .bind(final_upto)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(Probe {
        handed_out,
        writers,
    })
}

/// The events of `instances` after `after`, up to `upto`, oldest first, at
/// most `limit` of them. The last column says whether the event created
/// its call (it records no `before`), so no earlier event of the call
/// exists to read.
const PAGE: &str = r#"
SELECT instance_id, event_id, request_id, action, job_id, after,
       (extract(epoch FROM created_at) * 1000)::int8, before IS NULL
FROM events
WHERE instance_id = ANY ($1) AND event_id > $2 AND event_id <= $3
ORDER BY event_id
LIMIT $4
"#;

/// What the calls of a page recorded before it: every event of those calls
/// up to `$3`, oldest first, to replay them from.
const HISTORY: &str = r#"
SELECT e.instance_id, e.job_id, e.after
FROM unnest($1::text[], $2::text[]) AS j (instance_id, job_id)
JOIN events e ON e.instance_id = j.instance_id AND e.job_id = j.job_id
WHERE e.event_id <= $3
ORDER BY e.event_id
"#;

/// Changes read from the log, and how far the read got: every event of the
/// instances read up to `covered` is in `changes`.
#[derive(Debug)]
pub struct Page {
    pub changes: Vec<Change>,
    pub covered: i64,
}

type PageRow = (
    String,
    i64,
    String,
    String,
    Option<String>,
    Json<Payload>,
    i64,
    bool,
);

/// The changes of `instances` after `after` up to `upto` (which must be
/// final, see [`probe`]), at most `limit`, each with its call rebuilt as it
/// was right after it. The calls `replays` follows are rebuilt from there;
/// the others from their history, read here. `replays` changes only if
/// the read succeeds, and then it follows every call of the page.
pub async fn read(
    conn: &mut PgConnection,
    instances: &[String],
    after: i64,
    upto: i64,
    limit: usize,
    replays: &mut Replays,
) -> Result<Page, Error> {
    let rows: Vec<PageRow> = sqlx::query_as(PAGE)
        .bind(instances)
        .bind(after)
        .bind(upto)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let covered = match rows.last() {
        Some(last) if rows.len() >= limit => last.1,
        _ => upto,
    };

    // Each call of the page not yet followed and not created in it, once.
    let mut met: HashSet<(&str, &str)> = HashSet::new();
    let mut unknown: HashSet<(&str, &str)> = HashSet::new();
    for (instance, _, _, _, job, _, _, created) in &rows {
        if let Some(job) = job
            && !replays.follows(instance, job)
            && met.insert((instance, job))
            && !created
        {
            unknown.insert((instance, job));
        }
    }
    let history: Vec<(String, String, Json<Payload>)> = if unknown.is_empty() {
        Vec::new()
    } else {
        let (instances, jobs): (Vec<&str>, Vec<&str>) = unknown.into_iter().unzip();
        sqlx::query_as(HISTORY)
            .bind(&instances)
            .bind(&jobs)
            .bind(after)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?
    };

    // Everything that can fail first: `replays` moves with the whole
    // page, or not at all.
    let mut changes = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    for (instance, event_id, request_id, action, job, Json(payload), at, _) in rows {
        changes.push(Change {
            context_id: event_id,
            action,
            timestamp: at,
            request_id,
            instance_id: decode_id(InstanceId::parse("instance_id", &instance))?,
            job_id: job
                .map(|j| decode_id(JobId::parse("job_id", &j)))
                .transpose()?,
            call: None,
            agents: Vec::new(),
        });
        payloads.push(payload);
    }
    for (instance, job, Json(payload)) in history {
        if let Some(header) = payload.call {
            replays
                .call(&instance, &job)
                .apply(header, payload.channels);
        }
    }
    for (change, payload) in changes.iter_mut().zip(payloads) {
        if let (Some(job), Some(header)) = (&change.job_id, payload.call) {
            let replay = replays.call(change.instance_id.as_str(), job.as_str());
            change.call = Some(replay.apply(header, payload.channels).clone());
        }
        change.agents = payload.agents;
    }
    Ok(Page { changes, covered })
}

fn decode_id<T>(parsed: Result<T, crate::error::ParamViolation>) -> Result<T, Error> {
    parsed.map_err(|v| Error::Internal(anyhow::anyhow!("a stored event holds a bad ID: {v:?}")))
}

/// What an event's `after` holds (see `app::change_event` and the
/// provisioning actions): the call's header, the channels changed, the
/// agents changed. Events about other things (instances, tokens) hold none
/// of them.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    call: Option<Call>,
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    agents: Vec<Agent>,
}

/// Whether the instance, the agent and the call a watch names exist (the
/// agent and call only if named), and the highest event ID handed out.
const TARGETS: &str = r#"
SELECT EXISTS (SELECT 1 FROM instances WHERE instance_id = $1),
       $2::text IS NULL OR EXISTS (SELECT 1 FROM agents WHERE instance_id = $1 AND user_id = $2),
       $3::text IS NULL OR EXISTS (SELECT 1 FROM calls WHERE instance_id = $1 AND job_id = $3),
       coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'event_id')::regclass), 0),
       (SELECT removed_through FROM event_floors WHERE instance_id = $1)
"#;

/// See [`TARGETS`].
#[derive(Debug)]
pub struct Targets {
    pub instance: bool,
    pub user: bool,
    pub job: bool,
    pub handed_out: i64,
    /// Events of the instance at or below this may have been removed.
    pub removed_through: Option<i64>,
}

pub async fn targets(
    conn: &mut PgConnection,
    instance: &InstanceId,
    user: Option<&UserId>,
    job: Option<&JobId>,
) -> Result<Targets, Error> {
    let (instance, user, job, handed_out, removed_through) = sqlx::query_as(TARGETS)
        .bind(instance.as_str())
        .bind(user.map(UserId::as_str))
        .bind(job.map(JobId::as_str))
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(Targets {
        instance,
        user,
        job,
        handed_out,
        removed_through,
    })
}

/// The highest event ID of `instance` removed with an expired day, if
/// any: a reader behind it may have missed changes.
pub async fn removed_through(
    conn: &mut PgConnection,
    instance: &str,
) -> Result<Option<i64>, Error> {
    sqlx::query_scalar("SELECT removed_through FROM event_floors WHERE instance_id = $1")
        .bind(instance)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)
}

/// `CREATE TABLE` for each day partition missing from today (UTC) to
/// `$1` days ahead.
const MISSING_DAYS: &str = r#"
SELECT format('CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
              'events_p' || to_char(d, 'YYYYMMDD'),
              d AT TIME ZONE 'UTC', (d + interval '1 day') AT TIME ZONE 'UTC')
FROM generate_series(date_trunc('day', now() AT TIME ZONE 'UTC'),
                     date_trunc('day', now() AT TIME ZONE 'UTC') + make_interval(days => $1),
                     interval '1 day') AS d
WHERE to_regclass(format('%I', 'events_p' || to_char(d, 'YYYYMMDD'))) IS NULL
"#;

/// Creates the day partitions missing up to `days_ahead` days ahead;
/// returns how many it created.
pub async fn create_days_ahead(conn: &mut PgConnection, days_ahead: i32) -> Result<usize, Error> {
    use sqlx::Executor;
    let ddl: Vec<String> = sqlx::query_scalar(MISSING_DAYS)
        .bind(days_ahead)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    for statement in &ddl {
        conn.execute(statement.as_str()).await.map_err(db_error)?;
    }
    Ok(ddl.len())
}

/// The partitions whose every row is older than `$1` days.
const EXPIRED_DAYS: &str = r#"
SELECT c.relname::text
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass
  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), $$TO \('([^']+)'\)$$))[1]::timestamptz
      <= now() - make_interval(days => $1)
ORDER BY 1
"#;

pub async fn expired_days(
    conn: &mut PgConnection,
    retention_days: i32,
) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(EXPIRED_DAYS)
        .bind(retention_days)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

/// Drops one expired partition, first raising each instance's floor to the
/// highest ID it held, in one transaction: a watcher never sees the events
/// gone without the floor that says so. Dropping takes a short exclusive
/// lock on `events` (bounded by the session's lock_timeout).
pub async fn drop_day(conn: &mut PgConnection, partition: &str) -> Result<(), Error> {
    use sqlx::{Connection, Executor};
    let name = quote_ident(partition);
    let mut tx = conn.begin().await.map_err(db_error)?;
    tx.execute(
        format!(
            "INSERT INTO event_floors (instance_id, removed_through)
             SELECT instance_id, max(event_id) FROM {name} GROUP BY instance_id
             ON CONFLICT (instance_id) DO UPDATE
             SET removed_through = greatest(event_floors.removed_through, excluded.removed_through)"
        )
        .as_str(),
    )
    .await
    .map_err(db_error)?;
    tx.execute(format!("DROP TABLE IF EXISTS {name}").as_str())
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)
}

/// A partition name as SQL: the names come from the catalog, but are
/// quoted all the same.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
