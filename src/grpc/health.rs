//! `grpc.health.v1` as a mesh reads it. Our services are SERVING from the
//! start (the database answered and was migrated before we listen) until
//! shutdown begins, when every entry turns NOT_SERVING at once so load
//! balancers stop sending before the listener closes.
//!
//! A database outage does not flip them: every replica shares the one
//! database, so flipping would turn clear UNAVAILABLE answers into "no
//! healthy upstream" everywhere at once. Reachability of the database is
//! its own entry, [`STORAGE`], for dashboards and alerts, checked on a
//! connection of its own with its own timeout, and changed only after
//! [`CONSECUTIVE`] results agree.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The entries our services answer for: the server as a whole and each
/// service.
pub const SERVICES: &[&str] = &[
    "",
    "ccc.v20200701.CallControl",
    "ccc.v20200701.Telephony",
    "ccc.v20200701.Admin",
    "ccc.v20200701.Events",
];

/// The entry that says whether this replica reaches the database.
pub const STORAGE: &str = "ccc.v20200701.Storage";

/// How many checks in a row must agree before [`STORAGE`] changes.
pub const CONSECUTIVE: u32 = 3;

/// How often, and how long one check (connect included) may take.
const EVERY: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The health entries of a replica; cheap to clone.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    pub(super) fn new(reporter: HealthReporter) -> Self {
        Self { reporter }
    }

    /// Our services are ready; the database was reached at start.
    pub(super) async fn serving(&self) {
        for name in SERVICES {
            self.reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.reporter
            .set_service_status(STORAGE, ServingStatus::Serving)
            .await;
    }

    /// Shutdown began: every entry NOT_SERVING, at once.
    pub async fn draining(&self) {
        for name in SERVICES.iter().chain([&STORAGE]) {
            self.reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("health: NOT_SERVING, draining");
    }

    /// Checks the database now and then on a connection of its own and
    /// keeps [`STORAGE`] in step, with hysteresis. Abort the task before
    /// [`Health::draining`], or it may turn the entry back.
    pub fn watch_storage(&self, options: PgConnectOptions) -> JoinHandle<()> {
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            let mut conn: Option<PgConnection> = None;
            let mut storage = Hysteresis::new(true);
            loop {
                tokio::time::sleep(EVERY).await;
                let reachable = check(&mut conn, &options).await;
                if let Some(now) = storage.observe(reachable) {
                    let status = if now {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    tracing::warn!(?status, "health: the database's reachability changed");
                    reporter.set_service_status(STORAGE, status).await;
                }
            }
        })
    }
}

/// A published yes/no that changes only after [`CONSECUTIVE`] observations
/// in a row disagree with it: one lost ping does not page anyone.
#[derive(Debug)]
struct Hysteresis {
    published: bool,
    against: u32,
}

impl Hysteresis {
    fn new(published: bool) -> Self {
        Self {
            published,
            against: 0,
        }
    }

    /// Takes one observation; the new published value if it changed.
    fn observe(&mut self, seen: bool) -> Option<bool> {
        if seen == self.published {
            self.against = 0;
            return None;
        }
        self.against += 1;
        if self.against < CONSECUTIVE {
            return None;
        }
        self.published = seen;
        self.against = 0;
        Some(seen)
    }
}

/// One check: `SELECT 1` within [`CHECK_TIMEOUT`], connecting first if
/// needed. A failed connection is dropped, to be made anew next time.
async fn check(conn: &mut Option<PgConnection>, options: &PgConnectOptions) -> bool {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(options.connect().await?);
        }
        let c = conn.as_mut().expect("connected above");
        c.ping().await
    };
    let ok = matches!(
        tokio::time::timeout(CHECK_TIMEOUT, attempt).await,
        Ok(Ok(()))
    );
    if !ok {
        *conn = None;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_needs_three_observations_in_a_row() {
        let mut h = Hysteresis::new(true);
        // Two failures, then a success: no flap.
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(false), None, "published once");
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
    }
}
