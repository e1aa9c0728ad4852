//! The calls this replica knows: for each call it wrote last, the state
//! and versions that write left, so that the next action on the call can
//! be decided without reading it first. A stale entry costs a statement
//! that writes nothing (and, written as `changes::apply_or_read`, reads
//! the call as stored instead).
//!
//! Bounded: the least recently used call is forgotten first.
//!
//! A stale entry is cheap or dear depending on how the write is sent. The
//! write that reads the call when the guard fails costs every write some
//! backend CPU for the read it carries; the plain write costs nothing more
//! when the call is as known, and a round trip more when it is not. Which
//! is cheaper depends on how often calls are stale, that is, on how the
//! mesh spreads a call's actions over replicas, so each replica follows
//! its own recent share of stale calls ([`StaleShare`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::domain::{Agent, Changes};
use crate::store::calls::LoadedCall;
use crate::store::changes::Versions;

use super::{StaleShare, lock};

/// A call, by tenant first.
pub(in crate::app) type CallKey = (InstanceId, JobId);

/// Each call's state as last known, most recently used last.
type Entries = LruCache<CallKey, Arc<LoadedCall>>;

/// The calls this replica knows; cheap to clone.
#[derive(Clone)]
pub(in crate::app) struct KnownCalls {
    /// `None` when the replica is told to know none.
    entries: Option<Arc<Mutex<Entries>>>,
    /// How often a known call was found moved on, lately.
    stale: Arc<StaleShare>,
}

impl std::fmt::Debug for KnownCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.as_ref().map(|e| lock(e).len());
        f.debug_struct("KnownCalls").field("len", &len).finish()
    }
}

impl KnownCalls {
    /// Knows at most `capacity` calls; 0 knows none.
    pub(in crate::app) fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| Arc::new(Mutex::new(LruCache::new(capacity)))),
            stale: Arc::default(),
        }
    }

    /// Whether a write decided on a known call should carry the read of
    /// the call for when the guard finds it moved on: yes once known calls
    /// have lately been stale often enough that the round trips this saves
    /// outweigh what the read costs every write.
    pub(in crate::app) fn expect_stale(&self) -> bool {
        self.stale.is_high()
    }

    /// Records whether a write decided on a known call found it moved on.
    pub(in crate::app) fn found(&self, stale: bool) {
        self.stale.record(stale);
    }

    /// The call as known, forgotten until [`KnownCalls::remember`] keeps
    /// it again: whatever else the action finds (a stale entry, a refusal,
    /// a failure), what was known is of no more use.
    pub(in crate::app) fn take(&self, key: &CallKey) -> Option<Arc<LoadedCall>> {
        lock(self.entries.as_ref()?).remove(key)
    }

    /// Keeps the call as `changes` (decided on `agents` read at `versions`)
    /// left it once written by event `context_id`, for the next action on
    /// it; nothing if the changes hold no call.
    pub(in crate::app) fn remember(
        &self,
        agents: &[Agent],
        versions: &Versions,
        changes: &Changes,
        context_id: i64,
    ) {
        if let Some(known) = after(agents, versions, changes, context_id) {
            let call = known.call.as_ref().expect("`after` keeps a call");
            let key = (call.instance_id.clone(), call.job_id.clone());
            self.put(key, known);
        }
    }

    /// Remembers `call` as it is now; an ended call is forgotten instead,
    /// since nothing more can be decided on it.
    fn put(&self, key: CallKey, call: LoadedCall) {
        let Some(entries) = &self.entries else {
            return;
        };
        if call.call.as_ref().is_none_or(|c| c.ended_at.is_some()) {
            lock(entries).remove(&key);
        } else {
            let call = Arc::new(call);
            lock(entries).insert(key, call);
        }
    }
}

/// The call as it is once `changes`, decided on `agents` read at
/// `versions`, have been written by event `context_id`: the new call, and
/// the agents a fresh read would return for an action on it (those with a
/// live channel, as `store::calls::load` picks them), each at its version.
/// `None` if the changes hold no call.
fn after(
    agents: &[Agent],
    versions: &Versions,
    changes: &Changes,
    context_id: i64,
) -> Option<LoadedCall> {
    let call = changes.call.clone()?;
    let on_call = |user: &UserId| {
        call.channels
            .iter()
            .any(|c| c.state.is_live() && c.user_id.as_ref() == Some(user))
    };
    // By user ID, as a read orders them; a changed agent replaces its old self.
    let known: BTreeMap<&UserId, (&Agent, i64)> = agents
        .iter()
        .map(|a| (a, versions.of_agent(&a.user_id)))
        .chain(changes.agents.iter().map(|a| (a, context_id)))
        .filter(|(a, _)| on_call(&a.user_id))
        .map(|(a, v)| (&a.user_id, (a, v)))
        .collect();
    let agent_versions = known.iter().map(|(&u, &(_, v))| (u.clone(), v)).collect();
    let agents = known.into_values().map(|(a, _)| a.clone()).collect();
    Some(LoadedCall {
        instance_exists: true,
        call: Some(call),
        agents,
        versions: Versions {
            call: Some(context_id),
            agents: agent_versions,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::call::tests::conference;
    use crate::domain::conference::leave;
    use crate::domain::ids::Extension;
    use crate::domain::states::ChannelState::{Answered, Released};
    use crate::domain::states::{UserState, WorkMode};
    use std::sync::atomic::Ordering;

    fn agent(n: usize) -> Agent {
        Agent {
            user_state: UserState::Talking,
            job_id: Some(JobId::from_trusted("job-1")),
            ..Agent::provisioned(
                UserId::from_trusted(format!("a{n}@i")),
                InstanceId::from_trusted("i"),
                Extension::from_trusted(format!("800{n}")),
                WorkMode::OnSite,
            )
        }
    }

    fn read_at(agents: &[Agent], versions: &[i64]) -> Versions {
        Versions {
            call: Some(7),
            agents: agents
                .iter()
                .zip(versions)
                .map(|(a, v)| (a.user_id.clone(), *v))
                .collect(),
        }
    }

    /// What a fresh read returns after the leave: the agents still on the
    /// call, the untouched at their old versions, the changed at the new.
    #[test]
    fn after_a_leave_the_leaver_is_no_longer_read() {
        let call = conference(&[(Answered, true), (Answered, true), (Answered, true)]);
        let agents = vec![agent(1), agent(2), agent(3)];
        let versions = read_at(&agents, &[3, 4, 5]);
        let changes = leave(&call, &agents, &agents[1], 50).unwrap().unwrap();

        let known = after(&agents, &versions, &changes, 9).unwrap();

        assert_eq!(known.call, changes.call);
        assert_eq!(known.versions.call, Some(9));
        let users: Vec<&str> = known.agents.iter().map(|a| a.user_id.as_str()).collect();
        assert_eq!(users, ["a1@i", "a3@i"]);
        assert_eq!(known.versions.of_agent(&agents[0].user_id), 3);
        assert_eq!(known.versions.of_agent(&agents[2].user_id), 5);
        assert_eq!(known.versions.agents.len(), 2);
    }

    /// An agent the action changed and who stays on the call is known in
    /// its new state, at the new version.
    #[test]
    fn a_changed_agent_on_the_call_is_known_as_changed() {
        let call = conference(&[(Answered, true), (Answered, true), (Answered, false)]);
        let agents = vec![agent(1), agent(2)];
        let versions = read_at(&agents, &[3, 4]);
        let mut changed = agents[1].clone();
        changed.break_code = "lunch".into();
        let changes = Changes {
            call: Some(call),
            call_created: false,
            channels: vec![],
            consulted: vec![changed.user_id.clone()],
            agents: vec![changed.clone()],
        };

        let known = after(&agents, &versions, &changes, 9).unwrap();

        assert_eq!(known.agents, vec![agents[0].clone(), changed]);
        assert_eq!(known.versions.agents.len(), 2);
        assert_eq!(known.versions.of_agent(&agents[1].user_id), 9);
        assert_eq!(known.versions.of_agent(&agents[0].user_id), 3);
    }

    #[test]
    fn changes_without_a_call_know_nothing() {
        let changes = Changes::of_agent(agent(1));
        assert!(after(&[agent(1)], &Versions::default(), &changes, 9).is_none());
    }

    fn loaded(ended: bool) -> LoadedCall {
        let mut call = conference(&[(Answered, true), (Released, true)]);
        call.ended_at = ended.then_some(5);
        LoadedCall {
            instance_exists: true,
            call: Some(call),
            agents: vec![agent(1)],
            versions: Versions::default(),
        }
    }

    fn key(job: &str) -> CallKey {
        (InstanceId::from_trusted("i"), JobId::from_trusted(job))
    }

    #[test]
    fn the_least_recently_used_call_is_forgotten_first() {
        let known = KnownCalls::new(2);
        known.put(key("j1"), loaded(false));
        known.put(key("j2"), loaded(false));
        // Used: taken and kept again, as an action does.
        let j1 = known.take(&key("j1")).unwrap();
        known.put(key("j1"), LoadedCall::clone(&j1));
        known.put(key("j3"), loaded(false));

        assert!(
            known.take(&key("j2")).is_none(),
            "j2 was used least recently"
        );
        assert!(known.take(&key("j1")).is_some());
        assert!(known.take(&key("j3")).is_some());
    }

    #[test]
    fn an_ended_call_is_forgotten() {
        let known = KnownCalls::new(2);
        known.put(key("j1"), loaded(false));
        known.put(key("j1"), loaded(true));
        assert!(known.take(&key("j1")).is_none());
    }

    #[test]
    fn tenants_do_not_share_entries() {
        let known = KnownCalls::new(2);
        known.put(key("j1"), loaded(false));
        let other = (InstanceId::from_trusted("other"), JobId::from_trusted("j1"));
        assert!(known.take(&other).is_none());
    }

    #[test]
    fn a_replica_that_finds_calls_as_known_does_not_expect_them_stale() {
        let known = KnownCalls::new(2);
        assert!(
            !known.expect_stale(),
            "a new replica expects calls as known"
        );
        for _ in 0..1000 {
            known.found(false);
        }
        assert!(!known.expect_stale());
    }

    #[test]
    fn one_stale_call_is_expected_again_until_enough_are_found_as_known() {
        let known = KnownCalls::new(2);
        known.found(true);
        assert!(known.expect_stale(), "one in eight recent writes is stale");
        // 1/8 decays below 1/16 after six writes: (7/8)^6 < 1/2.
        for n in 1..=6 {
            known.found(false);
            assert_eq!(known.expect_stale(), n < 6, "after {n} found as known");
        }
    }

    #[test]
    fn calls_spread_over_replicas_keep_stale_expected() {
        let known = KnownCalls::new(2);
        // Two in three actions on a call come through other replicas.
        for n in 0..300 {
            known.found(n % 3 != 0);
            if n > 3 {
                assert!(known.expect_stale(), "at write {n}");
            }
        }
        // And the share never passes one however many are stale.
        for _ in 0..1000 {
            known.found(true);
        }
        assert!(known.stale.0.load(Ordering::Relaxed) <= StaleShare::ONE);
    }

    #[test]
    fn a_replica_told_to_know_none_knows_none() {
        let known = KnownCalls::new(0);
        known.put(key("j1"), loaded(false));
        assert!(known.take(&key("j1")).is_none());
    }
}
