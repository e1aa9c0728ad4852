//! The one place where an [`Error`] becomes a gRPC status: the code, the
//! filled message template, and `google.rpc` details (ErrorInfo with the
//! contact-center code, BadRequest for parameter errors).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "ccc.v20200701";

pub fn grpc_code(e: &Error) -> Code {
    match e {
        Error::Parameters(_) | Error::Malformed(_) => Code::InvalidArgument,
        Error::TooLarge { .. } => Code::ResourceExhausted,
        Error::UnsupportedEncoding(_) => Code::Unimplemented,
        Error::CursorExpired => Code::OutOfRange,
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        Error::IdempotentParameterMismatch => Code::FailedPrecondition,
        Error::Throttled => Code::Unavailable,
        Error::Unauthenticated => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::InstanceNotFound(_)
        | Error::UserNotFound { .. }
        | Error::CallNotFound(_)
        | Error::ChannelNotFound { .. }
        | Error::TokenNotFound { .. } => Code::NotFound,
        Error::NotAConference(_)
        | Error::NotInConference { .. }
        | Error::UserState { .. }
        | Error::ChannelState { .. }
        | Error::UserBusy(_) => Code::FailedPrecondition,
        Error::DuplicatedInstance(_)
        | Error::DuplicatedLoginName { .. }
        | Error::DuplicatedExtension { .. } => Code::AlreadyExists,
        Error::Unavailable(_) | Error::Contended(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    }
}

pub fn to_status(e: &Error, request_id: &str) -> Status {
    let metadata = HashMap::from([
        ("HttpStatusCode".to_owned(), e.http_status().to_string()),
        ("RequestId".to_owned(), request_id.to_owned()),
    ]);
    let mut details = ErrorDetails::with_error_info(e.code(), ERROR_DOMAIN, metadata);
    if let Error::Parameters(violations) = e {
        for v in violations {
            details.add_bad_request_violation(v.field, v.violation.to_string());
        }
    }
    // Display of Internal/Unavailable is the opaque template; the cause is
    // only in the error's source chain.
    Status::with_error_details(grpc_code(e), e.to_string(), details)
}
