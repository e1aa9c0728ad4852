//! Wiring: connect to (and create, and migrate) the database, bind the
//! listener, serve until told to stop. Tests build the same application on
//! port 0 against their own database.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{Stream, StreamExt};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::app::{App, Limits, TokenCache, WatchOptions};
use crate::config::DatabaseArgs;
use crate::store::{self, Store};

mod conn;
mod schema;

use conn::OneWrite;

pub use schema::MIGRATOR;

/// Creates the database if it is missing, connects, and applies pending
/// migrations (refusing a schema that newer releases have left this one
/// too old for: `schema`). Replicas may run this at the same time: sqlx
/// serializes migrations with an advisory lock. A database that does not answer yet
/// (replicas often start before it) is retried with backoff for up to
/// `--connect-wait-ms`.
pub async fn prepare_database(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let url = &args.database_url;
    let options = PgConnectOptions::from_str(url).context("Invalid database URL")?;
    let exists = wait_for_database(args).await?;
    if !exists {
        // Two replicas may race to create it; losing that race is fine.
        if let Err(e) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await.unwrap_or(false)
        {
            return Err(e).context("Failed to create the database");
        }
        tracing::info!("created the database");
    }
    let database = options.get_database().unwrap_or_default().to_owned();
    let pool = connect_pool(options, args)
        .await
        .context("Failed to connect to the database")?;
    schema::migrate(&pool).await?;
    warn_if_autovacuum_is_off(&pool, &database).await;
    Ok(pool)
}

/// PostgreSQL keeps the planner's statistics only with autovacuum on (its
/// default). Without it the service's statements are planned for its
/// tables as they were last analyzed (for a new database: empty), and read
/// 9 to 35 times the pages they need (docs/performance.md, "Plans made for
/// empty tables"). A warning, not a refusal: an operator may analyze by
/// other means.
async fn warn_if_autovacuum_is_off(pool: &PgPool, database: &str) {
    let setting = sqlx::query_scalar::<_, String>("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await;
    match setting {
        Ok(on) if on != "off" => {}
        Ok(_) => tracing::warn!(
            database,
            "autovacuum is off: PostgreSQL keeps no statistics of the service's tables, and its \
             statements will read many times the pages they need; turn autovacuum on, or ANALYZE \
             the database regularly (docs/operations.md, \"Statistics\")"
        ),
        // Not worth failing the start for: the service works either way.
        Err(e) => tracing::debug!(error = %e, "could not read the autovacuum setting"),
    }
}

/// Whether the database exists, once the server answers at all. What
/// waiting cannot mend (a certificate, the URL, a password) fails at once.
async fn wait_for_database(args: &DatabaseArgs) -> anyhow::Result<bool> {
    let give_up = Instant::now() + Duration::from_millis(args.connect_wait_ms);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = tokio::time::timeout(
            args.acquire_timeout(),
            Postgres::database_exists(&args.database_url),
        )
        .await;
        let e = match attempt {
            Ok(Ok(exists)) => return Ok(exists),
            Ok(Err(e)) if is_permanent(&e) => {
                return Err(e).context("Failed to connect to PostgreSQL");
            }
            Ok(Err(e)) => anyhow::Error::from(e),
            Err(elapsed) => anyhow::Error::from(elapsed),
        };
        if Instant::now() + pause >= give_up {
            return Err(e).context("Failed to reach PostgreSQL");
        }
        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "PostgreSQL does not answer yet");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// An error connecting that the same attempt would meet again: TLS
/// refused (no TLS on the server, or a certificate that does not verify:
/// rustls reports that as invalid data), a bad URL, or authentication
/// refused (SQLSTATE class 28). A server starting up, refusing or dropping
/// connections is worth waiting for.
fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("28")),
        _ => false,
    }
}

/// How long PostgreSQL lets a session sit idle inside a transaction before
/// it ends the session. Our units never pause mid-transaction for more than
/// a retry's back-off, so this only ever ends a transaction something else
/// left open, and its locks with it.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// How often PostgreSQL checks, while running one of our statements, that
/// we are still connected.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The planner's cost of a random page read in our sessions. PostgreSQL's
/// default (4) prices an index probe as if it went to a spinning disk, so
/// for the key lookups of a call action (`user_id = ANY (…)` on `agents`)
/// it picks a sequential scan, or a scan of the instance's agents under
/// the `instance_id` prefix, whenever the table looks small or its
/// statistics are stale: EndConference then read every agent of the table
/// or the instance, and its backend CPU grew with them. Our working set
/// (live calls and their agents) is in memory; 1.1 is the usual value for
/// that. Measured in `docs/performance.md` ("Planner costs").
const RANDOM_PAGE_COST: &str = "1.1";

/// A pool on `options` with the service's session settings and limits:
/// statement and lock timeouts, the idle-in-transaction timeout and the
/// planner's page cost. No check when a connection is handed out (sqlx's
/// ping is off): a unit's connection is reused only when the unit ran to
/// its end, and is closed otherwise (`app::unit`); sqlx pings each
/// connection that comes back to the pool, which a unit that ended cleanly
/// skips, and which `store::warm` precedes with a ping bounded by the
/// acquire timeout. Tests build their pools with this too, over
/// their own databases.
pub async fn connect_pool(
    options: PgConnectOptions,
    args: &DatabaseArgs,
) -> anyhow::Result<PgPool> {
    let mut settings = vec![
        ("lock_timeout", args.lock_timeout_ms.to_string()),
        (
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis().to_string(),
        ),
        // A statement whose client is gone (the replica was stopped at its
        // shutdown deadline) is aborted, not committed, even while it
        // waits for a lock.
        (
            "client_connection_check_interval",
            CLIENT_CHECK_INTERVAL.as_millis().to_string(),
        ),
        ("random_page_cost", RANDOM_PAGE_COST.to_string()),
    ];
    if args.statement_timeout_ms > 0 {
        settings.push(("statement_timeout", args.statement_timeout_ms.to_string()));
    }
    let pool = PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(args.acquire_timeout())
        .test_before_acquire(false)
        .connect_with(options.options(settings))
        .await?;
    Ok(pool)
}

/// The connections `listener` accepts, set up for small unary calls.
/// Without TCP_NODELAY a reply waits for the peer's delayed ACK (Nagle):
/// measured here, EndConference went from 48 ms to 8.5 ms at p50 with 16
/// callers once it was set. tonic sets it only on listeners it binds
/// itself. Keepalive finds dead peers. Each goes out whole ([`OneWrite`]).
fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<OneWrite>> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .map(|accepted| accepted.map(OneWrite))
}

/// TLS material, as PEM.
#[derive(Clone)]
pub struct TlsPem {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
    /// With it, clients must present a certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

/// The bytes of a PEM file a flag names, or an error naming the file.
pub fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("Failed to read {}", path.display()))
}

impl TlsPem {
    /// Reads the files named by `serve`'s TLS options.
    pub fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            cert_chain: read_pem(cert)?,
            key: read_pem(key)?,
            client_ca: client_ca.map(read_pem).transpose()?,
        })
    }

    fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_chain, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// How to serve, beyond where.
#[derive(Clone)]
pub struct ServeOptions {
    /// `None`: plaintext.
    pub tls: Option<TlsPem>,
    pub reflection: bool,
    pub health: bool,
    /// How long a token lookup is remembered (zero: not at all).
    pub token_cache_ttl: Duration,
    /// The deadline of a request without `grpc-timeout`.
    pub request_timeout: Duration,
    /// Longest one unit of database work may take once it has a connection.
    pub db_timeout: Duration,
    /// After the shutdown signal, how long to keep serving with health
    /// NOT_SERVING, so load balancers notice, before the listener closes.
    pub drain: Duration,
    /// After the drain, how long in-flight work may take.
    pub shutdown_timeout: Duration,
    /// Most requests served at once; beyond it requests are shed.
    pub max_concurrent_requests: usize,
    /// Most calls whose state the replica keeps to decide on.
    pub known_calls: usize,
    /// Most agents whose state the replica keeps to decide on.
    pub known_agents: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per client connection.
    pub max_streams_per_connection: u32,
    /// Largest encoded request accepted, in bytes.
    pub max_request_bytes: usize,
    /// How WatchEvents streams are fed.
    pub watch: WatchOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            reflection: true,
            health: true,
            token_cache_ttl: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            db_timeout: Duration::from_secs(5),
            // No drain when embedded (tests); the binary's is --drain-ms.
            drain: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(15),
            max_concurrent_requests: 512,
            known_calls: Limits::default().known_calls,
            known_agents: Limits::default().known_agents,
            max_streams_per_connection: 128,
            max_request_bytes: 64 * 1024,
            watch: WatchOptions::default(),
        }
    }
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    app: App,
    options: ServeOptions,
}

impl Application {
    /// Binds `listen` (port 0 picks a free port) over an existing pool.
    pub async fn bind(
        listen: SocketAddr,
        pool: PgPool,
        options: ServeOptions,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("Failed to listen on {listen}"))?;
        let limits = Limits {
            request_timeout: options.request_timeout,
            db_timeout: options.db_timeout,
            max_concurrent_requests: options.max_concurrent_requests,
            known_calls: options.known_calls,
            known_agents: options.known_agents,
        };
        let app = App::with_limits(
            Store::new(pool),
            TokenCache::new(options.token_cache_ttl),
            &limits,
        )
        .with_watch_options(options.watch.clone(), &limits);
        Ok(Self {
            listener,
            app,
            options,
        })
    }

    /// The actions, for the command line.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes. Then every health entry turns
    /// NOT_SERVING and serving goes on for the drain window, so load
    /// balancers notice; then the listener closes and in-flight requests
    /// and units of work get the shutdown timeout to finish: past it the
    /// rest are dropped, and PostgreSQL rolls back whatever they had not
    /// committed when their connections close.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let options = &self.options;
        let (routes, health) = crate::grpc::routes(
            self.app.clone(),
            options.reflection,
            options.health,
            options.max_request_bytes,
        )
        .await?;
        let pool = self.app.store().pool();
        let storage = health
            .as_ref()
            .map(|h| h.watch_storage((*pool.connect_options()).clone()));
        let storage_abort = storage.as_ref().map(|t| t.abort_handle());
        let mut server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(options.max_streams_per_connection));
        if let Some(tls) = &options.tls {
            server = server
                .tls_config(tls.server_config())
                .context("Invalid TLS configuration")?;
        }
        let purge = tokio::spawn(purge_idempotency_keys(self.app.clone()));
        let sweep = tokio::spawn(sweep_kept_connections(self.app.store().clone()));
        let event_log = tokio::spawn(maintain_event_log(self.app.clone()));

        let (signalled, mut signalled_at) = tokio::sync::watch::channel(None::<Instant>);
        let drain = options.drain;
        let watches = self.app.clone();
        let signal = async move {
            shutdown.await;
            if let Some(task) = storage_abort {
                task.abort();
            }
            if let Some(health) = &health {
                health.draining().await;
            }
            if !drain.is_zero() {
                tracing::info!(drain_ms = drain.as_millis() as u64, "draining");
                tokio::time::sleep(drain).await;
            }
            // Streams would hold the graceful shutdown open: they end now,
            // UNAVAILABLE, and their callers resume elsewhere.
            watches.end_watches();
            let _ = signalled.send(Some(Instant::now()));
        };
        let timeout = options.shutdown_timeout;
        let signal_time = signalled_at.clone();
        let hard_deadline = async move {
            match signalled_at.wait_for(Option::is_some).await.map(|at| *at) {
                Ok(Some(at)) => tokio::time::sleep_until((at + timeout).into()).await,
                _ => std::future::pending().await,
            }
        };
        let serve = server
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(self.listener), signal);
        let served = tokio::select! {
            served = serve => served.context("The gRPC server failed"),
            () = hard_deadline => {
                tracing::warn!("requests still in flight at the shutdown deadline; dropping them");
                Ok(())
            }
        };
        purge.abort();
        sweep.abort();
        event_log.abort();
        if let Some(task) = storage {
            task.abort();
        }
        // The units get what is left of the shutdown timeout.
        let signalled = *signal_time.borrow();
        let deadline = signalled.map_or_else(Instant::now, |at| at + timeout);
        let abandoned = self.app.finish_units(deadline).await;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "units of work still running at the shutdown deadline; rolling them back"
            );
        }
        // Closing waits for connections still checked out: bounded, as a
        // silent database could hold them for good.
        if tokio::time::timeout(Duration::from_secs(1), self.app.store().close())
            .await
            .is_err()
        {
            tracing::warn!("closing the database pool timed out");
        }
        served
    }
}

/// How long idempotency keys are kept: the contract promises 24 hours.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(25 * 3600);

/// Purges expired idempotency keys now and then. Every replica does it;
/// the deletes are idempotent and cheap when there is nothing to purge.
async fn purge_idempotency_keys(app: App) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        every.tick().await;
        match app.purge_idempotency_keys(IDEMPOTENCY_RETENTION).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "failed to purge idempotency keys"),
        }
    }
}

/// Gives the connections kept between units that traffic no longer uses
/// back to the pool (`store::warm`), so its idle timeout can close them.
async fn sweep_kept_connections(store: Store) {
    let mut every = tokio::time::interval(store::warm::WARM_FOR);
    loop {
        every.tick().await;
        store.sweep();
    }
}

/// Keeps the event log's day partitions: the days ahead exist, the days
/// past the retention go. At start, then hourly (a failed run is retried
/// a minute later).
async fn maintain_event_log(app: App) {
    let retention = app.event_retention_days();
    loop {
        let pause = match app.maintain_event_log(retention).await {
            Ok(done) => {
                if done.created > 0 || !done.dropped.is_empty() {
                    tracing::info!(created = done.created, dropped = ?done.dropped, "event log partitions maintained");
                }
                Duration::from_secs(3600)
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to maintain the event log's partitions; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_delayed_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();

        let stream = accepted.next().await.unwrap().unwrap();

        assert!(
            stream.0.nodelay().unwrap(),
            "TCP_NODELAY must be set on accepted sockets"
        );
    }
}
