//! The event log's rules: which event an answer reports as its ContextId,
//! what a cursor is, which changes a watcher sees, and how the call as it
//! was after each change is rebuilt from the call's events (each event
//! records only the channels it changed).

use std::collections::HashMap;

use super::ids::{InstanceId, JobId, Millis, UserId};
use super::{Agent, Call, Channel};
use crate::error::ParamViolation;

/// The ContextId of an answer whose action wrote nothing (a poll, a
/// repeated EndConference or report): the latest event that changed any of
/// the rows it reports, given each row's last event (`None`: no such row).
/// An action that writes reports the event it appended instead.
pub fn latest_context_id(versions: impl IntoIterator<Item = Option<i64>>) -> i64 {
    versions.into_iter().flatten().max().unwrap_or(0)
}

/// A point in the event log: every change with an ID at or below it is
/// behind the reader. What the stream hands out as `Cursor`, opaque to
/// callers so its form can change (the `c1.` says which form this is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub i64);

const CURSOR_PREFIX: &str = "c1.";

impl Cursor {
    pub fn encode(self) -> String {
        format!("{CURSOR_PREFIX}{}", self.0)
    }

    /// A cursor this service issued; anything else is Parameter.Invalid.
    pub fn parse(field: &'static str, raw: &str) -> Result<Cursor, ParamViolation> {
        let bad = || ParamViolation::invalid(field, "It is not a cursor this service issued");
        let digits = raw.strip_prefix(CURSOR_PREFIX).ok_or_else(bad)?;
        if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse().map(Cursor).map_err(|_| bad())
    }

    /// Whether resuming from here could miss changes: the instance's
    /// events up to `removed_through` were dropped with an expired day.
    pub fn outlived_by(self, removed_through: Option<i64>) -> bool {
        removed_through.is_some_and(|floor| self.0 < floor)
    }
}

/// One change as a watcher receives it: the event, and the call and the
/// agents as they were right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub context_id: i64,
    pub action: String,
    pub timestamp: Millis,
    pub request_id: String,
    pub instance_id: InstanceId,
    pub job_id: Option<JobId>,
    /// The call after the change, every channel, if a call changed.
    pub call: Option<Call>,
    /// Every agent the change touched, after it.
    pub agents: Vec<Agent>,
}

/// Which changes of its instance a watcher asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only changes to this agent and to calls it has a channel in.
    pub user: Option<UserId>,
    /// Only changes to this call.
    pub job: Option<JobId>,
}

impl Filter {
    pub fn matches(&self, change: &Change) -> bool {
        let job_ok = self
            .job
            .as_ref()
            .is_none_or(|job| change.job_id.as_ref() == Some(job));
        let user_ok = self.user.as_ref().is_none_or(|user| {
            change.agents.iter().any(|a| &a.user_id == user)
                || change.call.as_ref().is_some_and(|call| {
                    call.channels
                        .iter()
                        .any(|c| c.user_id.as_ref() == Some(user))
                })
        });
        job_ok && user_ok
    }
}

/// A call's state rebuilt event by event: each event holds the call's
/// header as it became and the channels it changed, so the call after an
/// event is the header with every channel's latest version.
#[derive(Debug, Default)]
pub struct Replay {
    call: Option<Call>,
}

impl Replay {
    /// Applies one event of the call (in ContextId order) and returns the
    /// call after it. `header` is the call after the event without its
    /// channels; `changed` the channels the event changed.
    pub fn apply(&mut self, header: Call, changed: Vec<Channel>) -> &Call {
        let mut channels = self.call.take().map(|c| c.channels).unwrap_or_default();
        for channel in changed {
            match channels
                .iter_mut()
                .find(|c| c.channel_id == channel.channel_id)
            {
                Some(known) => *known = channel,
                None => channels.push(channel),
            }
        }
        channels.sort_by_key(|c| c.index);
        self.call.insert(Call { channels, ..header })
    }

    /// Whether the call is over: no event of it is expected after this.
    fn ended(&self) -> bool {
        self.call.as_ref().is_some_and(|c| c.ended_at.is_some())
    }
}

/// The calls a reader of the log is rebuilding, by instance and JobId.
///
/// A reader that reads every event of an instance in ContextId order, read
/// after read with no range of it skipped, can keep its calls between
/// reads: each is then up to date with every event of it the reader has
/// passed, and a call it already follows needs no read of its history.
/// The reader says which instances each read covers ([`Self::keep_instances`]):
/// an instance left out of one read has a gap, so its calls are forgotten.
#[derive(Debug, Default)]
pub struct Replays {
    /// By instance, then by JobId: looked up by `&str` without building a
    /// key, and an instance's calls forgotten at once.
    calls: HashMap<String, HashMap<String, Replay>>,
}

impl Replays {
    /// Whether call `job` of `instance` is followed, so up to date.
    pub fn follows(&self, instance: &str, job: &str) -> bool {
        self.calls
            .get(instance)
            .is_some_and(|calls| calls.contains_key(job))
    }

    /// The call's replay, started empty if it was not followed.
    pub fn call(&mut self, instance: &str, job: &str) -> &mut Replay {
        if !self.follows(instance, job) {
            self.calls
                .entry(instance.to_owned())
                .or_default()
                .insert(job.to_owned(), Replay::default());
        }
        self.calls
            .get_mut(instance)
            .and_then(|calls| calls.get_mut(job))
            .expect("inserted above")
    }

    /// Forgets the calls of every instance the next read does not cover.
    pub fn keep_instances(&mut self, instances: &[String]) {
        self.calls
            .retain(|instance, _| instances.contains(instance));
    }

    /// Forgets the calls that are over and, if more than `max` are left,
    /// every call: a forgotten call costs a read of its history when its
    /// next event comes, so this only bounds memory.
    pub fn trim(&mut self, max: usize) {
        for calls in self.calls.values_mut() {
            calls.retain(|_, replay| !replay.ended());
        }
        self.calls.retain(|_, calls| !calls.is_empty());
        if self.len() > max {
            self.calls.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.calls.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{ChannelId, Extension};
    use crate::domain::states::{CallType, ChannelState, DeviceState, UserState, WorkMode};

    fn instance() -> InstanceId {
        InstanceId::parse("InstanceId", "ccc-test").unwrap()
    }

    #[test]
    fn an_answer_that_wrote_nothing_reports_the_latest_change_of_what_it_reports() {
        assert_eq!(latest_context_id([Some(7), Some(12)]), 12);
        assert_eq!(latest_context_id([Some(12), None]), 12);
        // A row never changed by an event (provisioned before any action).
        assert_eq!(latest_context_id([Some(0), None]), 0);
        assert_eq!(latest_context_id([None, None]), 0);
    }

    fn user(login: &str) -> UserId {
        UserId::parse("UserId", &format!("{login}@ccc-test")).unwrap()
    }

    fn job(n: u32) -> JobId {
        JobId::parse("JobId", &format!("job-{n}")).unwrap()
    }

    fn channel(id: &str, index: i32, who: Option<&str>, state: ChannelState) -> Channel {
        Channel {
            channel_id: ChannelId::parse("ChannelId", id).unwrap(),
            index,
            user_id: who.map(user),
            user_extension: None,
            originator: "8001".into(),
            destination: "8002".into(),
            state,
            call_type: CallType::Conference,
            release_initiator: String::new(),
            release_reason: String::new(),
            timestamp: 1,
        }
    }

    fn header(n: u32) -> Call {
        Call {
            instance_id: instance(),
            job_id: job(n),
            call_type: CallType::Conference,
            initiator: user("alice"),
            tags: String::new(),
            timeout_seconds: 30,
            created_at: 1,
            ended_at: None,
            channels: Vec::new(),
        }
    }

    fn agent(login: &str) -> Agent {
        Agent {
            user_id: user(login),
            instance_id: instance(),
            extension: Extension::parse("Extension", "8001").unwrap(),
            device_id: String::new(),
            device_state: DeviceState::Online,
            work_mode: WorkMode::OnSite,
            user_state: UserState::Ready,
            break_code: String::new(),
            job_id: None,
            outbound_scenario: false,
            signed_skill_groups: Vec::new(),
        }
    }

    fn change(call: Option<Call>, agents: Vec<Agent>) -> Change {
        Change {
            context_id: 7,
            action: "EndConference".into(),
            timestamp: 1,
            request_id: "r".into(),
            instance_id: instance(),
            job_id: call.as_ref().map(|c| c.job_id.clone()),
            call,
            agents,
        }
    }

    #[test]
    fn cursors_round_trip_and_nothing_else_parses() {
        for id in [0, 1, 42, i64::MAX] {
            assert_eq!(
                Cursor::parse("AfterCursor", &Cursor(id).encode()),
                Ok(Cursor(id))
            );
        }
        for bad in [
            "",
            "c1.",
            "c1.-1",
            "c1.1x",
            "c2.5",
            "5",
            "c1.99999999999999999999",
            "c1. 5",
            "c1.+5",
        ] {
            assert!(Cursor::parse("AfterCursor", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_below_the_floor_is_outlived() {
        assert!(Cursor(4).outlived_by(Some(5)));
        assert!(!Cursor(5).outlived_by(Some(5)), "the floor itself was seen");
        assert!(!Cursor(0).outlived_by(None), "nothing dropped");
    }

    #[test]
    fn replay_keeps_every_channel_at_its_latest_version_in_index_order() {
        let mut replay = Replay::default();
        let started = replay.apply(
            header(1),
            vec![
                channel("ch-b", 1, Some("bob"), ChannelState::Ringing),
                channel("ch-a", 0, Some("alice"), ChannelState::Answered),
            ],
        );
        assert_eq!(started.channels.len(), 2);
        assert_eq!(started.channels[0].channel_id.as_str(), "ch-a");
        let answered = replay.apply(
            header(1),
            vec![channel("ch-b", 1, Some("bob"), ChannelState::Answered)],
        );
        assert_eq!(answered.channels.len(), 2, "unchanged channels are kept");
        assert_eq!(answered.channels[1].state, ChannelState::Answered);
        assert_eq!(answered.channels[0].state, ChannelState::Answered);
    }

    #[test]
    fn replays_forget_the_calls_of_an_instance_a_read_skips_and_the_calls_that_ended() {
        let mut replays = Replays::default();
        let answered = vec![channel("ch-a", 0, Some("alice"), ChannelState::Answered)];
        replays
            .call("ccc-a", "job-1")
            .apply(header(1), answered.clone());
        replays
            .call("ccc-a", "job-2")
            .apply(header(2), answered.clone());
        replays
            .call("ccc-b", "job-3")
            .apply(header(3), answered.clone());
        assert!(replays.follows("ccc-a", "job-1"));
        assert!(!replays.follows("ccc-a", "job-3"), "by instance and call");

        // A read without ccc-b: its events in that range go unseen.
        replays.keep_instances(&["ccc-a".to_owned()]);
        assert!(!replays.follows("ccc-b", "job-3"));
        assert_eq!(replays.len(), 2);

        // job-2 ends: nothing more is expected of it.
        let mut ended = header(2);
        ended.ended_at = Some(9);
        replays.call("ccc-a", "job-2").apply(ended, Vec::new());
        replays.trim(10);
        assert!(replays.follows("ccc-a", "job-1"));
        assert!(!replays.follows("ccc-a", "job-2"));

        // Past the bound: all are forgotten (and reread when they move).
        replays.call("ccc-a", "job-4").apply(header(4), answered);
        replays.trim(1);
        assert!(replays.is_empty());
    }

    #[test]
    fn a_user_filter_sees_its_agent_and_every_call_it_has_a_channel_in() {
        let bob = Filter {
            user: Some(user("bob")),
            job: None,
        };
        let mut call = header(1);
        call.channels = vec![
            channel("ch-a", 0, Some("alice"), ChannelState::Answered),
            channel("ch-b", 1, Some("bob"), ChannelState::Answered),
        ];
        // Alice leaves: only Alice changed, but Bob is in the call.
        assert!(bob.matches(&change(Some(call.clone()), vec![agent("alice")])));
        // Bob made ready: no call.
        assert!(bob.matches(&change(None, vec![agent("bob")])));
        // Carol's own change, and a call Bob is not in.
        assert!(!bob.matches(&change(None, vec![agent("carol")])));
        let mut other = header(2);
        other.channels = vec![channel("ch-c", 0, Some("carol"), ChannelState::Answered)];
        assert!(!bob.matches(&change(Some(other.clone()), vec![agent("carol")])));

        let job_1 = Filter {
            user: None,
            job: Some(job(1)),
        };
        assert!(job_1.matches(&change(Some(call.clone()), vec![])));
        assert!(!job_1.matches(&change(Some(other), vec![])));
        assert!(!job_1.matches(&change(None, vec![agent("alice")])));
        assert!(Filter::default().matches(&change(None, vec![])));
    }
}
