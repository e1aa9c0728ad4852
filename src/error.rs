//! The contract's error vocabulary: every way an action can fail, each with
//! its contact-center error code, HTTP status and message template.
//!
//! Domain rules, the store and the gRPC parsing all fail with [`Error`]; only
//! `grpc::status` turns it into a gRPC status. Causes of `Unavailable` and
//! `Internal` stay in here (for the log) and never reach the client.

use std::fmt;

/// What is wrong with one request parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Missing, empty or only whitespace.
    Blank,
    /// Present but malformed; the text says how.
    Invalid(String),
}

/// One bad parameter, named by its documented JSON name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamViolation {
    pub field: &'static str,
    pub violation: Violation,
}

impl ParamViolation {
    pub fn blank(field: &'static str) -> Self {
        Self {
            field,
            violation: Violation::Blank,
        }
    }

    pub fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Self {
            field,
            violation: Violation::Invalid(why.into()),
        }
    }
}

/// How many characters of a caller's value an error message repeats.
pub const ECHO_CHARS: usize = 32;

/// A caller-supplied value as an error message repeats it: quoted, control
/// characters escaped, and cut after [`ECHO_CHARS`] characters (on a
/// character boundary, "…" marking the cut). Every message that quotes what
/// the caller sent goes through here, so a 1 MB value cannot come back as a
/// 1 MB status message.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more bad parameters, in the order the request documents them.
    /// Never empty.
    #[error("{}", parameter_message(.0))]
    Parameters(Vec<ParamViolation>),

    /// No usable access token: missing, malformed, unknown, revoked or
    /// expired. Deliberately says not which.
    #[error("The access token is missing, malformed, unknown, revoked or expired.")]
    Unauthenticated,

    /// The token does not allow this action, here, for this agent.
    #[error("You have no permission to access. {0}")]
    PermissionDenied(String),

    #[error("The specified instance {0} does not exist.")]
    InstanceNotFound(String),

    #[error("The user {user_id} does not exist in instance {instance_id}.")]
    UserNotFound {
        user_id: String,
        instance_id: String,
    },

    #[error("The call {0} does not exist.")]
    CallNotFound(String),

    #[error("The specified channel {channel_id} does not exist in call {job_id}.")]
    ChannelNotFound { channel_id: String, job_id: String },

    #[error("The access token {token_id} does not exist in instance {instance_id}.")]
    TokenNotFound {
        token_id: String,
        instance_id: String,
    },

    #[error("The operation is not allowed. The call {0} is not a conference.")]
    NotAConference(String),

    #[error("The operation is not allowed. The user {user_id} is not in conference {job_id}.")]
    NotInConference { user_id: String, job_id: String },

    #[error(
        "The operation is not allowed. User state ({actual}) does not meet expectations ({expected})."
    )]
    UserState {
        actual: &'static str,
        expected: String,
    },

    #[error(
        "The operation is not allowed. Channel state ({actual}) does not meet expectations ({expected})."
    )]
    ChannelState {
        actual: &'static str,
        expected: String,
    },

    #[error("The user {0} you called was busy. Please try again later.")]
    UserBusy(String),

    #[error("The instance {0} already exists.")]
    DuplicatedInstance(String),

    #[error("The login name {login_name} already exists in instance {instance_id}.")]
    DuplicatedLoginName {
        login_name: String,
        instance_id: String,
    },

    #[error("The extension {extension} already exists in instance {instance_id}.")]
    DuplicatedExtension {
        extension: String,
        instance_id: String,
    },

    /// The request's bytes are not a valid message of its type (bad wire
    /// format, invalid UTF-8). The decoder's own words are logged only.
    #[error("The request could not be decoded as a {0} message.")]
    Malformed(&'static str),

    /// The encoded request is larger than this service accepts.
    #[error("The request is larger than the limit of {limit} bytes.")]
    TooLarge { limit: usize },

    /// The request is compressed (`grpc-encoding`) with an encoding this
    /// service does not accept; it accepts only uncompressed requests.
    #[error(
        "The request is compressed with {0}, which this service does not accept; send it uncompressed."
    )]
    UnsupportedEncoding(String),

    /// The caller's deadline (or the server's default one) passed before an
    /// answer was ready. Work that had started may still have committed.
    #[error("The request did not finish before its deadline.")]
    DeadlineExceeded,

    /// This replica is at its limit of concurrent requests. Retryable.
    #[error("The service is busy. Please try again later.")]
    Throttled,

    /// A watch resumed from a cursor older than the events kept: changes
    /// after it may be gone.
    #[error(
        "The cursor is older than the events kept. Re-read state with PollUserStatus, then watch with a blank AfterCursor."
    )]
    CursorExpired,

    /// The idempotency key was used before, by the same caller and method,
    /// with a different request.
    #[error("The idempotency key was already used with different parameters.")]
    IdempotentParameterMismatch,

    /// The database could not be reached or did not answer in time. Retryable.
    #[error("The service is temporarily unavailable. Please try again later.")]
    Unavailable(#[source] anyhow::Error),

    /// A concurrent action on the same rows won the race. Actions retry on
    /// this themselves; a caller sees it only once retries ran out, as the
    /// retryable ServiceUnavailable.
    #[error("The service is temporarily unavailable. Please try again later.")]
    Contended(#[source] anyhow::Error),

    /// Anything else. The cause is logged, never shown.
    #[error("The request processing has failed due to some unknown error.")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub fn blank(field: &'static str) -> Self {
        Self::Parameters(vec![ParamViolation::blank(field)])
    }

    pub fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Self::Parameters(vec![ParamViolation::invalid(field, why)])
    }

    /// The contact-center error code (the `reason` of the ErrorInfo detail).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Parameters(v) => match v.first().map(|p| &p.violation) {
                Some(Violation::Invalid(_)) => "Parameter.Invalid",
                _ => "Parameter.Blank",
            },
            Self::Unauthenticated => "InvalidAccessToken",
            Self::PermissionDenied(_) => "Permission.Common",
            Self::InstanceNotFound(_) => "NotExists.InstanceId",
            Self::UserNotFound { .. } => "NotExists.UserId",
            Self::CallNotFound(_) => "NotExists.JobId",
            Self::ChannelNotFound { .. } => "NotExists.ChannelId",
            Self::TokenNotFound { .. } => "NotExists.TokenId",
            Self::NotAConference(_) | Self::NotInConference { .. } => {
                "InvalidOperation.NotInConference"
            }
            Self::UserState { .. } => "InvalidOperation.UserState",
            Self::ChannelState { .. } => "InvalidOperation.ChannelState",
            Self::UserBusy(_) => "UserBusy",
            Self::DuplicatedInstance(_) => "Duplicated.InstanceId",
            Self::DuplicatedLoginName { .. } => "Duplicated.LoginName",
            Self::DuplicatedExtension { .. } => "Duplicated.Extension",
            Self::Malformed(_) => "Request.Malformed",
            Self::TooLarge { .. } => "Request.TooLarge",
            Self::UnsupportedEncoding(_) => "Request.UnsupportedEncoding",
            Self::DeadlineExceeded => "Request.DeadlineExceeded",
            Self::Throttled => "Throttling",
            Self::IdempotentParameterMismatch => "IdempotentParameterMismatch",
            Self::CursorExpired => "Cursor.Expired",
            Self::Unavailable(_) | Self::Contended(_) => "ServiceUnavailable",
            Self::Internal(_) => "InternalError",
        }
    }

    /// The HTTP status the reference pairs with the code.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Parameters(_)
            | Self::NotAConference(_)
            | Self::NotInConference { .. }
            | Self::UserState { .. }
            | Self::ChannelState { .. }
            | Self::UserBusy(_)
            | Self::Malformed(_)
            | Self::IdempotentParameterMismatch => 400,
            Self::TooLarge { .. } => 413,
            Self::UnsupportedEncoding(_) => 415,
            Self::CursorExpired => 410,
            Self::DeadlineExceeded => 504,
            Self::Throttled => 503,
            Self::Unauthenticated => 401,
            Self::PermissionDenied(_) => 403,
            Self::InstanceNotFound(_)
            | Self::UserNotFound { .. }
            | Self::CallNotFound(_)
            | Self::ChannelNotFound { .. }
            | Self::TokenNotFound { .. } => 404,
            Self::DuplicatedInstance(_)
            | Self::DuplicatedLoginName { .. }
            | Self::DuplicatedExtension { .. } => 409,
            Self::Unavailable(_) | Self::Contended(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    pub fn user_not_found(user: impl ToString, instance: impl ToString) -> Self {
        Self::UserNotFound {
            user_id: user.to_string(),
            instance_id: instance.to_string(),
        }
    }

    /// A state error listing the states that would have been accepted.
    pub fn user_state(actual: &'static str, expected: &[&'static str]) -> Self {
        Self::UserState {
            actual,
            expected: expected.join(", "),
        }
    }

    /// A channel error listing the states that would have been accepted.
    pub fn channel_state(actual: &'static str, expected: &[&'static str]) -> Self {
        Self::ChannelState {
            actual,
            expected: expected.join(", "),
        }
    }
}

fn parameter_message(violations: &[ParamViolation]) -> String {
    match violations.first() {
        Some(ParamViolation {
            field,
            violation: Violation::Invalid(why),
        }) => format!(
            "The parameter {field} is invalid. {}.",
            why.trim_end_matches('.')
        ),
        Some(ParamViolation { field, .. }) => {
            format!("The parameter {field} must not be null or empty.")
        }
        None => "The request parameters are invalid.".to_owned(),
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blank => f.write_str("must not be null or empty"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_messages_fill_the_documented_templates() {
        assert_eq!(
            Error::blank("JobId").to_string(),
            "The parameter JobId must not be null or empty."
        );
        let invalid = Error::invalid("InstanceId", "It must be at most 64 characters");
        assert_eq!(
            invalid.to_string(),
            "The parameter InstanceId is invalid. It must be at most 64 characters."
        );
        assert_eq!(invalid.code(), "Parameter.Invalid");
        assert_eq!(invalid.http_status(), 400);
    }

    #[test]
    fn the_first_violation_decides_the_code() {
        let mixed = Error::Parameters(vec![
            ParamViolation::blank("InstanceId"),
            ParamViolation::invalid("JobId", "bad"),
        ]);
        assert_eq!(mixed.code(), "Parameter.Blank");
    }

    #[test]
    fn echoes_are_quoted_escaped_and_cut_on_a_character_boundary() {
        assert_eq!(echo("8002"), r#""8002""#);
        assert_eq!(echo("a\0b"), r#""a\0b""#);
        let long = "é".repeat(10_000);
        let echoed = echo(&long);
        assert_eq!(echoed, format!("{:?}…", "é".repeat(ECHO_CHARS)));
        assert_eq!(
            echo(&"x".repeat(ECHO_CHARS)),
            format!("{:?}", "x".repeat(ECHO_CHARS))
        );
    }

    #[test]
    fn state_errors_list_what_was_expected() {
        let e = Error::user_state("TALKING", &["OFFLINE", "READY"]);
        assert_eq!(
            e.to_string(),
            "The operation is not allowed. User state (TALKING) does not meet expectations (OFFLINE, READY)."
        );
        assert_eq!(e.code(), "InvalidOperation.UserState");
    }
}
