//! Span export, end to end: the real binary with `--otlp-endpoint`, a real
//! OTLP/gRPC trace receiver in this process, and a real gRPC client that
//! sends a W3C `traceparent`. The receiver must get the request's span in
//! the caller's trace, as a child of the caller's span, and the unit of
//! database work's span as a child of the request's; spans still queued
//! at SIGTERM must be sent before the process exits; a collector that is
//! not there must cost requests nothing; and an `https://` endpoint must
//! be reached over TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccc_callcontrol::proto::{self, admin_client::AdminClient};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use sqlx::PgPool;
use tonic::transport::{Channel, Identity, ServerTlsConfig};

#[path = "common/binary.rs"]
mod binary;
#[path = "common/operator.rs"]
mod operator;
#[path = "api/support/pki.rs"]
mod pki;
use binary::{Served, database_url};
use operator::operator_token;
use pki::{PemFile, ca, leaf};

/// The caller's trace and span, as its `traceparent` names them.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A span as the receiver got it, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: Option<String>,
    span: Span,
}

/// An OTLP/gRPC trace receiver: keeps every span exported to it.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"));
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free port of 127.0.0.1; the receiver and its address.
    async fn start() -> (Self, SocketAddr) {
        Self::serve(None).await
    }

    /// [`start`](Self::start), over TLS with this certificate and key (PEM).
    async fn start_tls(cert: &str, key: &str) -> (Self, SocketAddr) {
        Self::serve(Some(
            ServerTlsConfig::new().identity(Identity::from_pem(cert, key)),
        ))
        .await
    }

    async fn serve(tls: Option<ServerTlsConfig>) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("the receiver's TLS");
        }
        tokio::spawn(async move {
            server
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("the receiver serves");
        });
        (collector, addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `found` finds what it looks for in the
    /// spans received so far.
    async fn wait_for<T>(&self, mut found: impl FnMut(&[Received]) -> Option<T>) -> T {
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if let Some(t) = found(&spans) {
                return t;
            }
            assert!(
                Instant::now() < give_up,
                "not received within 20 s; the spans received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The string value of attribute `key`.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|AnyValue { value }| value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request span of the caller's trace, and the unit span of `action`
/// under it, once both are in.
fn request_and_unit(spans: &[Received], action: &str) -> Option<(Received, Received)> {
    let request = spans
        .iter()
        .find(|r| r.span.name == "request" && hex(&r.span.trace_id) == TRACE)?;
    let unit = spans.iter().find(|r| {
        r.span.name == "unit"
            && r.span.parent_span_id == request.span.span_id
            && text(&r.span.attributes, "action").as_deref() == Some(action)
    })?;
    Some((request.clone(), unit.clone()))
}

/// Starts the binary exporting spans to `collector`, with `env` set.
async fn start(pool: &PgPool, collector: SocketAddr, env: &[(&str, &str)]) -> Served {
    let endpoint = format!("http://{collector}");
    Served::start(
        &database_url(pool, None),
        &["--drain-ms", "0", "--otlp-endpoint", &endpoint],
        env,
    )
    .await
}

/// An Admin client on a connection of its own.
async fn admin(served: &Served) -> AdminClient<Channel> {
    AdminClient::new(served.connect().await)
}

/// CreateInstance `id` as the caller's span `CALLER_SPAN` of `TRACE`.
async fn create_instance(served: &Served, token: &str, id: &str) {
    let mut request = tonic::Request::new(proto::CreateInstanceRequest {
        instance_id: id.into(),
        name: "otlp".into(),
        description: String::new(),
    });
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    admin(served)
        .await
        .create_instance(request)
        .await
        .expect("CreateInstance answers OK");
}

#[sqlx::test]
async fn the_request_span_continues_the_callers_trace_and_the_unit_span_is_its_child(pool: PgPool) {
    let (collector, at) = Collector::start().await;
    let token = operator_token(&pool).await;
    // Batches every 100 ms instead of 5 s: the test waits less.
    let served = start(&pool, at, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;

    create_instance(&served, &token, "ccc-otlp").await;

    let (request, unit) = collector
        .wait_for(|spans| request_and_unit(spans, "CreateInstance"))
        .await;
    assert_eq!(hex(&request.span.parent_span_id), CALLER_SPAN);
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    assert_eq!(
        text(&request.span.attributes, "rpc").as_deref(),
        Some("CreateInstance")
    );
    assert_eq!(request.service.as_deref(), Some("ccc-callcontrol"));
    // Its log line rides along.
    assert!(
        request.span.events.iter().any(|e| e.name == "served"),
        "{request:#?}"
    );

    assert_eq!(hex(&unit.span.trace_id), TRACE);
    assert_eq!(
        text(&unit.span.attributes, "outcome").as_deref(),
        Some("committed"),
        "{unit:#?}"
    );
    assert_eq!(
        attribute(&unit.span.attributes, "conflict_retries"),
        Some(&any_value::Value::IntValue(0)),
        "{unit:#?}"
    );
    assert_eq!(
        text(&unit.span.attributes, "lane").as_deref(),
        Some("write")
    );
    // The token lookup ran in the request too.
    assert!(
        collector
            .spans()
            .iter()
            .any(|r| r.span.parent_span_id == request.span.span_id
                && text(&r.span.attributes, "action").as_deref() == Some("Authenticate")),
        "no Authenticate unit under the request: {:#?}",
        collector.spans()
    );
    // The log's line of the request names the same trace, so an operator
    // can go from one to the other; and no line formats the unit span.
    let served_line = served
        .log_line(|l| l["message"] == "served" && l["spans"][0]["rpc"] == "CreateInstance")
        .await;
    let lines = served.log_lines();
    assert_eq!(served_line["spans"][0]["trace_id"], TRACE, "{served_line}");
    assert!(
        lines.iter().all(|l| l["spans"]
            .as_array()
            .is_none_or(|spans| spans.iter().all(|s| s["name"] != "unit"))),
        "{lines:#?}"
    );
}

/// With batches due only every 10 minutes, the spans reach the receiver
/// only through the flush at exit: they are all there once the process
/// has exited.
#[sqlx::test]
async fn spans_still_queued_at_sigterm_are_sent_before_the_exit(pool: PgPool) {
    let (collector, at) = Collector::start().await;
    let token = operator_token(&pool).await;
    let mut served = start(&pool, at, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;

    create_instance(&served, &token, "ccc-otlp-exit").await;
    served.terminate();
    assert_eq!(
        served.exit_code(Duration::from_secs(30)).await,
        Some(0),
        "exits 0 after SIGTERM"
    );

    assert!(
        request_and_unit(&collector.spans(), "CreateInstance").is_some(),
        "the queued spans were not flushed at exit: {:#?}",
        collector.spans()
    );
}

/// No receiver at the endpoint: requests are answered as ever, and the exit
/// waits for the unsendable spans no longer than its bound.
#[sqlx::test]
async fn a_collector_that_is_not_there_costs_requests_nothing(pool: PgPool) {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = nobody.local_addr().unwrap();
    drop(nobody);
    let token = operator_token(&pool).await;
    let mut served = start(&pool, at, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;

    for i in 0..5 {
        create_instance(&served, &token, &format!("ccc-otlp-{i}")).await;
    }
    served.terminate();
    assert_eq!(
        served.exit_code(Duration::from_secs(30)).await,
        Some(0),
        "exits 0 after SIGTERM"
    );
}

/// An `https://` endpoint speaks TLS, trusting the CA of --otlp-ca-cert:
/// the receiver, with a certificate that CA signed for `localhost`, gets
/// the spans.
#[sqlx::test]
async fn spans_reach_a_collector_over_tls(pool: PgPool) {
    let authority = ca("collector CA");
    let (cert, key) = leaf(&["localhost"], &authority);
    let (collector, at) = Collector::start_tls(&cert, &key).await;
    let ca_file = PemFile::new("ca", &authority.pem());
    let token = operator_token(&pool).await;
    let endpoint = format!("https://localhost:{}", at.port());
    let served = Served::start(
        &database_url(&pool, None),
        &[
            "--drain-ms",
            "0",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-ca-cert",
            ca_file.path(),
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;

    create_instance(&served, &token, "ccc-otlp-tls").await;

    let (request, _) = collector
        .wait_for(|spans| request_and_unit(spans, "CreateInstance"))
        .await;
    assert_eq!(hex(&request.span.parent_span_id), CALLER_SPAN);
}
