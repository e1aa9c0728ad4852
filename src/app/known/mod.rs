//! What this replica knows of the rows it last wrote or read: calls
//! (`calls`) and agents (`agents`), so that the next action on them can be
//! decided without reading them first: one round trip instead of two.
//!
//! Knowing is never trusting. A decision made on what is known is only
//! written through the guarded apply (`store::changes`), which writes
//! nothing unless the call and every agent the decision consulted are
//! still at the versions known; every write to those rows moves their
//! version. So a stale entry costs a statement that writes nothing, never
//! a wrong write. And only writes are decided this way: an answer that
//! writes nothing (a retry, a refusal) is always made from a fresh read,
//! since no guard would catch it being stale.

mod agents;
mod calls;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::domain::{Agent, Changes};
use crate::store::changes::Versions;

pub(in crate::app) use agents::KnownAgents;
pub(in crate::app) use calls::KnownCalls;

/// Everything this replica knows; cheap to clone.
#[derive(Clone, Debug)]
pub(in crate::app) struct Known {
    pub calls: KnownCalls,
    pub agents: KnownAgents,
}

impl Known {
    /// Knows at most `calls` calls and `agents` agents; 0 knows none.
    pub(in crate::app) fn new(calls: usize, agents: usize) -> Self {
        Self {
            calls: KnownCalls::new(calls),
            agents: KnownAgents::new(agents),
        }
    }

    /// Keeps what `changes`, decided on `agents` read at `versions`, left
    /// once written by event `context_id`: the agents they moved and the
    /// call, if they hold one.
    pub(in crate::app) fn written(
        &self,
        agents: &[Agent],
        versions: &Versions,
        changes: &Changes,
        context_id: i64,
    ) {
        self.agents.written(changes, context_id);
        self.calls.remember(agents, versions, changes, context_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // An entry is replaced whole under the lock, so a panic elsewhere
    // cannot leave one half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The share of recent writes decided on what was known that found a row
/// moved on: an exponentially weighted average (each write weighs 1/8, so
/// about the last 16 writes count, and a change in how the mesh routes
/// shows within a few dozen), in 1/65536ths. Calls and agents keep one
/// each.
///
/// The threshold, from `docs/performance.md` ("Deciding on what the
/// replica knows"): for calls, the read carried in the write costs every
/// write about 29 to 42 µs of backend CPU; a stale call written plainly
/// costs the load besides, about 160 µs of CPU (backends and service) and
/// a round trip of latency. They break even near one stale call in five;
/// the threshold, one in sixteen, leans towards saving the round trip,
/// since that is latency the caller waits for. Agents, whose writes do not
/// carry a read, use it to stop deciding on what is known at all.
#[derive(Debug, Default)]
struct StaleShare(AtomicU32);

impl StaleShare {
    const ONE: u32 = 1 << 16;
    const WEIGHT_SHIFT: u32 = 3;
    const HIGH: u32 = Self::ONE / 16;
    /// What one stale write adds: its weight, times one.
    const STALE: u32 = Self::ONE >> Self::WEIGHT_SHIFT;

    fn record(&self, stale: bool) {
        let add = u32::from(stale) * Self::STALE;
        let step = |share: u32| Some(share - (share >> Self::WEIGHT_SHIFT) + add);
        // Writers on other threads may interleave; each update is whole.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
    }

    fn is_high(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= Self::HIGH
    }
}
