//! Races: actions on one call are serialized, and whatever the interleaving,
//! the stored state is consistent and nothing is lost.

use ccc_callcontrol::proto::channel_context::ChannelState;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

const ROUNDS: usize = 50;

#[sqlx::test]
async fn two_agents_leaving_at_once_always_end_consistently(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_leave_at_once(&app, &app).await;
}

/// As above, each through a replica of its own: alice's knows the call as
/// it made it (and decides on that), bob's reads it. Only the guarded
/// write keeps them apart.
#[sqlx::test]
async fn two_agents_leaving_at_once_through_two_replicas_end_consistently(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let other = spawn_app(pool).await;
    two_leave_at_once(&app, &other).await;
}

/// Alice (through `app`, which makes each conference) and bob (through
/// `other`) leave a three-party conference at the same instant, `ROUNDS`
/// times; whatever the interleaving, the stored state is consistent.
async fn two_leave_at_once(app: &TestApp, other: &TestApp) {
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0].0, &agents[1].0, &agents[2].0);
    let (as_alice, as_bob) = (app.agent(alice).await, other.agent(bob).await);

    for round in 0..ROUNDS {
        for user in [alice, bob, carol] {
            app.ready(user).await.unwrap();
        }
        let conf = app.answered_conference(alice, &["8002", "8003"]).await;
        let events_before = app.event_count().await;

        // Each agent leaves with its own token, at the same instant.
        let (a, b) = tokio::join!(
            end_with(&as_alice.calls, INSTANCE, "", &conf.job_id),
            end_with(&as_bob.calls, INSTANCE, "", &conf.job_id)
        );
        let (a, b) = (a.unwrap(), b.unwrap());

        // Whoever went second saw the other gone and ended the call: carol
        // is released once, by the second leaver.
        let stored = app.stored_channels(&conf.job_id).await;
        assert!(
            stored.iter().all(|c| c.1 == "RELEASED"),
            "round {round}: {stored:?}"
        );
        assert_eq!(
            (stored[0].3.as_str(), stored[1].3.as_str()),
            ("200 - Left conference", "200 - Left conference")
        );
        assert_eq!(stored[2].3, "200 - Conference ended", "round {round}");
        let second = if a.context_id > b.context_id {
            "8001"
        } else {
            "8002"
        };
        assert_eq!(
            stored[2].2, second,
            "round {round}: carol released by the second leaver"
        );
        for user in [alice, bob, carol] {
            assert_eq!(
                app.stored_agent(user).await,
                ("WORKING".into(), Some(conf.job_id.clone())),
                "round {round}"
            );
        }
        assert!(app.call_ended_at(&conf.job_id).await.is_some());
        // Exactly one event each, and the contexts each returned are theirs.
        assert_eq!(app.event_count().await, events_before + 2, "round {round}");
        let ids: Vec<(i64, String)> = sqlx::query_as(
            "SELECT event_id, actor FROM events WHERE job_id = $1 AND action = 'EndConference' ORDER BY event_id",
        )
        .bind(&conf.job_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let mut returned = [(a.context_id, alice.clone()), (b.context_id, bob.clone())];
        returned.sort();
        assert_eq!(ids, returned, "round {round}");
        // The later response shows the whole call ended.
        let later = if a.context_id > b.context_id { &a } else { &b };
        let channels = &later.call_context.as_ref().unwrap().channel_contexts;
        assert!(
            channels
                .iter()
                .all(|c| c.channel_state() == ChannelState::Released)
        );
    }
}

#[sqlx::test]
async fn an_agent_invited_twice_at_once_joins_one_call(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0].0, &agents[1].0, &agents[2].0);

    for round in 0..ROUNDS {
        for user in [alice, bob, carol] {
            app.ready(user).await.unwrap();
        }
        let (a, b) = tokio::join!(app.start(alice, &["8003"]), app.start(bob, &["8003"]));

        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            other => panic!("round {round}: exactly one start must win: {other:?}"),
        };
        assert_error(&lost, Code::FailedPrecondition, "UserBusy", 400);
        let job = won.call_context.unwrap().job_id;
        assert_eq!(
            app.stored_agent(carol).await,
            ("RINGING".into(), Some(job.clone())),
            "round {round}"
        );
        let calls: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM channels WHERE user_id = $1 AND channel_state = 'RINGING'",
        )
        .bind(carol)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(calls, 1, "round {round}: carol rings on one call only");
        // Clear the board for the next round.
        app.end(carol, &job).await.unwrap();
    }
}

#[sqlx::test]
async fn agents_created_at_once_get_distinct_extensions(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let logins: Vec<String> = (0..12).map(|i| format!("agent{i}")).collect();

    let created =
        futures::future::join_all(logins.iter().map(|l| app.create_agent(INSTANCE, l))).await;

    let mut extensions: Vec<String> = created.into_iter().map(|(_, ext)| ext).collect();
    extensions.sort();
    let expected: Vec<String> = (8001..=8012).map(|n| n.to_string()).collect();
    assert_eq!(extensions, expected);
}
