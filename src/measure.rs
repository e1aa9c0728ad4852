//! What the service measures about itself, for Prometheus: every metric's
//! name and labels are here, so a dashboard's author reads one page. The
//! rest of the crate calls these functions; until [`install`] runs (the
//! binary's `--metrics-listen`), they cost next to nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Latency buckets, in seconds: from a tenth of a millisecond (a cached
/// poll) to the 10 s default deadline.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Serves Prometheus text on `listen` (`GET /metrics`, any path answers)
/// and makes it this process's recorder. Once per process.
pub fn install(listen: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .context("Invalid metric buckets")?
        .install()
        .with_context(|| format!("Failed to serve metrics on {listen}"))
}

/// A request answered: `ccc_requests_total{rpc, code, reason}` and
/// `ccc_request_duration_seconds{rpc}`.
pub fn request(rpc: &'static str, code: &'static str, reason: &'static str, took: Duration) {
    counter!("ccc_requests_total", "rpc" => rpc, "code" => code, "reason" => reason).increment(1);
    histogram!("ccc_request_duration_seconds", "rpc" => rpc).record(took.as_secs_f64());
}

/// `ccc_requests_in_flight`: up by one while this lives. A guard, so a
/// request its caller cancels (tonic drops its future) still counts down.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        gauge!("ccc_requests_in_flight").increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("ccc_requests_in_flight").decrement(1.0);
    }
}

/// `ccc_requests_shed_total`: refused by admission control.
pub fn shed() {
    counter!("ccc_requests_shed_total").increment(1);
}

/// How one attempt of a unit of database work ended.
#[derive(Debug, Clone, Copy)]
pub enum UnitOutcome {
    /// It ran to its end and its answer stands (committed, or read).
    Done,
    /// It lost a race, wrote nothing, and is tried again.
    ConflictRetried,
    /// The database did not answer in time; its connection was closed.
    TimedOut,
    /// It failed (a domain error, an unreachable database…).
    Failed,
}

impl UnitOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ConflictRetried => "conflict_retried",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
        }
    }
}

/// One attempt of a unit of work: `ccc_db_units_total{action, outcome}`
/// and `ccc_db_unit_duration_seconds{action}`.
pub fn unit(action: &'static str, outcome: UnitOutcome, took: Duration) {
    counter!("ccc_db_units_total", "action" => action, "outcome" => outcome.label()).increment(1);
    histogram!("ccc_db_unit_duration_seconds", "action" => action).record(took.as_secs_f64());
}

/// `ccc_db_connections_discarded_total`: connections closed instead of
/// going back to the pool because the unit holding them did not run to its
/// end (cut off by the database timeout, or a panic), so their state was
/// unknown.
pub fn connection_discarded() {
    counter!("ccc_db_connections_discarded_total").increment(1);
}

/// `ccc_db_pool_connections{state="open"|"idle"}`, as of now.
pub fn pool(open: u32, idle: usize) {
    gauge!("ccc_db_pool_connections", "state" => "open").set(f64::from(open));
    gauge!("ccc_db_pool_connections", "state" => "idle").set(idle as f64);
}

/// `ccc_db_pool_waiting`: units waiting for a connection from the pool
/// (after their lane's share), up by one while this lives. A guard, so a
/// wait cut short by the deadline still counts down. Steadily above zero
/// means the pool is too small for the load, or the database too slow.
pub struct PoolWaiting(());

impl PoolWaiting {
    pub fn enter() -> Self {
        gauge!("ccc_db_pool_waiting").increment(1.0);
        Self(())
    }
}

impl Drop for PoolWaiting {
    fn drop(&mut self) {
        gauge!("ccc_db_pool_waiting").decrement(1.0);
    }
}

/// `ccc_token_cache_total{result="hit"|"miss"}`.
pub fn token_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!("ccc_token_cache_total", "result" => result).increment(1);
}

/// How an action used what the replica knew of its call or its agents
/// (`app::known`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownUse {
    /// Decided on what was known and written: one round trip.
    Hit,
    /// Decided on what was known, but another replica had changed the call
    /// or an agent since: the guarded write wrote nothing, the call or the
    /// agents were read (the call by that write when the replica expects
    /// stale calls), and the action decided again (two or three round
    /// trips).
    Stale,
    /// Known, but what was known led to no write (a retry, a refusal),
    /// which is answered only from a fresh read.
    Unsure,
    /// Not known: read first.
    Unknown,
    /// Agents known, but not tried, since agents have lately been found
    /// stale: read first (the read shows whether they were as known).
    Untried,
}

/// `ccc_known_calls_total{result}`: actions on a call by how what this
/// replica knew of the call served them.
pub fn known_call(used: KnownUse) {
    counter!("ccc_known_calls_total", "result" => used.label()).increment(1);
}

/// `ccc_known_agents_total{result}`: StartConference and ReadyForService
/// by how what this replica knew of their agents served them.
pub fn known_agents(used: KnownUse) {
    counter!("ccc_known_agents_total", "result" => used.label()).increment(1);
}

impl KnownUse {
    fn label(self) -> &'static str {
        match self {
            KnownUse::Hit => "hit",
            KnownUse::Stale => "stale",
            KnownUse::Unsure => "unsure",
            KnownUse::Unknown => "unknown",
            KnownUse::Untried => "untried",
        }
    }
}

/// `ccc_events_appended_total{action}`: changes recorded in the event log.
pub fn event_appended(action: &'static str) {
    counter!("ccc_events_appended_total", "action" => action).increment(1);
}

/// `ccc_watchers`: WatchEvents streams open on this replica, up by one
/// while this lives.
#[derive(Debug)]
pub struct Watching(());

impl Watching {
    pub fn enter() -> Self {
        gauge!("ccc_watchers").increment(1.0);
        Self(())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        gauge!("ccc_watchers").decrement(1.0);
    }
}

/// `ccc_watch_catch_up_pages_total`: pages a watcher read from the
/// database because it was behind the tail (a resume, or a slow client).
pub fn watch_catch_up_page() {
    counter!("ccc_watch_catch_up_pages_total").increment(1);
}
