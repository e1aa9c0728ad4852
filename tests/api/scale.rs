//! Work per request does not grow with the tenant: loading a call for an
//! action reads the call, its channels and its parties, not every agent of
//! the instance.

use ccc_callcontrol::domain::ids::{Extension, InstanceId, JobId, UserId};
use ccc_callcontrol::store::{self, agents, calls};
use sqlx::PgPool;

use crate::helpers::*;

/// This backend's reads of `table` and its indexes in the current
/// transaction: (scans started, tuples they returned, heap tuples
/// fetched), summed over the table (sequential scans) and its indexes
/// (index scans).
async fn reads_of(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT sum(pg_stat_get_xact_numscans(r))::int8,
                sum(pg_stat_get_xact_tuples_returned(r))::int8,
                sum(pg_stat_get_xact_tuples_fetched(r))::int8
         FROM (SELECT c.oid AS r FROM pg_class c WHERE c.relname = $1
               UNION ALL
               SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
               WHERE c.relname = $1) AS rels",
    )
    .bind(table)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Adds agents `from + 1 ..= from + n` to `instance`, straight in SQL
/// (fast).
async fn add_agents(pool: &PgPool, instance: &str, from: i64, n: i64) {
    sqlx::query(
        "INSERT INTO agents (instance_id, user_id, login_name, display_name, extension,
                             work_mode, device_state, user_state)
         SELECT $1, 'bulk' || i || '@' || $1, 'bulk' || i, 'Bulk', (100000 + i)::text,
                'ON_SITE', 'ONLINE', 'READY'
         FROM generate_series($2 + 1, $2 + $3) AS i",
    )
    .bind(instance)
    .bind(from)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// What loading `job` for `user` reads of the agents table.
async fn agent_reads_of_a_load(
    pool: &PgPool,
    instance: &str,
    job: &str,
    user: &str,
) -> (i64, i64, i64) {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = store::begin(&mut conn).await.unwrap();
    let before = reads_of(&mut tx, "agents").await;
    let loaded = calls::load(
        &mut tx,
        &InstanceId::from_trusted(instance),
        &JobId::from_trusted(job),
        Some(&UserId::from_trusted(user)),
    )
    .await
    .unwrap();
    assert_eq!(loaded.agents.len(), 3, "the three parties");
    let after = reads_of(&mut tx, "agents").await;
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

/// What loading `user` and the agents of `extensions` (StartConference;
/// none for ReadyForService) reads of the agents table.
async fn agent_reads_of_a_start(
    pool: &PgPool,
    instance: &str,
    user: &str,
    extensions: &[&str],
) -> (i64, i64, i64) {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = store::begin(&mut conn).await.unwrap();
    let before = reads_of(&mut tx, "agents").await;
    let extensions: Vec<Extension> = extensions
        .iter()
        .map(|e| Extension::recognize(e).unwrap())
        .collect();
    let loaded = agents::load(
        &mut tx,
        &InstanceId::from_trusted(instance),
        &UserId::from_trusted(user),
        &extensions,
    )
    .await
    .unwrap();
    assert_eq!(loaded.agents.len(), 1 + extensions.len());
    let after = reads_of(&mut tx, "agents").await;
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

/// The same three-party call in an instance of 3 agents, of 303 and of
/// 10,003 (statistics fresh each time): loading it for EndConference, and
/// loading its agents for StartConference or ReadyForService, read no more
/// agent rows than with 3. Read through the service's own pool, with its
/// session settings: with PostgreSQL's default planner costs the middle
/// size (a few pages of agents) was read whole by a sequential scan
/// (`startup::RANDOM_PAGE_COST`).
#[sqlx::test]
async fn loading_a_call_reads_only_its_parties_however_many_agents(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let small = app
        .answered_conference(&agents[0].0, &["8002", "8003"])
        .await;
    let served = &app.served;
    let small_reads = agent_reads_of_a_load(served, INSTANCE, &small.job_id, &agents[0].0).await;
    let small_start =
        agent_reads_of_a_start(served, INSTANCE, &agents[0].0, &["8002", "8003"]).await;
    let small_ready = agent_reads_of_a_start(served, INSTANCE, &agents[0].0, &[]).await;

    // Tuples, not scans, and at most as many: with three rows PostgreSQL
    // may well pick sequential scans (each reads all three), with more one
    // index probe per party.
    let at_most =
        |big: (i64, i64, i64), small: (i64, i64, i64)| big.1 <= small.1 && big.2 <= small.2;
    let mut job = small.job_id;
    let mut added = 0;
    for total in [300, 10_000] {
        add_agents(&pool, INSTANCE, added, total - added).await;
        added = total;
        sqlx::query("ANALYZE agents").execute(&pool).await.unwrap();
        for user in &agents {
            app.end(&user.0, &job).await.unwrap();
            app.ready(&user.0).await.unwrap();
        }
        job = app
            .answered_conference(&agents[0].0, &["8002", "8003"])
            .await
            .job_id;
        // The cycles above left dead versions of the three agents, whose
        // index entries a probe also returns until they are vacuumed.
        vacuum_agents(&pool).await;
        let big_reads = agent_reads_of_a_load(served, INSTANCE, &job, &agents[0].0).await;
        let big_start =
            agent_reads_of_a_start(served, INSTANCE, &agents[0].0, &["8002", "8003"]).await;
        let big_ready = agent_reads_of_a_start(served, INSTANCE, &agents[0].0, &[]).await;

        assert!(
            at_most(big_reads, small_reads),
            "agent tuples with {} agents vs 3; \
             (scans, returned, fetched): {big_reads:?} vs {small_reads:?}",
            total + 3
        );
        assert!(
            at_most(big_start, small_start),
            "StartConference's agent tuples with {} agents vs 3: {big_start:?} vs {small_start:?}",
            total + 3
        );
        assert!(
            at_most(big_ready, small_ready),
            "ReadyForService's agent tuples with {} agents vs 3: {big_ready:?} vs {small_ready:?}",
            total + 3
        );
    }
}

/// An instance created after the last ANALYZE is in no statistics, so
/// PostgreSQL expects about one agent in it: StartConference's and
/// ReadyForService's agent load must still probe by key there, not scan
/// the new instance's agents under the `instance_id` prefix (which the
/// `user_id = … OR extension = ANY (…)` form did: 300 tuples for 3).
#[sqlx::test]
async fn a_new_instance_unknown_to_the_statistics_is_still_read_by_key(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.ready_agents(&["alice"]).await;
    add_agents(&pool, INSTANCE, 0, 10_000).await;
    sqlx::query("ANALYZE agents").execute(&pool).await.unwrap();

    let fresh = "fresh-instance";
    sqlx::query("INSERT INTO instances (instance_id, name, created_at) VALUES ($1, $1, 0)")
        .bind(fresh)
        .execute(&pool)
        .await
        .unwrap();
    add_agents(&pool, fresh, 0, 300).await;
    let user = format!("bulk1@{fresh}");
    let served = &app.served;
    let start = agent_reads_of_a_start(served, fresh, &user, &["100002", "100003"]).await;
    let ready = agent_reads_of_a_start(served, fresh, &user, &[]).await;
    assert!(
        start.1 <= 3 && start.2 <= 3,
        "StartConference's agent tuples (scans, returned, fetched) in a new instance of 300: {start:?}"
    );
    assert!(
        ready.1 <= 1 && ready.2 <= 1,
        "ReadyForService's agent tuples (scans, returned, fetched) in a new instance of 300: {ready:?}"
    );
}

/// VACUUMs `agents` until no dead version is left in it. A VACUUM keeps
/// the versions some snapshot of the database may still see, and an
/// autovacuum ANALYZE of any table holds one while it runs (seen with the
/// whole suite running: 7 agent tuples returned instead of 3). And its
/// index cleanup is forced: with dead versions on under 2 % of the pages
/// PostgreSQL skips the indexes, whose entries for those versions a probe
/// then returns until a scan marks them dead. The service's own reads used
/// to do that marking; a replica that knows its agents no longer reads
/// them first.
async fn vacuum_agents(pool: &PgPool) {
    for _ in 0..100 {
        sqlx::query("VACUUM (INDEX_CLEANUP ON) agents")
            .execute(pool)
            .await
            .unwrap();
        // What the VACUUM could not remove yet; it reports it as it ends.
        let dead: i64 = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'agents'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if dead == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("agents still holds dead versions after 100 VACUUMs");
}
