//! Wiring: connect to (and create, and migrate) the database, bind the
//! listener, serve until told to stop. Tests build the same application on
//! port 0 against their own database.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::app::App;
use crate::config::DatabaseArgs;
use crate::store::Store;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database if it is missing, connects, and applies pending
/// migrations. Replicas may run this at the same time: sqlx serializes
/// migrations with an advisory lock.
pub async fn prepare_database(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let url = &args.database_url;
    if !Postgres::database_exists(url)
        .await
        .context("Failed to reach PostgreSQL")?
    {
        // Two replicas may race to create it; losing that race is fine.
        if let Err(e) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await.unwrap_or(false)
        {
            return Err(e).context("Failed to create the database");
        }
        tracing::info!("created the database");
    }
    let mut options = PgConnectOptions::from_str(url).context("Invalid database URL")?;
    if args.statement_timeout_ms > 0 {
        options = options.options([("statement_timeout", args.statement_timeout_ms.to_string())]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(args.acquire_timeout())
        .connect_with(options)
        .await
        .context("Failed to connect to the database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("Failed to apply migrations")?;
    Ok(pool)
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    app: App,
}

impl Application {
    /// Binds `listen` (port 0 picks a free port) over an existing pool.
    pub async fn bind(listen: SocketAddr, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("Failed to listen on {listen}"))?;
        Ok(Self {
            listener,
            app: App::new(Store::new(pool)),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets in-flight requests
    /// finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let routes = crate::grpc::routes(self.app).await?;
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await
            .context("The gRPC server failed")
    }
}
