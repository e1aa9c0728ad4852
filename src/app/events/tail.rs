//! The one reader of the event log in a replica: it learns how far the log
//! is final (see `store::events`), reads the new changes of every instance
//! watched here, and broadcasts them to this replica's watchers. Watchers
//! never poll the database while they keep up; one that falls behind
//! catches up from the database on its own (`watcher`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::domain::events::Replays;
use crate::error::Error;
use crate::store::events::{self, Probe};

use super::SharedChange;

/// Most changes one read of the log returns (and one batch holds).
pub(super) const PAGE: usize = 256;
/// Most batches the broadcast keeps for watchers that are behind; one
/// further behind catches up from the database instead.
const BACKLOG: usize = 64;
/// Most pages the tail reads in one tick before it probes again.
const PAGES_PER_TICK: usize = 8;
/// Most event IDs one read spans, whatever its plan: a tail far behind
/// (after a stall) moves on a bounded range at a time.
const SPAN: i64 = 16 * PAGE as i64;
/// Most calls the tail keeps rebuilt between reads (`Replays`), besides
/// those that ended; past it, it forgets them all and rereads their
/// history as their next events come.
const FOLLOWED_CALLS: usize = 10_000;

/// New changes of the instances watched here, from `after` (exclusive) to
/// `upto` (inclusive): every change of the instances in `instances` in
/// that range is in `changes`, oldest first.
#[derive(Debug)]
pub(super) struct Batch {
    pub after: i64,
    pub upto: i64,
    pub instances: HashSet<String>,
    pub changes: Vec<Arc<SharedChange>>,
}

/// The tail's handle; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Tail {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: PgConnectOptions,
    poll: Duration,
    query_timeout: Duration,
    watched: Mutex<HashMap<String, usize>>,
    /// The log is final up to here (`None` until first known).
    horizon: watch::Sender<Option<i64>>,
    batches: broadcast::Sender<Arc<Batch>>,
    /// A first watcher arrived: start or resume.
    wake: Notify,
    started: std::sync::Once,
    stop: CancellationToken,
}

/// A watcher's registration: its instance is read while it lives.
pub(super) struct Subscription {
    tail: Tail,
    instance: String,
    pub batches: broadcast::Receiver<Arc<Batch>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.tail.inner.watched.lock().expect("not poisoned");
        if let Some(n) = watched.get_mut(&self.instance) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.instance);
            }
        }
    }
}

impl Tail {
    pub(super) fn new(
        options: PgConnectOptions,
        poll: Duration,
        query_timeout: Duration,
        stop: CancellationToken,
    ) -> Self {
        // The tail's statements run many times a second with parameters of
        // the same shape; a plan made afresh for each (PostgreSQL's choice
        // for the page read over the day partitions) cost more than running
        // it. Their generic plans read by index (docs/performance.md).
        let options = options.options([("plan_cache_mode", "force_generic_plan")]);
        Self {
            inner: Arc::new(Inner {
                options,
                poll,
                query_timeout,
                watched: Mutex::new(HashMap::new()),
                horizon: watch::channel(None).0,
                batches: broadcast::channel(BACKLOG).0,
                wake: Notify::new(),
                started: std::sync::Once::new(),
                stop,
            }),
        }
    }

    /// Registers a watcher of `instance`. Subscribed before anything is
    /// read for it, so no batch published from now on is missed.
    pub(super) fn subscribe(&self, instance: &str) -> Subscription {
        let batches = self.inner.batches.subscribe();
        *self
            .inner
            .watched
            .lock()
            .expect("not poisoned")
            .entry(instance.to_owned())
            .or_default() += 1;
        let inner = self.inner.clone();
        self.inner.started.call_once(move || {
            tokio::spawn(run(inner));
        });
        self.inner.wake.notify_one();
        Subscription {
            tail: self.clone(),
            instance: instance.to_owned(),
            batches,
        }
    }

    /// How far the log is final, once known (within a few polls of the
    /// first watcher); `None` if the tail stopped first.
    pub(super) async fn horizon(&self) -> Option<i64> {
        let mut rx = self.inner.horizon.subscribe();
        let known = rx.wait_for(Option::is_some);
        tokio::select! {
            seen = known => seen.ok().and_then(|h| *h),
            () = self.inner.stop.cancelled() => None,
        }
    }
}

/// The tail's loop: probe, read, broadcast, every `poll`, while anything
/// is watched. Ticks start `poll` apart (a fixed rate, not a pause after
/// each tick), so a change waits about one period for the probe that
/// finds its writer gone, however long the tick before took; a tick that
/// overran is followed by the next at once, then the rate resumes from
/// there (`MissedTickBehavior::Delay`: no burst of catch-up ticks).
async fn run(inner: Arc<Inner>) {
    let mut state = State::default();
    let mut conn: Option<PgConnection> = None;
    let mut failures: u32 = 0;
    let mut ticks = tokio::time::interval(inner.poll);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let idle = inner.watched.lock().expect("not poisoned").is_empty();
        if idle {
            // Nothing to read for: forget the rounds, and start afresh
            // (the horizon is probed anew) when a watcher arrives.
            state = State::default();
            conn = None;
            tokio::select! {
                () = inner.wake.notified() => {}
                () = inner.stop.cancelled() => return,
            }
            ticks.reset_immediately();
            continue;
        }
        if failures == 0 {
            tokio::select! {
                _ = ticks.tick() => {}
                () = inner.stop.cancelled() => return,
            }
        } else {
            // A database that fails is asked less often, up to a second.
            let pause =
                (inner.poll * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = inner.stop.cancelled() => return,
            }
            ticks.reset();
        }
        match tick(&inner, &mut conn, &mut state).await {
            Ok(()) => failures = 0,
            Err(e) => {
                conn = None;
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %format!("{e:#}"), failures, "event tail: reading the log failed; retrying");
                }
            }
        }
    }
}

/// What the tail knows between ticks.
#[derive(Debug, Default)]
struct State {
    /// Probes whose writers have not all ended yet, oldest first.
    rounds: VecDeque<Probe>,
    /// Final up to here (published as the horizon).
    final_upto: Option<i64>,
    /// Batches have been broadcast up to here.
    read_upto: i64,
    /// The calls of the watched instances, as of `read_upto`.
    replays: Replays,
}

impl State {
    /// Takes a probe; the new final point if it moved. A probe's IDs are
    /// final once none of its writers is still writing; probes finish in
    /// order, as a writer still in an older one is also in every newer one.
    fn observe(&mut self, probe: Probe) -> Option<i64> {
        let writing: HashSet<&String> = probe.writers.iter().collect();
        let mut newest = None;
        let current = probe.clone();
        self.rounds.push_back(current);
        while let Some(front) = self.rounds.front() {
            if front.writers.iter().any(|w| writing.contains(w)) {
                break;
            }
            newest = Some(front.handed_out);
            self.rounds.pop_front();
        }
        let newest = newest?;
        match self.final_upto {
            Some(known) if known >= newest => None,
            _ => {
                if self.final_upto.is_none() {
                    // Watchers catch up to the first horizon themselves.
                    self.read_upto = newest;
                }
                self.final_upto = Some(newest);
                Some(newest)
            }
        }
    }
}

async fn tick(
    inner: &Inner,
    conn: &mut Option<PgConnection>,
    state: &mut State,
) -> anyhow::Result<()> {
    let bound = inner.query_timeout;
    if conn.is_none() {
        *conn = Some(
            tokio::time::timeout(bound, inner.options.connect())
                .await
                .map_err(|_| anyhow::anyhow!("connecting timed out"))??,
        );
    }
    let c = conn.as_mut().expect("connected above");
    // Once final up to the sequence's value, the lock list is read only
    // after the sequence moves (see `store::events::PROBE` for why that
    // is safe).
    let probe = within(bound, events::probe(c, state.final_upto)).await?;
    let first = state.final_upto.is_none();
    if let Some(now_final) = state.observe(probe) {
        inner.horizon.send_replace(Some(now_final));
        if first {
            // The tail starts (or resumes) here without reading what came
            // before: this empty batch tells every watcher still short of
            // it that it has a gap to read from the database.
            let _ = inner.batches.send(Arc::new(Batch {
                after: now_final,
                upto: now_final,
                instances: watched(inner).into_iter().collect(),
                changes: Vec::new(),
            }));
        }
    }
    let Some(final_upto) = state.final_upto else {
        return Ok(());
    };
    for _ in 0..PAGES_PER_TICK {
        if state.read_upto >= final_upto {
            break;
        }
        let instances = watched(inner);
        if instances.is_empty() {
            break;
        }
        state.replays.keep_instances(&instances);
        let upto = final_upto.min(state.read_upto.saturating_add(SPAN));
        let page = within(
            bound,
            events::read(
                c,
                &instances,
                state.read_upto,
                upto,
                PAGE,
                &mut state.replays,
            ),
        )
        .await?;
        state.replays.trim(FOLLOWED_CALLS);
        let batch = Batch {
            after: state.read_upto,
            upto: page.covered,
            instances: instances.into_iter().collect(),
            changes: page
                .changes
                .into_iter()
                .map(|c| Arc::new(SharedChange::new(c)))
                .collect(),
        };
        state.read_upto = page.covered;
        // No receivers is fine: the last watcher just left.
        let _ = inner.batches.send(Arc::new(batch));
    }
    Ok(())
}

fn watched(inner: &Inner) -> Vec<String> {
    let watched = inner.watched.lock().expect("not poisoned");
    watched.keys().cloned().collect()
}

async fn within<T>(
    bound: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(bound, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::Error::new(e)),
        Err(_) => Err(anyhow::anyhow!(
            "the database did not answer within {bound:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(handed_out: i64, writers: &[&str]) -> Probe {
        Probe {
            handed_out,
            writers: writers.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    #[test]
    fn ids_are_final_once_the_writers_seen_with_them_have_ended() {
        let mut s = State::default();
        // No writers: final at once.
        assert_eq!(s.observe(probe(10, &[])), Some(10));
        // 20 handed out while 3/7 writes: not final while 3/7 goes on,
        // however far later probes get.
        assert_eq!(s.observe(probe(20, &["3/7"])), None);
        assert_eq!(s.observe(probe(25, &["3/7", "4/9"])), None);
        // 3/7 ended, 4/9 still writing: the probe of 20 is final, 25 not.
        assert_eq!(s.observe(probe(30, &["4/9"])), Some(20));
        // Everything ended.
        assert_eq!(s.observe(probe(30, &[])), Some(30));
        assert_eq!(s.observe(probe(30, &[])), None, "no move, no news");
    }

    #[test]
    fn a_probe_without_the_lock_list_once_final_up_to_the_sequence_moves_nothing() {
        let mut s = State::default();
        assert_eq!(s.observe(probe(10, &[])), Some(10));
        // 5/1 holds the lock but has drawn no ID yet.
        assert_eq!(s.observe(probe(10, &["5/1"])), None);
        // The sequence still at the horizon: the probe skips the lock list.
        assert_eq!(s.observe(probe(10, &[])), None);
        // 5/1 drew 11 and 12; the sequence moved, so the locks are read.
        assert_eq!(s.observe(probe(12, &["5/1"])), None);
        assert_eq!(s.observe(probe(12, &["5/1"])), None);
        assert_eq!(s.observe(probe(12, &[])), Some(12));
    }

    #[test]
    fn the_first_horizon_is_not_read_from_the_start_of_the_log() {
        let mut s = State::default();
        assert_eq!(s.observe(probe(1_000, &[])), Some(1_000));
        assert_eq!(s.read_upto, 1_000);
        assert_eq!(s.observe(probe(1_005, &[])), Some(1_005));
        assert_eq!(s.read_upto, 1_000, "the next read starts after 1,000");
    }
}
