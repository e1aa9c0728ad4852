//! What a replica knows of a call (`app::known`) only saves a read: an
//! action decided on it is written only if no other replica changed the
//! call since, and an answer that writes nothing is always read afresh.
//! Each case of a stale call runs both ways a replica writes a decision on
//! a known call ([`Lately`]).

use ccc_callcontrol::proto::channel_context::ChannelState;
use ccc_callcontrol::startup::ServeOptions;
use sqlx::PgPool;

use crate::helpers::*;

/// What the replica found of the calls it knew, lately, which decides how
/// it writes a decision made on one (`app::known::KnownCalls::expect_stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lately {
    /// As known (and a new replica): the plain guarded write; a stale
    /// call is then read by a statement of its own.
    AsKnown,
    /// Stale: the write carries the read of the call for a failed guard.
    Stale,
}

/// The agents a case needs, and two more, dave and erin, whose call makes
/// the replica find a known call stale just before the case's action
/// ([`Lately::Stale`]).
async fn agents_for(app: &TestApp, logins: &[&str]) -> Vec<(String, String)> {
    let mut all = logins.to_vec();
    all.extend(["dave", "erin"]);
    app.ready_agents(&all).await
}

/// With [`Lately::Stale`], has `app` find a call it knows stale, through
/// dave and erin, just before the case's action.
async fn lately(recent: Lately, app: &TestApp, other: &TestApp, agents: &[(String, String)]) {
    if recent == Lately::AsKnown {
        return;
    }
    let [.., dave, erin] = agents else {
        unreachable!("agents_for adds dave and erin")
    };
    app.find_a_known_call_stale(other, dave, erin).await;
}

/// Bob hangs up, reported through another replica. This replica still
/// knows him as talking and would write his leaving; the guard stops that
/// write, and the call read afresh answers EndConference as the retry it
/// now is: his channel as the media plane released it, no event appended.
#[sqlx::test]
async fn a_call_another_replica_changed_is_read_again(pool: PgPool) {
    read_again(pool, Lately::AsKnown).await;
}

#[sqlx::test]
async fn a_call_another_replica_changed_is_read_again_lately_stale(pool: PgPool) {
    read_again(pool, Lately::Stale).await;
}

async fn read_again(pool: PgPool, ways: Lately) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = agents_for(&app, &["alice", "bob", "carol"]).await;
    let bob = &agents[1].0;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", "8003"])
        .await;
    other
        .report_release(
            &conf.job_id,
            &conf.channel_to("8002"),
            ChannelState::Released,
            "13900000000",
            "486 - Busy here",
        )
        .await
        .unwrap();
    let events = app.events_of(&conf.job_id).await;
    lately(ways, &app, &other, &agents).await;

    let left = app.end(bob, &conf.job_id).await.unwrap();

    let channels = left.call_context.unwrap().channel_contexts;
    let bobs = channels.iter().find(|c| c.destination == "8002").unwrap();
    assert_eq!(bobs.channel_state(), ChannelState::Released);
    assert_eq!(
        (
            bobs.release_initiator.as_str(),
            bobs.release_reason.as_str()
        ),
        ("13900000000", "486 - Busy here")
    );
    assert_eq!(app.events_of(&conf.job_id).await, events, "nothing written");
    let stored = app.stored_channels(&conf.job_id).await;
    assert_eq!(stored[1].3, "486 - Busy here");
}

/// Carol leaves through another replica; bob then leaves through this one,
/// which knew the call with carol on it. His leaving is decided again on
/// the call without her, and what she left stays as she left it.
#[sqlx::test]
async fn a_stale_decision_is_made_again_on_the_call_as_stored(pool: PgPool) {
    decided_again(pool, Lately::AsKnown).await;
}

#[sqlx::test]
async fn a_stale_decision_is_made_again_on_the_call_as_stored_lately_stale(pool: PgPool) {
    decided_again(pool, Lately::Stale).await;
}

async fn decided_again(pool: PgPool, ways: Lately) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = agents_for(&app, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0].0, &agents[1].0, &agents[2].0);
    let conf = app.answered_conference(alice, &["8002", "8003"]).await;
    other.end(carol, &conf.job_id).await.unwrap();
    lately(ways, &app, &other, &agents).await;

    let left = app.end(bob, &conf.job_id).await.unwrap();

    // Bob's leaving left alice alone: the call ended, by bob.
    let stored = app.stored_channels(&conf.job_id).await;
    assert_eq!(
        stored,
        [
            (
                "8001".into(),
                "RELEASED".into(),
                "8002".into(),
                "200 - Conference ended".into()
            ),
            (
                "8002".into(),
                "RELEASED".into(),
                "8002".into(),
                "200 - Left conference".into()
            ),
            (
                "8003".into(),
                "RELEASED".into(),
                "8003".into(),
                "200 - Left conference".into()
            ),
        ]
    );
    let answered: Vec<_> = left
        .call_context
        .unwrap()
        .channel_contexts
        .iter()
        .map(|c| (c.destination.clone(), c.channel_state()))
        .collect();
    assert!(
        answered.iter().all(|c| c.1 == ChannelState::Released),
        "{answered:?}"
    );
    let actions: Vec<String> = app
        .events_of(&conf.job_id)
        .await
        .into_iter()
        .map(|e| e.0)
        .filter(|a| a == "EndConference")
        .collect();
    assert_eq!(actions.len(), 2, "one event per leave");
    for user in [alice, bob, carol] {
        assert_eq!(app.stored_agent(user).await.0, "WORKING");
    }
}

/// `--known-calls 0`: every action reads its call first, and still works.
#[sqlx::test]
async fn a_replica_that_keeps_no_calls_serves_them(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            known_calls: 0,
            ..ServeOptions::default()
        },
    )
    .await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", CUSTOMER])
        .await;

    let left = app.end(&agents[1].0, &conf.job_id).await.unwrap();

    let channels = left.call_context.unwrap().channel_contexts;
    assert_eq!(
        channels
            .iter()
            .map(|c| c.channel_state())
            .collect::<Vec<_>>(),
        [
            ChannelState::Answered,
            ChannelState::Released,
            ChannelState::Answered
        ]
    );
    assert_eq!(app.stored_channels(&conf.job_id).await[1].1, "RELEASED");
}

/// The customer hangs up, reported through another replica: a change to
/// the call alone, no agent moved. Bob then leaves through this replica,
/// which knew the customer on the call; decided on that, alice would stay
/// on a call with nobody. The call's version stops that write, and the
/// decision made again ends the call.
#[sqlx::test]
async fn a_change_to_the_call_alone_is_caught(pool: PgPool) {
    call_alone(pool, Lately::AsKnown).await;
}

#[sqlx::test]
async fn a_change_to_the_call_alone_is_caught_lately_stale(pool: PgPool) {
    call_alone(pool, Lately::Stale).await;
}

async fn call_alone(pool: PgPool, ways: Lately) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    let agents = agents_for(&app, &["alice", "bob"]).await;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", CUSTOMER])
        .await;
    other
        .report(
            &conf.job_id,
            &conf.channel_to(CUSTOMER),
            ChannelState::Released,
        )
        .await
        .unwrap();
    lately(ways, &app, &other, &agents).await;

    app.end(&agents[1].0, &conf.job_id).await.unwrap();

    let stored = app.stored_channels(&conf.job_id).await;
    let states: Vec<(&str, &str)> = stored
        .iter()
        .map(|c| (c.1.as_str(), c.3.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("RELEASED", "200 - Conference ended"),
            ("RELEASED", "200 - Left conference"),
            ("RELEASED", "200 - Hung up"),
        ]
    );
    assert!(app.call_ended_at(&conf.job_id).await.is_some());
}
