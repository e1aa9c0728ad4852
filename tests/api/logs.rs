//! One INFO line per request, at its end, in the request's span: rpc,
//! request ID, instance, the caller's token handle (never the token), the
//! caller's W3C trace ID, gRPC code, contact-center reason, latency; and
//! the lines logged while serving it carry the same span.

use ccc_callcontrol::proto;
use sqlx::PgPool;
use tonic::Request;

use crate::helpers::*;

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

#[sqlx::test]
async fn every_request_ends_in_one_line_with_its_identity_and_outcome(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    let request_id = format!("logs-{}", uuid::Uuid::new_v4());
    let mut request = Request::new(proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: agents[0].0.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-00f067aa0ba902b7-01").parse().unwrap(),
    );
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
