//! ReportChannelEvent: channel states move forward only, an answer puts the
//! agent on the call, a release follows the leaving rules.

use ccc_callcontrol::proto::{self, UserState, channel_context::ChannelState};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

#[sqlx::test]
async fn a_channel_moves_forward_and_answering_makes_the_agent_talk(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let bob = &agents[1].0;
    let data = app.start(&agents[0].0, &["8002", CUSTOMER]).await.unwrap();
    let call = data.call_context.unwrap();
    let bobs = call.channel_contexts[1].channel_id.clone();

    let early = app
        .report(&call.job_id, &bobs, ChannelState::EarlyMedia)
        .await
        .unwrap();
    assert_eq!(
        state_of(&early.call_context.unwrap().channel_contexts, "8002"),
        ChannelState::EarlyMedia
    );
    assert_eq!(app.stored_agent(bob).await.0, "RINGING");

    let answered = app
        .report(&call.job_id, &bobs, ChannelState::Answered)
        .await
        .unwrap();
    assert!(answered.context_id > early.context_id);
    assert_eq!(app.stored_agent(bob).await.0, "TALKING");
    assert_eq!(
        app.poll(bob).await.user_context.unwrap().user_state(),
        UserState::Talking
    );
}

#[sqlx::test]
async fn reporting_the_same_state_again_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", CUSTOMER])
        .await;
    let events = app.event_count().await;
    let channel = conf.channel_to(CUSTOMER);

    let again = app
        .report(&conf.job_id, &channel, ChannelState::Answered)
        .await
        .unwrap();

    assert_eq!(app.event_count().await, events);
    let latest: i64 = sqlx::query_scalar("SELECT max(event_id) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(again.context_id, latest);
}

#[sqlx::test]
async fn channels_never_move_backwards_or_out_of_released(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app
        .answered_conference(&agents[0].0, &["8002", CUSTOMER])
        .await;
    let customer = conf.channel_to(CUSTOMER);

    let err = app
        .report(&conf.job_id, &customer, ChannelState::Ringing)
        .await
        .unwrap_err();
    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.ChannelState",
        400,
    );
    assert_eq!(
        err.message(),
        "The operation is not allowed. Channel state (ANSWERED) does not meet expectations (NONE, CREATED)."
    );

    app.report(&conf.job_id, &customer, ChannelState::Released)
        .await
        .unwrap();
    let err = app
        .report(&conf.job_id, &customer, ChannelState::Answered)
        .await
        .unwrap_err();
    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.ChannelState",
        400,
    );
    assert!(err.message().contains("Channel state (RELEASED)"));
}

#[sqlx::test]
async fn a_release_applies_the_leaving_rules(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;

    // Bob hangs up his phone: he leaves, the others stay.
    let data = app
        .report_release(
            &conf.job_id,
            &conf.channel_to("8002"),
            ChannelState::Released,
            "8002",
            "486 - Busy here",
        )
        .await
        .unwrap();
    let channels = data.call_context.unwrap().channel_contexts;
    let bobs = channels.iter().find(|c| c.destination == "8002").unwrap();
    assert_eq!(
        (
            bobs.release_initiator.as_str(),
            bobs.release_reason.as_str()
        ),
        ("8002", "486 - Busy here")
    );
    assert_eq!(state_of(&channels, CUSTOMER), ChannelState::Answered);
    assert_eq!(app.stored_agent(bob).await.0, "WORKING");

    // The customer hangs up: one party left, the call ends.
    let data = app
        .report(
            &conf.job_id,
            &conf.channel_to(CUSTOMER),
            ChannelState::Released,
        )
        .await
        .unwrap();
    let channels = data.call_context.unwrap().channel_contexts;
    let customer = channels.iter().find(|c| c.destination == CUSTOMER).unwrap();
    assert_eq!(
        (
            customer.release_initiator.as_str(),
            customer.release_reason.as_str()
        ),
        (CUSTOMER, "200 - Hung up")
    );
    let alices = &channels[0];
    assert_eq!(alices.channel_state(), ChannelState::Released);
    assert_eq!(
        (
            alices.release_initiator.as_str(),
            alices.release_reason.as_str()
        ),
        (CUSTOMER, "200 - Conference ended")
    );
    assert_eq!(app.stored_agent(alice).await.0, "WORKING");
    assert!(app.call_ended_at(&conf.job_id).await.is_some());
}

#[sqlx::test]
async fn report_errors(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let conf = app.answered_conference(&agents[0].0, &["8002"]).await;
    let channel = conf.channel_to("8002");

    let raw = |instance: &str, job: &str, channel: &str, state: i32, initiator: &str| {
        let mut client = app.telephony.clone();
        let request = proto::ReportChannelEventRequest {
            instance_id: instance.into(),
            job_id: job.into(),
            channel_id: channel.into(),
            channel_state: state,
            release_initiator: initiator.into(),
            release_reason: String::new(),
        };
        async move { client.report_channel_event(request).await.unwrap_err() }
    };
    let job = conf.job_id.as_str();
    let released = ChannelState::Released as i32;

    let err = raw(INSTANCE, job, &channel, 0, "").await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(violations(&err)[0].0, "ChannelState");
    let err = raw(INSTANCE, job, &channel, ChannelState::None as i32, "").await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let err = raw(INSTANCE, job, &channel, ChannelState::Retired as i32, "").await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let err = raw(INSTANCE, job, &channel, 99, "").await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let err = raw(
        INSTANCE,
        job,
        &channel,
        ChannelState::Answered as i32,
        "8002",
    )
    .await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_eq!(violations(&err)[0].0, "ReleaseInitiator");
    let err = raw(INSTANCE, "", "", released, "").await;
    let fields: Vec<_> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["JobId", "ChannelId"]);

    let err = raw("nowhere", job, &channel, released, "").await;
    assert_error(&err, Code::NotFound, "NotExists.InstanceId", 404);
    let err = raw(INSTANCE, "job-404", &channel, released, "").await;
    assert_error(&err, Code::NotFound, "NotExists.JobId", 404);
    let err = raw(INSTANCE, job, "ch:user:nope", released, "").await;
    assert_error(&err, Code::NotFound, "NotExists.ChannelId", 404);
    assert_eq!(
        err.message(),
        format!("The specified channel ch:user:nope does not exist in call {job}.")
    );
}
