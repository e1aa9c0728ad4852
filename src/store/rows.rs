//! Rows as the queries return them, and their mapping to domain types. A
//! query returns each row as one anonymous record, `ROW(…)` of the columns
//! the `*_columns!` macros name, in that order, so one statement can return
//! a call, its channels and its agents at once (a record, or an array of
//! them, per column). Records travel in PostgreSQL's binary format: no JSON
//! built by the server or parsed here.

use sqlx::decode::Decode;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::{Oid, PgRecordDecoder};
use sqlx::postgres::{PgHasArrayType, PgTypeInfo, PgValueRef, Postgres};

use crate::domain::ids::{ChannelId, Extension, InstanceId, JobId, Millis, UserId};
use crate::domain::states::{CallType, ChannelState, DeviceState, UserState, WorkMode};
use crate::domain::{Agent, Call, Channel};

/// The columns of an [`AgentRow`], in its order.
macro_rules! agent_columns {
    () => {
        "instance_id, user_id, extension, device_id, device_state, work_mode, user_state, \
         break_code, job_id, outbound_scenario, signed_skill_groups, context_id"
    };
}

/// The columns of a [`CallRow`], in its order.
macro_rules! call_columns {
    () => {
        "instance_id, job_id, call_type, initiator, tags, timeout_seconds, created_at, \
         ended_at, context_id"
    };
}

/// The columns of a [`ChannelRow`], in its order.
macro_rules! channel_columns {
    () => {
        "channel_id, idx, user_id, user_extension, originator, destination, channel_state, \
         call_type, release_initiator, release_reason, changed_at"
    };
}

pub(crate) use {agent_columns, call_columns, channel_columns};

#[derive(Debug)]
pub(crate) struct AgentRow {
    agent: Agent,
    pub context_id: i64,
}

impl AgentRow {
    pub fn user_id(&self) -> &UserId {
        &self.agent.user_id
    }

    pub fn into_agent(self) -> Agent {
        self.agent
    }
}

#[derive(Debug)]
pub(crate) struct CallRow {
    call: Call,
    pub context_id: i64,
}

impl CallRow {
    pub fn into_call(mut self, channels: Vec<ChannelRow>) -> Call {
        self.call.channels = channels.into_iter().map(|c| c.0).collect();
        self.call
    }
}

#[derive(Debug)]
pub(crate) struct ChannelRow(Channel);

impl<'r> Decode<'r, Postgres> for AgentRow {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let mut r = PgRecordDecoder::new(value)?;
        let agent = Agent {
            instance_id: InstanceId::from_trusted(r.try_decode::<String>()?),
            user_id: UserId::from_trusted(r.try_decode::<String>()?),
            extension: Extension::from_trusted(r.try_decode::<String>()?),
            device_id: r.try_decode()?,
            device_state: r.try_decode::<String>()?.parse::<DeviceState>()?,
            work_mode: r.try_decode::<String>()?.parse::<WorkMode>()?,
            user_state: r.try_decode::<String>()?.parse::<UserState>()?,
            break_code: r.try_decode()?,
            job_id: r.try_decode::<Option<String>>()?.map(JobId::from_trusted),
            outbound_scenario: r.try_decode()?,
            signed_skill_groups: r.try_decode()?,
        };
        Ok(Self {
            agent,
            context_id: r.try_decode()?,
        })
    }
}

impl<'r> Decode<'r, Postgres> for CallRow {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let mut r = PgRecordDecoder::new(value)?;
        let call = Call {
            instance_id: InstanceId::from_trusted(r.try_decode::<String>()?),
            job_id: JobId::from_trusted(r.try_decode::<String>()?),
            call_type: r.try_decode::<String>()?.parse::<CallType>()?,
            initiator: UserId::from_trusted(r.try_decode::<String>()?),
            tags: r.try_decode()?,
            timeout_seconds: r.try_decode()?,
            created_at: r.try_decode::<Millis>()?,
            ended_at: r.try_decode::<Option<Millis>>()?,
            channels: Vec::new(),
        };
        Ok(Self {
            call,
            context_id: r.try_decode()?,
        })
    }
}

impl<'r> Decode<'r, Postgres> for ChannelRow {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let mut r = PgRecordDecoder::new(value)?;
        Ok(Self(Channel {
            channel_id: ChannelId::from_trusted(r.try_decode::<String>()?),
            index: r.try_decode()?,
            user_id: r.try_decode::<Option<String>>()?.map(UserId::from_trusted),
            user_extension: Some(r.try_decode::<String>()?)
                .filter(|e| !e.is_empty())
                .map(Extension::from_trusted),
            originator: r.try_decode()?,
            destination: r.try_decode()?,
            state: r.try_decode::<String>()?.parse::<ChannelState>()?,
            call_type: r.try_decode::<String>()?.parse::<CallType>()?,
            release_initiator: r.try_decode()?,
            release_reason: r.try_decode()?,
            timestamp: r.try_decode::<Millis>()?,
        }))
    }
}

/// PostgreSQL's `record` and `record[]`: what `ROW(…)` and
/// `ARRAY(SELECT ROW(…) …)` return.
const RECORD: Oid = Oid(2249);
const RECORD_ARRAY: Oid = Oid(2287);

macro_rules! anonymous_record {
    ($($row:ty),*) => {$(
        impl sqlx::Type<Postgres> for $row {
            fn type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(RECORD)
            }
        }

        impl PgHasArrayType for $row {
            fn array_type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(RECORD_ARRAY)
            }
        }
    )*};
}

anonymous_record!(AgentRow, CallRow, ChannelRow);

/// The version (`context_id`) of each agent in `rows`.
pub(crate) fn agent_versions(rows: &[AgentRow]) -> Vec<(UserId, i64)> {
    rows.iter()
        .map(|r| (r.user_id().clone(), r.context_id))
        .collect()
}
