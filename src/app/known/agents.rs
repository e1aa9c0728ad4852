//! The agents this replica knows: each agent as this replica last wrote or
//! read it, at its version, so that StartConference and ReadyForService
//! can decide without reading the agents first.
//!
//! Only an agent's state moves: its user ID, extension and instance are
//! fixed once it is provisioned, and agents are never deleted. So an
//! extension known to be an agent's stays that agent's, and the guard on
//! the versions of the agents a decision consulted covers everything the
//! decision went by. What is never known is that an extension is nobody's:
//! an agent may be provisioned with it at any time, and no version would
//! show it, so a participant shaped like an extension that no known agent
//! has is read.
//!
//! A stale agent costs a write that writes nothing, then the read: one
//! round trip more than reading first. So while agents are lately found
//! stale (an agent's actions spread over replicas) the replica reads
//! first, and the read tells whether what it knew was current, which is
//! how it learns that this has changed ([`KnownAgents::trusted`]).
//!
//! Bounded: the least recently used agent is forgotten first.

use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use crate::domain::ids::{Extension, InstanceId, UserId};
use crate::domain::{Agent, Changes};
use crate::store::agents::LoadedAgents;
use crate::store::changes::Versions;

use super::{StaleShare, lock};

/// Each agent as known, by tenant first.
struct Entries {
    /// Each agent and its version, most recently used last.
    by_user: LruCache<(InstanceId, UserId), (Agent, i64)>,
    /// Whose each known extension is.
    by_extension: LruCache<(InstanceId, Extension), UserId>,
}

/// The agents this replica knows; cheap to clone.
#[derive(Clone)]
pub(in crate::app) struct KnownAgents {
    /// `None` when the replica is told to know none.
    entries: Option<Arc<Mutex<Entries>>>,
    /// How often known agents were found moved on, lately.
    stale: Arc<StaleShare>,
}

impl std::fmt::Debug for KnownAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.as_ref().map(|e| lock(e).by_user.len());
        f.debug_struct("KnownAgents").field("len", &len).finish()
    }
}

impl KnownAgents {
    /// Knows at most `capacity` agents; 0 knows none.
    pub(in crate::app) fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| {
                Arc::new(Mutex::new(Entries {
                    by_user: LruCache::new(capacity),
                    by_extension: LruCache::new(capacity),
                }))
            }),
            stale: Arc::default(),
        }
    }

    /// Agent `user` of `instance` and the agents of `extensions`, as a
    /// read would return them (ordered by user ID, each once); `None`
    /// unless every one is known.
    pub(in crate::app) fn recall(
        &self,
        instance: &InstanceId,
        user: &UserId,
        extensions: &[Extension],
    ) -> Option<LoadedAgents> {
        let mut entries = lock(self.entries.as_ref()?);
        let mut users = Vec::with_capacity(extensions.len() + 1);
        users.push(user.clone());
        for extension in extensions {
            let key = (instance.clone(), extension.clone());
            users.push(entries.by_extension.get(&key)?.clone());
        }
        users.sort();
        users.dedup();
        let mut agents = Vec::with_capacity(users.len());
        let mut versions = Vec::with_capacity(users.len());
        for user in users {
            let (agent, version) = entries.by_user.get(&(instance.clone(), user.clone()))?;
            agents.push(agent.clone());
            versions.push((user, *version));
        }
        Some(LoadedAgents {
            // Agents belong to an instance, and instances are never deleted.
            instance_exists: true,
            agents,
            versions: Versions {
                call: None,
                agents: versions,
            },
        })
    }

    /// Whether to decide on what is known: not while agents are lately
    /// found stale.
    pub(in crate::app) fn trusted(&self) -> bool {
        !self.stale.is_high()
    }

    /// Records whether known agents were found moved on: by the guarded
    /// write decided on them, or by a read made instead.
    pub(in crate::app) fn found(&self, stale: bool) {
        self.stale.record(stale);
    }

    /// Keeps `agents` as read at `versions`.
    pub(in crate::app) fn read(&self, agents: &[Agent], versions: &Versions) {
        self.keep(agents.iter().map(|a| (a, versions.of_agent(&a.user_id))));
    }

    /// Keeps the agents `changes` moved, as written by event `context_id`.
    pub(in crate::app) fn written(&self, changes: &Changes, context_id: i64) {
        self.keep(changes.agents.iter().map(|a| (a, context_id)));
    }

    /// Keeps each agent at its version, unless a newer version of it is
    /// known: two actions on one agent may finish in either order, and of
    /// two writes of an agent the later has the higher version (the write
    /// locks every agent it changes before its event draws an ID,
    /// `store::changes`).
    fn keep<'a>(&self, agents: impl Iterator<Item = (&'a Agent, i64)>) {
        let Some(entries) = &self.entries else {
            return;
        };
        let mut entries = lock(entries);
        for (agent, version) in agents {
            let key = (agent.instance_id.clone(), agent.user_id.clone());
            if entries.by_user.get(&key).is_some_and(|(_, v)| *v > version) {
                continue;
            }
            let extension = (agent.instance_id.clone(), agent.extension.clone());
            entries
                .by_extension
                .insert(extension, agent.user_id.clone());
            entries.by_user.insert(key, (agent.clone(), version));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::states::{UserState, WorkMode};

    fn agent(n: usize, state: UserState) -> Agent {
        Agent {
            user_state: state,
            ..Agent::provisioned(
                UserId::from_trusted(format!("a{n}@i")),
                InstanceId::from_trusted("i"),
                Extension::from_trusted(format!("800{n}")),
                WorkMode::OnSite,
            )
        }
    }

    fn versions(of: &[(&Agent, i64)]) -> Versions {
        Versions {
            call: None,
            agents: of.iter().map(|(a, v)| (a.user_id.clone(), *v)).collect(),
        }
    }

    fn ext(n: usize) -> Extension {
        Extension::from_trusted(format!("800{n}"))
    }

    fn instance() -> InstanceId {
        InstanceId::from_trusted("i")
    }

    #[test]
    fn known_agents_are_recalled_as_a_read_returns_them() {
        let known = KnownAgents::new(8);
        let (a1, a2, a3) = (
            agent(1, UserState::Ready),
            agent(2, UserState::Ready),
            agent(3, UserState::Break),
        );
        known.read(
            &[a3.clone(), a1.clone(), a2.clone()],
            &versions(&[(&a1, 4), (&a2, 5), (&a3, 6)]),
        );

        // The initiator named again by extension, and a3 twice: each once.
        let found = known
            .recall(&instance(), &a2.user_id, &[ext(3), ext(2), ext(3)])
            .unwrap();

        assert!(found.instance_exists);
        assert_eq!(found.agents, vec![a2.clone(), a3.clone()]);
        assert_eq!(
            found.versions.agents,
            vec![(a2.user_id.clone(), 5), (a3.user_id.clone(), 6)]
        );
        assert_eq!(found.versions.call, None);
    }

    #[test]
    fn an_extension_no_known_agent_has_is_not_known_to_be_nobodys() {
        let known = KnownAgents::new(8);
        let a1 = agent(1, UserState::Ready);
        known.read(std::slice::from_ref(&a1), &versions(&[(&a1, 4)]));

        assert!(known.recall(&instance(), &a1.user_id, &[ext(2)]).is_none());
        let unknown = UserId::from_trusted("a9@i");
        assert!(known.recall(&instance(), &unknown, &[]).is_none());
    }

    #[test]
    fn a_write_moves_the_agent_to_its_new_version() {
        let known = KnownAgents::new(8);
        let a1 = agent(1, UserState::Ready);
        known.read(std::slice::from_ref(&a1), &versions(&[(&a1, 4)]));
        let talking = agent(1, UserState::Talking);

        known.written(&Changes::of_agent(talking.clone()), 9);

        let found = known.recall(&instance(), &a1.user_id, &[]).unwrap();
        assert_eq!(found.agents, vec![talking]);
        assert_eq!(found.versions.of_agent(&a1.user_id), 9);
    }

    #[test]
    fn an_older_read_does_not_replace_a_newer_write() {
        let known = KnownAgents::new(8);
        let talking = agent(1, UserState::Talking);
        known.written(&Changes::of_agent(talking.clone()), 9);
        let ready = agent(1, UserState::Ready);

        known.read(std::slice::from_ref(&ready), &versions(&[(&ready, 4)]));

        let found = known.recall(&instance(), &ready.user_id, &[]).unwrap();
        assert_eq!(found.agents, vec![talking]);
        assert_eq!(found.versions.of_agent(&ready.user_id), 9);
    }

    #[test]
    fn tenants_do_not_share_agents_or_extensions() {
        let known = KnownAgents::new(8);
        let (a1, a2) = (agent(1, UserState::Ready), agent(2, UserState::Ready));
        known.read(&[a1.clone(), a2.clone()], &versions(&[(&a1, 4), (&a2, 5)]));
        let other = InstanceId::from_trusted("other");

        assert!(known.recall(&other, &a1.user_id, &[]).is_none());
        // a1 exists in `other` too, but 8002 there is not known to be a2's.
        let mut there = agent(1, UserState::Ready);
        there.instance_id = other.clone();
        known.read(std::slice::from_ref(&there), &versions(&[(&there, 7)]));
        assert!(known.recall(&other, &a1.user_id, &[ext(2)]).is_none());
    }

    #[test]
    fn the_least_recently_used_agent_is_forgotten_first() {
        let known = KnownAgents::new(2);
        let (a1, a2, a3) = (
            agent(1, UserState::Ready),
            agent(2, UserState::Ready),
            agent(3, UserState::Ready),
        );
        known.read(&[a1.clone(), a2.clone()], &versions(&[(&a1, 4), (&a2, 5)]));
        assert!(known.recall(&instance(), &a1.user_id, &[]).is_some());
        known.read(std::slice::from_ref(&a3), &versions(&[(&a3, 6)]));

        assert!(known.recall(&instance(), &a2.user_id, &[]).is_none());
        assert!(known.recall(&instance(), &a1.user_id, &[]).is_some());
        assert!(known.recall(&instance(), &a3.user_id, &[]).is_some());
    }

    #[test]
    fn agents_found_stale_are_not_trusted_until_found_as_known_again() {
        let known = KnownAgents::new(8);
        assert!(known.trusted(), "a new replica trusts what it learns");
        known.found(true);
        assert!(!known.trusted());
        // 1/8 decays below 1/16 after six: (7/8)^6 < 1/2.
        for n in 1..=6 {
            known.found(false);
            assert_eq!(known.trusted(), n == 6, "after {n} found as known");
        }
    }

    #[test]
    fn a_replica_told_to_know_none_knows_none() {
        let known = KnownAgents::new(0);
        let a1 = agent(1, UserState::Ready);
        known.read(std::slice::from_ref(&a1), &versions(&[(&a1, 4)]));
        assert!(known.recall(&instance(), &a1.user_id, &[]).is_none());
    }
}
