//! Domain values to proto messages and back. The domain's enumeration names
//! are the proto enum value names, so enums convert by name.

use crate::domain::access::Role;
use crate::domain::conference;
use crate::domain::states::{ChannelState, WorkMode};
use crate::domain::{Agent, Call, Channel};
use crate::error::ParamViolation;
use crate::proto;
use crate::proto::channel_context::ChannelState as PbChannelState;
use crate::proto::user_context::DeviceState as PbDeviceState;
use crate::store::tokens::TokenRecord;

/// Converts a domain enum to its proto twin by the shared name. Every
/// domain name exists in the proto (a unit test checks all of them), so the
/// unspecified fallback is never taken.
macro_rules! to_proto_enum {
    ($pb:ty, $value:expr) => {
        <$pb>::from_str_name($value.as_str()).map_or(0, |v| v as i32)
    };
}

pub fn call_context(call: &Call) -> proto::CallContext {
    proto::CallContext {
        job_id: call.job_id.to_string(),
        instance_id: call.instance_id.to_string(),
        call_type: to_proto_enum!(proto::CallType, call.call_type),
        channel_contexts: call
            .channels
            .iter()
            .map(|c| channel_context(call, c))
            .collect(),
    }
}

fn channel_context(call: &Call, c: &Channel) -> proto::ChannelContext {
    proto::ChannelContext {
        channel_id: c.channel_id.to_string(),
        job_id: call.job_id.to_string(),
        user_id: c
            .user_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        user_extension: c
            .user_extension
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        originator: c.originator.clone(),
        destination: c.destination.clone(),
        channel_state: to_proto_enum!(PbChannelState, c.state),
        call_type: to_proto_enum!(proto::CallType, c.call_type),
        release_initiator: c.release_initiator.clone(),
        release_reason: c.release_reason.clone(),
        timestamp: c.timestamp,
        index: c.index,
    }
}

pub fn user_context(a: &Agent) -> proto::UserContext {
    proto::UserContext {
        user_id: a.user_id.to_string(),
        instance_id: a.instance_id.to_string(),
        extension: a.extension.to_string(),
        device_id: a.device_id.clone(),
        device_state: to_proto_enum!(PbDeviceState, a.device_state),
        work_mode: to_proto_enum!(proto::WorkMode, a.work_mode),
        user_state: to_proto_enum!(proto::UserState, a.user_state),
        break_code: a.break_code.clone(),
        job_id: a
            .job_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        outbound_scenario: a.outbound_scenario,
        signed_skill_group_id_list: a.signed_skill_groups.clone(),
    }
}

/// The value name of an enum parameter: `names` maps a raw number to its
/// proto name (`None` for a number the proto does not define). The
/// `*_UNSPECIFIED` zero is a blank parameter.
fn enum_name(
    field: &'static str,
    raw: i32,
    name: Option<&'static str>,
) -> Result<&'static str, ParamViolation> {
    match name {
        Some(n) if n.ends_with("_UNSPECIFIED") => Err(ParamViolation::blank(field)),
        Some(n) => Ok(n),
        None => Err(ParamViolation::invalid(
            field,
            format!("{raw} is not one of its values"),
        )),
    }
}

/// Parses an enum parameter into its domain twin by the shared name.
macro_rules! from_proto_enum {
    ($pb:ty, $field:expr, $raw:expr, $parse:expr) => {{
        let name = enum_name(
            $field,
            $raw,
            <$pb>::try_from($raw).ok().map(|v| v.as_str_name()),
        )?;
        $parse(name).ok_or_else(|| {
            ParamViolation::invalid($field, format!("{} is not one of its values", $raw))
        })
    }};
}

/// A WorkMode parameter.
pub fn work_mode(field: &'static str, raw: i32) -> Result<WorkMode, ParamViolation> {
    from_proto_enum!(proto::WorkMode, field, raw, |n: &str| n.parse().ok())
}

/// A ChannelState parameter of ReportChannelEvent: one a media plane may
/// report (`conference::reportable`).
pub fn reported_channel_state(
    field: &'static str,
    raw: i32,
) -> Result<ChannelState, ParamViolation> {
    let state = from_proto_enum!(PbChannelState, field, raw, |n: &str| n.parse().ok())?;
    conference::reportable(field, state)
}

/// The Role parameter of CreateAccessToken.
pub fn role(field: &'static str, raw: i32) -> Result<Role, ParamViolation> {
    from_proto_enum!(proto::AccessRole, field, raw, Role::parse)
}

pub fn token_info(t: &TokenRecord) -> proto::AccessTokenInfo {
    proto::AccessTokenInfo {
        token_id: t.token_id.clone(),
        role: to_proto_enum!(proto::AccessRole, t.role),
        instance_id: t
            .instance_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        user_id: t
            .user_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        expires_at: t.expires_at.unwrap_or(0),
        revoked_at: t.revoked_at.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::states::{CallType, DeviceState, UserState};

    /// The by-name conversion only works if every domain name is a proto
    /// value name: check all of them.
    #[test]
    fn every_domain_enum_value_has_a_proto_twin() {
        for v in ChannelState::ALL {
            assert!(PbChannelState::from_str_name(v.as_str()).is_some(), "{v}");
        }
        for v in CallType::ALL {
            assert!(proto::CallType::from_str_name(v.as_str()).is_some(), "{v}");
        }
        for v in UserState::ALL {
            assert!(proto::UserState::from_str_name(v.as_str()).is_some(), "{v}");
        }
        for v in WorkMode::ALL {
            assert!(proto::WorkMode::from_str_name(v.as_str()).is_some(), "{v}");
        }
        for v in DeviceState::ALL {
            assert!(PbDeviceState::from_str_name(v.as_str()).is_some(), "{v}");
        }
    }

    #[test]
    fn enum_parameters() {
        assert_eq!(
            work_mode("WorkMode", proto::WorkMode::OffSite as i32),
            Ok(WorkMode::OffSite)
        );
        assert_eq!(
            work_mode("WorkMode", 0),
            Err(ParamViolation::blank("WorkMode"))
        );
        assert!(work_mode("WorkMode", 42).is_err());
        assert_eq!(
            role("Role", proto::AccessRole::Agent as i32),
            Ok(Role::Agent)
        );
        assert_eq!(role("Role", 0), Err(ParamViolation::blank("Role")));
        assert!(role("Role", 9).is_err());
        assert!(reported_channel_state("ChannelState", PbChannelState::None as i32).is_err());
        assert!(reported_channel_state("ChannelState", PbChannelState::Retired as i32).is_err());
        assert_eq!(
            reported_channel_state("ChannelState", PbChannelState::Answered as i32),
            Ok(ChannelState::Answered)
        );
    }
}
