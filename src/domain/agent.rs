//! An agent and the rules of its state: which actions an agent may take in
//! which state, and where each action leaves it.

use serde::{Deserialize, Serialize};

use super::ids::{Extension, InstanceId, JobId, PhoneNumber, UserId};
use super::states::{DeviceState, UserState, WorkMode};
use crate::error::{Error, ParamViolation};

/// An agent's state: what the contract calls the user context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub user_id: UserId,
    pub instance_id: InstanceId,
    pub extension: Extension,
    pub device_id: String,
    pub device_state: DeviceState,
    pub work_mode: WorkMode,
    pub user_state: UserState,
    pub break_code: String,
    /// The current call, or the last one until ReadyForService clears it.
    pub job_id: Option<JobId>,
    pub outbound_scenario: bool,
    pub signed_skill_groups: Vec<String>,
}

impl Agent {
    /// A newly provisioned agent: signed out, no device.
    pub fn provisioned(
        user_id: UserId,
        instance_id: InstanceId,
        extension: Extension,
        work_mode: WorkMode,
    ) -> Self {
        Self {
            user_id,
            instance_id,
            extension,
            device_id: String::new(),
            device_state: DeviceState::Unregistered,
            work_mode,
            user_state: UserState::Offline,
            break_code: String::new(),
            job_id: None,
            outbound_scenario: false,
            signed_skill_groups: Vec::new(),
        }
    }

    /// ReadyForService: from any state without a live channel to READY,
    /// forgetting the last call.
    pub fn ready_for_service(&self, outbound_scenario: bool) -> Result<Agent, Error> {
        const FROM: &[UserState] = &[
            UserState::Offline,
            UserState::Break,
            UserState::Working,
            UserState::Ready,
        ];
        self.expect_state(FROM)?;
        Ok(Agent {
            user_state: UserState::Ready,
            break_code: String::new(),
            job_id: None,
            outbound_scenario,
            ..self.clone()
        })
    }

    /// The agent starts a call and is on it at once.
    pub fn start_call(&self, job: &JobId) -> Result<Agent, Error> {
        self.expect_state(UserState::IDLE)?;
        Ok(Agent {
            user_state: UserState::Talking,
            break_code: String::new(),
            job_id: Some(job.clone()),
            ..self.clone()
        })
    }

    /// The agent is invited into a call and its phone rings. Only a READY
    /// agent can be reached; `called_as` is what the inviter dialled.
    pub fn invite(&self, job: &JobId, called_as: &str) -> Result<Agent, Error> {
        if self.user_state != UserState::Ready {
            return Err(Error::UserBusy(called_as.to_owned()));
        }
        Ok(Agent {
            user_state: UserState::Ringing,
            job_id: Some(job.clone()),
            ..self.clone()
        })
    }

    /// The agent's channel in `job` was answered.
    pub fn channel_answered(&self, job: &JobId) -> Agent {
        if !self.is_on(job) {
            return self.clone();
        }
        Agent {
            user_state: UserState::Talking,
            ..self.clone()
        }
    }

    /// The agent's channel in `job` was released: after-call work if the
    /// agent had talked, straight back to READY if it never answered. The
    /// agent keeps the call as its JobId either way.
    pub fn channel_released(&self, job: &JobId, had_answered: bool) -> Agent {
        if !self.is_on(job) {
            return self.clone();
        }
        Agent {
            user_state: if had_answered {
                UserState::Working
            } else {
                UserState::Ready
            },
            ..self.clone()
        }
    }

    /// Whether `job` is the call the agent's state is about. A late event of
    /// an older call must not move an agent who has moved on.
    fn is_on(&self, job: &JobId) -> bool {
        self.job_id.as_ref() == Some(job) && UserState::ON_A_CALL.contains(&self.user_state)
    }

    fn expect_state(&self, allowed: &[UserState]) -> Result<(), Error> {
        if allowed.contains(&self.user_state) {
            Ok(())
        } else {
            Err(Error::user_state(
                self.user_state.as_str(),
                &UserState::names(allowed),
            ))
        }
    }
}

/// An agent working off site is reached on its mobile, so it must have one.
pub fn check_mobile(
    work_mode: WorkMode,
    mobile: Option<&PhoneNumber>,
) -> Result<(), ParamViolation> {
    if work_mode == WorkMode::OffSite && mobile.is_none() {
        Err(ParamViolation::blank("Mobile"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UserState::*;

    fn agent(state: UserState, job: Option<&str>) -> Agent {
        Agent {
            user_state: state,
            job_id: job.map(JobId::from_trusted),
            ..Agent::provisioned(
                UserId::from_trusted("a@i"),
                InstanceId::from_trusted("i"),
                Extension::from_trusted("8001"),
                WorkMode::OnSite,
            )
        }
    }

    fn job() -> JobId {
        JobId::from_trusted("job-1")
    }

    /// Every user state × every agent action: the state it ends in, or the
    /// error code it fails with.
    #[test]
    fn every_state_and_action() {
        type Row = (UserState, &'static str, &'static str, &'static str);
        // (from, ready_for_service, start_call, invite)
        let table: &[Row] = &[
            (Offline, "READY", "InvalidOperation.UserState", "UserBusy"),
            (Ready, "READY", "TALKING", "RINGING"),
            (Break, "READY", "TALKING", "UserBusy"),
            (
                Ringing,
                "InvalidOperation.UserState",
                "InvalidOperation.UserState",
                "UserBusy",
            ),
            (
                Dialing,
                "InvalidOperation.UserState",
                "InvalidOperation.UserState",
                "UserBusy",
            ),
            (
                Talking,
                "InvalidOperation.UserState",
                "InvalidOperation.UserState",
                "UserBusy",
            ),
            (Working, "READY", "TALKING", "UserBusy"),
        ];
        fn outcome(r: Result<Agent, Error>) -> &'static str {
            match r {
                Ok(a) => a.user_state.as_str(),
                Err(e) => e.code(),
            }
        }
        assert_eq!(table.len(), UserState::ALL.len());
        for (from, ready, start, invite) in table {
            let a = agent(*from, Some("job-0"));
            assert_eq!(
                outcome(a.ready_for_service(false)),
                *ready,
                "ready from {from}"
            );
            assert_eq!(outcome(a.start_call(&job())), *start, "start from {from}");
            assert_eq!(
                outcome(a.invite(&job(), "8001")),
                *invite,
                "invite from {from}"
            );
        }
    }

    #[test]
    fn ready_for_service_forgets_the_last_call_and_sets_the_scenario() {
        let a = agent(Working, Some("job-1"))
            .ready_for_service(true)
            .unwrap();
        assert_eq!(a.job_id, None);
        assert!(a.outbound_scenario);
        let err = agent(Talking, Some("job-1"))
            .ready_for_service(false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The operation is not allowed. User state (TALKING) does not meet expectations (OFFLINE, BREAK, WORKING, READY)."
        );
    }

    #[test]
    fn starting_and_being_invited_set_the_job() {
        assert_eq!(
            agent(Ready, None).start_call(&job()).unwrap().job_id,
            Some(job())
        );
        assert_eq!(
            agent(Ready, None).invite(&job(), "8001").unwrap().job_id,
            Some(job())
        );
        assert_eq!(
            agent(Talking, None)
                .invite(&job(), "8001")
                .unwrap_err()
                .to_string(),
            "The user 8001 you called was busy. Please try again later."
        );
    }

    /// Every user state × channel event on the agent's own call.
    #[test]
    fn channel_events_on_the_agents_call() {
        // (from, answered, released after answer, released unanswered)
        let table: &[(UserState, UserState, UserState, UserState)] = &[
            (Offline, Offline, Offline, Offline),
            (Ready, Ready, Ready, Ready),
            (Break, Break, Break, Break),
            (Ringing, Talking, Working, Ready),
            (Dialing, Talking, Working, Ready),
            (Talking, Talking, Working, Ready),
            (Working, Working, Working, Working),
        ];
        assert_eq!(table.len(), UserState::ALL.len());
        for (from, answered, released_answered, released_unanswered) in table {
            let a = agent(*from, Some("job-1"));
            assert_eq!(a.channel_answered(&job()).user_state, *answered, "{from}");
            assert_eq!(
                a.channel_released(&job(), true).user_state,
                *released_answered
            );
            assert_eq!(
                a.channel_released(&job(), false).user_state,
                *released_unanswered
            );
            assert_eq!(
                a.channel_released(&job(), true).job_id,
                Some(job()),
                "keeps the call"
            );
        }
    }

    #[test]
    fn events_of_another_call_leave_the_agent_alone() {
        let a = agent(Talking, Some("job-2"));
        assert_eq!(a.channel_released(&job(), true), a);
        assert_eq!(a.channel_answered(&job()), a);
    }

    #[test]
    fn off_site_agents_need_a_mobile() {
        assert!(check_mobile(WorkMode::OffSite, None).is_err());
        assert!(check_mobile(WorkMode::OnSite, None).is_ok());
        let m = PhoneNumber::recognize("13900001234").unwrap();
        assert!(check_mobile(WorkMode::OffSite, Some(&m)).is_ok());
    }
}
