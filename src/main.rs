//! `ccc-callcontrol serve | migrate`: parses the command line and hands over
//! to `startup`.

use clap::Parser;

use ccc_callcontrol::config::{Cli, Command};
use ccc_callcontrol::startup::{Application, prepare_database};
use ccc_callcontrol::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Migrate(db) => {
            prepare_database(&db).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve(args) => {
            let pool = prepare_database(&args.database).await?;
            let app = Application::bind(args.listen, pool).await?;
            tracing::info!(address = %app.local_addr(), "serving gRPC (plaintext)");
            app.run_until(shutdown_signal()).await?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (what an orchestrator sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
