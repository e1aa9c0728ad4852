//! The state columns are domains (`migrations/20261127000001_state_domains.sql`).
//! The migration runs while replicas serve: calls begun on the tables'
//! CHECK constraints go on after it, on connections that prepared their
//! statements before it, and it rewrites nothing. The domains refuse what
//! the constraints refused.

use ccc_callcontrol::proto::{UserState, channel_context::ChannelState};
use ccc_callcontrol::startup::MIGRATOR;
use sqlx::PgPool;
use sqlx::migrate::Migration;

use crate::helpers::*;

const STATE_DOMAINS: i64 = 20261127000001;

/// The migrations before the state domains, applied to an empty database.
async fn migrate_to_the_release_before(pool: &PgPool) {
    for migration in MIGRATOR.iter().filter(|m| m.version < STATE_DOMAINS) {
        apply(pool, migration).await;
    }
}

async fn apply_state_domains(pool: &PgPool) {
    let migration = MIGRATOR
        .iter()
        .find(|m| m.version == STATE_DOMAINS)
        .expect("the state domains migration");
    assert!(
        !migration.no_tx,
        "it runs in one transaction, so the constraints it drops and adds change under one lock"
    );
    apply(pool, migration).await;
}

async fn apply(pool: &PgPool, migration: &Migration) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(&migration.sql)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{} applies: {e}", migration.description));
    tx.commit().await.unwrap();
}

/// A rollout: the call and its agents are written on the CHECK constraints
/// by two replicas that keep their connections (and the statements those
/// prepared) across the migration; after it, every read of a call, its
/// channels and its agents decodes (the load, PollUserStatus, and the read
/// in a guarded apply that finds the call moved), and every write passes.
#[sqlx::test(migrations = false)]
async fn calls_begun_before_the_migration_go_on_after_it(pool: PgPool) {
    migrate_to_the_release_before(&pool).await;
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool.clone()).await;
    let agents = app
        .ready_agents(&["alice", "bob", "carol", "dave", "erin"])
        .await;
    let (alice, bob, carol) = (&agents[0], &agents[1], &agents[2]);
    let conf = app
        .answered_conference(&alice.0, &[bob.1.as_str(), carol.1.as_str(), CUSTOMER])
        .await;
    assert_eq!(
        other.poll(&bob.0).await.user_context.unwrap().user_state(),
        UserState::Talking
    );

    apply_state_domains(&pool).await;

    let left = app.end(&alice.0, &conf.job_id).await.unwrap();
    assert_eq!(left.user_context.unwrap().user_state(), UserState::Working);
    let channels = left.call_context.unwrap().channel_contexts;
    assert_eq!(channels.len(), 4);
    assert_eq!(state_of(&channels, &bob.1), ChannelState::Answered);

    // The other replica read the call before the migration; it reads it
    // again (its statements were prepared on the tables as they were).
    let status = other.poll(&bob.0).await;
    assert_eq!(
        status.user_context.unwrap().user_state(),
        UserState::Talking
    );
    assert_eq!(status.call_context.unwrap().job_id, conf.job_id);
    let released = other
        .report(
            &conf.job_id,
            &conf.channel_to(CUSTOMER),
            ChannelState::Released,
        )
        .await
        .unwrap();
    let call = released.call_context.unwrap();
    assert_eq!(
        state_of(&call.channel_contexts, CUSTOMER),
        ChannelState::Released
    );

    // This replica last wrote the call before that, and now expects the
    // calls it knows to be stale: its write finds the call moved and reads
    // it in the same statement, then decides again on what it read.
    app.find_a_known_call_stale(&other, &agents[3], &agents[4])
        .await;
    let hung_up = app
        .report(
            &conf.job_id,
            &conf.channel_to(&carol.1),
            ChannelState::Released,
        )
        .await
        .unwrap();
    let channels = hung_up.call_context.unwrap().channel_contexts;
    assert_eq!(state_of(&channels, CUSTOMER), ChannelState::Released);
    assert_eq!(state_of(&channels, &carol.1), ChannelState::Released);
    assert_eq!(app.stored_agent(&carol.0).await.0, "WORKING");
}

/// The domains refuse what the tables' CHECK constraints refused.
#[sqlx::test]
async fn the_state_domains_refuse_what_the_checks_refused(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let started = app.start(&agents[0].0, &[CUSTOMER]).await.unwrap();
    let job = started.call_context.unwrap().job_id;
    let channels = app.stored_channels(&job).await;

    for (what, sql) in [
        ("user_state", "UPDATE agents SET user_state = 'ASLEEP'"),
        ("work_mode", "UPDATE agents SET work_mode = 'AT_HOME'"),
        ("device_state", "UPDATE agents SET device_state = 'LOST'"),
        ("call_type", "UPDATE calls SET call_type = 'GROUP'"),
        (
            "channel_state",
            "UPDATE channels SET channel_state = 'ON_HOLD'",
        ),
        ("idx", "UPDATE channels SET idx = 0"),
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("23514"), "{what}: {err}");
    }
    assert_eq!(app.stored_channels(&job).await, channels, "nothing changed");
    assert_eq!(app.stored_agent(&agents[0].0).await.0, "TALKING");
}

/// The migration rewrites no table and rebuilds no index, so its locks are
/// held for milliseconds however large the tables.
#[sqlx::test(migrations = false)]
async fn the_state_domains_rewrite_no_table(pool: PgPool) {
    migrate_to_the_release_before(&pool).await;
    let files = "SELECT relname::text, relfilenode::int8 FROM pg_class
                 WHERE relnamespace = 'public'::regnamespace
                   AND relname IN ('agents', 'calls', 'channels', 'agents_pkey', 'calls_pkey',
                                   'channels_pkey', 'channels_idx_key', 'agents_extension_key')
                 ORDER BY relname";
    let before: Vec<(String, i64)> = sqlx::query_as(files).fetch_all(&pool).await.unwrap();
    assert_eq!(before.len(), 8);

    apply_state_domains(&pool).await;

    let after: Vec<(String, i64)> = sqlx::query_as(files).fetch_all(&pool).await.unwrap();
    assert_eq!(after, before);
}
