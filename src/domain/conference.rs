//! The conference actions as pure decisions: given the state an action
//! found (loaded and locked by the caller) and the time, decide what changes.
//! Nothing here reads a clock, a random number or the database.

use super::agent::Agent;
use super::call::{Call, Channel, REASON_HUNG_UP, REASON_LEFT};
use super::ids::{ChannelId, JobId, Millis, PhoneNumber, UserId};
use super::states::{CallType, ChannelState};
use crate::error::{Error, ParamViolation, echo};

/// The most participants one StartConference may invite.
pub const MAX_PARTICIPANTS: usize = 8;
/// How long participants' phones ring when the caller does not say.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;
pub const MAX_TIMEOUT_SECONDS: i32 = 300;
/// Tags: free text kept with the call, in characters.
pub const MAX_TAGS_CHARS: usize = 128;
/// ReleaseInitiator and ReleaseReason of ReportChannelEvent, in characters.
pub const MAX_RELEASE_TEXT_CHARS: usize = 128;

/// TimeoutSeconds of StartConference: 1 to 300, 30 when absent.
pub fn timeout_seconds(raw: Option<i32>) -> Result<i32, ParamViolation> {
    match raw {
        None => Ok(DEFAULT_TIMEOUT_SECONDS),
        Some(s) if (1..=MAX_TIMEOUT_SECONDS).contains(&s) => Ok(s),
        Some(s) => Err(ParamViolation::invalid(
            "TimeoutSeconds",
            format!("It must be 1 to {MAX_TIMEOUT_SECONDS}, not {s}"),
        )),
    }
}

/// The ChannelState a media plane may report: any a channel can move to
/// (never NONE, where channels start, nor RETIRED, an archival state).
pub fn reportable(
    field: &'static str,
    state: ChannelState,
) -> Result<ChannelState, ParamViolation> {
    if matches!(state, ChannelState::None | ChannelState::Retired) {
        return Err(ParamViolation::invalid(
            field,
            format!(
                "{state} cannot be reported; report CREATED, RINGING, EARLY_MEDIA, ANSWERED or RELEASED"
            ),
        ));
    }
    Ok(state)
}

/// ReleaseInitiator and ReleaseReason describe a release, so they come
/// only with RELEASED.
pub fn release_detail_allowed(
    field: &'static str,
    state: ChannelState,
) -> Result<(), ParamViolation> {
    if state == ChannelState::Released {
        Ok(())
    } else {
        Err(ParamViolation::invalid(
            field,
            format!("It may only be given with ChannelState RELEASED, not {state}"),
        ))
    }
}

/// What an action changed. Holds the full new state of the call (when it
/// changed) and of every agent that changed, so the store can write it all
/// in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The call after the action, if the action touched it.
    pub call: Option<Call>,
    /// Whether `call` is new (to be inserted) rather than updated.
    pub call_created: bool,
    /// Positions in `call.channels` of the channels that changed.
    pub channels: Vec<usize>,
    /// The new state of each agent that changed, ordered by user ID.
    pub agents: Vec<Agent>,
    /// Every agent whose state the decision went by, changed or not,
    /// ordered by user ID, each once (the write's guard counts the agents
    /// found at their versions against this list's length): the write is
    /// guarded on these and the call being
    /// as they were read. An agent read with the call but not consulted (a
    /// party who stays when another leaves) may change meanwhile without
    /// making the decision wrong, so it is not held.
    pub consulted: Vec<UserId>,
}

impl Changes {
    fn of_call(
        call: Call,
        channels: Vec<usize>,
        mut agents: Vec<Agent>,
        mut consulted: Vec<UserId>,
    ) -> Self {
        agents.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        // Once each: the write locks and compares each agent once.
        consulted.sort();
        consulted.dedup();
        Self {
            call: Some(call),
            call_created: false,
            channels,
            agents,
            consulted,
        }
    }

    /// Only an agent changed (ReadyForService).
    pub fn of_agent(agent: Agent) -> Self {
        Self {
            call: None,
            call_created: false,
            channels: Vec::new(),
            consulted: vec![agent.user_id.clone()],
            agents: vec![agent],
        }
    }

    pub fn changed_channels(&self) -> impl Iterator<Item = &Channel> {
        let call = self.call.as_ref();
        self.channels
            .iter()
            .filter_map(move |&p| call.map(|c| &c.channels[p]))
    }

    /// The new state of `agent` if it changed, else `agent` as it was.
    pub fn agent_after<'a>(&'a self, agent: &'a Agent) -> &'a Agent {
        self.agents
            .iter()
            .find(|a| a.user_id == agent.user_id)
            .unwrap_or(agent)
    }
}

/// Parses ParticipantListJson into its entries: a JSON array of 1 to 8
/// distinct strings, each shaped like an extension or a phone number. Which
/// entries are agents is known only once the instance's extensions are
/// looked up (see [`start`]).
pub fn parse_participants(raw: &str) -> Result<Vec<String>, ParamViolation> {
    const FIELD: &str = "ParticipantListJson";
    if raw.trim().is_empty() {
        return Err(ParamViolation::blank(FIELD));
    }
    let entries: Vec<String> = serde_json::from_str(raw).map_err(|_| {
        ParamViolation::invalid(
            FIELD,
            r#"It must be a JSON array of strings, e.g. ["8002","13900001234"]"#,
        )
    })?;
    if entries.is_empty() || entries.len() > MAX_PARTICIPANTS {
        return Err(ParamViolation::invalid(
            FIELD,
            format!(
                "It must list 1 to {MAX_PARTICIPANTS} participants, not {}",
                entries.len()
            ),
        ));
    }
    for (i, entry) in entries.iter().enumerate() {
        if super::ids::Extension::recognize(entry).is_none()
            && PhoneNumber::recognize(entry).is_none()
        {
            return Err(ParamViolation::invalid(
                FIELD,
                format!(
                    "The participant {} is neither an agent extension nor a phone number",
                    echo(entry)
                ),
            ));
        }
        if entries[..i].contains(entry) {
            return Err(ParamViolation::invalid(
                FIELD,
                format!("The participant {} is listed more than once", echo(entry)),
            ));
        }
    }
    Ok(entries)
}

/// What a new call needs beyond the agents: its ID, when, and the caller's
/// options.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub job_id: JobId,
    pub now: Millis,
    pub timeout_seconds: i32,
    pub tags: String,
}

/// StartConference: `initiator` calls every entry; `agents` are the agents
/// of the instance whose extension is among the entries.
///
/// Checks, in order: every entry resolves (an agent's extension, else a
/// phone number) and is not the initiator's own extension; the initiator is
/// idle; every invited agent is READY.
pub fn start(
    initiator: &Agent,
    entries: &[String],
    agents: &[Agent],
    new: NewCall,
) -> Result<Changes, Error> {
    const FIELD: &str = "ParticipantListJson";
    enum Party<'a> {
        Agent(&'a Agent),
        Customer,
    }
    let mut parties = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry == initiator.extension.as_str() {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "The participant {} is the initiator's own extension",
                    echo(entry)
                ),
            ));
        }
        if let Some(agent) = agents.iter().find(|a| a.extension.as_str() == entry) {
            parties.push(Party::Agent(agent));
        } else if PhoneNumber::recognize(entry).is_some() {
            parties.push(Party::Customer);
        } else {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "The participant {} is neither an agent extension in the instance nor a phone number",
                    echo(entry)
                ),
            ));
        }
    }

    let job = &new.job_id;
    let mut changed = vec![initiator.start_call(job)?];
    let me = initiator.extension.as_str();
    let mut channels = vec![channel(
        1,
        me,
        me,
        Some(initiator),
        ChannelState::Answered,
        &new,
    )];
    for (i, (entry, party)) in entries.iter().zip(&parties).enumerate() {
        let agent = match party {
            Party::Agent(agent) => {
                changed.push(agent.invite(job, entry)?);
                Some(*agent)
            }
            Party::Customer => None,
        };
        channels.push(channel(
            i as i32 + 2,
            me,
            entry,
            agent,
            ChannelState::Ringing,
            &new,
        ));
    }

    let call = Call {
        instance_id: initiator.instance_id.clone(),
        job_id: job.clone(),
        call_type: CallType::Conference,
        initiator: initiator.user_id.clone(),
        tags: new.tags,
        timeout_seconds: new.timeout_seconds,
        created_at: new.now,
        ended_at: None,
        channels,
    };
    let all = (0..call.channels.len()).collect();
    // Every agent found by its extension is a party, so changed.
    let consulted = changed.iter().map(|a| a.user_id.clone()).collect();
    Ok(Changes {
        call_created: true,
        ..Changes::of_call(call, all, changed, consulted)
    })
}

fn channel(
    index: i32,
    originator: &str,
    destination: &str,
    agent: Option<&Agent>,
    state: ChannelState,
    new: &NewCall,
) -> Channel {
    Channel {
        channel_id: ChannelId::new(originator, destination, new.now, &new.job_id),
        index,
        user_id: agent.map(|a| a.user_id.clone()),
        user_extension: agent.map(|a| a.extension.clone()),
        originator: originator.to_owned(),
        destination: destination.to_owned(),
        state,
        call_type: CallType::Conference,
        release_initiator: String::new(),
        release_reason: String::new(),
        timestamp: new.now,
    }
}

/// EndConference: `leaver` leaves `call`; `agents` are the agents with a
/// live channel in it. `Ok(None)`: the agent had already left, nothing to
/// change.
pub fn leave(
    call: &Call,
    agents: &[Agent],
    leaver: &Agent,
    now: Millis,
) -> Result<Option<Changes>, Error> {
    if call.call_type != CallType::Conference {
        return Err(Error::NotAConference(call.job_id.to_string()));
    }
    let Some(position) = call.position_of_agent(&leaver.user_id) else {
        return Err(Error::NotInConference {
            user_id: leaver.user_id.to_string(),
            job_id: call.job_id.to_string(),
        });
    };
    let state = call.channels[position].state;
    if state.is_gone() {
        return Ok(None);
    }
    if !state.is_live() {
        return Err(Error::channel_state(
            state.as_str(),
            &names(ChannelState::LIVE),
        ));
    }
    let initiator = leaver.extension.as_str().to_owned();
    release(call, agents, position, &initiator, REASON_LEFT, now).map(Some)
}

/// ReportChannelEvent: the media plane says channel `id` of `call` is now
/// in `next`. `release` carries the caller's initiator and reason for a
/// RELEASED report (each `None` for the default). `Ok(None)`: the channel
/// already was in `next`.
pub fn report(
    call: &Call,
    agents: &[Agent],
    id: &ChannelId,
    next: ChannelState,
    release_by: (Option<&str>, Option<&str>),
    now: Millis,
) -> Result<Option<Changes>, Error> {
    let position = call
        .position_of_channel(id)
        .ok_or_else(|| Error::ChannelNotFound {
            channel_id: id.to_string(),
            job_id: call.job_id.to_string(),
        })?;
    let channel = &call.channels[position];
    if channel.state == next {
        return Ok(None);
    }
    if !channel.state.may_move_to(next) {
        return Err(Error::channel_state(
            channel.state.as_str(),
            &ChannelState::predecessors_of(next),
        ));
    }
    if next == ChannelState::Released {
        let initiator = release_by.0.unwrap_or(channel.party()).to_owned();
        let reason = release_by.1.unwrap_or(REASON_HUNG_UP);
        return release(call, agents, position, &initiator, reason, now).map(Some);
    }

    let mut after = call.clone();
    let changed = &mut after.channels[position];
    changed.state = next;
    changed.timestamp = now;
    let (mut moved, mut consulted) = (Vec::new(), Vec::new());
    if let (ChannelState::Answered, Some(user)) = (next, &changed.user_id) {
        let agent = find(agents, user)?;
        consulted.push(user.clone());
        let answered = agent.channel_answered(&call.job_id);
        if &answered != agent {
            moved.push(answered);
        }
    }
    Ok(Some(Changes::of_call(
        after,
        vec![position],
        moved,
        consulted,
    )))
}

/// Releases one live channel, lets the two-party rule release the rest, and
/// moves every agent whose channel went down.
fn release(
    call: &Call,
    agents: &[Agent],
    position: usize,
    initiator: &str,
    reason: &str,
    now: Millis,
) -> Result<Changes, Error> {
    let mut after = call.clone();
    let released = after.release(position, initiator, reason, now);
    let (mut moved, mut consulted) = (Vec::new(), Vec::new());
    for r in &released {
        if let Some(user) = &r.user_id {
            let agent = find(agents, user)?;
            consulted.push(user.clone());
            let next = agent.channel_released(&call.job_id, r.had_answered);
            if &next != agent {
                moved.push(next);
            }
        }
    }
    let positions = released.iter().map(|r| r.position).collect();
    Ok(Changes::of_call(after, positions, moved, consulted))
}

/// The loaded state of an agent with a live channel. The store loads every
/// such agent with the call; one missing means the two disagree.
fn find<'a>(agents: &'a [Agent], user: &UserId) -> Result<&'a Agent, Error> {
    agents.iter().find(|a| &a.user_id == user).ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "agent {user} has a live channel but was not loaded with the call"
        ))
    })
}

fn names(states: &[ChannelState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::call::REASON_CONFERENCE_ENDED;
    use crate::domain::call::tests::conference;
    use crate::domain::ids::{Extension, InstanceId, UserId};
    use crate::domain::states::{UserState, WorkMode};
    use ChannelState::{Answered, Created, EarlyMedia, Released, Retired, Ringing};

    fn agent(n: usize, state: UserState, job: Option<&str>) -> Agent {
        Agent {
            user_state: state,
            job_id: job.map(JobId::from_trusted),
            ..Agent::provisioned(
                UserId::from_trusted(format!("a{n}@i")),
                InstanceId::from_trusted("i"),
                Extension::from_trusted(format!("800{n}")),
                WorkMode::OnSite,
            )
        }
    }

    fn new_call() -> NewCall {
        NewCall {
            job_id: JobId::from_trusted("job-9"),
            now: 1000,
            timeout_seconds: 30,
            tags: "vip".into(),
        }
    }

    fn entries(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    // ---- ParticipantListJson ----

    #[test]
    fn participant_lists() {
        let ok = parse_participants(r#"["8002","13900001234","+8613900001234"]"#).unwrap();
        assert_eq!(ok, entries(&["8002", "13900001234", "+8613900001234"]));
        let bad = [
            ("", "Parameter.Blank"),
            ("[]", "1 to 8"),
            (r#"["1","2","3","4","5","6","7","8","9"]"#, "1 to 8"),
            ("not json", "JSON array"),
            ("[8002]", "JSON array"),
            (r#"{"a":1}"#, "JSON array"),
            (r#"["abc"]"#, "neither"),
            (r#"["8002","8002"]"#, "more than once"),
            // A JSON escape can smuggle in a NUL; the entry's shape refuses it.
            (r#"["80\u000002"]"#, "neither"),
        ];
        for (raw, expect) in bad {
            let e = Error::Parameters(vec![parse_participants(raw).unwrap_err()]);
            let text = format!("{} {}", e.code(), e);
            assert!(text.contains(expect), "{raw}: {text}");
        }
    }

    #[test]
    fn a_huge_bad_entry_is_echoed_cut_short() {
        let raw = serde_json::to_string(&["9".repeat(1_000_000) + "x"]).unwrap();
        let e = Error::Parameters(vec![parse_participants(&raw).unwrap_err()]);
        let message = e.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(
            message.contains(&format!("{:?}…", "9".repeat(32))),
            "{message}"
        );
    }

    // ---- StartConference ----

    #[test]
    fn start_rings_everyone_and_puts_the_initiator_on_the_call() {
        let me = agent(1, UserState::Ready, None);
        let other = agent(2, UserState::Ready, None);
        let changes = start(
            &me,
            &entries(&["8002", "13900001234"]),
            &[other],
            new_call(),
        )
        .unwrap();
        let call = changes.call.as_ref().unwrap();
        assert!(changes.call_created);
        assert_eq!(call.call_type, CallType::Conference);
        assert_eq!(call.tags, "vip");
        let states: Vec<_> = call
            .channels
            .iter()
            .map(|c| (c.index, c.state, c.user_id.is_some()))
            .collect();
        assert_eq!(
            states,
            vec![(1, Answered, true), (2, Ringing, true), (3, Ringing, false)]
        );
        assert_eq!(
            call.channels[2].channel_id.as_str(),
            "ch:user:8001->13900001234:1000:job-9"
        );
        assert_eq!(
            call.channels[1].user_extension.as_ref().unwrap().as_str(),
            "8002"
        );
        assert_eq!(changes.channels, vec![0, 1, 2]);
        let agents: Vec<_> = changes
            .agents
            .iter()
            .map(|a| (a.user_id.as_str(), a.user_state))
            .collect();
        assert_eq!(
            agents,
            vec![("a1@i", UserState::Talking), ("a2@i", UserState::Ringing)]
        );
        assert!(
            changes
                .agents
                .iter()
                .all(|a| a.job_id.as_ref().unwrap().as_str() == "job-9")
        );
    }

    #[test]
    fn start_refuses_what_cannot_be_called() {
        let me = agent(1, UserState::Ready, None);
        let busy = agent(2, UserState::Talking, Some("job-5"));
        let cases: &[(&[&str], UserState, &str)] = &[
            (&["8001"], UserState::Ready, "Parameter.Invalid"),
            (&["8009"], UserState::Ready, "Parameter.Invalid"),
            (&["8002"], UserState::Ready, "UserBusy"),
            (
                &["13900001234"],
                UserState::Offline,
                "InvalidOperation.UserState",
            ),
            (
                &["13900001234"],
                UserState::Talking,
                "InvalidOperation.UserState",
            ),
            // Parameters are checked before states.
            (&["8009"], UserState::Offline, "Parameter.Invalid"),
        ];
        for (list, my_state, code) in cases {
            let me = Agent {
                user_state: *my_state,
                ..me.clone()
            };
            let err =
                start(&me, &entries(list), std::slice::from_ref(&busy), new_call()).unwrap_err();
            assert_eq!(err.code(), *code, "{list:?} from {my_state}");
        }
    }

    // ---- EndConference ----

    fn three_party() -> (Call, Vec<Agent>) {
        let call = conference(&[(Answered, true), (Answered, true), (Ringing, false)]);
        let agents = vec![
            agent(1, UserState::Talking, Some("job-1")),
            agent(2, UserState::Talking, Some("job-1")),
        ];
        (call, agents)
    }

    #[test]
    fn leaving_keeps_the_others_connected() {
        let (call, agents) = three_party();
        let changes = leave(&call, &agents, &agents[0], 50).unwrap().unwrap();
        let after = changes.call.as_ref().unwrap();
        assert_eq!(after.channels[0].state, Released);
        assert_eq!(after.channels[0].release_initiator, "8001");
        assert_eq!(after.channels[0].release_reason, "200 - Left conference");
        assert_eq!(after.channels[0].timestamp, 50);
        assert_eq!(after.channels[1].state, Answered);
        assert_eq!(after.channels[2].state, Ringing);
        assert_eq!(after.ended_at, None);
        assert_eq!(changes.channels, vec![0]);
        assert_eq!(changes.agents.len(), 1);
        assert_eq!(changes.agents[0].user_state, UserState::Working);
        assert_eq!(changes.agents[0].job_id.as_ref().unwrap().as_str(), "job-1");
    }

    #[test]
    fn an_agent_who_never_answered_goes_back_to_ready() {
        let call = conference(&[(Answered, true), (Ringing, true), (Ringing, false)]);
        let agents = vec![
            agent(1, UserState::Talking, Some("job-1")),
            agent(2, UserState::Ringing, Some("job-1")),
        ];
        let changes = leave(&call, &agents, &agents[1], 50).unwrap().unwrap();
        assert_eq!(changes.agents[0].user_state, UserState::Ready);
    }

    #[test]
    fn leaving_two_parties_ends_the_call_for_both() {
        let call = conference(&[(Answered, true), (Answered, true), (Released, false)]);
        let agents = vec![
            agent(1, UserState::Talking, Some("job-1")),
            agent(2, UserState::Talking, Some("job-1")),
        ];
        let changes = leave(&call, &agents, &agents[1], 60).unwrap().unwrap();
        let after = changes.call.as_ref().unwrap();
        assert_eq!(after.live_channels(), 0);
        assert_eq!(after.ended_at, Some(60));
        assert_eq!(after.channels[0].release_reason, REASON_CONFERENCE_ENDED);
        assert_eq!(after.channels[0].release_initiator, "8002");
        assert_eq!(changes.channels, vec![1, 0]);
        let states: Vec<_> = changes.agents.iter().map(|a| a.user_state).collect();
        assert_eq!(states, vec![UserState::Working, UserState::Working]);
    }

    /// The write holds the agents a decision went by, not every agent read
    /// with the call: the parties who stay are not consulted, an agent
    /// whose channel went down is even when it does not change (it has
    /// moved on to another call), and a report that moves no agent holds
    /// none.
    #[test]
    fn decisions_name_the_agents_they_went_by() {
        let ids = |c: &Changes| -> Vec<String> {
            c.consulted.iter().map(|u| u.as_str().to_owned()).collect()
        };
        let (call, agents) = three_party();
        let left = leave(&call, &agents, &agents[1], 1).unwrap().unwrap();
        assert_eq!(ids(&left), ["a2@i"]);

        let two = conference(&[(Answered, true), (Answered, true), (Released, false)]);
        let moved_on = vec![
            agent(1, UserState::Talking, Some("job-9")),
            agent(2, UserState::Talking, Some("job-1")),
        ];
        let ended = leave(&two, &moved_on, &moved_on[1], 1).unwrap().unwrap();
        assert_eq!(ids(&ended), ["a1@i", "a2@i"]);
        assert_eq!(ended.agents.len(), 1, "a1 is on job-9: unchanged");

        let ringing = conference(&[(Answered, true), (Ringing, true), (Ringing, false)]);
        let customer = ringing.channels[2].channel_id.clone();
        let early = report(&ringing, &agents, &customer, EarlyMedia, (None, None), 1);
        assert_eq!(ids(&early.unwrap().unwrap()), Vec::<String>::new());
        let invited = ringing.channels[1].channel_id.clone();
        let answered = report(&ringing, &agents, &invited, Answered, (None, None), 1);
        assert_eq!(ids(&answered.unwrap().unwrap()), ["a2@i"]);

        let ready = agent(3, UserState::Ready, None);
        assert_eq!(ids(&Changes::of_agent(ready)), ["a3@i"]);
    }

    /// An agent the decision went by twice (two of its channels, say) is
    /// held once.
    #[test]
    fn an_agent_consulted_twice_is_held_once() {
        let (call, _) = three_party();
        let user = |s: &str| UserId::from_trusted(s.to_owned());
        let changes = Changes::of_call(
            call,
            Vec::new(),
            Vec::new(),
            vec![user("b@i"), user("a@i"), user("b@i")],
        );
        assert_eq!(changes.consulted, [user("a@i"), user("b@i")]);
    }

    /// Every state the leaver's channel can be in.
    #[test]
    fn leaving_from_every_channel_state() {
        for state in ChannelState::ALL {
            let call = conference(&[(Answered, true), (*state, true), (Answered, false)]);
            let agents = vec![
                agent(1, UserState::Talking, Some("job-1")),
                agent(2, UserState::Talking, Some("job-1")),
            ];
            let outcome = match leave(&call, &agents, &agents[1], 1) {
                Ok(Some(_)) => "released",
                Ok(None) => "unchanged",
                Err(e) => e.code(),
            };
            let expected = match state {
                Created | Ringing | EarlyMedia | Answered => "released",
                Released | Retired => "unchanged",
                ChannelState::None => "InvalidOperation.ChannelState",
            };
            assert_eq!(outcome, expected, "{state}");
        }
    }

    #[test]
    fn only_conference_members_can_leave() {
        let (call, _) = three_party();
        let stranger = agent(7, UserState::Ready, None);
        assert_eq!(
            leave(&call, &[], &stranger, 1).unwrap_err().code(),
            "InvalidOperation.NotInConference"
        );
        let mut internal = call.clone();
        internal.call_type = CallType::Internal;
        let err = leave(&internal, &[], &stranger, 1).unwrap_err();
        assert_eq!(err.code(), "InvalidOperation.NotInConference");
        assert!(err.to_string().contains("not a conference"));
    }

    // ---- ReportChannelEvent ----

    #[test]
    fn answering_puts_the_agent_in_talking() {
        let call = conference(&[(Answered, true), (Ringing, true), (Ringing, false)]);
        let agents = vec![
            agent(1, UserState::Talking, Some("job-1")),
            agent(2, UserState::Ringing, Some("job-1")),
        ];
        let id = call.channels[1].channel_id.clone();
        let changes = report(&call, &agents, &id, Answered, (None, None), 70)
            .unwrap()
            .unwrap();
        assert_eq!(changes.call.as_ref().unwrap().channels[1].state, Answered);
        assert_eq!(changes.call.as_ref().unwrap().channels[1].timestamp, 70);
        assert_eq!(changes.agents[0].user_state, UserState::Talking);
    }

    #[test]
    fn a_customer_hanging_up_releases_with_defaults_and_may_end_the_call() {
        let call = conference(&[(Answered, true), (Released, true), (Answered, false)]);
        let agents = vec![agent(1, UserState::Talking, Some("job-1"))];
        let id = call.channels[2].channel_id.clone();
        let changes = report(&call, &agents, &id, Released, (None, None), 80)
            .unwrap()
            .unwrap();
        let after = changes.call.as_ref().unwrap();
        assert_eq!(after.channels[2].release_initiator, "13900000003");
        assert_eq!(after.channels[2].release_reason, REASON_HUNG_UP);
        assert_eq!(after.channels[0].release_reason, REASON_CONFERENCE_ENDED);
        assert_eq!(after.ended_at, Some(80));
        assert_eq!(changes.agents[0].user_state, UserState::Working);
    }

    /// Every (current, reported) pair of channel states on a customer channel.
    #[test]
    fn reports_from_every_state_to_every_state() {
        for from in ChannelState::ALL {
            for to in ChannelState::ALL {
                let call = conference(&[(Answered, true), (Answered, true), (*from, false)]);
                let agents = vec![
                    agent(1, UserState::Talking, Some("job-1")),
                    agent(2, UserState::Talking, Some("job-1")),
                ];
                let id = call.channels[2].channel_id.clone();
                let outcome =
                    match report(&call, &agents, &id, *to, (Some("x"), Some("486 - Busy")), 1) {
                        Ok(Some(c)) => {
                            assert_eq!(c.call.unwrap().channels[2].state, *to);
                            "moved"
                        }
                        Ok(None) => "unchanged",
                        Err(e) => e.code(),
                    };
                let expected = if from == to {
                    "unchanged"
                } else if from.may_move_to(*to) {
                    "moved"
                } else {
                    "InvalidOperation.ChannelState"
                };
                assert_eq!(outcome, expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn reporting_an_unknown_channel() {
        let (call, agents) = three_party();
        let err = report(
            &call,
            &agents,
            &ChannelId::from_trusted("nope"),
            Answered,
            (None, None),
            1,
        )
        .unwrap_err();
        assert_eq!(err.code(), "NotExists.ChannelId");
    }
}
