//! Which releases serve which schema. Each release's replicas keep serving
//! the schema the next release migrates to (every migration keeps to that,
//! or says what waits: docs/operations.md, "Upgrading"), so a replica may
//! start on a database migrated past what it knows: one restarted during a
//! rollout, or one rolled back by a release. It does, and says so. It
//! refuses only a schema whose migrations have declared its release too
//! old to serve it (`ccc_oldest_release()` in the database).

use anyhow::{Context, bail};
use semver::Version;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The migrations in `migrations/`, embedded in the binary. Applied
/// migrations it does not know are a newer release's, not an error.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

/// Applies this release's pending migrations, then refuses a schema that
/// has left this release behind. Checked after migrating, under no lock:
/// a newer release's migration that ran meanwhile is seen either way.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply migrations")?;
    // This release's own migrations declare the function, so once they
    // have run it is there.
    let oldest: String = sqlx::query_scalar("SELECT ccc_oldest_release()")
        .fetch_one(pool)
        .await
        .context("Failed to read which releases serve the schema")?;
    let ours = Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate's version is semver");
    refuse_if_left_behind(&ours, &oldest)?;
    warn_of_newer_migrations(pool, &ours).await
}

/// Fails when release `ours` is older than `oldest`, the oldest release
/// the schema's migrations left able to serve it.
fn refuse_if_left_behind(ours: &Version, oldest: &str) -> anyhow::Result<()> {
    let oldest = Version::parse(oldest).with_context(|| {
        format!("The database names {oldest:?} as the oldest release to serve it: not a version")
    })?;
    if *ours < oldest {
        bail!(
            "This release ({ours}) is too old for the database's schema, which releases from \
             {oldest} on serve: run {oldest} or later, or restore the database to a backup \
             from before the migration (docs/operations.md, \"Upgrading\")"
        );
    }
    Ok(())
}

/// Says so when the database holds migrations this release does not know:
/// a newer release's, which this one serves by the rule above.
async fn warn_of_newer_migrations(pool: &PgPool, ours: &Version) -> anyhow::Result<()> {
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let unknown: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE version <> ALL ($1) ORDER BY version",
    )
    .bind(&known)
    .fetch_all(pool)
    .await
    .context("Failed to read the applied migrations")?;
    if !unknown.is_empty() {
        tracing::warn!(
            release = %ours,
            ?unknown,
            "the database holds migrations of a newer release; serving its schema as the \
             release before it (docs/operations.md, \"Upgrading\")"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn a_release_serves_a_schema_that_has_not_left_it_behind() {
        refuse_if_left_behind(&v("0.2.0"), "0.1.0").unwrap();
        refuse_if_left_behind(&v("0.2.0"), "0.2.0").unwrap();
        refuse_if_left_behind(&v("1.0.0"), "0.10.0").unwrap();
    }

    #[test]
    fn an_older_release_is_refused_and_told_what_to_run() {
        let err = refuse_if_left_behind(&v("0.2.0"), "0.3.0").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("This release (0.2.0) is too old"), "{text}");
        assert!(text.contains("run 0.3.0 or later"), "{text}");
        // Compared as versions, not as text.
        refuse_if_left_behind(&v("0.9.0"), "0.10.0").unwrap_err();
    }

    #[test]
    fn a_declared_release_that_is_not_a_version_is_refused() {
        let err = refuse_if_left_behind(&v("0.2.0"), "next").unwrap_err();
        assert!(err.to_string().contains("not a version"), "{err}");
    }
}
