//! When the database fails: the client gets an opaque, correctly coded
//! error, nothing half-done is stored, and the event log stays append-only.

use ccc_callcontrol::domain::conference::NewCall;
use ccc_callcontrol::domain::ids::JobId;
use ccc_callcontrol::store::changes;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

/// The event row of a change a test applies straight through the store:
/// its payload does not matter there.
fn bare_event(action: &'static str) -> changes::Event<'static> {
    changes::Event {
        request_id: "r",
        action,
        actor: "test",
        before: None,
        after: changes::JsonText::of(&serde_json::json!({})).unwrap(),
    }
}

/// A new call with JobId `job`, as StartConference would draw it.
fn new_call(job: &str) -> NewCall {
    NewCall {
        job_id: JobId::from_trusted(job.to_owned()),
        now: 1,
        timeout_seconds: 30,
        tags: String::new(),
    }
}

#[sqlx::test]
async fn a_broken_database_is_an_opaque_internal_error_and_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    // Sabotage: the event log can no longer be written.
    sqlx::query("ALTER TABLE events RENAME TO events_gone")
        .execute(&app.pool)
        .await
        .unwrap();

    let err = app.end(alice, &conf.job_id).await.unwrap_err();

    assert_error(&err, Code::Internal, "InternalError", 500);
    assert_eq!(
        err.message(),
        "The request processing has failed due to some unknown error."
    );
    assert!(
        !format!("{err:?}").contains("events"),
        "no SQL detail leaks: {err:?}"
    );
    sqlx::query("ALTER TABLE events_gone RENAME TO events")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.stored_agent(alice).await.0,
        "TALKING",
        "the failed action left no trace"
    );
    assert!(
        app.stored_channels(&conf.job_id)
            .await
            .iter()
            .all(|c| c.1 == "ANSWERED")
    );
}

#[sqlx::test]
async fn an_unreachable_database_is_retryable_unavailable(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    app.served.close().await;

    let err = app.ready(&agents[0].0).await.unwrap_err();

    assert_error(&err, Code::Unavailable, "ServiceUnavailable", 503);
}

#[sqlx::test]
async fn events_are_append_only(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;

    let update = sqlx::query("UPDATE events SET actor = 'mallory'")
        .execute(&app.pool)
        .await;
    let delete = sqlx::query("DELETE FROM events").execute(&app.pool).await;

    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert!(app.event_count().await > 0);
}

/// Two replicas can draw the same JobId in the same millisecond. Writing a
/// call whose JobId exists must be a lost race (retried with a new ID),
/// not an internal error.
#[sqlx::test]
async fn a_job_id_drawn_twice_is_a_lost_race(pool: PgPool) {
    use ccc_callcontrol::domain::conference;
    use ccc_callcontrol::domain::ids::{InstanceId, UserId};
    use ccc_callcontrol::error::Error;
    use ccc_callcontrol::store::{self, agents};

    let app = spawn_app(pool).await;
    let users = app.ready_agents(&["alice", "bob"]).await;
    let taken = app
        .start(&users[0].0, &[CUSTOMER])
        .await
        .unwrap()
        .call_context
        .unwrap()
        .job_id;

    let mut conn = app.pool.acquire().await.unwrap();
    let instance = InstanceId::from_trusted(INSTANCE);
    let bob = UserId::from_trusted(users[1].0.as_str());
    let mut tx = store::begin(&mut conn).await.unwrap();
    let loaded = agents::load(&mut tx, &instance, &bob, &[]).await.unwrap();
    let decided = conference::start(
        &loaded.agents[0],
        &[CUSTOMER.to_owned()],
        &[],
        new_call(&taken),
    )
    .unwrap();
    let event = bare_event("StartConference");

    let err = changes::apply(&mut tx, &instance, &event, &decided, &loaded.versions)
        .await
        .unwrap_err();

    assert!(matches!(err, Error::Contended(_)), "{err:?}");
}

/// Events and calls have no foreign key to their instance (it locked the
/// tenant's one `instances` row on every write: migration
/// 20261126000002). The statement that writes every call and agent action
/// must still write nothing for an instance that does not exist: here each
/// kind of change, decided on real rows, is applied to another instance.
#[sqlx::test]
async fn no_event_without_its_instance(pool: PgPool) {
    use ccc_callcontrol::domain::conference::{self, Changes};
    use ccc_callcontrol::domain::ids::{InstanceId, UserId};
    use ccc_callcontrol::error::Error;
    use ccc_callcontrol::store::{agents, calls};

    let app = spawn_app(pool).await;
    let users = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, carol) = (&users[0].0, &users[2].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let here = InstanceId::from_trusted(INSTANCE);
    let nowhere = InstanceId::from_trusted("nowhere");
    let mut conn = app.pool.acquire().await.unwrap();

    // EndConference: a change to a call.
    let alice = UserId::from_trusted(alice.as_str());
    let job = JobId::from_trusted(conf.job_id.clone());
    let loaded = calls::load(&mut conn, &here, &job, Some(&alice))
        .await
        .unwrap();
    let call = loaded.call.as_ref().unwrap();
    let leaver = loaded.agent(&alice).unwrap();
    let left = conference::leave(call, &loaded.agents, leaver, 1)
        .unwrap()
        .unwrap();
    // ReadyForService: a change of agents only; StartConference: a new call.
    let carol = UserId::from_trusted(carol.as_str());
    let idle = agents::load(&mut conn, &here, &carol, &[]).await.unwrap();
    let ready = Changes::of_agent(idle.agents[0].ready_for_service(true).unwrap());
    let new = new_call("job-9999999999999999999");
    let started = conference::start(&idle.agents[0], &[CUSTOMER.to_owned()], &[], new).unwrap();

    let event = bare_event("Test");
    for (decided, read) in [
        (&left, &loaded.versions),
        (&ready, &idle.versions),
        (&started, &idle.versions),
    ] {
        let err = changes::apply(&mut conn, &nowhere, &event, decided, read)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Contended(_)), "{err:?}");
    }

    for table in ["events", "calls", "channels", "agents"] {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE instance_id = 'nowhere'"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
}

/// A unit that ran to its end gives its connection back to the pool for
/// the next, whether it answered OK, with a domain error, or with a failed
/// statement: only a unit cut off mid-way closes it
/// (`reliability::a_unit_cut_off_by_its_timeout_closes_its_connection`).
/// One connection in the pool, so its backend must stay the same.
#[sqlx::test]
async fn units_that_end_give_their_connection_back(pool: PgPool) {
    let mut args = service_args(&pool);
    args.max_connections = 1;
    let app = spawn_app_tuned(pool, Default::default(), args).await;
    let backend = || async {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&app.served)
            .await
            .unwrap()
    };
    let agents = app.ready_agents(&["alice"]).await;
    let alice = &agents[0].0;
    let first = backend().await;

    let conf = app.answered_conference(alice, &[CUSTOMER]).await;
    app.end(alice, &conf.job_id).await.expect("OK");
    let err = app.end(alice, "job-1234567890123456789").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a domain error: {err:?}");
    // A statement that fails in the database, inside a transaction (the
    // idempotency key makes it one).
    sqlx::query("ALTER TABLE events RENAME TO events_gone")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut keyed = tonic::Request::new(ccc_callcontrol::proto::StartConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
        participant_list_json: serde_json::to_string(&[CUSTOMER]).unwrap(),
        timeout_seconds: None,
        tags: String::new(),
    });
    keyed.metadata_mut().insert(
        "x-idempotency-key",
        "fails-in-the-database".parse().unwrap(),
    );
    let err = app.calls.clone().start_conference(keyed).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    sqlx::query("ALTER TABLE events_gone RENAME TO events")
        .execute(&app.pool)
        .await
        .unwrap();
    app.start(alice, &[CUSTOMER]).await.expect("OK again");

    assert_eq!(backend().await, first, "the same connection all along");
}

/// A server that answers the TLS request with a byte PostgreSQL never
/// sends (as a proxy cutting connections, or a server not yet up, may):
/// sqlx calls that a protocol error, and a unit that cannot get a
/// connection for it is told the database is unavailable, retryable, not
/// that the service failed.
#[tokio::test]
async fn a_garbled_connection_start_is_unavailable_not_internal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            let _ = socket.read_exact(&mut request).await;
            let _ = socket.write_all(&[0]).await;
        }
    });
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy(&format!(
            "postgres://postgres@{addr}/nowhere?sslmode=prefer"
        ))
        .unwrap();
    let store = ccc_callcontrol::store::Store::new(pool);
    let err = store.acquire().await.expect_err("no PostgreSQL there");
    assert!(
        matches!(err, ccc_callcontrol::error::Error::Unavailable(_)),
        "{err:?}"
    );
}
