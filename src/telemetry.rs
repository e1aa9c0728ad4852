//! Logging and traces: `tracing` to stderr, as text or JSON lines,
//! filtered by `RUST_LOG` (default `info`); and, with `--otlp-endpoint`,
//! this crate's spans (each request, each unit of database work) exported
//! over OTLP/gRPC, continuing the caller's W3C trace.
//!
//! Export never holds up a request: finished spans go to a bounded queue
//! (2048 by default, `OTEL_BSP_MAX_QUEUE_SIZE`) that a thread of the SDK
//! sends in batches; when the collector is slow or gone, the queue fills
//! and further spans are dropped (the SDK logs that it drops), and each
//! batch gives up after [`EXPORT_TIMEOUT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tonic::metadata::{KeyRef, MetadataMap};
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

mod json;

/// The `service.name` of every exported span.
pub const SERVICE_NAME: &str = "ccc-callcontrol";

/// Longest one batch may take to reach the collector, retries included
/// (the exporter retries a failed batch a few times within it).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A collector that does not answer the TCP handshake (a blackholed
/// address) would otherwise hold the export thread for the kernel's SYN
/// retries, minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the exit waits for the spans still queued; then they are lost.
/// Counted in the shutdown budget (docs/operations.md, "Shutdown").
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether spans are exported, so that requests only parse `traceparent`
/// for a parent when it can matter.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Logging only. A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat) {
    install(format, None);
}

/// Logging, and spans exported to the OTLP/gRPC collector at `endpoint`
/// (`http://host:port`, or `https://` for TLS trusting public CAs and
/// `ca_pem`: see `config`). Runs inside the Tokio runtime: the exporter's
/// connection lives on it. Nothing is sent until there are spans, so a
/// collector that is down at start is no error. A second call (tests)
/// keeps the first subscriber and exports nothing more.
pub fn init_exporting(
    format: LogFormat,
    endpoint: &str,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<Traces> {
    if tracing::dispatcher::has_been_set() {
        return Ok(Traces { provider: None });
    }
    let provider = provider(endpoint, ca_pem)?;
    if install(format, Some(&provider)) {
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Traces {
            provider: Some(provider),
        })
    } else {
        // Lost a race with another init: this provider would never see a span.
        let _ = provider.shutdown_with_timeout(Duration::ZERO);
        Ok(Traces { provider: None })
    }
}

/// The subscriber: the log, and the span export if `provider` is given.
/// Whether it became the process's subscriber.
fn install(format: LogFormat, provider: Option<&SdkTracerProvider>) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log
            .fmt_fields(json::Members)
            .event_format(json::Line)
            .boxed(),
    };
    // The `unit` span is for the trace export: the log formats every span's
    // fields when it opens and again on each `record`, and a unit records
    // its outcome after its last line. Lines logged in a unit name their
    // action themselves and carry the request's span.
    let log = log.with_filter(filter_fn(|meta| {
        let ours = meta.target().starts_with(env!("CARGO_CRATE_NAME"));
        !(meta.is_span() && meta.name() == "unit" && ours)
    }));
    // Only this crate's spans: the exporter's own gRPC client (tonic, h2,
    // hyper) would otherwise trace its own exports, and the SDK's
    // diagnostics belong in the log.
    let export = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_filter(
                Targets::new().with_target(env!("CARGO_CRATE_NAME"), tracing::Level::TRACE),
            )
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(log)
        .with(export)
        .try_init()
        .is_ok()
}

/// The batch exporter to `endpoint`: a lazily connected channel with a
/// connect timeout and a per-call timeout, a bounded queue, and the SDK's
/// thread that sends it (tuned by the standard `OTEL_BSP_*` variables).
fn provider(endpoint: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<SdkTracerProvider> {
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("Invalid OTLP endpoint {endpoint}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT);
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        channel = channel
            .tls_config(tls)
            .context("Invalid TLS settings for the OTLP endpoint")?;
    } else if ca_pem.is_some() {
        anyhow::bail!("--otlp-ca-cert is for an https:// --otlp-endpoint, not {endpoint}");
    }
    let channel = channel.connect_lazy();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .context("Failed to set up the OTLP span exporter")?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// The span export, to flush at exit.
#[must_use = "flush the spans at exit with `Traces::shutdown`"]
#[derive(Debug)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Nothing exported.
    pub fn off() -> Self {
        Self { provider: None }
    }

    /// Sends the spans still queued and stops exporting, waiting at most
    /// [`FLUSH_TIMEOUT`]: an unreachable collector delays the exit by that
    /// much, no more.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        EXPORTING.store(false, Ordering::Relaxed);
        // The SDK waits on a blocking channel; the export it waits for
        // runs on this runtime, so the wait must not take a worker.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => tracing::debug!("spans flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "spans still queued at exit were not all sent")
            }
            Err(e) => tracing::warn!(error = %e, "flushing spans at exit failed"),
        }
    }
}

/// Makes `span` (not yet entered) a child of the caller's span when the
/// request carries a valid W3C `traceparent` (and `tracestate`), so the
/// service's spans join the caller's trace. Without one, `span` starts a
/// trace of its own.
pub fn follow_caller(span: &tracing::Span, metadata: &MetadataMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let caller = TraceContextPropagator::new().extract(&Metadata(metadata));
    if caller.span().span_context().is_valid() {
        // Fails only for a span the filter disabled: nothing to join then.
        let _ = span.set_parent(caller);
    }
}

/// gRPC request metadata as the propagator reads it.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
