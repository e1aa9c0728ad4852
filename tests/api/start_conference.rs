//! StartConference: a new call with every channel, the agents' new states,
//! and every way the request can be refused.

use ccc_callcontrol::proto::{self, UserState, channel_context::ChannelState};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

#[sqlx::test]
async fn starting_rings_everyone(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let as_alice = app.agent(alice).await;

    let data = as_alice
        .calls
        .clone()
        .start_conference(proto::StartConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: String::new(), // the caller's own agent
            participant_list_json: format!(r#"["8002","{CUSTOMER}"]"#),
            timeout_seconds: None,
            tags: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();

    let call = data.call_context.unwrap();
    let digits = call.job_id.strip_prefix("job-").expect("job- prefix");
    assert!(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        "{}",
        call.job_id
    );
    assert_eq!(call.call_type(), proto::CallType::Conference);
    let channels = &call.channel_contexts;
    let summary: Vec<_> = channels
        .iter()
        .map(|c| {
            (
                c.index,
                c.user_id.as_str(),
                c.user_extension.as_str(),
                c.destination.as_str(),
                c.channel_state(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, alice.as_str(), "8001", "8001", ChannelState::Answered),
            (2, bob.as_str(), "8002", "8002", ChannelState::Ringing),
            (3, "", "", CUSTOMER, ChannelState::Ringing),
        ]
    );
    for c in channels {
        assert_eq!(c.originator, "8001");
        assert_eq!(c.job_id, call.job_id);
        assert_eq!(c.call_type(), proto::CallType::Conference);
        assert_eq!(
            c.channel_id,
            format!(
                "ch:user:8001->{}:{}:{}",
                c.destination, c.timestamp, call.job_id
            )
        );
        assert!(c.release_initiator.is_empty() && c.release_reason.is_empty());
    }

    let me = data.user_context.unwrap();
    assert_eq!(
        (me.user_state(), me.job_id.as_str()),
        (UserState::Talking, call.job_id.as_str())
    );
    assert!(data.context_id > 0);
    assert_eq!(
        app.stored_agent(bob).await,
        ("RINGING".into(), Some(call.job_id.clone()))
    );
    let (timeout, tags, initiator): (i32, String, String) =
        sqlx::query_as("SELECT timeout_seconds, tags, initiator FROM calls WHERE job_id = $1")
            .bind(&call.job_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (timeout, tags.as_str(), initiator.as_str()),
        (30, "", alice.as_str())
    );
    assert_eq!(
        app.events_of(&call.job_id).await,
        [("StartConference".to_owned(), alice.clone())]
    );
}

#[sqlx::test]
async fn timeout_and_tags_are_kept(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    let data = app
        .calls
        .clone()
        .start_conference(proto::StartConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: agents[0].0.clone(),
            participant_list_json: r#"["+8613900001234"]"#.into(),
            timeout_seconds: Some(45),
            tags: "vip".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    let job = data.call_context.unwrap().job_id;
    let (timeout, tags): (i32, String) =
        sqlx::query_as("SELECT timeout_seconds, tags FROM calls WHERE job_id = $1")
            .bind(&job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((timeout, tags.as_str()), (45, "vip"));
}

#[sqlx::test]
async fn an_agent_may_start_from_after_call_work(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let first = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    app.end(alice, &first.job_id).await.unwrap();

    let second = app.start(alice, &[CUSTOMER]).await.unwrap();

    let job = second.call_context.unwrap().job_id;
    assert_ne!(job, first.job_id);
    assert_eq!(app.stored_agent(alice).await, ("TALKING".into(), Some(job)));
}

async fn start_raw(
    app: &TestApp,
    user: &str,
    list: &str,
    timeout: Option<i32>,
    tags: &str,
) -> tonic::Status {
    app.calls
        .clone()
        .start_conference(proto::StartConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: user.into(),
            participant_list_json: list.into(),
            timeout_seconds: timeout,
            tags: tags.into(),
        })
        .await
        .unwrap_err()
}

#[sqlx::test]
async fn bad_participant_lists_and_options(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let events = app.event_count().await;

    let err = start_raw(&app, alice, "", None, "").await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(
        err.message(),
        "The parameter ParticipantListJson must not be null or empty."
    );

    let invalid = [
        ("8002", None, "", "ParticipantListJson", "JSON array"),
        ("[]", None, "", "ParticipantListJson", "1 to 8"),
        (
            r#"["1390000001","1390000002","1390000003","1390000004","1390000005","1390000006","1390000007","1390000008","1390000009"]"#,
            None,
            "",
            "ParticipantListJson",
            "1 to 8",
        ),
        (
            r#"["8002","8002"]"#,
            None,
            "",
            "ParticipantListJson",
            "more than once",
        ),
        (
            r#"["8001"]"#,
            None,
            "",
            "ParticipantListJson",
            "initiator's own extension",
        ),
        (
            r#"["8009"]"#,
            None,
            "",
            "ParticipantListJson",
            "neither an agent extension in the instance nor a phone number",
        ),
        (
            r#"["agent@ccc-test"]"#,
            None,
            "",
            "ParticipantListJson",
            "neither",
        ),
        (r#"["8002"]"#, Some(0), "", "TimeoutSeconds", "1 to 300"),
        (r#"["8002"]"#, Some(301), "", "TimeoutSeconds", "1 to 300"),
    ];
    for (list, timeout, tags, field, text) in invalid {
        let err = start_raw(&app, alice, list, timeout, tags).await;
        assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
        assert!(
            err.message()
                .starts_with(&format!("The parameter {field} is invalid.")),
            "{list}: {}",
            err.message()
        );
        assert!(err.message().contains(text), "{list}: {}", err.message());
    }
    let err = start_raw(&app, alice, r#"["8002"]"#, None, &"x".repeat(129)).await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_eq!(violations(&err)[0].0, "Tags");
    assert_eq!(app.event_count().await, events, "nothing was written");
    assert_eq!(app.stored_agent(alice).await.0, "READY");
}

#[sqlx::test]
async fn the_initiator_must_be_idle(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let (alice, _) = app.create_agent(INSTANCE, "alice").await;

    let err = app.start(&alice, &[CUSTOMER]).await.unwrap_err();
    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.UserState",
        400,
    );
    assert_eq!(
        err.message(),
        "The operation is not allowed. User state (OFFLINE) does not meet expectations (READY, WORKING, BREAK)."
    );

    app.ready(&alice).await.unwrap();
    app.start(&alice, &[CUSTOMER]).await.unwrap();
    let err = app.start(&alice, &[CUSTOMER]).await.unwrap_err();
    assert_error(
        &err,
        Code::FailedPrecondition,
        "InvalidOperation.UserState",
        400,
    );
    assert!(err.message().contains("(TALKING)"));
}

#[sqlx::test]
async fn an_invited_agent_must_be_ready(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, carol) = (&agents[0].0, &agents[2].0);
    let (dave, dave_ext) = app.create_agent(INSTANCE, "dave").await; // OFFLINE

    let err = app.start(alice, &[&dave_ext]).await.unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "UserBusy", 400);
    assert_eq!(
        err.message(),
        format!("The user {dave_ext} you called was busy. Please try again later.")
    );
    assert_eq!(app.stored_agent(&dave).await.0, "OFFLINE");

    // Bob is on carol's call.
    app.start(carol, &["8002"]).await.unwrap();
    let err = app.start(alice, &[CUSTOMER, "8002"]).await.unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "UserBusy", 400);
    assert_eq!(
        app.stored_agent(alice).await.0,
        "READY",
        "the refused start changed nothing"
    );
}

#[sqlx::test]
async fn unknown_instance_and_initiator(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;
    let err = app
        .calls
        .clone()
        .start_conference(proto::StartConferenceRequest {
            instance_id: "nowhere".into(),
            user_id: "alice@nowhere".into(),
            participant_list_json: format!("[\"{CUSTOMER}\"]"),
            timeout_seconds: None,
            tags: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.InstanceId", 404);
    let err = app.start("zed@ccc-test", &[CUSTOMER]).await.unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);
}
