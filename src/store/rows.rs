//! Rows as the queries return them (`to_jsonb` of a table row, so one
//! statement can return a call, its channels and its agents at once), and
//! their mapping to domain types.

use serde::Deserialize;

use crate::domain::ids::{ChannelId, Extension, InstanceId, JobId, Millis, UserId};
use crate::domain::states::{CallType, ChannelState, DeviceState, UserState, WorkMode};
use crate::domain::{Agent, Call, Channel};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub(crate) struct AgentRow {
    instance_id: InstanceId,
    pub user_id: UserId,
    extension: Extension,
    device_id: String,
    device_state: DeviceState,
    work_mode: WorkMode,
    user_state: UserState,
    break_code: String,
    job_id: Option<JobId>,
    outbound_scenario: bool,
    signed_skill_groups: Vec<String>,
    pub context_id: i64,
}

impl AgentRow {
    pub fn into_agent(self) -> Agent {
        Agent {
            user_id: self.user_id,
            instance_id: self.instance_id,
            extension: self.extension,
            device_id: self.device_id,
            device_state: self.device_state,
            work_mode: self.work_mode,
            user_state: self.user_state,
            break_code: self.break_code,
            job_id: self.job_id,
            outbound_scenario: self.outbound_scenario,
            signed_skill_groups: self.signed_skill_groups,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallRow {
    instance_id: InstanceId,
    job_id: JobId,
    call_type: CallType,
    initiator: UserId,
    tags: String,
    timeout_seconds: i32,
    created_at: Millis,
    ended_at: Option<Millis>,
    pub context_id: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChannelRow {
    channel_id: ChannelId,
    idx: i32,
    user_id: Option<UserId>,
    user_extension: String,
    originator: String,
    destination: String,
    channel_state: ChannelState,
    call_type: CallType,
    release_initiator: String,
    release_reason: String,
    changed_at: Millis,
}

impl CallRow {
    pub fn into_call(self, channels: Vec<ChannelRow>) -> Call {
        Call {
            instance_id: self.instance_id,
            job_id: self.job_id,
            call_type: self.call_type,
            initiator: self.initiator,
            tags: self.tags,
            timeout_seconds: self.timeout_seconds,
            created_at: self.created_at,
            ended_at: self.ended_at,
            channels: channels.into_iter().map(ChannelRow::into_channel).collect(),
        }
    }
}

impl ChannelRow {
    fn into_channel(self) -> Channel {
        Channel {
            channel_id: self.channel_id,
            index: self.idx,
            user_id: self.user_id,
            user_extension: (!self.user_extension.is_empty())
                .then(|| Extension::from_trusted(self.user_extension)),
            originator: self.originator,
            destination: self.destination,
            state: self.channel_state,
            call_type: self.call_type,
            release_initiator: self.release_initiator,
            release_reason: self.release_reason,
            timestamp: self.changed_at,
        }
    }
}

/// The version (`context_id`) of each agent in `rows`.
pub(crate) fn agent_versions(rows: &[AgentRow]) -> Vec<(UserId, i64)> {
    rows.iter()
        .map(|r| (r.user_id.clone(), r.context_id))
        .collect()
}

/// Decodes a JSON value a query built from table rows.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value)
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("Failed to decode stored rows")))
}
