//! Keeping the event log to its retention: day partitions are created a
//! week ahead and dropped whole once every row in them is past the
//! retention, each instance's floor raised first (`store::events`).

use std::time::{Duration, Instant};

use crate::app::App;
use crate::app::unit::Lane;
use crate::error::Error;
use crate::store::events;

/// How many days ahead partitions exist, so a replica that is down for
/// days (or a maintenance run that fails) never leaves writes without one.
const DAYS_AHEAD: i32 = 7;

/// What one maintenance run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    pub created: usize,
    pub dropped: Vec<String>,
}

impl App {
    /// Creates the day partitions missing ahead and drops the days past
    /// `retention_days`. Every replica runs it; each step is idempotent, so
    /// two replicas at once cost a failed step at worst, retried next run.
    pub async fn maintain_event_log(&self, retention_days: u32) -> Result<Maintained, Error> {
        let retention = i32::try_from(retention_days).unwrap_or(i32::MAX);
        let deadline = || Instant::now() + Duration::from_secs(30);
        let created = self
            .statement("MaintainEventLog", Lane::Write, deadline(), |conn| {
                Box::pin(events::create_days_ahead(conn, DAYS_AHEAD))
            })
            .await?;
        let expired = self
            .statement("MaintainEventLog", Lane::Read, deadline(), move |conn| {
                Box::pin(events::expired_days(conn, retention))
            })
            .await?;
        let mut dropped = Vec::new();
        for partition in expired {
            let name = partition.clone();
            self.statement("MaintainEventLog", Lane::Write, deadline(), move |conn| {
                let name = name.clone();
                Box::pin(async move { events::drop_day(conn, &name).await })
            })
            .await?;
            dropped.push(partition);
        }
        Ok(Maintained { created, dropped })
    }
}
