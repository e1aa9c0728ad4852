//! WatchEvents: the event log served as a stream. One [`tail`] per replica
//! reads the log as it becomes final and feeds every [`watcher`] of the
//! replica; a watcher starts from its cursor and catches up from the
//! database whenever it is behind.

mod retention;
mod tail;
mod watcher;

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::bytes::Bytes;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::domain::events::{Change, Cursor, Filter};
use crate::domain::ids::{InstanceId, JobId, UserId};
use crate::error::Error;
use crate::store::events;

use super::unit::Lane;
use super::{App, RequestContext};

pub use retention::Maintained;
pub use watcher::{Item, Watcher};

/// How this replica serves watchers.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How often the tail looks for new changes.
    pub poll: Duration,
    /// A watcher with nothing to send for this long sends a bookmark.
    pub bookmark_every: Duration,
    /// Most watchers at once; more are refused with `Throttling`.
    pub max_watchers: usize,
    /// Events are kept this many days (whole days: a day's partition goes
    /// once all of it is older).
    pub retention_days: u32,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(20),
            bookmark_every: Duration::from_secs(10),
            max_watchers: 2000,
            retention_days: 7,
        }
    }
}

/// The replica's event stream machinery; part of [`App`].
#[derive(Debug, Clone)]
pub(super) struct Events {
    tail: tail::Tail,
    options: WatchOptions,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    query_timeout: Duration,
}

impl Events {
    pub(super) fn new(
        store: &crate::store::Store,
        options: WatchOptions,
        query_timeout: Duration,
    ) -> Self {
        let stop = CancellationToken::new();
        let tail = tail::Tail::new(
            (*store.pool().connect_options()).clone(),
            options.poll,
            query_timeout,
            stop.clone(),
        );
        Self {
            tail,
            slots: Arc::new(Semaphore::new(options.max_watchers)),
            options,
            stop,
            query_timeout,
        }
    }
}

/// A change as the replica's watchers share it: read once (by the tail,
/// or by one watcher catching up), and its message encoded once, by the
/// first watcher that sends it, for every watcher that sends it after.
/// The message is the same for every watcher (a change's cursor is its own
/// ContextId), so the bytes are too. What the bytes are is the edge's
/// business (`grpc::events`); here they are only kept.
#[derive(Debug)]
pub struct SharedChange {
    change: Change,
    encoded: OnceLock<Bytes>,
}

impl SharedChange {
    pub(super) fn new(change: Change) -> Self {
        Self {
            change,
            encoded: OnceLock::new(),
        }
    }

    /// The change's encoded message: `encode`'s result the first time it is
    /// asked for, the same bytes (shared, not copied) every time after.
    pub fn encoded(&self, encode: impl FnOnce(&Change) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.change)).clone()
    }
}

impl Deref for SharedChange {
    type Target = Change;

    fn deref(&self) -> &Change {
        &self.change
    }
}

/// What WatchEvents asked for, checked.
#[derive(Debug, Clone)]
pub struct WatchEvents {
    pub instance_id: InstanceId,
    pub filter: Filter,
    /// `None`: from the next change.
    pub after: Option<Cursor>,
    /// The caller's own deadline for the whole stream, if it sent one.
    pub deadline: Option<tokio::time::Instant>,
}

impl App {
    /// Opens a watch: checks that what it names exists and that its cursor
    /// is one the log has reached, then registers it with the tail.
    pub async fn watch_events(
        &self,
        ctx: &RequestContext,
        cmd: &WatchEvents,
    ) -> Result<Watcher, Error> {
        let slot = self
            .events
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Throttled)?;
        let instance = cmd.instance_id.clone();
        let user: Option<UserId> = cmd.filter.user.clone();
        let job: Option<JobId> = cmd.filter.job.clone();
        let found = self
            .statement("WatchEvents", Lane::Read, ctx.deadline, move |conn| {
                let (instance, user, job) = (instance.clone(), user.clone(), job.clone());
                Box::pin(async move {
                    events::targets(conn, &instance, user.as_ref(), job.as_ref()).await
                })
            })
            .await?;
        if !found.instance {
            return Err(Error::InstanceNotFound(cmd.instance_id.to_string()));
        }
        if let (false, Some(user)) = (found.user, &cmd.filter.user) {
            return Err(Error::user_not_found(user, &cmd.instance_id));
        }
        if let (false, Some(job)) = (found.job, &cmd.filter.job) {
            return Err(Error::CallNotFound(job.to_string()));
        }
        if cmd
            .after
            .is_some_and(|after| after.outlived_by(found.removed_through))
        {
            return Err(Error::CursorExpired);
        }
        if let Some(Cursor(after)) = cmd.after
            && after > found.handed_out
        {
            return Err(Error::invalid(
                "AfterCursor",
                "It is ahead of the event log: it was not issued by this service's database",
            ));
        }
        // From the next change: every change committed before this watch
        // was opened has an ID at or below the highest handed out.
        let position = cmd.after.map_or(found.handed_out, |Cursor(after)| after);
        let subscription = self.events.tail.subscribe(cmd.instance_id.as_str());
        Ok(Watcher::new(
            self.clone(),
            subscription,
            cmd.instance_id.clone(),
            cmd.filter.clone(),
            position,
            self.events.options.bookmark_every,
            self.events.stop.clone(),
            cmd.deadline,
            slot,
        ))
    }

    /// Ends every watch with UNAVAILABLE (callers resume elsewhere) and
    /// stops the tail: the replica is shutting down.
    pub fn end_watches(&self) {
        self.events.stop.cancel();
    }

    /// How many watchers are open on this replica.
    pub fn watchers(&self) -> usize {
        self.events.options.max_watchers - self.events.slots.available_permits()
    }

    pub(super) fn events_query_timeout(&self) -> Duration {
        self.events.query_timeout
    }

    /// How many days events are kept.
    pub fn event_retention_days(&self) -> u32 {
        self.events.options.retention_days
    }
}
