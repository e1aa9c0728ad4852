//! Per-request plumbing shared by every handler: the request ID, the
//! response envelope, parameter collection, and logging of the outcome.

use std::future::Future;
use std::time::Instant;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Response, Status};

use crate::app::{App, RequestContext};
use crate::domain::access::Caller;
use crate::domain::ids::UserId;
use crate::error::{Error, ParamViolation};

/// Metadata key of the request ID, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's `x-request-id` if it is a sane one (1 to 128 printable
/// ASCII characters), so a mesh's trace ID carries through; else a new
/// UUID in the reference's upper-case style.
pub(crate) fn request_id(metadata: &MetadataMap) -> String {
    let given = metadata
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::new_v4().to_string().to_uppercase(),
    }
}

/// Authenticates the request's `authorization: Bearer <token>` metadata.
pub(crate) async fn authenticate(app: &App, metadata: &MetadataMap) -> Result<Caller, Error> {
    let bearer = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    app.authenticate(bearer).await
}

/// What the app records about the request: its ID and who asked.
pub(crate) fn acting(request_id: &str, caller: &Caller) -> RequestContext {
    RequestContext {
        request_id: request_id.to_owned(),
        actor: caller.principal(),
    }
}

/// An optional UserId: blank means the caller's own agent, decided by
/// `domain::access::acting_agent`.
pub(crate) fn optional_user(raw: &str) -> Result<Option<UserId>, ParamViolation> {
    optional(raw, |s| UserId::parse("UserId", s))
}

/// Runs a handler body and turns its outcome into the gRPC answer: the
/// body's response with `x-request-id`, or the error's status. Server-side
/// failures are logged with their whole cause chain, which never leaves the
/// process.
pub(crate) async fn respond<T>(
    rpc: &'static str,
    request_id: &str,
    body: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let outcome = body.await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    match outcome {
        Ok(reply) => {
            tracing::debug!(rpc, request_id, elapsed_us, "ok");
            let mut response = Response::new(reply);
            if let Ok(v) = MetadataValue::try_from(request_id) {
                response.metadata_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(response)
        }
        Err(e) => {
            match &e {
                Error::Internal(cause) | Error::Unavailable(cause) | Error::Contended(cause) => {
                    tracing::error!(
                        rpc,
                        request_id,
                        elapsed_us,
                        code = e.code(),
                        cause = format!("{cause:#}"),
                        "failed"
                    );
                }
                _ => tracing::info!(rpc, request_id, elapsed_us, code = e.code(), "rejected"),
            }
            Err(super::status::to_status(&e, request_id))
        }
    }
}

/// Parses every parameter, binding each to a name; if any is bad, returns
/// from the handler body with all violations, in the order written.
macro_rules! parse_params {
    ($($name:ident = $parse:expr;)+) => {
        let mut violations = Vec::new();
        $(let $name = match $parse {
            Ok(v) => Some(v),
            Err(v) => { violations.push(v); None }
        };)+
        if !violations.is_empty() {
            return Err($crate::error::Error::Parameters(violations));
        }
        $(let $name = $name.expect("checked above");)+
    };
}
pub(crate) use parse_params;

/// The documented success envelope around `data`.
macro_rules! ok_response {
    ($ty:ident, $request_id:expr, $data:expr) => {
        $crate::proto::$ty {
            code: "OK".to_owned(),
            http_status_code: 200,
            message: String::new(),
            request_id: $request_id.to_owned(),
            params: Vec::new(),
            data: Some($data),
        }
    };
}
pub(crate) use ok_response;

/// A free-text parameter: at most `max` bytes.
pub(crate) fn text(field: &'static str, raw: &str, max: usize) -> Result<String, ParamViolation> {
    if raw.len() > max {
        Err(ParamViolation::invalid(
            field,
            format!("It must be at most {max} bytes"),
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// A required free-text parameter: not blank, at most `max` bytes.
pub(crate) fn required_text(
    field: &'static str,
    raw: &str,
    max: usize,
) -> Result<String, ParamViolation> {
    if raw.trim().is_empty() {
        Err(ParamViolation::blank(field))
    } else {
        text(field, raw, max)
    }
}

/// An optional parameter: blank means absent, else parsed by `parse`.
pub(crate) fn optional<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, ParamViolation>,
) -> Result<Option<T>, ParamViolation> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}
