//! One watcher: the changes of its instance that match its filter, in
//! ContextId order, from its cursor on. It follows the tail's batches while
//! it keeps up; whenever it finds a gap (it started behind the tail, it
//! fell behind the broadcast's backlog, or its instance was not yet read
//! by the tail) it reads the gap from the database, a page at a time, and
//! goes back to the batches. It holds at most a page, so a slow reader
//! costs the replica no more than that.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::app::App;
use crate::app::unit::Lane;
use crate::domain::events::{Cursor, Filter, Replays};
use crate::domain::ids::InstanceId;
use crate::error::Error;
use crate::store::events;

use super::SharedChange;
use super::tail::{Batch, PAGE, Subscription};

/// What a watcher sends next.
#[derive(Debug, Clone)]
pub enum Item {
    /// A matching change; resume after its ContextId.
    Change(Arc<SharedChange>),
    /// Nothing matched for a while; resume from here.
    Bookmark(Cursor),
}

/// See the module doc. Dropping it unregisters it.
pub struct Watcher {
    app: App,
    subscription: Subscription,
    instance: InstanceId,
    filter: Filter,
    /// Every change up to here has been queued or skipped.
    position: i64,
    queue: VecDeque<Arc<SharedChange>>,
    behind: bool,
    bookmark_every: Duration,
    quiet_since: Instant,
    /// Wakes the watcher at or before its next bookmark is due
    /// (`quiet_since + bookmark_every`). Kept across waits, and re-armed
    /// only when it fires early, so that a watcher that keeps receiving
    /// changes does not set and cancel a timer for every batch.
    bookmark_timer: Pin<Box<Sleep>>,
    stop: CancellationToken,
    /// `stop`, waited for by the same future across waits (registered
    /// with the token once, not once per batch).
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The caller's own deadline, if it sent one, as a timer kept across
    /// waits.
    deadline_timer: Option<Pin<Box<Sleep>>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _gauge: crate::measure::Watching,
}

impl Watcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        app: App,
        subscription: Subscription,
        instance: InstanceId,
        filter: Filter,
        position: i64,
        bookmark_every: Duration,
        stop: CancellationToken,
        deadline: Option<Instant>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        Self {
            app,
            subscription,
            instance,
            filter,
            position,
            queue: VecDeque::new(),
            behind: true,
            bookmark_every,
            quiet_since: Instant::now(),
            bookmark_timer: Box::pin(tokio::time::sleep(bookmark_every)),
            stopped: Box::pin(stop.clone().cancelled_owned()),
            stop,
            deadline_timer: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            _slot: slot,
            _gauge: crate::measure::Watching::enter(),
        }
    }

    /// The next message, waiting for one as long as it takes. Errors end
    /// the stream: `Unavailable` when the replica shuts down or the
    /// database fails (resume elsewhere), `DeadlineExceeded` at the
    /// caller's deadline.
    pub async fn next(&mut self) -> Result<Item, Error> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                self.quiet_since = Instant::now();
                return Ok(Item::Change(change));
            }
            if self.stop.is_cancelled() {
                return Err(shutting_down());
            }
            if self.behind {
                self.catch_up().await?;
                continue;
            }
            let deadline = &mut self.deadline_timer;
            tokio::select! {
                received = self.subscription.batches.recv() => match received {
                    Ok(batch) => self.take(&batch),
                    // Batches were dropped before this watcher read them.
                    Err(RecvError::Lagged(_)) => self.behind = true,
                    Err(RecvError::Closed) => return Err(shutting_down()),
                },
                () = self.bookmark_timer.as_mut() => {
                    let due = self.quiet_since + self.bookmark_every;
                    let now = Instant::now();
                    if now >= due {
                        self.quiet_since = now;
                        self.bookmark_timer.as_mut().reset(now + self.bookmark_every);
                        return Ok(Item::Bookmark(Cursor(self.position)));
                    }
                    // Changes were sent since it was set: not due yet.
                    self.bookmark_timer.as_mut().reset(due);
                }
                () = self.stopped.as_mut() => return Err(shutting_down()),
                () = timer_or_never(deadline) => return Err(Error::DeadlineExceeded),
            }
        }
    }

    /// Queues what a batch holds for this watcher, or notes a gap.
    fn take(&mut self, batch: &Batch) {
        if !batch.instances.contains(self.instance.as_str()) || batch.upto <= self.position {
            // Not read for this instance (it became watched after the
            // read), or all behind us already.
            return;
        }
        if batch.after > self.position {
            self.behind = true;
            return;
        }
        let position = self.position;
        self.queue.extend(
            batch
                .changes
                .iter()
                .filter(|c| {
                    c.context_id > position
                        && c.instance_id == self.instance
                        && self.filter.matches(c)
                })
                .cloned(),
        );
        self.position = batch.upto;
    }

    /// Reads one page of the gap between the position and the tail's
    /// horizon from the database.
    async fn catch_up(&mut self) -> Result<(), Error> {
        let horizon = tokio::select! {
            h = self.app.events.tail.horizon() => h.ok_or_else(shutting_down)?,
            () = timer_or_never(&mut self.deadline_timer) => return Err(Error::DeadlineExceeded),
        };
        if self.position >= horizon {
            self.behind = false;
            return Ok(());
        }
        let instances = vec![self.instance.to_string()];
        let after = self.position;
        let deadline = std::time::Instant::now() + self.app.events_query_timeout();
        let (page, floor) = self
            .app
            .statement("WatchEvents", Lane::Read, deadline, move |conn| {
                let instances = instances.clone();
                Box::pin(async move {
                    // A page at a time, each on its own: what the watcher holds
                    // stays bounded by a page.
                    let mut replays = Replays::default();
                    let page =
                        events::read(conn, &instances, after, horizon, PAGE, &mut replays).await?;
                    // After the read: a day dropped during it raised the
                    // floor before its rows went.
                    let floor = events::removed_through(conn, &instances[0]).await?;
                    Ok((page, floor))
                })
            })
            .await?;
        crate::measure::watch_catch_up_page();
        if Cursor(after).outlived_by(floor) {
            return Err(Error::CursorExpired);
        }
        self.queue.extend(
            page.changes
                .into_iter()
                .filter(|c| self.filter.matches(c))
                .map(|c| Arc::new(SharedChange::new(c))),
        );
        self.position = page.covered;
        if self.position >= horizon {
            self.behind = false;
        }
        Ok(())
    }
}

fn shutting_down() -> Error {
    Error::Unavailable(anyhow::anyhow!(
        "the replica is shutting down; the watcher resumes elsewhere from its cursor"
    ))
}

async fn timer_or_never(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}
