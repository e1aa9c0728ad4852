//! `ccc-callcontrol serve | migrate | token … | bench`: parses the command
//! line and hands over to `startup` (serving), `cli` (token management) or
//! `bench` (load generation).

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use ccc_callcontrol::app::WatchOptions;
use ccc_callcontrol::cli;
use ccc_callcontrol::config::{self, Cli, Command, ServeArgs};
use ccc_callcontrol::startup::{Application, ServeOptions, TlsPem, prepare_database, read_pem};
use ccc_callcontrol::telemetry;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime(&cli.command)?.block_on(run(cli))
}

/// The runtime: a worker per CPU, unless a bench client wants fewer
/// (`bench::client_threads`).
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Bench(args) = command {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(threads) = ccc_callcontrol::bench::client_threads(args, cpus) {
            builder.worker_threads(threads);
        }
    }
    builder.enable_all().build()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let traces = match &cli.command {
        Command::Serve(ServeArgs {
            otlp_endpoint: Some(endpoint),
            otlp_ca_cert,
            ..
        }) => {
            let ca_pem = otlp_ca_cert
                .as_deref()
                .map(read_pem)
                .transpose()
                .context("--otlp-ca-cert")?;
            let traces = telemetry::init_exporting(cli.log_format, endpoint, ca_pem.as_deref())?;
            tracing::info!(
                endpoint = endpoint.as_str(),
                "exporting spans over OTLP/gRPC"
            );
            traces
        }
        _ => {
            telemetry::init(cli.log_format);
            telemetry::Traces::off()
        }
    };
    match cli.command {
        Command::Migrate(db) => {
            prepare_database(&db).await?;
            tracing::info!("migrations applied");
        }
        Command::Token(command) => cli::token(command).await?,
        Command::Bench(args) => ccc_callcontrol::bench::main(args).await?,
        Command::Serve(args) => {
            tracing::info!(settings = ?config::effective(&args), "effective configuration");
            if let Some(listen) = args.metrics_listen {
                ccc_callcontrol::measure::install(listen)?;
                tracing::info!(address = %listen, "serving metrics");
            }
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(TlsPem::read(cert, key, args.tls_client_ca.as_deref())?)
                }
                _ => None,
            };
            let transport = match &tls {
                None => {
                    "plaintext: anyone on the network can read tokens; use TLS beyond localhost"
                }
                Some(TlsPem {
                    client_ca: None, ..
                }) => "TLS",
                Some(_) => "mutual TLS (client certificates required)",
            };
            let options = ServeOptions {
                tls,
                reflection: !args.disable_reflection,
                health: !args.disable_health,
                token_cache_ttl: Duration::from_millis(args.token_cache_ms),
                request_timeout: Duration::from_millis(args.request_timeout_ms),
                db_timeout: Duration::from_millis(args.db_timeout_ms),
                drain: Duration::from_millis(args.drain_ms),
                shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
                max_concurrent_requests: args.max_concurrent_requests as usize,
                known_calls: args.known_calls as usize,
                known_agents: args.known_agents as usize,
                max_streams_per_connection: args.max_streams_per_connection,
                max_request_bytes: args.max_request_bytes as usize,
                watch: WatchOptions {
                    poll: Duration::from_millis(args.watch_poll_ms),
                    bookmark_every: Duration::from_millis(args.watch_bookmark_ms),
                    max_watchers: args.max_watchers as usize,
                    retention_days: args.event_retention_days,
                },
            };
            let pool = prepare_database(&args.database).await?;
            let app = Application::bind(args.listen, pool, options).await?;
            // Registered before we say we serve: a SIGTERM that comes right
            // after must start the drain, not kill the process outright.
            let shutdown = shutdown_signal()?;
            tracing::info!(address = %app.local_addr(), transport, "serving gRPC");
            let served = app.run_until(shutdown).await;
            // After the last request and unit: their spans are queued.
            traces.shutdown().await;
            served?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (what an orchestrator sends), listened for from the
/// moment this returns.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
    }
}
