//! PollUserStatus and ReadyForService.

use ccc_callcontrol::proto::{self, UserState};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

#[sqlx::test]
async fn a_new_agent_is_offline_with_no_call(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let (alice, ext) = app.create_agent(INSTANCE, "alice").await;

    let data = app.poll(&alice).await;

    assert!(data.call_context.is_none());
    let me = data.user_context.unwrap();
    assert_eq!(me.user_state(), UserState::Offline);
    assert_eq!(
        me.device_state(),
        proto::user_context::DeviceState::Unregistered
    );
    assert_eq!(
        (me.extension.as_str(), me.instance_id.as_str()),
        (ext.as_str(), INSTANCE)
    );
    assert!(data.context_id > 0, "the creation was an event");
}

#[sqlx::test]
async fn ready_for_service_from_offline_and_after_call_work(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002"]).await;
    app.end(alice, &conf.job_id).await.unwrap();
    assert_eq!(
        app.poll(alice).await.call_context.unwrap().job_id,
        conf.job_id,
        "the last call until ready"
    );

    let r = app
        .calls
        .clone()
        .ready_for_service(proto::ReadyForServiceRequest {
            instance_id: INSTANCE.into(),
            user_id: alice.clone(),
            outbound_scenario: true,
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!((r.code.as_str(), r.http_status_code), ("OK", 200));
    let me = r.data.unwrap();
    assert_eq!(me.user_state(), UserState::Ready);
    assert!(me.job_id.is_empty());
    assert!(me.outbound_scenario);
    assert_eq!(app.stored_agent(alice).await, ("READY".into(), None));
    assert!(app.poll(alice).await.call_context.is_none());
}

#[sqlx::test]
async fn ready_again_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    let events = app.event_count().await;
    let before = app.poll(&agents[0].0).await;

    app.ready(&agents[0].0).await.unwrap();

    assert_eq!(app.event_count().await, events);
    assert_eq!(app.poll(&agents[0].0).await.context_id, before.context_id);
}

#[sqlx::test]
async fn an_agent_on_a_call_cannot_be_made_ready(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    app.start(&agents[0].0, &["8002"]).await.unwrap();

    for (user, state) in [(&agents[0].0, "TALKING"), (&agents[1].0, "RINGING")] {
        let err = app.ready(user).await.unwrap_err();
        assert_error(
            &err,
            Code::FailedPrecondition,
            "InvalidOperation.UserState",
            400,
        );
        assert_eq!(
            err.message(),
            format!(
                "The operation is not allowed. User state ({state}) does not meet expectations (OFFLINE, BREAK, WORKING, READY)."
            )
        );
    }
}

#[sqlx::test]
async fn errors_of_poll_and_ready(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;

    let err = app.ready("").await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    let err = app.ready("zed@ccc-test").await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);

    let poll = |instance: &str, user: &str| {
        let mut client = app.calls.clone();
        let request = proto::PollUserStatusRequest {
            instance_id: instance.into(),
            user_id: user.into(),
        };
        async move { client.poll_user_status(request).await.unwrap_err() }
    };
    assert_error(
        &poll("", "alice@ccc-test").await,
        Code::InvalidArgument,
        "Parameter.Blank",
        400,
    );
    assert_error(
        &poll(INSTANCE, "not an id").await,
        Code::InvalidArgument,
        "Parameter.Invalid",
        400,
    );
    assert_error(
        &poll("nowhere", "alice@nowhere").await,
        Code::NotFound,
        "NotExists.InstanceId",
        404,
    );
    assert_error(
        &poll(INSTANCE, "zed@ccc-test").await,
        Code::NotFound,
        "NotExists.UserId",
        404,
    );
}
