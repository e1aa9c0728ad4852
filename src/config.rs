//! Command line and environment: every setting with its doc and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The local database the service uses when none is given.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres:postgres@127.0.0.1:5432/ccc_callcontrol";

#[derive(Debug, Parser)]
#[command(
    name = "ccc-callcontrol",
    version,
    about = "Contact-center call control (CCC 2020-07-01) over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "CCC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing, apply migrations, and serve gRPC.
    Serve(ServeArgs),
    /// Create the database if missing and apply migrations, then exit.
    Migrate(DatabaseArgs),
    /// Manage access tokens directly in the database (bootstrap, rescue).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Load-test one action over real gRPC connections and print
    /// throughput and latency percentiles (see docs/performance.md).
    Bench(BenchArgs),
}

/// What `bench` drives. Every write workload gives each request a fresh
/// state to act on; the preparation that needs is done between
/// measurement windows and never timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchWorkload {
    /// EndConference: the initiator leaves an answered conference.
    EndConference,
    /// StartConference: an idle agent calls READY agents and a customer.
    StartConference,
    /// ReportChannelEvent: each ringing participant channel is answered.
    ReportChannelEvent,
    /// PollUserStatus of the bench's own agents (a read).
    PollUserStatus,
    /// Whole call lifecycles, every request timed: ReadyForService,
    /// StartConference, ReportChannelEvent ANSWERED, EndConference, and
    /// ReportChannelEvent RELEASED for whoever is left.
    Mixed,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The gRPC address of a running service, e.g. 127.0.0.1:50051
    /// (needs --token). Without it, give --spawn.
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    pub target: Option<String>,

    /// Start the service in this process, on a free port, over
    /// --database-url, and make an operator token for the run.
    #[arg(long)]
    pub spawn: bool,

    /// An operator (ADMIN, no instance) token for --target.
    #[arg(long, env = "CCC_TOKEN", required_unless_present = "spawn")]
    pub token: Option<String>,

    /// The service's database: served with --spawn (default: the
    /// service's default database); with --target, only watched (the CPU
    /// time of its backends), and only if given.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// With --target: the service's process ID, to report its RSS and
    /// CPU time from /proc. With --spawn the bench reads its own.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// The action to drive.
    #[arg(long, value_enum, default_value_t = BenchWorkload::EndConference)]
    pub workload: BenchWorkload,

    /// Requests in flight at once: this many workers, each waiting for
    /// its answer before it sends the next request.
    #[arg(long, default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_flight: u32,

    /// Seconds of measurement, summed over measurement windows.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,

    /// Seconds of the same load before measuring, not recorded.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,

    /// Parties per conference, the initiator included: the initiator,
    /// parties − 2 invited agents, and one customer.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(2..=9))]
    pub parties: u32,

    /// Agents in the bench's instance. Each conference takes parties − 1
    /// of them; at least in-flight × (parties − 1) are needed. More agents
    /// mean longer measurement windows between preparations.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub agents: u32,

    /// gRPC connections the workers share (0: one per worker).
    #[arg(long, default_value_t = 0)]
    pub connections: u32,

    /// Hold this many WatchEvents streams of the bench's instance open
    /// through the run (end-conference and mixed workloads): each with an
    /// ADMIN token of the instance, a blank AfterCursor and no filter, so
    /// each receives every change. Opened before the warm-up; the report
    /// adds a "watch latency" section: from each EndConference response
    /// to its change arriving at each watcher, and the server's RSS
    /// before and with the watchers. The server needs --max-watchers at
    /// least this.
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub watchers: u32,

    /// Watchers per HTTP/2 connection of their own; keep it under the
    /// server's --max-streams-per-connection (128 by default).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watchers_per_connection: u32,

    /// With --spawn: run this many replicas of the service in this
    /// process, each with its own database pool and its own knowledge of
    /// calls and agents (as separate replicas have), and send each request
    /// to one of them at random, as a mesh that spreads requests would:
    /// a call's actions then often reach a replica that did not act on it
    /// last. Each worker keeps --connections' share of connections to each.
    #[arg(long, default_value_t = 1, conflicts_with = "target",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,

    /// With --spawn: the replicas' --known-calls (default: the service's).
    #[arg(long, conflicts_with = "target",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub known_calls: Option<u32>,

    /// With --spawn: the replicas' --known-agents (default: the service's).
    #[arg(long, conflicts_with = "target",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub known_agents: Option<u32>,

    /// With --spawn: route the service's database connections through a
    /// relay in this process that counts round trips (each Sync or simple
    /// Query the service sends). The relay is an extra hop, and it turns
    /// TLS to PostgreSQL off: use it for the count, not for throughput.
    #[arg(long, conflicts_with = "target")]
    pub count_round_trips: bool,

    /// A command run with `sh -c` as each measurement window starts and
    /// ends, with `start` or `end` appended; the window waits for it (10
    /// minutes at most), and the run fails if it fails. For counting what
    /// the windows alone cost elsewhere: scripts/bench/backend-instructions
    /// has PostgreSQL's backends dump their callgrind counts with it.
    #[arg(long)]
    pub window_hook: Option<String>,

    /// Print one JSON object (the whole report) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once. Examples:
    /// `token create --role admin` (an operator: every instance);
    /// `token create --role admin --instance ccc-test`;
    /// `token create --role agent --instance ccc-test --user alice@ccc-test`;
    /// `token create --role telephony --instance ccc-test`.
    Create(TokenCreateArgs),
    /// Revoke a token by its ID (`tok-…`); it stops working at once here
    /// and within the token cache TTL on running replicas.
    Revoke {
        token_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List tokens (never their secrets), optionally of one instance.
    List {
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    Agent,
    Telephony,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// The instance the token is for. Required for agent and telephony
    /// tokens; an admin token without one is an operator's.
    #[arg(long)]
    pub instance: Option<String>,
    /// The agent (`login@instance`) of an agent token.
    #[arg(long)]
    pub user: Option<String>,
    /// Lifetime in seconds; by default the token never expires.
    #[arg(long)]
    pub expires_in: Option<i64>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL. The database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most connections this replica keeps open. Size it so that all
    /// replicas together stay under the server's max_connections. More
    /// than the database's cores only queue inside PostgreSQL
    /// (`scripts/bench/sustained`: 8 did best at 64 in flight on 2 cores).
    #[arg(long, env = "CCC_DB_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_connections: u32,

    /// How long a request waits for a free connection before it fails
    /// with ServiceUnavailable, in milliseconds.
    #[arg(long, env = "CCC_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub acquire_timeout_ms: u64,

    /// Longest a single SQL statement may run, in milliseconds (0: no
    /// limit); a statement cut off fails with ServiceUnavailable.
    #[arg(long, env = "CCC_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub statement_timeout_ms: u64,

    /// Longest an action waits for a row another transaction holds, in
    /// milliseconds; then it fails with ServiceUnavailable. Keep it well
    /// under the acquire timeout, so one hot row cannot hold the pool.
    #[arg(long, env = "CCC_DB_LOCK_TIMEOUT_MS", default_value_t = 1500,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub lock_timeout_ms: u64,

    /// At start, how long to keep trying to reach PostgreSQL (with
    /// backoff) before giving up, in milliseconds (0: try once). TLS
    /// refused, a bad URL or a refused password fail at once.
    #[arg(long, env = "CCC_DB_CONNECT_WAIT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub connect_wait_ms: u64,
}

impl DatabaseArgs {
    /// The defaults (and any `CCC_DB_…` variables set) for `url`: what
    /// tests and tools connect with.
    pub fn for_url(url: impl Into<String>) -> Self {
        let mut args = Cli::try_parse_from(["ccc-callcontrol", "migrate"])
            .ok()
            .and_then(|cli| match cli.command {
                Command::Migrate(args) => Some(args),
                _ => None,
            })
            .expect("the defaults parse");
        args.database_url = url.into();
        args
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// The settings `serve` runs with, for its one log line at start: secrets
/// (the database password) redacted; TLS files named, never read.
pub fn effective(args: &ServeArgs) -> ServeArgs {
    let mut shown = args.clone();
    shown.database.database_url = redact_password(&args.database.database_url);
    shown
}

/// `scheme://user:password@host/db` → `scheme://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// An OTLP/gRPC collector's URL: `http://host:port`, or `https://host:port`
/// for TLS. Checked here, so a typo stops the start naming the flag
/// instead of silently losing every span.
fn otlp_endpoint(raw: &str) -> Result<String, String> {
    let uri: tonic::transport::Uri = raw.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(raw.to_owned()),
        _ => Err("expected http://host:port, or https://host:port for TLS".to_owned()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "CCC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Serve TLS with this certificate chain (PEM). Without it the service
    /// speaks plaintext, which it logs at start.
    #[arg(long, env = "CCC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CCC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS, as
    /// service meshes expect.
    #[arg(long, env = "CCC_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Do not serve gRPC reflection (on by default; it needs no token).
    #[arg(long, env = "CCC_DISABLE_REFLECTION")]
    pub disable_reflection: bool,

    /// Do not serve grpc.health.v1 (on by default; it needs no token).
    #[arg(long, env = "CCC_DISABLE_HEALTH")]
    pub disable_health: bool,

    /// Serve Prometheus text (`GET /metrics`) on this address, e.g.
    /// `0.0.0.0:9090`; off by default. It is a listener of its own, apart
    /// from gRPC, and needs no token: keep it off public networks.
    #[arg(long, env = "CCC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Export spans (each request, each unit of database work) over
    /// OTLP/gRPC to this collector, e.g. `http://otel-collector:4317`; off
    /// by default. `https://` speaks TLS, checking the collector's
    /// certificate against public CAs (Mozilla's list, built in) and
    /// --otlp-ca-cert. Tuned with the standard OTEL_BSP_* and
    /// OTEL_TRACES_SAMPLER variables.
    #[arg(long, env = "CCC_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// A CA (PEM) to trust for an `https://` --otlp-endpoint, besides the
    /// public ones: a collector with a certificate of a private CA.
    #[arg(long, env = "CCC_OTLP_CA_CERT", requires = "otlp_endpoint")]
    pub otlp_ca_cert: Option<PathBuf>,

    /// How long a replica remembers an access-token lookup, in
    /// milliseconds (0: look up every request). A token revoked elsewhere
    /// keeps working here for at most this long.
    #[arg(long, env = "CCC_TOKEN_CACHE_MS", default_value_t = 2000)]
    pub token_cache_ms: u64,

    /// The deadline of a request that comes without `grpc-timeout`, in
    /// milliseconds. A shorter `grpc-timeout` wins.
    #[arg(long, env = "CCC_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,

    /// Longest one unit of database work (begin to commit) may take once
    /// it has a connection, in milliseconds; a database that stops
    /// answering costs a request at most this (plus the acquire timeout)
    /// before ServiceUnavailable.
    #[arg(long, env = "CCC_DB_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long to keep serving with every health entry
    /// NOT_SERVING, so load balancers stop sending, before the listener
    /// closes, in milliseconds.
    #[arg(long, env = "CCC_DRAIN_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub drain_ms: u64,

    /// After the drain, how long in-flight requests and units of work may
    /// take to finish, in milliseconds; then the rest are rolled back
    /// (their connections closed) and the process exits.
    #[arg(long, env = "CCC_SHUTDOWN_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_timeout_ms: u64,

    /// Most requests this replica serves at once; beyond it a request is
    /// refused at once with UNAVAILABLE / Throttling (retryable).
    #[arg(long, env = "CCC_MAX_CONCURRENT_REQUESTS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,

    /// Most calls whose state this replica keeps after acting on them, to
    /// decide the next action on the same call without reading it first
    /// (one round trip instead of two while no other replica changed the
    /// call); 0 keeps none.
    #[arg(long, env = "CCC_KNOWN_CALLS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub known_calls: u32,

    /// Most agents whose state this replica keeps after reading or writing
    /// them, to decide StartConference and ReadyForService without reading
    /// the agents first (one round trip instead of two while no other
    /// replica changed them); 0 keeps none.
    #[arg(long, env = "CCC_KNOWN_AGENTS", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub known_agents: u32,

    /// Most concurrent streams (calls) one client connection may open
    /// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "CCC_MAX_STREAMS_PER_CONNECTION", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams_per_connection: u32,

    /// Largest encoded request accepted, in bytes; a larger one gets
    /// RESOURCE_EXHAUSTED / Request.TooLarge.
    #[arg(long, env = "CCC_MAX_REQUEST_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_request_bytes: u32,

    /// How often this replica's event tail looks for new changes to send
    /// to its WatchEvents streams, in milliseconds.
    #[arg(long, env = "CCC_WATCH_POLL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watch_poll_ms: u64,

    /// A WatchEvents stream with nothing to send for this long sends a
    /// Bookmark (a resume point), in milliseconds.
    #[arg(long, env = "CCC_WATCH_BOOKMARK_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub watch_bookmark_ms: u64,

    /// Most WatchEvents streams open on this replica at once; beyond it a
    /// watch is refused with UNAVAILABLE / Throttling (retryable).
    #[arg(long, env = "CCC_MAX_WATCHERS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_watchers: u32,

    /// How many days events are kept for WatchEvents to resume from; older
    /// days are dropped whole (a cursor from before them gets OUT_OF_RANGE
    /// / Cursor.Expired).
    #[arg(long, env = "CCC_EVENT_RETENTION_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub event_retention_days: u32,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["ccc-callcontrol", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.database.max_connections, 8);
        assert!(args.tls_cert.is_none() && !args.disable_reflection);
        assert_eq!(args.token_cache_ms, 2000);
        assert!(args.otlp_endpoint.is_none());
    }

    #[test]
    fn bad_limits_fail_at_start_naming_the_flag() {
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--acquire-timeout-ms", "0"),
            ("--lock-timeout-ms", "0"),
            ("--max-request-bytes", "10"),
            ("--max-concurrent-requests", "0"),
            ("--db-timeout-ms", "0"),
            ("--request-timeout-ms", "soon"),
            ("--otlp-endpoint", "otel-collector:4317"),
            ("--otlp-endpoint", "grpc://otel-collector:4317"),
        ] {
            let err = Cli::try_parse_from(["ccc-callcontrol", "serve", flag, value])
                .expect_err(flag)
                .to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn an_otlp_ca_needs_an_endpoint() {
        let https = ["--otlp-endpoint", "https://otel-collector:4317"];
        let parsed = |extra: &[&str]| {
            let args = ["ccc-callcontrol", "serve"].iter().chain(extra);
            Cli::try_parse_from(args).map(|_| ())
        };
        assert!(parsed(&https).is_ok());
        assert!(parsed(&["--otlp-ca-cert", "ca.pem"]).is_err());
        assert!(parsed(&[https[0], https[1], "--otlp-ca-cert", "ca.pem"]).is_ok());
    }

    #[test]
    fn bench_needs_a_target_or_spawn() {
        assert!(Cli::try_parse_from(["ccc-callcontrol", "bench"]).is_err());
        let cli = Cli::try_parse_from(["ccc-callcontrol", "bench", "--spawn"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("bench")
        };
        assert_eq!(args.workload, BenchWorkload::EndConference);
        assert_eq!((args.in_flight, args.parties, args.agents), (8, 3, 256));
        assert!(
            Cli::try_parse_from([
                "ccc-callcontrol",
                "bench",
                "--target",
                "127.0.0.1:1",
                "--token",
                "t",
                "--count-round-trips"
            ])
            .is_err(),
            "counting round trips needs the service in-process"
        );
    }

    #[test]
    fn the_logged_configuration_hides_the_database_password() {
        let cli = Cli::try_parse_from([
            "ccc-callcontrol",
            "serve",
            "--database-url",
            "postgres://ccc:s3cr3t@db:5432/ccc",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let shown = format!("{:?}", effective(&args));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("postgres://ccc:***@db:5432/ccc"), "{shown}");
        assert_eq!(redact_password("postgres://db/ccc"), "postgres://db/ccc");
        assert_eq!(
            redact_password("postgres://u@db/ccc"),
            "postgres://u@db/ccc"
        );
    }

    #[test]
    fn tls_needs_both_halves() {
        assert!(Cli::try_parse_from(["ccc-callcontrol", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["ccc-callcontrol", "serve", "--tls-client-ca", "ca.pem"]).is_err()
        );
        assert!(
            Cli::try_parse_from([
                "ccc-callcontrol",
                "serve",
                "--tls-cert",
                "c",
                "--tls-key",
                "k"
            ])
            .is_ok()
        );
    }
}
