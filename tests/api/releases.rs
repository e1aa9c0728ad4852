//! A replica starts on the schema of a newer release (restarted during a
//! rollout, or rolled back by a release), and refuses one whose migrations
//! name a newer release as the oldest to serve it (`startup::schema`).

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::proto::UserState;
use ccc_callcontrol::startup::prepare_database;
use sqlx::PgPool;

use crate::helpers::*;
use crate::support::binary::database_url;

const NEWER_MIGRATION: i64 = 20991231000001;

/// Records a migration no release of this tree has, as the newer release
/// that applied it would have.
async fn apply_a_newer_releases_migration(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'a newer release', true, '\\x00', 1)",
    )
    .bind(NEWER_MIGRATION)
    .execute(pool)
    .await
    .unwrap();
}

async fn declare_oldest_release(pool: &PgPool, release: &str) {
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION ccc_oldest_release() RETURNS text
         LANGUAGE sql IMMUTABLE AS $$ SELECT '{release}' $$"
    ))
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test]
async fn a_replica_starts_on_the_schema_of_a_newer_release(pool: PgPool) {
    init_logs();
    apply_a_newer_releases_migration(&pool).await;
    declare_oldest_release(&pool, env!("CARGO_PKG_VERSION")).await;

    let served = prepare_database(&DatabaseArgs::for_url(database_url(&pool, None)))
        .await
        .expect("a replica of the release before starts");

    let log = std::fs::read_to_string(LOG_FILE).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("migrations of a newer release")
                && l.contains(&NEWER_MIGRATION.to_string())),
        "the start says which migrations it does not know"
    );
    let app = spawn_app(served).await;
    let agents = app.ready_agents(&["alice"]).await;
    let status = app.poll(&agents[0].0).await;
    assert_eq!(status.user_context.unwrap().user_state(), UserState::Ready);
}

#[sqlx::test]
async fn a_replica_refuses_a_schema_that_left_its_release_behind(pool: PgPool) {
    apply_a_newer_releases_migration(&pool).await;
    declare_oldest_release(&pool, "99.0.0").await;

    let err = prepare_database(&DatabaseArgs::for_url(database_url(&pool, None)))
        .await
        .expect_err("a release older than the schema's oldest is refused");

    let text = format!("{err:#}");
    let ours = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("This release ({ours}) is too old")),
        "{text}"
    );
    assert!(text.contains("run 99.0.0 or later"), "{text}");
}

/// The schema as migrated names a release no newer than this one.
#[sqlx::test]
async fn this_release_serves_the_schema_it_migrates_to(pool: PgPool) {
    let oldest: String = sqlx::query_scalar("SELECT ccc_oldest_release()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let oldest = semver::Version::parse(&oldest).unwrap();
    let ours = semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap();
    assert!(oldest <= ours, "{oldest} > {ours}");
    prepare_database(&DatabaseArgs::for_url(database_url(&pool, None)))
        .await
        .expect("it starts on its own schema");
}
