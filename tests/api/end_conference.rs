//! EndConference: an agent leaves, the others stay, the call ends below two
//! parties, a repeat changes nothing, and every documented error.

use ccc_callcontrol::proto::{self, UserState, channel_context::ChannelState};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

#[sqlx::test]
async fn leaving_keeps_the_others_connected(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let as_alice = app.agent(alice).await;

    // An agent's token, and a blank UserId: the caller's own agent leaves.
    let data = end_with(&as_alice.calls, INSTANCE, "", &conf.job_id)
        .await
        .unwrap();

    let call = data.call_context.unwrap();
    assert_eq!(call.job_id, conf.job_id);
    assert_eq!(call.instance_id, INSTANCE);
    assert_eq!(call.call_type(), proto::CallType::Conference);
    assert_eq!(call.channel_contexts.len(), 3);
    let mine = &call.channel_contexts[0];
    assert_eq!((mine.index, mine.user_id.as_str()), (1, alice.as_str()));
    assert_eq!(mine.channel_state(), ChannelState::Released);
    assert_eq!(mine.release_initiator, "8001");
    assert_eq!(mine.release_reason, "200 - Left conference");
    assert!(mine.timestamp >= conf.channels[0].timestamp);
    assert_eq!(
        state_of(&call.channel_contexts, "8002"),
        ChannelState::Answered
    );
    assert_eq!(
        state_of(&call.channel_contexts, CUSTOMER),
        ChannelState::Answered
    );

    let me = data.user_context.unwrap();
    assert_eq!(me.user_id, *alice);
    assert_eq!(me.user_state(), UserState::Working);
    assert_eq!(
        me.job_id, conf.job_id,
        "the agent keeps the call as its JobId"
    );

    // What is stored says the same.
    let stored = app.stored_channels(&conf.job_id).await;
    assert_eq!(stored[0].1, "RELEASED");
    assert_eq!(
        (stored[0].2.as_str(), stored[0].3.as_str()),
        ("8001", "200 - Left conference")
    );
    assert_eq!(
        (stored[1].1.as_str(), stored[2].1.as_str()),
        ("ANSWERED", "ANSWERED")
    );
    assert_eq!(
        app.stored_agent(alice).await,
        ("WORKING".into(), Some(conf.job_id.clone()))
    );
    assert_eq!(
        app.stored_agent(bob).await,
        ("TALKING".into(), Some(conf.job_id.clone()))
    );
    assert_eq!(app.call_ended_at(&conf.job_id).await, None);

    // One event per change, the last one this EndConference by alice.
    let events = app.events_of(&conf.job_id).await;
    let actions: Vec<_> = events.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "StartConference",
            "ReportChannelEvent",
            "ReportChannelEvent",
            "EndConference"
        ]
    );
    assert_eq!(events[3].1, *alice);
    let last: i64 = sqlx::query_scalar("SELECT max(event_id) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(data.context_id, last);

    // Bob still sees the customer.
    let bobs = app.poll(bob).await;
    assert_eq!(bobs.user_context.unwrap().user_state(), UserState::Talking);
    assert_eq!(
        state_of(&bobs.call_context.unwrap().channel_contexts, CUSTOMER),
        ChannelState::Answered
    );
}

#[sqlx::test]
async fn an_agent_who_never_answered_goes_back_to_ready(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.start(alice, &["8002", CUSTOMER]).await.unwrap();
    let job = conf.call_context.unwrap().job_id;

    let data = app.end(bob, &job).await.unwrap();

    assert_eq!(data.user_context.unwrap().user_state(), UserState::Ready);
    assert_eq!(
        state_of(&data.call_context.unwrap().channel_contexts, "8002"),
        ChannelState::Released
    );
    assert_eq!(app.stored_agent(bob).await, ("READY".into(), Some(job)));
}

#[sqlx::test]
async fn the_call_ends_when_fewer_than_two_parties_remain(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    app.end(alice, &conf.job_id).await.unwrap();

    let data = app.end(bob, &conf.job_id).await.unwrap();

    let channels = data.call_context.unwrap().channel_contexts;
    assert!(
        channels
            .iter()
            .all(|c| c.channel_state() == ChannelState::Released)
    );
    let customer = channels.iter().find(|c| c.destination == CUSTOMER).unwrap();
    assert_eq!(customer.release_reason, "200 - Conference ended");
    assert_eq!(
        customer.release_initiator, "8002",
        "the same initiator as the release that ended it"
    );
    assert_eq!(data.user_context.unwrap().user_state(), UserState::Working);
    assert!(app.call_ended_at(&conf.job_id).await.is_some());
    let stored = app.stored_channels(&conf.job_id).await;
    assert_eq!(
        stored[2],
        (
            CUSTOMER.into(),
            "RELEASED".into(),
            "8002".into(),
            "200 - Conference ended".into()
        )
    );
    let actions: Vec<_> = app
        .events_of(&conf.job_id)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "EndConference").count(),
        2,
        "one event per change: {actions:?}"
    );
}

#[sqlx::test]
async fn the_last_agent_is_released_too_when_a_two_party_conference_loses_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002"]).await;

    app.end(alice, &conf.job_id).await.unwrap();

    let bobs = app.poll(bob).await;
    assert_eq!(bobs.user_context.unwrap().user_state(), UserState::Working);
    let bob_channel = bobs
        .call_context
        .unwrap()
        .channel_contexts
        .into_iter()
        .find(|c| c.destination == "8002")
        .unwrap();
    assert_eq!(bob_channel.channel_state(), ChannelState::Released);
    assert_eq!(bob_channel.release_reason, "200 - Conference ended");
    assert_eq!(bob_channel.release_initiator, "8001");
}

#[sqlx::test]
async fn leaving_again_changes_nothing_and_reports_the_latest_context(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let first = app.end(alice, &conf.job_id).await.unwrap();
    let events = app.event_count().await;
    let rows = app.stored_channels(&conf.job_id).await;

    let again = app.end(alice, &conf.job_id).await.unwrap();

    assert_eq!(again.call_context, first.call_context);
    assert_eq!(again.user_context, first.user_context);
    assert_eq!(again.context_id, first.context_id);
    assert_eq!(app.event_count().await, events, "a repeat writes no event");
    assert_eq!(app.stored_channels(&conf.job_id).await, rows);
}

#[sqlx::test]
async fn a_repeat_after_later_changes_reports_the_newest_context(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let first = app.end(alice, &conf.job_id).await.unwrap();
    let bobs_leave = app.end(bob, &conf.job_id).await.unwrap();

    let again = app.end(alice, &conf.job_id).await.unwrap();

    assert!(bobs_leave.context_id > first.context_id);
    assert_eq!(
        again.context_id, bobs_leave.context_id,
        "the call changed after alice left"
    );
    assert_eq!(again.call_context, bobs_leave.call_context);
}

#[sqlx::test]
async fn bad_parameters_are_all_reported(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;

    let blank = app.end_in("", "", "").await.unwrap_err();
    assert_error(&blank, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(
        blank.message(),
        "The parameter InstanceId must not be null or empty."
    );
    let fields: Vec<_> = violations(&blank).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["InstanceId", "JobId"]);
    // An admin has no agent of its own: it must name one.
    let no_user = app.end_in(INSTANCE, "", "job-1").await.unwrap_err();
    assert_error(&no_user, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(
        no_user.message(),
        "The parameter UserId must not be null or empty."
    );

    let cases = [
        ("CCC-TEST", "alice@ccc-test", "job-1", "InstanceId"),
        (INSTANCE, "alice", "job-1", "UserId"),
        (INSTANCE, "alice@ccc-test", "1234", "JobId"),
        (INSTANCE, "alice@ccc-test", "job-12ab", "JobId"),
        (&"a".repeat(65), "alice@ccc-test", "job-1", "InstanceId"),
    ];
    for (instance, user, job, field) in cases {
        let err = app.end_in(instance, user, job).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
        assert!(
            err.message()
                .starts_with(&format!("The parameter {field} is invalid. ")),
            "{}",
            err.message()
        );
        assert_eq!(violations(&err)[0].0, field);
    }
}

#[sqlx::test]
async fn unknown_instance_user_and_call(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "carol"]).await;
    let alice = &agents[0].0;

    let err = app
        .end_in("nowhere", "alice@nowhere", "job-1")
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.InstanceId", 404);
    assert_eq!(
        err.message(),
        "The specified instance nowhere does not exist."
    );

    let err = app.end("zed@ccc-test", "job-1").await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);
    assert_eq!(
        err.message(),
        "The user zed@ccc-test does not exist in instance ccc-test."
    );

    let err = app.end(alice, "job-404").await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.JobId", 404);
    assert_eq!(err.message(), "The call job-404 does not exist.");

    // Checks run in order: parameters before the instance, the instance
    // before the user, the user before the call.
    let err = app.end_in("nowhere", "zed@nowhere", "").await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    let err = app.end("zed@ccc-test", "job-404").await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);
}

#[sqlx::test]
async fn an_agent_who_was_never_in_the_call_cannot_leave_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, carol) = (&agents[0].0, &agents[2].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let events = app.event_count().await;

    let err = app.end(carol, &conf.job_id).await.unwrap_err();

    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.NotInConference",
        400,
    );
    assert_eq!(
        err.message(),
        format!(
            "The operation is not allowed. The user {carol} is not in conference {}.",
            conf.job_id
        )
    );
    assert_eq!(app.event_count().await, events);
}

#[sqlx::test]
async fn only_a_conference_can_be_left(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    // Other call types are not created through this service yet; make one,
    // moving the call's version as every writer must (docs/architecture.md).
    sqlx::query(
        "UPDATE calls SET call_type = 'INTERNAL', \
                context_id = nextval(pg_get_serial_sequence('events', 'event_id')) \
         WHERE job_id = $1",
    )
    .bind(&conf.job_id)
    .execute(&app.pool)
    .await
    .unwrap();

    let err = app.end(alice, &conf.job_id).await.unwrap_err();

    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.NotInConference",
        400,
    );
    assert!(
        err.message().contains("is not a conference"),
        "{}",
        err.message()
    );
}

#[sqlx::test]
async fn a_channel_that_never_started_cannot_be_left(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.start(alice, &["8002", CUSTOMER]).await.unwrap();
    let job = conf.call_context.unwrap().job_id;
    // No action creates a channel in NONE; a media plane's import might,
    // moving the call's version as every writer must (docs/architecture.md).
    sqlx::query(
        "WITH ch AS (UPDATE channels SET channel_state = 'NONE' \
                     WHERE job_id = $1 AND user_id = $2 RETURNING job_id) \
         UPDATE calls SET context_id = nextval(pg_get_serial_sequence('events', 'event_id')) \
         WHERE job_id IN (SELECT job_id FROM ch)",
    )
    .bind(&job)
    .bind(bob)
    .execute(&app.pool)
    .await
    .unwrap();

    let err = app.end(bob, &job).await.unwrap_err();

    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.ChannelState",
        400,
    );
    assert_eq!(
        err.message(),
        "The operation is not allowed. Channel state (NONE) does not meet expectations (CREATED, RINGING, EARLY_MEDIA, ANSWERED)."
    );
}

#[sqlx::test]
async fn tenants_do_not_see_each_others_calls(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    app.create_instance("other").await;
    let (alice_elsewhere, _) = app.create_agent("other", "alice").await;

    let err = app
        .end_in("other", &alice_elsewhere, &conf.job_id)
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.JobId", 404);
    let err = app.end_in("other", alice, &conf.job_id).await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);
    assert_eq!(app.stored_agent(alice).await.0, "TALKING");
}

#[sqlx::test]
async fn the_request_id_comes_back(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app.answered_conference(&agents[0].0, &["8002"]).await;
    let mut request = tonic::Request::new(proto::EndConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: agents[0].0.clone(),
        job_id: conf.job_id.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-42".parse().unwrap());

    let response = app
        .agent(&agents[0].0)
        .await
        .calls
        .end_conference(request)
        .await
        .unwrap();

    assert_eq!(response.metadata().get("x-request-id").unwrap(), "trace-42");
    assert_eq!(response.into_inner().request_id, "trace-42");
    let (actor, request_id): (String, String) =
        sqlx::query_as("SELECT actor, request_id FROM events WHERE action = 'EndConference'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (actor.as_str(), request_id.as_str()),
        (agents[0].0.as_str(), "trace-42")
    );
}
