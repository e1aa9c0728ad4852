//! `ccc-callcontrol bench`: a load generator that is only a client. It
//! provisions its own instance and agents through the public API, keeps a
//! fixed number of requests in flight over real gRPC connections, and
//! reports throughput, latency percentiles and where the time went (server
//! RSS and CPU, PostgreSQL backend CPU, database round trips).
//!
//! Write workloads need a fresh state per request (an EndConference on a
//! conference already left is a cheap no-op), so the run alternates
//! untimed *preparation* with timed *measurement windows*; only the windows
//! count towards `--duration-s` and the figures. See docs/performance.md.
//!
//! With `--watchers N`, N WatchEvents streams of the bench's instance stay
//! open through the run, and the report adds their commit-to-delivery
//! latency and the server's RSS with them (`watchers`).

mod hook;
mod probe;
pub mod relay;
mod report;
mod watchers;
mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tonic::transport::{Channel, Endpoint};

use crate::app::{App, CreateAccessToken, RequestContext, TokenCache};
use crate::config::{BenchArgs, BenchWorkload, DEFAULT_DATABASE_URL, DatabaseArgs};
use crate::domain::access::Role;
use crate::startup::{Application, ServeOptions, connect_pool, prepare_database};
use crate::store::Store;

pub use report::{Percentiles, Report, WatchReport};
use workload::{Clients, Mode, Recorder};

/// How hard and how long to push, independent of where the service runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workload: BenchWorkload,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub parties: usize,
    pub agents: usize,
    /// WatchEvents streams held open through the run (0: none).
    pub watchers: usize,
}

impl From<&BenchArgs> for Settings {
    fn from(args: &BenchArgs) -> Self {
        Self {
            workload: args.workload,
            in_flight: args.in_flight as usize,
            duration: Duration::from_secs_f64(args.duration_s.max(0.0)),
            warmup: Duration::from_secs_f64(args.warmup_s.max(0.0)),
            parties: args.parties as usize,
            agents: args.agents as usize,
            watchers: args.watchers as usize,
        }
    }
}

/// Where the requests go: connections to the service (or to each of its
/// `replicas`, in that many equal runs) and an operator token. Worker `i`
/// uses connection `i % len` of each replica's run.
pub struct Target {
    pub channels: Vec<Channel>,
    /// How many replicas `channels` reach; each request goes to one at
    /// random.
    pub replicas: usize,
    pub token: String,
    /// Connections for the watchers, watcher `i` on `i % len` (empty: the
    /// workers' connections).
    pub watch_channels: Vec<Channel>,
}

/// What the bench watches besides its own requests; every part optional.
#[derive(Default)]
pub struct Watch {
    /// The service's process, for RSS and CPU time.
    pub server_pid: Option<u32>,
    /// Whether that process is this one (so its CPU includes the client).
    pub in_process: bool,
    /// The service's database, for its backends' CPU time. A pool of its
    /// own, so the watcher's queries never take a service connection.
    pub database: Option<PgPool>,
    /// Round trips the service sent, counted by the relay.
    pub round_trips: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Database connections the service opened, counted by the relay.
    pub connections: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// A command to run as each measurement window starts and ends
    /// (`--window-hook`).
    pub window_hook: Option<String>,
}

/// With every watch open, how long to wait before reading the server's
/// RSS with the watchers idle (each watch first reads its gap from the
/// database).
const WATCHERS_SETTLE: Duration = Duration::from_secs(1);

/// The worker threads the bench's runtime should have, if not one per CPU
/// (`cpus`): a client of a service elsewhere gets as many as pgbench gets
/// threads for the floor beside it (`-j`, the lesser of the clients and
/// the CPUs: scripts/bench/compare). One request in flight on two workers
/// pays a hand-off between threads at every turn that the floor's one
/// thread does not (docs/performance.md, "The bench client's threads").
/// With `--spawn` the service shares the runtime, and watchers add work of
/// their own: both keep a worker per CPU.
pub fn client_threads(args: &BenchArgs, cpus: usize) -> Option<usize> {
    (!args.spawn && args.watchers == 0).then(|| (args.in_flight as usize).clamp(1, cpus.max(1)))
}

/// The `bench` subcommand: runs and prints the report.
pub async fn main(args: BenchArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Connects to `--target` or spawns the service, then [`drive`]s it.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let settings = Settings::from(args);
    let connections = match args.connections {
        0 => settings.in_flight,
        n => n as usize,
    };
    let watch_connections = settings
        .watchers
        .div_ceil(args.watchers_per_connection as usize);
    // The spawned replicas stop when `_stop` goes, after the run.
    let (target, watch, _stop) = match &args.target {
        Some(address) => {
            let channels = connect(address, connections).await?;
            let watch_channels = connect(address, watch_connections).await?;
            let database = match &args.database_url {
                Some(url) => Some(watcher_pool(url).await?),
                None => None,
            };
            let target = Target {
                channels,
                replicas: 1,
                token: args.token.clone().context("--target needs --token")?,
                watch_channels,
            };
            let watch = Watch {
                server_pid: args.server_pid,
                database,
                ..Watch::default()
            };
            (target, watch, None)
        }
        None => {
            let url = args.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL);
            let replicas = args.replicas as usize;
            let defaults = ServeOptions::default();
            let options = ServeOptions {
                known_calls: args
                    .known_calls
                    .map_or(defaults.known_calls, |n| n as usize),
                known_agents: args
                    .known_agents
                    .map_or(defaults.known_agents, |n| n as usize),
                ..defaults
            };
            let (addresses, watch, token, stop) =
                spawn(url, args.count_round_trips, replicas, options).await?;
            let mut channels = Vec::with_capacity(connections * replicas);
            for address in &addresses {
                channels.extend(connect(address, connections).await?);
            }
            let target = Target {
                channels,
                replicas,
                token,
                watch_channels: connect(&addresses[0], watch_connections).await?,
            };
            (target, watch, Some(stop))
        }
    };
    let watch = Watch {
        window_hook: args.window_hook.clone(),
        ..watch
    };
    drive(&target, &watch, &settings).await
}

/// Starts `replicas` replicas of the service in this process over `url`
/// (created and migrated if missing), each served as `options` say on a
/// free port with a pool of its own; returns their addresses, what to
/// watch, an operator token, and the sender that stops them.
async fn spawn(
    url: &str,
    count_round_trips: bool,
    replicas: usize,
    options: ServeOptions,
) -> anyhow::Result<(Vec<String>, Watch, String, tokio::sync::watch::Sender<bool>)> {
    let args = DatabaseArgs::for_url(url);
    let pool = prepare_database(&args).await?;
    let mut round_trips = None;
    let mut connections = None;
    let mut connect: PgConnectOptions = (*pool.connect_options()).clone();
    if count_round_trips {
        let relay = relay::Relay::start(connect.get_host(), connect.get_port()).await?;
        round_trips = Some(relay.round_trips());
        connections = Some(relay.connections());
        // The relay reads the protocol, so the session must be plaintext.
        connect = connect
            .host("127.0.0.1")
            .port(relay.port())
            .ssl_mode(PgSslMode::Disable);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut addresses = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        let served = connect_pool(connect.clone(), &args).await?;
        let app = Application::bind(
            "127.0.0.1:0".parse().expect("an address"),
            served,
            options.clone(),
        )
        .await?;
        addresses.push(app.local_addr().to_string());
        let mut stopped = stopped.clone();
        tokio::spawn(app.run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }
    let token = operator_token(&pool).await?;
    let watch = Watch {
        server_pid: Some(std::process::id()),
        in_process: true,
        database: Some(watcher_pool(url).await?),
        round_trips,
        connections,
        ..Watch::default()
    };
    Ok((addresses, watch, token, stop))
}

/// An operator token made straight in the database, as `token create`
/// does; it expires after a day, so runs leave no live secrets behind.
async fn operator_token(pool: &PgPool) -> anyhow::Result<String> {
    let app = App::new(Store::new(pool.clone()), TokenCache::new(Duration::ZERO));
    let ctx = RequestContext::local(&uuid::Uuid::new_v4().to_string().to_uppercase(), "bench");
    let cmd = CreateAccessToken {
        instance_id: None,
        role: Role::Admin,
        user_id: None,
        expires_in_seconds: Some(24 * 3600),
    };
    let created = app
        .create_access_token(&ctx, &cmd)
        .await
        .map_err(|e| anyhow::anyhow!("Failed to create the bench's token: {e}"))?;
    Ok(created.token.reveal().to_owned())
}

/// One connection, for watching only.
async fn watcher_pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("Failed to connect to the database to watch")
}

/// `n` separate HTTP/2 connections to `address` (none for 0).
async fn connect(address: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .context("Invalid --target")?
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("Failed to connect to {address}"))?,
        );
    }
    Ok(channels)
}

/// Provisions an instance of its own on `target`, warms up, measures, and
/// reports. Tests call this with their own server.
pub async fn drive(target: &Target, watch: &Watch, settings: &Settings) -> anyhow::Result<Report> {
    if target.channels.is_empty() {
        bail!("no connection to drive");
    }
    if settings.watchers > 0
        && !matches!(
            settings.workload,
            BenchWorkload::EndConference | BenchWorkload::Mixed
        )
    {
        bail!(
            "--watchers measures the delivery of EndConference changes: use it with \
             --workload end-conference or mixed"
        );
    }
    let to = workload::Connections {
        clients: target
            .channels
            .iter()
            .map(|c| Clients::new(c.clone(), &target.token))
            .collect::<anyhow::Result<_>>()?,
        replicas: target.replicas,
    };
    // Set-up and the watchers' checks go through the first connection.
    let first = &to.clients[0];
    let rss_start = watch.server_pid.and_then(probe::rss_kib);

    let instance: Arc<str> = format!("bench-{:08x}", rand::random::<u32>()).into();
    let agents = workload::provision(first, &instance, settings.agents).await?;
    let mut groups = workload::groups(settings.workload, agents, settings.parties);
    if groups.len() < settings.in_flight {
        bail!(
            "{} agents make {} independent units of work, fewer than --in-flight {}: \
             give --agents at least {}",
            settings.agents,
            groups.len(),
            settings.in_flight,
            settings.in_flight * workload::agents_per_group(settings.workload, settings.parties)
        );
    }
    let (timed_mode, prepare_until) = workload::modes(settings.workload);
    let prep_workers = settings.in_flight.max(16);

    // Every watch opens before the warm-up, and is checked open.
    let mut watching = None;
    if settings.watchers > 0 {
        let channels = if target.watch_channels.is_empty() {
            &target.channels
        } else {
            &target.watch_channels
        };
        let before = watch.server_pid.and_then(probe::rss_kib);
        let open = watchers::Watchers::open(first, channels, &instance, settings.watchers).await?;
        tokio::time::sleep(WATCHERS_SETTLE).await;
        let idle = watch.server_pid.and_then(probe::rss_kib);
        watching = Some((open, watchers::RssReadings { before, idle }));
    }
    let load_rss = probe::RssSampler::start(watch.server_pid);

    let mut measured = Recorder::new(true);
    let mut usage = probe::Usage::default();
    let mut elapsed = Duration::ZERO;
    let mut windows = 0u32;
    let mut dropped = 0usize;
    for (record, budget) in [(false, settings.warmup), (true, settings.duration)] {
        let mut spent = Duration::ZERO;
        while spent < budget {
            if let Some(stage) = prepare_until {
                let prepared = workload::window(
                    groups,
                    prep_workers,
                    &to,
                    &instance,
                    Mode::Prepare(stage),
                    None,
                    false,
                )
                .await;
                dropped += prepared.dropped;
                groups = prepared.groups;
            }
            if groups.is_empty() {
                bail!(
                    "every unit of work failed; first errors: {:?}",
                    measured.first_errors
                );
            }
            let before = probe::Snapshot::take(watch).await;
            if record {
                hook::run(watch.window_hook.as_deref(), hook::Phase::Start).await?;
            }
            let w = workload::window(
                groups,
                settings.in_flight,
                &to,
                &instance,
                timed_mode,
                Some(Instant::now() + (budget - spent)),
                record,
            )
            .await;
            if record {
                hook::run(watch.window_hook.as_deref(), hook::Phase::End).await?;
            }
            let after = probe::Snapshot::take(watch).await;
            spent += w.elapsed;
            dropped += w.dropped;
            groups = w.groups;
            if record {
                usage.add(&before, &after);
                measured.merge(w.recorder);
                elapsed += w.elapsed;
                windows += 1;
            }
        }
    }

    let rss_load_max_kib = load_rss.stop();
    let watched = match watching {
        Some((open, rss)) => Some(open.finish(first, &instance, &measured, rss).await),
        None => None,
    };
    let rss_end = watch.server_pid.and_then(probe::rss_kib);
    let rss_peak = watch.server_pid.and_then(probe::peak_rss_kib);
    Ok(Report::new(report::Run {
        settings: settings.clone(),
        connections: target.channels.len(),
        replicas: target.replicas,
        instance: instance.to_string(),
        measured: elapsed,
        windows,
        recorder: measured,
        dropped,
        usage,
        server_pid: watch.server_pid,
        in_process: watch.in_process,
        rss_kib: (rss_start, rss_end, rss_peak),
        rss_load_max_kib,
        counted_round_trips: watch.round_trips.is_some(),
        watched_database: watch.database.is_some(),
        watch: watched,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::client_threads;
    use crate::config::{Cli, Command};

    fn threads(flags: &[&str], cpus: usize) -> Option<usize> {
        let argv = [&["ccc-callcontrol", "bench"], flags].concat();
        let Command::Bench(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("a bench command line")
        };
        client_threads(&args, cpus)
    }

    /// As pgbench's `-j` in scripts/bench/compare: the lesser of the
    /// requests in flight and the CPUs; the default when the service or
    /// watchers share the process.
    #[test]
    fn a_client_has_the_threads_pgbench_would() {
        let target =
            |more: &[&'static str]| [&["--target", "127.0.0.1:1", "--token", "t"], more].concat();
        assert_eq!(threads(&target(&["--in-flight", "1"]), 2), Some(1));
        assert_eq!(threads(&target(&["--in-flight", "8"]), 2), Some(2));
        assert_eq!(threads(&target(&["--in-flight", "3"]), 16), Some(3));
        let watched = target(&["--in-flight", "1", "--watchers", "4"]);
        assert_eq!(threads(&watched, 2), None);
        assert_eq!(threads(&["--spawn", "--in-flight", "1"], 2), None);
    }
}
