//! A call and its channels, and the rule that holds a conference together:
//! it needs two parties, so when a release leaves fewer than two live
//! channels the last one is released too and the call ends.

use serde::{Deserialize, Serialize};

use super::ids::{ChannelId, Extension, InstanceId, JobId, Millis, UserId};
use super::states::{CallType, ChannelState};

/// Why the service released a channel on its own.
pub const REASON_LEFT: &str = "200 - Left conference";
pub const REASON_CONFERENCE_ENDED: &str = "200 - Conference ended";
/// What a telephony release says when the adapter gave no reason.
pub const REASON_HUNG_UP: &str = "200 - Hung up";

/// One party's leg of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub channel_id: ChannelId,
    /// 1-based position in the call.
    pub index: i32,
    /// The agent on this channel; `None` for a customer.
    pub user_id: Option<UserId>,
    pub user_extension: Option<Extension>,
    pub originator: String,
    pub destination: String,
    pub state: ChannelState,
    pub call_type: CallType,
    pub release_initiator: String,
    pub release_reason: String,
    /// When the channel last changed state.
    pub timestamp: Millis,
}

impl Channel {
    /// The party on this channel as others name it: its extension for an
    /// agent, its number for a customer.
    pub fn party(&self) -> &str {
        match &self.user_extension {
            Some(ext) => ext.as_str(),
            None => &self.destination,
        }
    }
}

/// A call with all of its channels, ordered by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub instance_id: InstanceId,
    pub job_id: JobId,
    pub call_type: CallType,
    /// The agent who started the call.
    pub initiator: UserId,
    pub tags: String,
    pub timeout_seconds: i32,
    pub created_at: Millis,
    /// When the last party left; `None` while the call is up.
    pub ended_at: Option<Millis>,
    /// Events record the call's header without its channels: each event
    /// holds only the channels it changed.
    #[serde(default, skip_serializing)]
    pub channels: Vec<Channel>,
}

/// A channel a release took down, as the agent rules need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub position: usize,
    pub user_id: Option<UserId>,
    /// Whether the party had talked (the channel was ANSWERED).
    pub had_answered: bool,
}

impl Call {
    pub fn live_channels(&self) -> usize {
        self.channels.iter().filter(|c| c.state.is_live()).count()
    }

    pub fn position_of_channel(&self, id: &ChannelId) -> Option<usize> {
        self.channels.iter().position(|c| &c.channel_id == id)
    }

    /// The agent's channel in this call: its live one if it has one, else
    /// its latest.
    pub fn position_of_agent(&self, user: &UserId) -> Option<usize> {
        let mine = |c: &&Channel| c.user_id.as_ref() == Some(user);
        self.channels
            .iter()
            .rposition(|c| mine(&c) && c.state.is_live())
            .or_else(|| self.channels.iter().rposition(|c| mine(&c)))
    }

    /// Releases the channel at `position` (not yet released), then applies the two-party
    /// rule with the same initiator. Returns every channel released, the
    /// requested one first.
    pub fn release(
        &mut self,
        position: usize,
        initiator: &str,
        reason: &str,
        now: Millis,
    ) -> Vec<Released> {
        let mut released = vec![self.release_one(position, initiator, reason, now)];
        if self.live_channels() < 2 {
            for p in 0..self.channels.len() {
                if self.channels[p].state.is_live() {
                    released.push(self.release_one(p, initiator, REASON_CONFERENCE_ENDED, now));
                }
            }
            self.ended_at.get_or_insert(now);
        }
        released
    }

    fn release_one(
        &mut self,
        position: usize,
        initiator: &str,
        reason: &str,
        now: Millis,
    ) -> Released {
        let channel = &mut self.channels[position];
        debug_assert!(
            !channel.state.is_gone(),
            "a released channel is not released again"
        );
        let had_answered = channel.state == ChannelState::Answered;
        channel.state = ChannelState::Released;
        channel.release_initiator = initiator.to_owned();
        channel.release_reason = reason.to_owned();
        channel.timestamp = now;
        Released {
            position,
            user_id: channel.user_id.clone(),
            had_answered,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ChannelState::{Answered, Released, Ringing};

    /// A conference whose channels are in the given states; channel `i` is
    /// agent `a{i}` (extension `800{i}`) when `agents[i]`, else a customer.
    pub(crate) fn conference(states: &[(ChannelState, bool)]) -> Call {
        let job = JobId::from_trusted("job-1");
        let channels = states
            .iter()
            .enumerate()
            .map(|(i, (state, is_agent))| {
                let ext = format!("800{}", i + 1);
                let number = format!("1390000000{}", i + 1);
                let destination = if *is_agent { ext.clone() } else { number };
                Channel {
                    channel_id: ChannelId::new("8001", &destination, 1, &job),
                    index: i as i32 + 1,
                    user_id: is_agent.then(|| UserId::from_trusted(format!("a{}@i", i + 1))),
                    user_extension: is_agent.then(|| Extension::from_trusted(ext)),
                    originator: "8001".into(),
                    destination,
                    state: *state,
                    call_type: CallType::Conference,
                    release_initiator: String::new(),
                    release_reason: String::new(),
                    timestamp: 1,
                }
            })
            .collect();
        Call {
            instance_id: InstanceId::from_trusted("i"),
            job_id: job,
            call_type: CallType::Conference,
            initiator: UserId::from_trusted("a1@i"),
            tags: String::new(),
            timeout_seconds: 30,
            created_at: 1,
            ended_at: None,
            channels,
        }
    }

    #[test]
    fn releasing_one_of_three_keeps_the_others() {
        let mut call = conference(&[(Answered, true), (Answered, true), (Ringing, false)]);
        let released = call.release(0, "8001", REASON_LEFT, 5);
        assert_eq!(released.len(), 1);
        assert!(released[0].had_answered);
        assert_eq!(call.channels[0].state, Released);
        assert_eq!(call.channels[0].release_reason, REASON_LEFT);
        assert_eq!(call.channels[0].timestamp, 5);
        assert_eq!(call.channels[1].state, Answered);
        assert_eq!(call.channels[2].state, Ringing);
        assert_eq!(call.ended_at, None);
    }

    #[test]
    fn releasing_below_two_parties_ends_the_call() {
        let mut call = conference(&[(Answered, true), (Ringing, true), (Released, false)]);
        let released = call.release(0, "8001", REASON_LEFT, 7);
        assert_eq!(released.len(), 2);
        assert_eq!(released[1].position, 1);
        assert!(!released[1].had_answered);
        assert_eq!(call.channels[1].state, Released);
        assert_eq!(call.channels[1].release_reason, REASON_CONFERENCE_ENDED);
        assert_eq!(call.channels[1].release_initiator, "8001");
        assert_eq!(call.ended_at, Some(7));
        assert_eq!(call.live_channels(), 0);
    }

    #[test]
    fn an_agents_live_channel_is_preferred() {
        let mut call = conference(&[(Answered, true), (Released, true), (Ringing, true)]);
        call.channels[2].user_id = call.channels[1].user_id.clone();
        assert_eq!(
            call.position_of_agent(&UserId::from_trusted("a2@i")),
            Some(2)
        );
        assert_eq!(call.position_of_agent(&UserId::from_trusted("zz@i")), None);
    }
}
