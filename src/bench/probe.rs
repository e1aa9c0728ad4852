//! Readings from outside the requests: a process's RSS and CPU time from
//! /proc, and which PostgreSQL backends serve the watched database. Linux
//! only; elsewhere every reading is `None` and the report says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Watch;

/// The resident set of `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The most `pid` has had resident since it started, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of process `pid`, all threads, user and system, in ns, from
/// `stat` (clock ticks in USER_HZ, 100 a second on every architecture we
/// run on). `schedstat` would be finer but covers only the main thread.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat).map(|ticks| ticks * 10_000_000)
}

/// CPU time of single-threaded process `pid` (a PostgreSQL backend), in
/// ns: `schedstat`'s nanoseconds when there, else [`cpu_ns`].
pub fn backend_cpu_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .or_else(|| cpu_ns(pid))
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// How often [`RssSampler`] reads the RSS.
const RSS_EVERY: Duration = Duration::from_millis(100);

/// Reads a process's RSS every [`RSS_EVERY`] until stopped and keeps the
/// highest reading: the peak of one stretch of the run (`VmHWM` is the
/// peak since the process started).
pub struct RssSampler {
    highest: Arc<AtomicU64>,
    stop: CancellationToken,
    on: bool,
}

impl RssSampler {
    /// Starts sampling `pid`; with `None`, samples nothing.
    pub fn start(pid: Option<u32>) -> Self {
        let highest = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        if let Some(pid) = pid {
            let (highest, stop) = (highest.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    if let Some(kib) = rss_kib(pid) {
                        highest.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(RSS_EVERY) => {}
                    }
                }
            });
        }
        Self {
            highest,
            stop,
            on: pid.is_some(),
        }
    }

    /// Stops; the highest RSS seen, in KiB.
    pub fn stop(self) -> Option<u64> {
        let kib = self.highest.load(Ordering::Relaxed);
        (self.on && kib > 0).then_some(kib)
    }
}

impl Drop for RssSampler {
    /// Stopped or dropped (a run that failed half-way), it samples no more.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One look at everything watched.
#[derive(Debug, Default)]
pub struct Snapshot {
    server_cpu_ns: Option<u64>,
    /// This process's CPU time: the load generator (and the watchers).
    client_cpu_ns: Option<u64>,
    /// CPU time of each client backend of the watched database.
    backends: Option<HashMap<i32, u64>>,
    round_trips: Option<u64>,
    connections: Option<u64>,
}

impl Snapshot {
    pub async fn take(watch: &Watch) -> Self {
        let backends = match &watch.database {
            Some(pool) => backend_pids(pool).await.map(|pids| {
                pids.into_iter()
                    .filter_map(|pid| Some((pid, backend_cpu_ns(u32::try_from(pid).ok()?)?)))
                    .collect()
            }),
            None => None,
        };
        Self {
            server_cpu_ns: watch.server_pid.and_then(cpu_ns),
            client_cpu_ns: cpu_ns(std::process::id()),
            backends,
            round_trips: watch
                .round_trips
                .as_ref()
                .map(|n| n.load(Ordering::Relaxed)),
            connections: watch
                .connections
                .as_ref()
                .map(|n| n.load(Ordering::Relaxed)),
        }
    }
}

/// The client backends on the watched database but the watcher's own.
/// `None` if PostgreSQL cannot be asked, or its processes are not visible
/// here (another host or container): then no backend is readable.
async fn backend_pids(pool: &sqlx::PgPool) -> Option<Vec<i32>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend'",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    let visible = pids
        .iter()
        .any(|&p| std::path::Path::new(&format!("/proc/{p}")).exists());
    visible.then_some(pids)
}

/// Sums over measurement windows; `None` where a reading was missing.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub server_cpu_ns: Option<u64>,
    pub client_cpu_ns: Option<u64>,
    pub backend_cpu_ns: Option<u64>,
    pub round_trips: Option<u64>,
    pub connections: Option<u64>,
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            server_cpu_ns: Some(0),
            client_cpu_ns: Some(0),
            backend_cpu_ns: Some(0),
            round_trips: Some(0),
            connections: Some(0),
        }
    }
}

impl Usage {
    /// Adds what happened between `before` and `after`. A backend that
    /// appeared in between counts from zero: it started in the window.
    pub fn add(&mut self, before: &Snapshot, after: &Snapshot) {
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        let sum = |total: Option<u64>, d: Option<u64>| Some(total? + d?);
        self.server_cpu_ns = sum(
            self.server_cpu_ns,
            delta(before.server_cpu_ns, after.server_cpu_ns),
        );
        self.client_cpu_ns = sum(
            self.client_cpu_ns,
            delta(before.client_cpu_ns, after.client_cpu_ns),
        );
        self.round_trips = sum(
            self.round_trips,
            delta(before.round_trips, after.round_trips),
        );
        self.connections = sum(
            self.connections,
            delta(before.connections, after.connections),
        );
        let backends = match (&before.backends, &after.backends) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .map(|(pid, ns)| ns.saturating_sub(b.get(pid).copied().unwrap_or(0)))
                    .sum(),
            ),
            _ => None,
        };
        self.backend_cpu_ns = sum(self.backend_cpu_ns, backends);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_counted_after_the_command_name() {
        let line = "42 (postgres: a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_ticks(line), Some(12));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn this_process_can_be_read_on_linux() {
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            assert!(rss_kib(me).is_some_and(|k| k > 0));
            assert!(cpu_ns(me).is_some() && backend_cpu_ns(me).is_some());
        }
    }
}
