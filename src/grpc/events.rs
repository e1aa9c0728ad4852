//! The Events service: WatchEvents, a server stream of changes. The
//! request is checked and answered like any rpc (one `served` line when the
//! stream opens); the stream then carries the watcher's messages, and its
//! end (with the status it ended with) is logged once more.

use std::pin::Pin;
use std::time::Instant;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use crate::app::{App, WatchEvents, WatchItem, Watcher};
use crate::domain::access::{Action, authorize, watched_agent};
use crate::domain::events::{Change, Cursor, Filter};
use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::error::Error;
use crate::proto::{self, events_server::Events};

use super::convert::{call_context, user_context};
use super::request::{Incoming, optional, optional_user, parse_params, stream_deadline};

/// WatchEvents' parameters, checked. `user_id` is `None` when blank; who
/// may be watched is decided with the token (`access::watched_agent`).
#[derive(Debug)]
pub struct WatchEventsParams {
    pub instance_id: InstanceId,
    pub user_id: Option<UserId>,
    pub job_id: Option<JobId>,
    pub after: Option<Cursor>,
}

pub fn parse_watch_events(r: &proto::WatchEventsRequest) -> Result<WatchEventsParams, Error> {
    parse_params! {
        instance_id = InstanceId::parse("InstanceId", &r.instance_id);
        user_id = optional_user(&r.user_id);
        job_id = optional(&r.job_id, |s| JobId::parse("JobId", s));
        after = optional(&r.after_cursor, |s| Cursor::parse("AfterCursor", s));
    }
    Ok(WatchEventsParams {
        instance_id,
        user_id,
        job_id,
        after,
    })
}

pub struct EventsService {
    app: App,
}

impl EventsService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    type WatchEventsStream = ChangeStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let started = Instant::now();
        let call = Incoming::new("WatchEvents", &self.app, &request);
        let r = request.get_ref();
        let until = stream_deadline(call.metadata(), started).map(tokio::time::Instant::from_std);
        call.respond(&r.instance_id, async {
            let caller = call.authenticate().await?;
            let WatchEventsParams {
                instance_id,
                user_id,
                job_id,
                after,
            } = parse_watch_events(r)?;
            authorize(&caller, Action::WatchEvents, &instance_id)?;
            let user = watched_agent(&caller, user_id)?;
            let cmd = WatchEvents {
                instance_id,
                filter: Filter { user, job: job_id },
                after,
                deadline: until,
            };
            let watcher = self.app.watch_events(&call.acting(&caller), &cmd).await?;
            Ok(stream(watcher, call.id().to_owned()))
        })
        .await
    }
}

/// The watcher's messages until its first error, which ends the stream
/// as the documented status.
fn stream(watcher: Watcher, request_id: String) -> ChangeStream {
    struct State {
        watcher: Option<Watcher>,
        request_id: String,
        sent: u64,
        opened: Instant,
    }
    let state = State {
        watcher: Some(watcher),
        request_id,
        sent: 0,
        opened: Instant::now(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        let watcher = s.watcher.as_mut()?;
        match watcher.next().await {
            Ok(item) => {
                s.sent += 1;
                Some((Ok(message(&item)), s))
            }
            Err(e) => {
                s.watcher = None;
                tracing::info!(
                    rpc = "WatchEvents",
                    request_id = %s.request_id,
                    reason = e.code(),
                    sent = s.sent,
                    open_ms = s.opened.elapsed().as_millis() as u64,
                    "stream ended"
                );
                if let Error::Internal(cause) | Error::Unavailable(cause) = &e {
                    tracing::warn!(request_id = %s.request_id, cause = format!("{cause:#}"), "stream failed");
                }
                let status = super::status::to_status(&e, &s.request_id);
                Some((Err(status), s))
            }
        }
    }))
}

fn message(item: &WatchItem) -> proto::WatchEventsResponse {
    match item {
        WatchItem::Change(change) => change_message(change),
        WatchItem::Bookmark(cursor) => proto::WatchEventsResponse {
            cursor: cursor.encode(),
            action: "Bookmark".to_owned(),
            ..Default::default()
        },
    }
}

fn change_message(c: &Change) -> proto::WatchEventsResponse {
    proto::WatchEventsResponse {
        cursor: Cursor(c.context_id).encode(),
        action: c.action.clone(),
        context_id: c.context_id,
        timestamp: c.timestamp,
        request_id: c.request_id.clone(),
        instance_id: c.instance_id.to_string(),
        job_id: c
            .job_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        call_context: c.call.as_ref().map(call_context),
        user_contexts: c.agents.iter().map(user_context).collect(),
    }
}
