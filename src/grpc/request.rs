//! Per-request plumbing shared by every handler: the request ID, the
//! deadline, admission, the response envelope, parameter collection, and
//! logging of the outcome.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::app::{App, RequestContext};
use crate::domain::access::Caller;
use crate::domain::ids::{InstanceId, UserId};
use crate::error::{Error, ParamViolation};
use crate::{measure, telemetry};

use super::idempotency::Replies;

/// Metadata key of the request ID, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The deadline of the request being served, set by [`respond`].
    static DEADLINE: Instant;
}

/// The deadline of the request this task serves.
fn deadline() -> Instant {
    DEADLINE
        .try_with(|d| *d)
        .unwrap_or_else(|_| Instant::now() + Duration::from_secs(10))
}

/// When a request that arrived at `started` is due: the caller's
/// `grpc-timeout`, capped by the server's `default` (which also applies
/// when there is none). We aim a little early: tonic enforces the same
/// deadline by dropping the handler and answering CANCELLED with no
/// details, and our DEADLINE_EXCEEDED should get there first.
fn deadline_of(metadata: &MetadataMap, started: Instant, default: Duration) -> Instant {
    let budget = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(default, |given| given.min(default));
    let early = (budget / 20).min(Duration::from_millis(20));
    started + budget - early
}

/// `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2 spec).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's own deadline (`grpc-timeout`), uncapped, for a stream:
/// the server's default request timeout does not end streams.
pub(crate) fn stream_deadline(metadata: &MetadataMap, started: Instant) -> Option<Instant> {
    let given = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    started.checked_add(given)
}

/// The caller's `x-request-id` if it is a sane one (1 to 128 printable
/// ASCII characters), so a mesh's trace ID carries through; else a new
/// UUID in the reference's upper-case style.
fn request_id(metadata: &MetadataMap) -> String {
    let given = metadata
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => id.to_owned(),
        None => new_request_id(),
    }
}

/// A new request ID: a version 4 UUID in the reference's upper-case
/// style. Its bytes come from the thread's generator, seeded once:
/// `Uuid::new_v4` asks the kernel for each one, a system call on every
/// request that brings no ID of its own.
pub(crate) fn new_request_id() -> String {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    id.hyphenated()
        .encode_upper(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// Authenticates the request's `authorization: Bearer <token>` metadata.
/// Only that exact form counts (the scheme spelled `Bearer`, one space, the
/// token): one spelling is one thing to document and to test, and any other
/// is the same `Unauthenticated` as a missing token.
async fn authenticate(app: &App, metadata: &MetadataMap) -> Result<Caller, Error> {
    let bearer = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = app.authenticate(bearer, deadline()).await?;
    tracing::Span::current().record("token", caller.token_id.as_str());
    Ok(caller)
}

/// What the app records about the request (its ID and who asked) and
/// when it is due.
fn acting(request_id: &str, caller: &Caller) -> RequestContext {
    RequestContext {
        request_id: request_id.to_owned(),
        actor: caller.principal(),
        deadline: deadline(),
    }
}

/// An optional UserId: blank means the caller's own agent, decided by
/// `domain::access::acting_agent`.
pub(crate) fn optional_user(raw: &str) -> Result<Option<UserId>, ParamViolation> {
    optional(raw, |s| UserId::parse("UserId", s))
}

/// Runs a handler body, if this replica admits the request (else it is
/// shed at once), under the request's deadline and its tracing span, and
/// turns its outcome into the gRPC answer: the body's response with
/// `x-request-id`, or the error's status.
///
/// Every request ends in one INFO line, `served`, in its span (rpc, request
/// ID, instance, the caller's token handle, the W3C trace ID if the caller
/// sent `traceparent`): gRPC code, contact-center reason, latency.
/// Server-side failures are also logged with their whole cause chain,
/// which never leaves the process (but for the operators' own log and
/// trace collectors).
///
/// With span export on, the span is exported too, as a server span that
/// continues the caller's trace (`telemetry::follow_caller`).
async fn respond<T>(
    rpc: &'static str,
    request_id: &str,
    instance: &str,
    app: &App,
    metadata: &MetadataMap,
    body: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    // A raw InstanceId is logged only once it is known to be one. Fields
    // known now are given now: with JSON logs, each later `record`
    // re-parses and rewrites all the span's fields.
    let instance = InstanceId::parse("InstanceId", instance)
        .is_ok()
        .then_some(instance);
    let span = tracing::info_span!(
        "request",
        rpc,
        request_id,
        instance,
        token = tracing::field::Empty,
        trace_id = trace_id(metadata),
        otel.kind = "server",
    );
    // Before the span is first entered: that is when its parent is fixed.
    telemetry::follow_caller(&span, metadata);
    let outcome = async {
        match app.admit() {
            Ok(_admitted) => {
                // Down again however the request ends, cancelled included.
                let _in_flight = measure::InFlight::enter();
                let deadline = deadline_of(metadata, started, app.request_timeout());
                DEADLINE.scope(deadline, body).await
            }
            Err(shed) => {
                measure::shed();
                Err(shed)
            }
        }
    }
    .instrument(span.clone())
    .await;
    let _in_span = span.enter();
    let took = started.elapsed();
    let latency_us = took.as_micros() as u64;
    match outcome {
        Ok(reply) => {
            measure::request(rpc, "OK", "OK", took);
            tracing::info!(code = "OK", reason = "OK", latency_us, "served");
            let mut response = Response::new(reply);
            if let Ok(v) = MetadataValue::try_from(request_id) {
                response.metadata_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(response)
        }
        Err(e) => {
            if let Error::Internal(cause) | Error::Unavailable(cause) | Error::Contended(cause) = &e
            {
                tracing::error!(reason = e.code(), cause = format!("{cause:#}"), "failed");
                span.set_status(opentelemetry::trace::Status::error(e.code()));
            }
            let code = super::status::grpc_code(&e);
            measure::request(rpc, code_name(code), e.code(), took);
            tracing::info!(code = ?code, reason = e.code(), latency_us, "served");
            Err(super::status::to_status(&e, request_id))
        }
    }
}

/// A gRPC code as its canonical upper-case name, for metric labels.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The trace ID of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// so a request's log lines can be found from the caller's trace.
fn trace_id(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    well_formed.then_some(trace)
}

/// One request being served: its rpc, ID, metadata and message, so each
/// handler asks one thing for the per-request plumbing.
pub(crate) struct Incoming<'a, M> {
    rpc: &'static str,
    id: String,
    app: &'a App,
    request: &'a Request<M>,
}

impl<'a, M: prost::Message> Incoming<'a, M> {
    pub(crate) fn new(rpc: &'static str, app: &'a App, request: &'a Request<M>) -> Self {
        Self {
            rpc,
            id: request_id(request.metadata()),
            app,
            request,
        }
    }

    /// The request's ID: the caller's `x-request-id`, or a new one.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn metadata(&self) -> &MetadataMap {
        self.request.metadata()
    }

    pub(crate) async fn authenticate(&self) -> Result<Caller, Error> {
        authenticate(self.app, self.request.metadata()).await
    }

    pub(crate) fn acting(&self, caller: &Caller) -> RequestContext {
        acting(&self.id, caller)
    }

    /// How a mutating rpc answers, with the caller's idempotency key if it
    /// sent one, kept under `instance`.
    pub(crate) fn replies<T: 'static, R: prost::Message + Default + 'static>(
        &self,
        caller: &Caller,
        instance: &str,
        build: fn(&str, &T) -> R,
    ) -> Result<Replies<T, R>, Error> {
        Replies::new(
            self.request.metadata(),
            caller,
            self.rpc,
            instance,
            self.request.get_ref(),
            &self.id,
            build,
        )
    }

    /// Serves the request with `body` (see [`respond`]); `instance` is the
    /// raw InstanceId, for the request's log line.
    pub(crate) async fn respond<T>(
        &self,
        instance: &str,
        body: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        respond(
            self.rpc,
            &self.id,
            instance,
            self.app,
            self.request.metadata(),
            body,
        )
        .await
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

/// A free-text parameter: at most `max` characters (not bytes: the limits
/// are documented in characters, and a name in Chinese is three bytes a
/// character), and no control characters but tab, line feed and carriage
/// return. PostgreSQL refuses NUL in `text` (so it would fail the whole
/// action as INTERNAL), and the other control characters garble
/// logs and terminals; tab and line breaks are ordinary in descriptions.
pub(crate) fn text(field: &'static str, raw: &str, max: usize) -> Result<String, ParamViolation> {
    if raw.chars().nth(max).is_some() {
        Err(ParamViolation::invalid(
            field,
            format!("It must be at most {max} characters"),
        ))
    } else if raw.chars().any(forbidden_in_text) {
        Err(ParamViolation::invalid(
            field,
            "It must not contain control characters other than tab, line feed and carriage return",
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// The characters free text may not hold (see [`text`]).
fn forbidden_in_text(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// A required free-text parameter: not blank, else as [`text`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_gives_a_trace_id() {
        let with = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("traceparent", v.parse().unwrap());
            trace_id(&m).map(str::to_owned)
        };
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            with(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(),
            Some(trace)
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(with(bad), None, "{bad}");
        }
        assert_eq!(trace_id(&MetadataMap::new()), None);
    }

    #[test]
    fn new_request_ids_are_upper_case_random_uuids() {
        let a = new_request_id();
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a, parsed.hyphenated().to_string().to_uppercase());
        assert_ne!(a, new_request_id());
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "5", "5s", "123456789m", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_server_default_caps_the_callers_deadline() {
        let started = Instant::now();
        let mut metadata = MetadataMap::new();
        let default = Duration::from_secs(10);
        assert!(deadline_of(&metadata, started, default) <= started + default);
        metadata.insert("grpc-timeout", "100m".parse().unwrap());
        let due = deadline_of(&metadata, started, default);
        assert!(due <= started + Duration::from_millis(100));
        assert!(due >= started + Duration::from_millis(90));
        metadata.insert("grpc-timeout", "1H".parse().unwrap());
        assert!(deadline_of(&metadata, started, default) <= started + default);
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;
    use crate::error::Violation;

    fn refused(r: Result<String, ParamViolation>) -> String {
        match r {
            Err(ParamViolation {
                violation: Violation::Invalid(why),
                ..
            }) => why,
            other => panic!("expected Parameter.Invalid, got {other:?}"),
        }
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let name = "名".repeat(128);
        assert_eq!(text("Name", &name, 128), Ok(name.clone()));
        let why = refused(text("Name", &format!("{name}x"), 128));
        assert_eq!(why, "It must be at most 128 characters");
    }

    #[test]
    fn control_characters_are_refused_but_tab_and_line_breaks() {
        assert!(text("Description", "a\tb\r\nc", 1024).is_ok());
        for c in ['\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}'] {
            let why = refused(text("Description", &format!("a{c}b"), 1024));
            assert!(why.contains("control characters"), "{c:?}: {why}");
        }
        // Not blank, so refused for the NUL rather than as blank.
        assert!(refused(required_text("Name", "\0", 128)).contains("control"));
        assert_eq!(
            required_text("Name", " \t\n", 128),
            Err(ParamViolation::blank("Name"))
        );
    }
}
