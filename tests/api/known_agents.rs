//! What a replica knows of agents (`app::known::KnownAgents`) only saves a
//! read: StartConference and ReadyForService decided on agents as known
//! are written only if no other replica moved those agents since, a
//! refusal is always answered from a read, and that an extension is
//! nobody's is never known.

use ccc_callcontrol::proto::UserState;
use ccc_callcontrol::startup::ServeOptions;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

/// Bob goes onto a call through another replica. This replica still knows
/// him as READY and would ring him; the guard stops that write, and the
/// agents read afresh refuse the call: he is busy. Nothing is written.
#[sqlx::test]
async fn an_agent_another_replica_moved_is_read_again(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0].0, &agents[1].0, &agents[2].0);
    // This replica learns bob as READY, at his version now.
    app.ready(bob).await.unwrap();
    other.start(carol, &["8002"]).await.unwrap();
    let events = app.event_count().await;

    let err = app.start(alice, &["8002", CUSTOMER]).await.unwrap_err();

    assert_error(&err, Code::FailedPrecondition, "UserBusy", 400);
    assert_eq!(app.stored_agent(alice).await, ("READY".into(), None));
    assert_eq!(app.stored_agent(bob).await.0, "RINGING");
    assert_eq!(app.event_count().await, events, "nothing written");
}

/// Alice starts a call through another replica; this replica still knows
/// her as READY. Her second start is decided again on her as stored, and
/// refused: she is talking. Her first call is left as it was.
#[sqlx::test]
async fn a_stale_initiator_is_read_again(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let first = other.start(alice, &[CUSTOMER]).await.unwrap();
    let job = first.call_context.unwrap().job_id;
    let events = app.event_count().await;

    let err = app.start(alice, &["8002"]).await.unwrap_err();

    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.UserState",
        400,
    );
    assert!(err.message().contains("(TALKING)"), "{}", err.message());
    assert_eq!(app.stored_agent(alice).await, ("TALKING".into(), Some(job)));
    assert_eq!(app.stored_agent(bob).await, ("READY".into(), None));
    assert_eq!(app.event_count().await, events, "nothing written");
}

/// An extension that was nobody's when this replica last looked becomes
/// carol's. Inviting it then rings carol: an extension is never known to
/// be nobody's.
#[sqlx::test]
async fn an_agent_provisioned_later_is_found_by_extension(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let err = app.start(alice, &["8003"]).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);

    let (carol, carol_ext) = other.create_agent(INSTANCE, "carol").await;
    assert_eq!(carol_ext, "8003");
    other.ready(&carol).await.unwrap();
    let started = app.start(alice, &["8003"]).await.unwrap();

    let call = started.call_context.unwrap();
    let to_carol = call
        .channel_contexts
        .iter()
        .find(|c| c.destination == "8003")
        .unwrap();
    assert_eq!(to_carol.user_id, carol);
    assert_eq!(app.stored_agent(&carol).await.0, "RINGING");
}

/// `--known-agents 0`: every StartConference and ReadyForService reads its
/// agents first, and still works.
#[sqlx::test]
async fn a_replica_that_keeps_no_agents_serves_them(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            known_agents: 0,
            ..ServeOptions::default()
        },
    )
    .await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    app.make_working(alice).await;

    let ready = app.ready(alice).await.unwrap();
    let started = app.start(alice, &["8002"]).await.unwrap();

    assert_eq!(ready.user_state(), UserState::Ready);
    let job = started.call_context.unwrap().job_id;
    assert_eq!(app.stored_agent(alice).await, ("TALKING".into(), Some(job)));
}
