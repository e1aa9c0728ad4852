//! What a bench run found, as one serializable value, a text table and
//! JSON. Percentiles come from hdrhistogram; times are in milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Settings;
use super::probe::Usage;
use super::workload::Recorder;

/// Latency percentiles of one set of requests, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One action's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub requests: u64,
    pub throughput_rps: f64,
    pub latency_ms: Percentiles,
}

/// The service process as seen from /proc.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub pid: Option<u32>,
    /// The service ran inside the bench, so its CPU time includes the
    /// client's.
    pub in_process: bool,
    pub rss_start_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    /// The highest RSS sampled (every 100 ms) from the warm-up's start to
    /// the last window's end: the load's peak.
    pub rss_load_max_kib: Option<u64>,
    pub cpu_us_per_request: Option<f64>,
}

/// What the WatchEvents watchers saw (`--watchers`): every measured
/// EndConference change should reach every watcher.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    /// HTTP/2 connections the watchers were spread over.
    pub connections: usize,
    /// Seconds to open every watch.
    pub open_s: f64,
    /// EndConference responses in the measurement windows: the changes
    /// each watcher should receive.
    pub changes: u64,
    /// (watcher, change) pairs received; watchers × changes when complete.
    pub delivered: u64,
    /// watchers × changes − delivered.
    pub missing: u64,
    /// Watchers that received every measured change.
    pub complete_watchers: usize,
    /// Changes received at or below a ContextId already received.
    pub out_of_order: u64,
    /// Pairs whose change arrived before its response did (counted as 0).
    pub before_response: u64,
    /// Every message every watcher received, from open to close, all
    /// actions and bookmarks.
    pub messages: u64,
    /// After the last window, seconds until every watcher had the last
    /// measured change (or the 30 s limit).
    pub drained_s: f64,
    /// From each EndConference response arriving at the load generator to
    /// its change arriving at a watcher, over every pair.
    pub latency_ms: Option<Percentiles>,
    /// Streams the server ended before the bench closed them.
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Server RSS just before the first watch opened.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every watch open and idle (1 s after the last
    /// opened, before the warm-up).
    pub rss_idle_kib: Option<u64>,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub instance: String,
    pub in_flight: usize,
    pub connections: usize,
    /// Replicas of the service the requests were spread over.
    pub replicas: usize,
    pub parties: usize,
    pub agents: usize,
    pub warmup_s: f64,
    /// Seconds inside measurement windows.
    pub measured_s: f64,
    pub windows: u32,
    /// Answered OK.
    pub requests: u64,
    pub errors: u64,
    /// Units of work set aside after a failed request (warm-up included).
    pub dropped_groups: usize,
    pub throughput_rps: f64,
    pub latency_ms: Option<Percentiles>,
    pub actions: BTreeMap<String, ActionReport>,
    /// Statements and simple queries the service sent PostgreSQL per
    /// request (with --count-round-trips).
    pub db_round_trips_per_request: Option<f64>,
    /// Database connections the service opened per request (with
    /// --count-round-trips); a healthy pool opens none once warm.
    pub db_connections_per_request: Option<f64>,
    /// CPU time of the database's client backends per request.
    pub db_backend_cpu_us_per_request: Option<f64>,
    /// CPU time of the bench's own process (workers and watchers) per
    /// request; `None` with the service in-process (see `server`).
    pub client_cpu_us_per_request: Option<f64>,
    pub server: ServerReport,
    /// With `--watchers`.
    pub watch: Option<WatchReport>,
    pub first_errors: Vec<String>,
}

/// The raw material of a report.
pub struct Run {
    pub settings: Settings,
    pub connections: usize,
    pub replicas: usize,
    pub instance: String,
    pub measured: Duration,
    pub windows: u32,
    pub recorder: Recorder,
    pub dropped: usize,
    pub usage: Usage,
    pub server_pid: Option<u32>,
    pub in_process: bool,
    pub rss_kib: (Option<u64>, Option<u64>, Option<u64>),
    /// The highest RSS sampled under load.
    pub rss_load_max_kib: Option<u64>,
    pub counted_round_trips: bool,
    pub watched_database: bool,
    pub watch: Option<WatchReport>,
}

impl Report {
    pub fn new(run: Run) -> Self {
        let secs = run.measured.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let mut all = Recorder::histogram();
        let mut actions = BTreeMap::new();
        for (action, h) in &run.recorder.by_action {
            all.add(h).expect("same bounds");
            actions.insert(
                (*action).to_owned(),
                ActionReport {
                    requests: h.len(),
                    throughput_rps: rate(h.len()),
                    latency_ms: Percentiles::of(h),
                },
            );
        }
        let requests = all.len();
        let per_request = |total: Option<u64>, scale: f64| {
            total
                .filter(|_| requests > 0)
                .map(|t| t as f64 / scale / requests as f64)
        };
        let s = &run.settings;
        Self {
            workload: format!("{:?}", s.workload),
            instance: run.instance,
            in_flight: s.in_flight,
            connections: run.connections,
            replicas: run.replicas,
            parties: s.parties,
            agents: s.agents,
            warmup_s: s.warmup.as_secs_f64(),
            measured_s: secs,
            windows: run.windows,
            requests,
            errors: run.recorder.errors,
            dropped_groups: run.dropped,
            throughput_rps: rate(requests),
            latency_ms: (requests > 0).then(|| Percentiles::of(&all)),
            actions,
            db_round_trips_per_request: per_request(
                run.usage.round_trips.filter(|_| run.counted_round_trips),
                1.0,
            ),
            db_connections_per_request: per_request(
                run.usage.connections.filter(|_| run.counted_round_trips),
                1.0,
            ),
            db_backend_cpu_us_per_request: per_request(
                run.usage.backend_cpu_ns.filter(|_| run.watched_database),
                1000.0,
            ),
            client_cpu_us_per_request: per_request(
                run.usage.client_cpu_ns.filter(|_| !run.in_process),
                1000.0,
            ),
            server: ServerReport {
                pid: run.server_pid,
                in_process: run.in_process,
                rss_start_kib: run.rss_kib.0,
                rss_end_kib: run.rss_kib.1,
                rss_peak_kib: run.rss_kib.2,
                rss_load_max_kib: run.rss_load_max_kib,
                cpu_us_per_request: per_request(
                    run.usage.server_cpu_ns.filter(|_| run.server_pid.is_some()),
                    1000.0,
                ),
            },
            first_errors: run.recorder.first_errors,
            watch: run.watch,
        }
    }

    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "workload     {} ({} parties, {} agents in {}; {} in flight over {} connections{})",
            self.workload,
            self.parties,
            self.agents,
            self.instance,
            self.in_flight,
            self.connections,
            match self.replicas {
                1 => String::new(),
                n => format!(" to {n} replicas, each request to one at random"),
            }
        );
        let _ = writeln!(
            t,
            "measured     {:.2} s in {} window(s), after {:.1} s of warm-up",
            self.measured_s, self.windows, self.warmup_s
        );
        let _ = writeln!(
            t,
            "requests     {} OK, {} errors ({} units of work set aside)",
            self.requests, self.errors, self.dropped_groups
        );
        let _ = writeln!(t, "throughput   {:.1} requests/s", self.throughput_rps);
        let _ = writeln!(
            t,
            "\n{:<20} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "latency (ms)", "requests", "req/s", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |t: &mut String, name: &str, n: u64, rps: f64, p: &Percentiles| {
            let _ = writeln!(
                t,
                "{:<20} {:>9} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                name, n, rps, p.p50, p.p90, p.p99, p.p99_9, p.max
            );
        };
        for (action, a) in &self.actions {
            row(&mut t, action, a.requests, a.throughput_rps, &a.latency_ms);
        }
        if let (true, Some(p)) = (self.actions.len() > 1, &self.latency_ms) {
            row(&mut t, "all", self.requests, self.throughput_rps, p);
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "db round trips   {}",
            self.db_round_trips_per_request.map_or_else(
                || "not counted (needs --spawn --count-round-trips)".to_owned(),
                |v| format!("{v:.2} per request")
            )
        );
        if let Some(v) = self.db_connections_per_request {
            let _ = writeln!(t, "db connections   {v:.3} opened per request");
        }
        let _ = writeln!(
            t,
            "db backend CPU   {}",
            self.db_backend_cpu_us_per_request.map_or_else(
                || "not measured (needs --database-url and PostgreSQL on this host)".to_owned(),
                |v| format!("{v:.0} µs per request")
            )
        );
        if let Some(v) = self.client_cpu_us_per_request {
            let _ = writeln!(
                t,
                "bench CPU        {v:.0} µs per request (this process: workers and watchers)"
            );
        }
        let mib =
            |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let server = &self.server;
        match server.pid {
            None => {
                let _ = writeln!(t, "server           not watched (give --server-pid)");
            }
            Some(pid) => {
                let _ = writeln!(
                    t,
                    "server           pid {pid}{}: RSS {} at start, {} at end, peak {} ({} at most under load); CPU {}",
                    if server.in_process {
                        " (in-process: CPU includes the bench client)"
                    } else {
                        ""
                    },
                    mib(server.rss_start_kib),
                    mib(server.rss_end_kib),
                    mib(server.rss_peak_kib),
                    mib(server.rss_load_max_kib),
                    server
                        .cpu_us_per_request
                        .map_or("?".to_owned(), |v| format!("{v:.0} µs per request")),
                );
            }
        }
        for e in &self.first_errors {
            let _ = writeln!(t, "error            {e}");
        }
        if let Some(w) = &self.watch {
            w.table(&mut t, self.measured_s, &mib, row);
        }
        t
    }
}

impl WatchReport {
    /// The "watch latency" section of the table.
    fn table(
        &self,
        t: &mut String,
        measured_s: f64,
        mib: &dyn Fn(Option<u64>) -> String,
        row: impl Fn(&mut String, &str, u64, f64, &Percentiles),
    ) {
        let _ = writeln!(
            t,
            "\nwatch latency    {} WatchEvents watchers over {} connection(s), opened in {:.2} s",
            self.watchers, self.connections, self.open_s
        );
        let _ = writeln!(
            t,
            "watched changes  {} EndConference changes x {} watchers: {} delivered, {} missing \
             ({} watchers got every one); {} out of order, {} before their response, {} stream errors",
            self.changes,
            self.watchers,
            self.delivered,
            self.missing,
            self.complete_watchers,
            self.out_of_order,
            self.before_response,
            self.errors
        );
        let _ = writeln!(
            t,
            "watch messages   {} in all (every action); the last measured change reached every \
             watcher {:.2} s after the last window",
            self.messages, self.drained_s
        );
        let _ = writeln!(
            t,
            "{:<20} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "watch latency (ms)", "pairs", "pairs/s", "p50", "p90", "p99", "p99.9", "max"
        );
        match &self.latency_ms {
            Some(p) => {
                let rate = if measured_s > 0.0 {
                    self.delivered as f64 / measured_s
                } else {
                    0.0
                };
                row(t, "commit->watcher", self.delivered, rate, p);
            }
            None => {
                let _ = writeln!(t, "commit->watcher      none delivered");
            }
        }
        let _ = writeln!(
            t,
            "server RSS       {} before the watchers opened, {} with them idle",
            mib(self.rss_before_kib),
            mib(self.rss_idle_kib)
        );
        for e in &self.first_errors {
            let _ = writeln!(t, "watch error      {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BenchWorkload;

    fn run_with(values_us: impl Iterator<Item = u64>) -> Run {
        let mut recorder = Recorder::new(true);
        let mut h = Recorder::histogram();
        for v in values_us {
            h.record(v).unwrap();
        }
        recorder.by_action.insert("EndConference", h);
        Run {
            settings: Settings {
                workload: BenchWorkload::EndConference,
                in_flight: 8,
                duration: Duration::from_secs(2),
                warmup: Duration::from_secs(1),
                parties: 3,
                agents: 16,
                watchers: 0,
            },
            connections: 8,
            replicas: 1,
            instance: "bench-0".into(),
            measured: Duration::from_secs(2),
            windows: 1,
            recorder,
            dropped: 0,
            usage: Usage {
                server_cpu_ns: Some(2_000_000_000),
                client_cpu_ns: Some(500_000_000),
                backend_cpu_ns: Some(1_000_000_000),
                round_trips: Some(5000),
                connections: Some(0),
            },
            server_pid: Some(7),
            in_process: false,
            rss_kib: (Some(10_240), Some(20_480), Some(21_504)),
            rss_load_max_kib: Some(20_992),
            counted_round_trips: true,
            watched_database: true,
            watch: None,
        }
    }

    #[test]
    fn percentiles_and_rates_come_from_the_histogram() {
        // 1,000 requests of 1 ms to 1,000 ms in 2 s.
        let report = Report::new(run_with((1..=1000).map(|ms| ms * 1000)));
        assert_eq!(report.requests, 1000);
        assert_eq!(report.throughput_rps, 500.0);
        let p = report.latency_ms.unwrap();
        // hdrhistogram keeps 3 significant digits.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(near(p.p50, 500.0), "{p:?}");
        assert!(near(p.p90, 900.0), "{p:?}");
        assert!(near(p.p99, 990.0), "{p:?}");
        assert!(near(p.p99_9, 999.0), "{p:?}");
        assert!(near(p.max, 1000.0), "{p:?}");
        assert_eq!(report.db_round_trips_per_request, Some(5.0));
        assert_eq!(report.db_backend_cpu_us_per_request, Some(1000.0));
        assert_eq!(report.server.cpu_us_per_request, Some(2000.0));
    }

    #[test]
    fn the_table_and_the_json_carry_the_figures() {
        let mut run = run_with(std::iter::repeat_n(1500, 10));
        run.usage.round_trips = Some(50);
        let report = Report::new(run);
        let table = report.table();
        assert!(table.contains("EndConference"), "{table}");
        assert!(table.contains("5.0 requests/s"), "{table}");
        assert!(table.contains("1.500"), "{table}");
        assert!(table.contains("5.00 per request"), "{table}");
        assert!(
            table.contains("RSS 10.0 MiB at start, 20.0 MiB at end"),
            "{table}"
        );

        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["requests"], 10);
        assert_eq!(json["latency_ms"]["p99_9"], 1.5);
        assert_eq!(json["actions"]["EndConference"]["requests"], 10);
        assert_eq!(json["server"]["rss_end_kib"], 20_480);
    }

    #[test]
    fn the_watch_section_is_printed_and_serialized_when_there_were_watchers() {
        let mut h = Recorder::histogram();
        for ms in [30, 40, 50] {
            h.record(ms * 1000).unwrap();
        }
        let mut run = run_with(std::iter::repeat_n(1500, 10));
        run.watch = Some(WatchReport {
            watchers: 3,
            connections: 1,
            changes: 10,
            delivered: 30,
            complete_watchers: 3,
            messages: 70,
            latency_ms: Some(Percentiles::of(&h)),
            rss_before_kib: Some(10_240),
            rss_idle_kib: Some(11_264),
            ..WatchReport::default()
        });
        let report = Report::new(run);
        let table = report.table();
        assert!(
            table.contains("watch latency    3 WatchEvents watchers"),
            "{table}"
        );
        assert!(table.contains("30 delivered, 0 missing"), "{table}");
        assert!(table.contains("commit->watcher"), "{table}");
        assert!(
            table.contains("10.0 MiB before the watchers opened, 11.0 MiB with them idle"),
            "{table}"
        );
        assert!(table.contains("(20.5 MiB at most under load)"), "{table}");
        assert!(
            table.contains("bench CPU        50000 µs per request"),
            "{table}"
        );

        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["watch"]["delivered"], 30);
        let p50 = json["watch"]["latency_ms"]["p50"].as_f64().unwrap();
        assert!((p50 - 40.0).abs() <= 0.04, "{p50}");
        assert_eq!(json["server"]["rss_load_max_kib"], 20_992);
    }

    #[test]
    fn missing_readings_are_said_so_not_zero() {
        let mut run = run_with(std::iter::once(1000));
        run.counted_round_trips = false;
        run.watched_database = false;
        run.server_pid = None;
        let report = Report::new(run);
        assert_eq!(report.db_round_trips_per_request, None);
        assert!(report.table().contains("not counted"));
        assert!(report.table().contains("not watched"));
        assert!(!report.table().contains("watch latency"));
        assert!(serde_json::to_value(&report).unwrap()["watch"].is_null());
    }
}
