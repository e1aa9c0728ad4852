//! Rows as the queries return them, and their mapping to domain types. A
//! query returns each row as one anonymous record, `ROW(…)` of the columns
//! the `*_columns!` macros name, in that order, so one statement can return
//! a call, its channels and its agents at once (a record, or an array of
//! them, per column). Records travel in PostgreSQL's binary format: no JSON
//! built by the server or parsed here.
//!
//! A record names each field's type, and sqlx decodes only the types it
//! knows, so the state columns, which are domains
//! (`migrations/20261127000001_state_domains.sql`), are read cast to their
//! base types. The casts cost nothing on `text`.

use std::str::FromStr;

use sqlx::decode::Decode;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::{Oid, PgRecordDecoder};
use sqlx::postgres::{PgHasArrayType, PgTypeInfo, PgValueRef, Postgres};

use crate::domain::ids::{ChannelId, Extension, InstanceId, JobId, Millis, UserId};
use crate::domain::states::{CallType, ChannelState, DeviceState, UserState, WorkMode};
use crate::domain::{Agent, Call, Channel};

/// The columns of an [`Agent`] row in [`FromRecord`]'s order, then its
/// version ([`Versioned`]).
macro_rules! agent_columns {
    () => {
        "instance_id, user_id, extension, device_id, device_state::text, work_mode::text, \
         user_state::text, break_code, job_id, outbound_scenario, signed_skill_groups, context_id"
    };
}

/// The columns of a [`Call`] row in [`FromRecord`]'s order, then its
/// version ([`Versioned`]).
macro_rules! call_columns {
    () => {
        "instance_id, job_id, call_type::text, initiator, tags, timeout_seconds, created_at, \
         ended_at, context_id"
    };
}

/// The columns of a [`Channel`] row, in [`FromRecord`]'s order.
macro_rules! channel_columns {
    () => {
        "channel_id, idx::int4, user_id, user_extension, originator, destination, \
         channel_state::text, call_type, release_initiator, release_reason, changed_at"
    };
}

pub(crate) use {agent_columns, call_columns, channel_columns};

/// A domain value read from the fields of one record, in the order of its
/// `*_columns!` macro.
pub(crate) trait FromRecord: Sized {
    fn read(r: &mut PgRecordDecoder<'_>) -> Result<Self, BoxDynError>;
}

/// A row without a version of its own (a channel: the call's covers it).
#[derive(Debug)]
pub(crate) struct Row<T>(pub T);

/// A row and its version: `context_id`, the last event that changed it,
/// read after the row's own columns.
#[derive(Debug)]
pub(crate) struct Versioned<T> {
    pub row: T,
    pub version: i64,
}

impl Versioned<Call> {
    pub fn into_call(mut self, channels: Vec<Row<Channel>>) -> Call {
        self.row.channels = channels.into_iter().map(|c| c.0).collect();
        self.row
    }
}

/// The agents of `rows`, and each one's version by user ID.
pub(crate) fn agents_and_versions(rows: Vec<Versioned<Agent>>) -> (Vec<Agent>, Vec<(UserId, i64)>) {
    rows.into_iter()
        .map(|v| {
            let version = (v.row.user_id.clone(), v.version);
            (v.row, version)
        })
        .unzip()
}

impl<'r, T: FromRecord> Decode<'r, Postgres> for Row<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let mut r = PgRecordDecoder::new(value)?;
        Ok(Self(T::read(&mut r)?))
    }
}

impl<'r, T: FromRecord> Decode<'r, Postgres> for Versioned<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let mut r = PgRecordDecoder::new(value)?;
        Ok(Self {
            row: T::read(&mut r)?,
            version: r.try_decode()?,
        })
    }
}

/// The next field, a stored name (`UserState`, `CallType`, …), parsed.
fn named<E>(r: &mut PgRecordDecoder<'_>) -> Result<E, BoxDynError>
where
    E: FromStr,
    E::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(r.try_decode::<String>()?.parse()?)
}

impl FromRecord for Agent {
    fn read(r: &mut PgRecordDecoder<'_>) -> Result<Self, BoxDynError> {
        Ok(Agent {
            instance_id: InstanceId::from_trusted(r.try_decode::<String>()?),
            user_id: UserId::from_trusted(r.try_decode::<String>()?),
            extension: Extension::from_trusted(r.try_decode::<String>()?),
            device_id: r.try_decode()?,
            device_state: named::<DeviceState>(r)?,
            work_mode: named::<WorkMode>(r)?,
            user_state: named::<UserState>(r)?,
            break_code: r.try_decode()?,
            job_id: r.try_decode::<Option<String>>()?.map(JobId::from_trusted),
            outbound_scenario: r.try_decode()?,
            signed_skill_groups: r.try_decode()?,
        })
    }
}

impl FromRecord for Call {
    /// The call's own columns; its channels come in their own records.
    fn read(r: &mut PgRecordDecoder<'_>) -> Result<Self, BoxDynError> {
        Ok(Call {
            instance_id: InstanceId::from_trusted(r.try_decode::<String>()?),
            job_id: JobId::from_trusted(r.try_decode::<String>()?),
            call_type: named::<CallType>(r)?,
            initiator: UserId::from_trusted(r.try_decode::<String>()?),
            tags: r.try_decode()?,
            timeout_seconds: r.try_decode()?,
            created_at: r.try_decode::<Millis>()?,
            ended_at: r.try_decode::<Option<Millis>>()?,
            channels: Vec::new(),
        })
    }
}

impl FromRecord for Channel {
    fn read(r: &mut PgRecordDecoder<'_>) -> Result<Self, BoxDynError> {
        Ok(Channel {
            channel_id: ChannelId::from_trusted(r.try_decode::<String>()?),
            index: r.try_decode()?,
            user_id: r.try_decode::<Option<String>>()?.map(UserId::from_trusted),
            user_extension: Some(r.try_decode::<String>()?)
                .filter(|e| !e.is_empty())
                .map(Extension::from_trusted),
            originator: r.try_decode()?,
            destination: r.try_decode()?,
            state: named::<ChannelState>(r)?,
            call_type: named::<CallType>(r)?,
            release_initiator: r.try_decode()?,
            release_reason: r.try_decode()?,
            timestamp: r.try_decode::<Millis>()?,
        })
    }
}

/// PostgreSQL's `record` and `record[]`: what `ROW(…)` and
/// `ARRAY(SELECT ROW(…) …)` return.
const RECORD: Oid = Oid(2249);
const RECORD_ARRAY: Oid = Oid(2287);

macro_rules! anonymous_record {
    ($($row:ident),*) => {$(
        impl<T> sqlx::Type<Postgres> for $row<T> {
            fn type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(RECORD)
            }
        }

        impl<T> PgHasArrayType for $row<T> {
            fn array_type_info() -> PgTypeInfo {
                PgTypeInfo::with_oid(RECORD_ARRAY)
            }
        }
    )*};
}

anonymous_record!(Row, Versioned);
