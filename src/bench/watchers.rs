//! `bench --watchers N`: WatchEvents streams held open beside the load, to
//! measure what watching costs. Each watcher is a task of its own with the
//! bench instance's ADMIN token, a blank AfterCursor and no filter (so it
//! receives every change of the instance), spread over HTTP/2 connections
//! of their own. Each records when every EndConference change arrived;
//! joined with the moment each EndConference response arrived at the
//! workers (same process, same monotonic clock, keyed by ContextId), that
//! gives the commit-to-delivery latency of every (watcher, change) pair.
//!
//! Watchers decode only the two fields they need (`Action`, `ContextId`)
//! and skip the rest of each message, so the client's share of the CPU
//! stays small beside the server's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::report::{Percentiles, WatchReport};
use super::workload::{Clients, Recorder};
use crate::proto;

/// Watches opened at once: each costs the server a read of the database,
/// and its pool is small.
const OPENING: usize = 32;
/// Longest one watch may take to open. A connection already carrying the
/// server's `--max-streams-per-connection` streams makes the next one wait
/// for ever, so this bounds that too.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// After the last window, how long watchers get to receive every measured
/// change before the ones still missing are counted as missing.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The part of a WatchEventsResponse a watcher reads; prost skips the
/// other fields (the call, the agents) without building them.
#[derive(Clone, PartialEq, prost::Message)]
struct Delivered {
    #[prost(string, tag = "2")]
    action: String,
    #[prost(int64, tag = "3")]
    context_id: i64,
}

/// The open watchers; [`Watchers::finish`] closes them.
pub struct Watchers {
    tasks: Vec<JoinHandle<Received>>,
    /// Per watcher: the highest ContextId it has received.
    seen: Vec<Arc<AtomicI64>>,
    stop: CancellationToken,
    connections: usize,
    opened_in: Duration,
    token_id: String,
}

impl Drop for Watchers {
    /// A run that fails half-way closes its watches too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What one watcher received, handed back when it closes.
#[derive(Default)]
struct Received {
    /// Each EndConference change: its ContextId and when it arrived.
    end_conference: Vec<(i64, Instant)>,
    /// Every message, bookmarks included.
    messages: u64,
    /// Changes at or below a ContextId already received (the stream
    /// promises ContextId order and no repeats; this counts breaches).
    out_of_order: u64,
    /// How the stream ended, if the server ended it.
    error: Option<String>,
}

/// An ADMIN token of `instance` (not the operator's), made through the
/// public API; it expires after a day and [`Watchers::finish`] revokes it.
async fn instance_token(clients: &Clients, instance: &str) -> anyhow::Result<(String, String)> {
    let created = clients
        .admin
        .clone()
        .create_access_token(proto::CreateAccessTokenRequest {
            instance_id: instance.into(),
            role: proto::AccessRole::Admin as i32,
            user_id: String::new(),
            expires_in_seconds: Some(24 * 3600),
        })
        .await
        .context("CreateAccessToken for the watchers")?
        .into_inner()
        .data
        .context("CreateAccessToken without Data")?;
    Ok((created.token_id, created.token))
}

impl Watchers {
    /// Opens `n` watches of `instance`, watcher `i` on connection
    /// `i % channels.len()`, and checks that every one opened (the server
    /// answered with the stream's headers, so its checks passed).
    pub async fn open(
        clients: &Clients,
        channels: &[Channel],
        instance: &str,
        n: usize,
    ) -> anyhow::Result<Self> {
        if channels.is_empty() {
            bail!("no connection for the watchers");
        }
        let (token_id, token) = instance_token(clients, instance).await?;
        let bearer: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("The token is not valid header text")?;
        let started = Instant::now();
        let stop = CancellationToken::new();
        let opening = Arc::new(Semaphore::new(OPENING));
        let mut tasks = Vec::with_capacity(n);
        let mut opened = Vec::with_capacity(n);
        let mut seen = Vec::with_capacity(n);
        for i in 0..n {
            let permit = opening.clone().acquire_owned().await.expect("never closed");
            let (channel, bearer, stop) = (
                channels[i % channels.len()].clone(),
                bearer.clone(),
                stop.clone(),
            );
            let instance = instance.to_owned();
            let last = Arc::new(AtomicI64::new(0));
            seen.push(last.clone());
            let (ready, is_open) = tokio::sync::oneshot::channel();
            opened.push(is_open);
            tasks.push(tokio::spawn(async move {
                let stream = tokio::time::timeout(OPEN_TIMEOUT, watch(channel, bearer, instance))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "not open after {OPEN_TIMEOUT:?}: does the server allow enough \
                             --max-streams-per-connection for --watchers-per-connection?"
                        )))
                    });
                drop(permit);
                match stream {
                    Ok(stream) => {
                        let _ = ready.send(Ok(()));
                        follow(stream, &last, &stop).await
                    }
                    Err(status) => {
                        let _ = ready.send(Err(status));
                        Received::default()
                    }
                }
            }));
        }
        let mut failed = Vec::new();
        for (i, is_open) in opened.into_iter().enumerate() {
            match is_open.await {
                Ok(Ok(())) => {}
                Ok(Err(status)) => failed.push(format!(
                    "watcher {i}: {:?} {}",
                    status.code(),
                    status.message()
                )),
                Err(_) => failed.push(format!("watcher {i}: its task failed")),
            }
        }
        let watchers = Self {
            tasks,
            seen,
            stop,
            connections: channels.len(),
            opened_in: started.elapsed(),
            token_id,
        };
        if !failed.is_empty() {
            bail!(
                "{} of {n} watches did not open; first: {}",
                failed.len(),
                failed[..failed.len().min(3)].join("; ")
            );
        }
        Ok(watchers)
    }

    /// Waits (up to [`DRAIN_LIMIT`]) until every watcher has received the
    /// last measured change, closes every watch, revokes the token, and
    /// joins what the watchers received with the EndConference responses
    /// the workers recorded in the measurement windows.
    pub async fn finish(
        mut self,
        clients: &Clients,
        instance: &str,
        measured: &Recorder,
        rss: RssReadings,
    ) -> WatchReport {
        let commits: HashMap<i64, Instant> = measured.commits.iter().copied().collect();
        let last = commits.keys().copied().max().unwrap_or(0);
        let waiting = Instant::now();
        while waiting.elapsed() < DRAIN_LIMIT
            && self.seen.iter().any(|s| s.load(Ordering::Relaxed) < last)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained_in = waiting.elapsed();
        self.stop.cancel();
        let _ = clients
            .admin
            .clone()
            .revoke_access_token(proto::RevokeAccessTokenRequest {
                instance_id: instance.into(),
                token_id: self.token_id.clone(),
            })
            .await;

        let tasks = std::mem::take(&mut self.tasks);
        let watchers = tasks.len();
        let mut latency = Recorder::histogram();
        let mut report = WatchReport {
            watchers,
            connections: self.connections,
            open_s: self.opened_in.as_secs_f64(),
            changes: commits.len() as u64,
            drained_s: drained_in.as_secs_f64(),
            rss_before_kib: rss.before,
            rss_idle_kib: rss.idle,
            ..WatchReport::default()
        };
        for task in tasks {
            let received = match task.await {
                Ok(r) => r,
                Err(e) => Received {
                    error: Some(format!("a watcher's task failed: {e}")),
                    ..Received::default()
                },
            };
            let mut matched = 0u64;
            for (context_id, arrived) in received.end_conference {
                let Some(&answered) = commits.get(&context_id) else {
                    // From the warm-up, or a response that failed.
                    continue;
                };
                matched += 1;
                let after = arrived.checked_duration_since(answered).unwrap_or_else(|| {
                    report.before_response += 1;
                    Duration::ZERO
                });
                latency.saturating_record(after.as_micros().max(1) as u64);
            }
            report.delivered += matched;
            report.complete_watchers += usize::from(matched == report.changes);
            report.messages += received.messages;
            report.out_of_order += received.out_of_order;
            if let Some(e) = received.error {
                report.errors += 1;
                if report.first_errors.len() < 3 {
                    report.first_errors.push(e);
                }
            }
        }
        report.missing = (watchers as u64 * report.changes).saturating_sub(report.delivered);
        report.latency_ms = (!latency.is_empty()).then(|| Percentiles::of(&latency));
        report
    }
}

/// The server's RSS around opening the watchers, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct RssReadings {
    /// Just before the first watch opened.
    pub before: Option<u64>,
    /// With every watch open and nothing happening.
    pub idle: Option<u64>,
}

/// Opens one watch: the generated client's call, with a decoder that
/// reads only [`Delivered`]'s fields.
async fn watch(
    channel: Channel,
    bearer: MetadataValue<Ascii>,
    instance: String,
) -> Result<Streaming<Delivered>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    let mut request = Request::new(proto::WatchEventsRequest {
        instance_id: instance,
        user_id: String::new(),
        job_id: String::new(),
        after_cursor: String::new(),
    });
    request.metadata_mut().insert("authorization", bearer);
    let codec = tonic_prost::ProstCodec::<proto::WatchEventsRequest, Delivered>::default();
    let path = PathAndQuery::from_static("/ccc.v20200701.Events/WatchEvents");
    Ok(grpc
        .server_streaming(request, path, codec)
        .await?
        .into_inner())
}

/// Reads one watch until `stop`, noting each message's arrival.
async fn follow(
    mut stream: Streaming<Delivered>,
    seen: &AtomicI64,
    stop: &CancellationToken,
) -> Received {
    let mut received = Received::default();
    let mut last = 0i64;
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            m = stream.message() => m,
        };
        let arrived = Instant::now();
        match message {
            Ok(Some(m)) => {
                received.messages += 1;
                if m.context_id == 0 {
                    continue; // a bookmark
                }
                if m.context_id <= last {
                    received.out_of_order += 1;
                    continue;
                }
                last = m.context_id;
                seen.store(last, Ordering::Relaxed);
                if m.action == "EndConference" {
                    received.end_conference.push((m.context_id, arrived));
                }
            }
            Ok(None) => {
                received.error = Some("the server ended the stream".to_owned());
                break;
            }
            Err(status) => {
                received.error = Some(format!("{:?} {}", status.code(), status.message()));
                break;
            }
        }
    }
    received
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_watcher_reads_the_action_and_context_id_of_a_full_message() {
        let full = proto::WatchEventsResponse {
            cursor: "c1.42".into(),
            action: "EndConference".into(),
            context_id: 42,
            timestamp: 1_700_000_000_000,
            request_id: "R".into(),
            instance_id: "bench-1".into(),
            job_id: "job-1".into(),
            call_context: Some(proto::CallContext::default()),
            user_contexts: vec![proto::UserContext::default()],
        };
        let slim = Delivered::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (slim.action.as_str(), slim.context_id),
            ("EndConference", 42)
        );
    }
}
