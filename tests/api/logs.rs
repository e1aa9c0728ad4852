//! One INFO line per request, at its end, in the request's span: rpc,
//! request ID, instance, the caller's token handle (never the token), the
//! caller's W3C trace ID, gRPC code, contact-center reason, latency; and
//! the lines logged while serving it carry the same span.

use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::proto;
use serde_json::{Value, json};
use sqlx::PgPool;
use tonic::Request;

use crate::helpers::*;
use crate::support::binary::{Served, database_url};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The suite's log lines that mention `needle`, waiting a little for them.
async fn log_lines_with(needle: &str) -> Vec<String> {
    for _ in 0..50 {
        let log = std::fs::read_to_string(LOG_FILE).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.iter().any(|l| l.contains(" served ")) {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no `served` line mentions {needle}");
}

/// PollUserStatus of `user` with `request_id` as `x-request-id`, in the
/// caller's trace `TRACE`.
fn traced_poll(user: &str, request_id: &str) -> Request<proto::PollUserStatusRequest> {
    let mut request = Request::new(proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: user.to_owned(),
    });
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", request_id.parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{TRACE}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    request
}

#[sqlx::test]
async fn every_request_ends_in_one_line_with_its_identity_and_outcome(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    let request_id = format!("logs-{}", uuid::Uuid::new_v4());
    let request = traced_poll(&agents[0].0, &request_id);
    app.calls.clone().poll_user_status(request).await.unwrap();

    let lines = log_lines_with(&request_id).await;
    let served: Vec<&String> = lines.iter().filter(|l| l.contains(" served ")).collect();
    assert_eq!(served.len(), 1, "{lines:#?}");
    let line = served[0];
    for field in [
        "INFO",
        "rpc=\"PollUserStatus\"",
        &format!("instance=\"{INSTANCE}\""),
        "token=\"tok-",
        &format!("trace_id=\"{TRACE}\""),
        "code=\"OK\"",
        "reason=\"OK\"",
        "latency_us=",
    ] {
        assert!(line.contains(field), "no {field} in {line}");
    }
    // What was logged inside (the token lookup) carries the same span.
    assert!(
        lines.iter().any(|l| l.contains("authenticated")),
        "{lines:#?}"
    );

    // A rejected request: its code and reason.
    let rejected_id = format!("logs-{}", uuid::Uuid::new_v4());
    let mut request = Request::new(proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: "nobody@ccc-test".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", rejected_id.parse().unwrap());
    app.calls
        .clone()
        .poll_user_status(request)
        .await
        .unwrap_err();
    let lines = log_lines_with(&rejected_id).await;
    let line = lines.iter().find(|l| l.contains(" served ")).unwrap();
    assert!(
        line.contains("code=NotFound") && line.contains("reason=\"NotExists.UserId\""),
        "{line}"
    );
}

/// The binary's JSON log (`--log-format json`, as the image runs it): the
/// same line as one JSON object, its request span under `spans` with the
/// fields given when the span was made and the token recorded after.
#[sqlx::test]
async fn a_json_line_carries_the_request_span_as_an_object(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let served = Served::start(&database_url(&pool, None), &["--drain-ms", "0"], &[]).await;
    let mut clients = Clients::new(served.connect().await, Bearer::token(&token));
    // A value to escape, as a caller may send: a quote and a backslash.
    let request_id = format!("json-\"{}\\", uuid::Uuid::new_v4());
    let request = traced_poll(&agents[0].0, &request_id);
    clients.calls.poll_user_status(request).await.unwrap();

    let mut line = served
        .log_line(|l| {
            l["message"] == "served" && l["spans"][0]["request_id"] == request_id.as_str()
        })
        .await;
    let entry = line.as_object_mut().unwrap();
    let timestamp = entry.remove("timestamp").unwrap();
    assert!(timestamp.as_str().unwrap().ends_with('Z'), "{timestamp}");
    assert!(entry.remove("latency_us").unwrap().is_u64());
    let spans = entry.remove("spans").unwrap();
    assert_eq!(
        Value::Object(entry.clone()),
        json!({
            "level": "INFO",
            "message": "served",
            "code": "OK",
            "reason": "OK",
            "target": "ccc_callcontrol::grpc::request",
        })
    );
    let [span] = spans.as_array().unwrap().as_slice() else {
        panic!("one span, the request's: {spans}");
    };
    let handle = span["token"].as_str().unwrap();
    assert!(
        handle.starts_with("tok-") && !token.contains(handle),
        "{span}"
    );
    assert_eq!(
        span,
        &json!({
            "name": "request",
            "rpc": "PollUserStatus",
            "request_id": request_id,
            "instance": INSTANCE,
            "trace_id": TRACE,
            "otel.kind": "server",
            "token": handle,
        })
    );
}
