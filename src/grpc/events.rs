//! The Events service: WatchEvents, a server stream of changes. The
//! request is checked and answered like any rpc (one `served` line when the
//! stream opens); the stream then carries the watcher's messages, and its
//! end (with the status it ended with) is logged once more.

use std::pin::Pin;
use std::time::Instant;

use futures_util::Stream;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
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

type ChangeStream =
    Pin<Box<dyn Stream<Item = Result<proto::EncodedWatchEventsResponse, Status>> + Send>>;

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

/// The item's message, encoded. A change's is encoded by the first
/// watcher that sends it and shared by every other (it is the same for
/// all: its cursor is its own ContextId); a bookmark's is the watcher's own.
fn message(item: &WatchItem) -> proto::EncodedWatchEventsResponse {
    let bytes = match item {
        WatchItem::Change(change) => change.encoded(|c| encode(&change_message(c))),
        WatchItem::Bookmark(cursor) => encode(&proto::WatchEventsResponse {
            cursor: cursor.encode(),
            action: "Bookmark".to_owned(),
            ..Default::default()
        }),
    };
    proto::EncodedWatchEventsResponse(bytes)
}

fn encode(message: &proto::WatchEventsResponse) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// The bytes are a whole `WatchEventsResponse` as protobuf: writing them
/// as they are is encoding it, byte for byte what encoding the message
/// itself writes. Only this server sends it, and nothing decodes into it
/// (clients decode `WatchEventsResponse`); decoding skips every field.
impl Message for proto::EncodedWatchEventsResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

impl std::fmt::Debug for proto::EncodedWatchEventsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedWatchEventsResponse({} bytes)", self.0.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_encoded_messages_are_the_messages_bytes_on_the_wire() {
        let response = proto::WatchEventsResponse {
            cursor: Cursor(42).encode(),
            action: "EndConference".to_owned(),
            context_id: 42,
            timestamp: 1_795_534_641_854,
            request_id: "64F487C2-60D3-4F96-B64C-765E345EC356".to_owned(),
            instance_id: "ccc-test".to_owned(),
            job_id: "job-1".to_owned(),
            call_context: Some(proto::CallContext {
                job_id: "job-1".to_owned(),
                ..Default::default()
            }),
            user_contexts: vec![proto::UserContext {
                user_id: "alice@ccc-test".to_owned(),
                ..Default::default()
            }],
        };
        let encoded = proto::EncodedWatchEventsResponse(encode(&response));
        // What tonic's encoder does with each stream item.
        let mut wire = Vec::new();
        encoded.encode(&mut wire).unwrap();
        assert_eq!(wire, response.encode_to_vec());
        assert_eq!(encoded.encoded_len(), wire.len());
        assert_eq!(
            proto::WatchEventsResponse::decode(wire.as_slice()).unwrap(),
            response
        );
    }

    #[test]
    fn a_bookmark_is_its_cursor_and_action_only() {
        let encoded = message(&WatchItem::Bookmark(Cursor(7)));
        let decoded = proto::WatchEventsResponse::decode(encoded.0).unwrap();
        assert_eq!(
            decoded,
            proto::WatchEventsResponse {
                cursor: "c1.7".to_owned(),
                action: "Bookmark".to_owned(),
                ..Default::default()
            }
        );
    }
}
