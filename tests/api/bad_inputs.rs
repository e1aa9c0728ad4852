//! Bad input of every kind, on every rpc, gets a documented error (code,
//! ErrorInfo reason, HttpStatusCode), never INTERNAL, never the decoder's
//! words, never a huge echo, and changes nothing stored: control characters
//! in any string, text over its limit (counted in characters), bytes that
//! are not a request, frames cut short, requests over the size limit, and
//! bearer schemes other than the exact `Bearer `.

use std::future::poll_fn;

use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::proto::{self, channel_context::ChannelState};
use ccc_callcontrol::startup::ServeOptions;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use sqlx::PgPool;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Service, http};
use tonic::{Code, Status};

use crate::helpers::*;

/// The most a client may get back for one bad request, message and details
/// together, whatever it sent.
const SMALL: usize = 1024;

/// Every rpc of the contract, by path, with its request type.
const METHODS: [(&str, &str); 9] = [
    (
        "/ccc.v20200701.CallControl/StartConference",
        "StartConferenceRequest",
    ),
    (
        "/ccc.v20200701.CallControl/EndConference",
        "EndConferenceRequest",
    ),
    (
        "/ccc.v20200701.CallControl/PollUserStatus",
        "PollUserStatusRequest",
    ),
    (
        "/ccc.v20200701.CallControl/ReadyForService",
        "ReadyForServiceRequest",
    ),
    (
        "/ccc.v20200701.Telephony/ReportChannelEvent",
        "ReportChannelEventRequest",
    ),
    (
        "/ccc.v20200701.Admin/CreateInstance",
        "CreateInstanceRequest",
    ),
    ("/ccc.v20200701.Admin/CreateUser", "CreateUserRequest"),
    (
        "/ccc.v20200701.Admin/CreateAccessToken",
        "CreateAccessTokenRequest",
    ),
    (
        "/ccc.v20200701.Admin/RevokeAccessToken",
        "RevokeAccessTokenRequest",
    ),
];

/// One request to any rpc.
#[derive(Debug, Clone)]
enum Rpc {
    Start(proto::StartConferenceRequest),
    End(proto::EndConferenceRequest),
    Poll(proto::PollUserStatusRequest),
    Ready(proto::ReadyForServiceRequest),
    Report(proto::ReportChannelEventRequest),
    Instance(proto::CreateInstanceRequest),
    User(proto::CreateUserRequest),
    Token(proto::CreateAccessTokenRequest),
    Revoke(proto::RevokeAccessTokenRequest),
}

impl Rpc {
    /// Sends it with the operator's clients; only the outcome matters.
    async fn send(self, app: &TestApp) -> Result<(), Status> {
        match self {
            Self::Start(r) => app.calls.clone().start_conference(r).await.map(drop),
            Self::End(r) => app.calls.clone().end_conference(r).await.map(drop),
            Self::Poll(r) => app.calls.clone().poll_user_status(r).await.map(drop),
            Self::Ready(r) => app.calls.clone().ready_for_service(r).await.map(drop),
            Self::Report(r) => app
                .telephony
                .clone()
                .report_channel_event(r)
                .await
                .map(drop),
            Self::Instance(r) => app.admin.clone().create_instance(r).await.map(drop),
            Self::User(r) => app.admin.clone().create_user(r).await.map(drop),
            Self::Token(r) => app.admin.clone().create_access_token(r).await.map(drop),
            Self::Revoke(r) => app.admin.clone().revoke_access_token(r).await.map(drop),
        }
    }
}

/// Everything stored, as text: equal snapshots, nothing changed.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut tables = Vec::new();
    for table in [
        "instances",
        "agents",
        "calls",
        "channels",
        "events",
        "access_tokens",
    ] {
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        tables.push(format!("{table}:\n{rows}"));
    }
    tables
}

/// A conference in the test instance: alice (8001) calling bob (8002) and
/// a customer, still ringing. Returns (alice, bob, job, customer channel).
async fn arrange(app: &TestApp) -> (String, String, String, String) {
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let call = app
        .start(&agents[0].0, &["8002", CUSTOMER])
        .await
        .expect("StartConference")
        .call_context
        .unwrap();
    let customer = call
        .channel_contexts
        .iter()
        .find(|c| c.destination == CUSTOMER)
        .unwrap()
        .channel_id
        .clone();
    (
        agents[0].0.clone(),
        agents[1].0.clone(),
        call.job_id,
        customer,
    )
}

#[track_caller]
fn assert_small(status: &Status) {
    let size = status.message().len() + status.details().len();
    assert!(size < SMALL, "{size} bytes: {}", status.message());
}

/// The first BadRequest violation names `field`.
#[track_caller]
fn assert_names(status: &Status, field: &str) {
    let violations = violations(status);
    assert_eq!(
        violations.first().map(|v| v.0.as_str()),
        Some(field),
        "{status:?}"
    );
}

/// Control characters, one case per string field of every rpc, and free
/// text over its limit: each is `Parameter.Invalid` naming the field, and
/// nothing is stored.
#[sqlx::test]
async fn control_characters_and_long_text_are_invalid_parameters(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (alice, _bob, job, customer) = arrange(&app).await;

    let start = proto::StartConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
        participant_list_json: format!(r#"["{CUSTOMER}"]"#),
        timeout_seconds: None,
        tags: String::new(),
    };
    let end = proto::EndConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
        job_id: job.clone(),
    };
    let poll = proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
    };
    let ready = proto::ReadyForServiceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
        outbound_scenario: false,
    };
    let report = proto::ReportChannelEventRequest {
        instance_id: INSTANCE.into(),
        job_id: job.clone(),
        channel_id: customer.clone(),
        channel_state: ChannelState::Released as i32,
        release_initiator: String::new(),
        release_reason: String::new(),
    };
    let instance = proto::CreateInstanceRequest {
        instance_id: "ccc-new".into(),
        name: "New".into(),
        description: String::new(),
    };
    let user = proto::CreateUserRequest {
        instance_id: INSTANCE.into(),
        login_name: "carol".into(),
        display_name: "Carol".into(),
        work_mode: proto::WorkMode::OnSite as i32,
        mobile: String::new(),
        extension: String::new(),
    };
    let token = proto::CreateAccessTokenRequest {
        instance_id: INSTANCE.into(),
        role: proto::AccessRole::Agent as i32,
        user_id: alice.clone(),
        expires_in_seconds: None,
    };
    let revoke = proto::RevokeAccessTokenRequest {
        instance_id: INSTANCE.into(),
        token_id: "tok-0123456789abcdef".into(),
    };

    let long = |n: usize, c: char| c.to_string().repeat(n);
    // (case, request, field named, reason)
    let cases: Vec<(&str, Rpc, &str, &str)> = vec![
        // StartConference
        (
            "start: NUL in InstanceId",
            Rpc::Start(proto::StartConferenceRequest {
                instance_id: "ccc\0test".into(),
                ..start.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "start: NUL in UserId",
            Rpc::Start(proto::StartConferenceRequest {
                user_id: "alice\0@ccc-test".into(),
                ..start.clone()
            }),
            "UserId",
            "Parameter.Invalid",
        ),
        (
            "start: JSON-escaped NUL in an entry",
            Rpc::Start(proto::StartConferenceRequest {
                participant_list_json: r#"["139\u000000001234"]"#.into(),
                ..start.clone()
            }),
            "ParticipantListJson",
            "Parameter.Invalid",
        ),
        (
            "start: raw NUL after the JSON",
            Rpc::Start(proto::StartConferenceRequest {
                participant_list_json: format!("[\"{CUSTOMER}\"]\0"),
                ..start.clone()
            }),
            "ParticipantListJson",
            "Parameter.Invalid",
        ),
        (
            "start: 10 KB bad entry",
            Rpc::Start(proto::StartConferenceRequest {
                participant_list_json: serde_json::to_string(&[long(10_240, '9') + "x"]).unwrap(),
                ..start.clone()
            }),
            "ParticipantListJson",
            "Parameter.Invalid",
        ),
        (
            "start: NUL in Tags",
            Rpc::Start(proto::StartConferenceRequest {
                tags: "vip\0".into(),
                ..start.clone()
            }),
            "Tags",
            "Parameter.Invalid",
        ),
        (
            "start: ESC in Tags",
            Rpc::Start(proto::StartConferenceRequest {
                tags: "\u{1b}[31mvip".into(),
                ..start.clone()
            }),
            "Tags",
            "Parameter.Invalid",
        ),
        (
            "start: DEL in Tags",
            Rpc::Start(proto::StartConferenceRequest {
                tags: "vip\u{7f}".into(),
                ..start.clone()
            }),
            "Tags",
            "Parameter.Invalid",
        ),
        (
            "start: C1 NEL in Tags",
            Rpc::Start(proto::StartConferenceRequest {
                tags: "vip\u{85}".into(),
                ..start.clone()
            }),
            "Tags",
            "Parameter.Invalid",
        ),
        (
            "start: 129 characters of Tags",
            Rpc::Start(proto::StartConferenceRequest {
                tags: long(129, 'é'),
                ..start.clone()
            }),
            "Tags",
            "Parameter.Invalid",
        ),
        // EndConference
        (
            "end: NUL in InstanceId",
            Rpc::End(proto::EndConferenceRequest {
                instance_id: "\0".into(),
                ..end.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "end: NUL in UserId",
            Rpc::End(proto::EndConferenceRequest {
                user_id: format!("{alice}\0"),
                ..end.clone()
            }),
            "UserId",
            "Parameter.Invalid",
        ),
        (
            "end: NUL in JobId",
            Rpc::End(proto::EndConferenceRequest {
                job_id: format!("{job}\0"),
                ..end.clone()
            }),
            "JobId",
            "Parameter.Invalid",
        ),
        // PollUserStatus
        (
            "poll: NUL in InstanceId",
            Rpc::Poll(proto::PollUserStatusRequest {
                instance_id: "ccc-test\0".into(),
                ..poll.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "poll: NUL in UserId",
            Rpc::Poll(proto::PollUserStatusRequest {
                user_id: "\0".into(),
                ..poll.clone()
            }),
            "UserId",
            "Parameter.Invalid",
        ),
        // ReadyForService
        (
            "ready: NUL in InstanceId",
            Rpc::Ready(proto::ReadyForServiceRequest {
                instance_id: "ccc-test\0".into(),
                ..ready.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "ready: ESC in UserId",
            Rpc::Ready(proto::ReadyForServiceRequest {
                user_id: format!("\u{1b}{alice}"),
                ..ready.clone()
            }),
            "UserId",
            "Parameter.Invalid",
        ),
        // ReportChannelEvent
        (
            "report: NUL in InstanceId",
            Rpc::Report(proto::ReportChannelEventRequest {
                instance_id: "ccc\0".into(),
                ..report.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "report: NUL in JobId",
            Rpc::Report(proto::ReportChannelEventRequest {
                job_id: format!("{job}\0"),
                ..report.clone()
            }),
            "JobId",
            "Parameter.Invalid",
        ),
        (
            "report: NUL in ChannelId",
            Rpc::Report(proto::ReportChannelEventRequest {
                channel_id: format!("{customer}\0"),
                ..report.clone()
            }),
            "ChannelId",
            "Parameter.Invalid",
        ),
        (
            "report: NUL in ReleaseInitiator",
            Rpc::Report(proto::ReportChannelEventRequest {
                release_initiator: "8001\0".into(),
                ..report.clone()
            }),
            "ReleaseInitiator",
            "Parameter.Invalid",
        ),
        (
            "report: NUL in ReleaseReason",
            Rpc::Report(proto::ReportChannelEventRequest {
                release_reason: "\0".into(),
                ..report.clone()
            }),
            "ReleaseReason",
            "Parameter.Invalid",
        ),
        (
            "report: BEL in ReleaseReason",
            Rpc::Report(proto::ReportChannelEventRequest {
                release_reason: "486 - Busy\u{7}".into(),
                ..report.clone()
            }),
            "ReleaseReason",
            "Parameter.Invalid",
        ),
        (
            "report: 129 characters of ReleaseInitiator",
            Rpc::Report(proto::ReportChannelEventRequest {
                release_initiator: long(129, '名'),
                ..report.clone()
            }),
            "ReleaseInitiator",
            "Parameter.Invalid",
        ),
        (
            "report: 129 characters of ReleaseReason",
            Rpc::Report(proto::ReportChannelEventRequest {
                release_reason: long(129, 'é'),
                ..report.clone()
            }),
            "ReleaseReason",
            "Parameter.Invalid",
        ),
        // CreateInstance
        (
            "instance: NUL in InstanceId",
            Rpc::Instance(proto::CreateInstanceRequest {
                instance_id: "ccc-new\0".into(),
                ..instance.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "instance: NUL in Name",
            Rpc::Instance(proto::CreateInstanceRequest {
                name: "New\0".into(),
                ..instance.clone()
            }),
            "Name",
            "Parameter.Invalid",
        ),
        (
            "instance: ESC in Name",
            Rpc::Instance(proto::CreateInstanceRequest {
                name: "\u{1b}]0;pwned\u{7}".into(),
                ..instance.clone()
            }),
            "Name",
            "Parameter.Invalid",
        ),
        (
            "instance: 129 characters of Name",
            Rpc::Instance(proto::CreateInstanceRequest {
                name: long(129, '名'),
                ..instance.clone()
            }),
            "Name",
            "Parameter.Invalid",
        ),
        (
            "instance: only NUL in Description",
            Rpc::Instance(proto::CreateInstanceRequest {
                description: "\0".into(),
                ..instance.clone()
            }),
            "Description",
            "Parameter.Invalid",
        ),
        (
            "instance: C1 CSI in Description",
            Rpc::Instance(proto::CreateInstanceRequest {
                description: "a\u{9b}b".into(),
                ..instance.clone()
            }),
            "Description",
            "Parameter.Invalid",
        ),
        (
            "instance: 1025 characters of Description",
            Rpc::Instance(proto::CreateInstanceRequest {
                description: long(1025, 'é'),
                ..instance.clone()
            }),
            "Description",
            "Parameter.Invalid",
        ),
        // CreateUser
        (
            "user: NUL in InstanceId",
            Rpc::User(proto::CreateUserRequest {
                instance_id: "\0ccc-test".into(),
                ..user.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "user: NUL in LoginName",
            Rpc::User(proto::CreateUserRequest {
                login_name: "carol\0".into(),
                ..user.clone()
            }),
            "LoginName",
            "Parameter.Invalid",
        ),
        (
            "user: NUL in DisplayName",
            Rpc::User(proto::CreateUserRequest {
                display_name: "Carol\0".into(),
                ..user.clone()
            }),
            "DisplayName",
            "Parameter.Invalid",
        ),
        (
            "user: backspace in DisplayName",
            Rpc::User(proto::CreateUserRequest {
                display_name: "Carol\u{8}\u{8}".into(),
                ..user.clone()
            }),
            "DisplayName",
            "Parameter.Invalid",
        ),
        (
            "user: 129 characters of DisplayName",
            Rpc::User(proto::CreateUserRequest {
                display_name: long(129, '名'),
                ..user.clone()
            }),
            "DisplayName",
            "Parameter.Invalid",
        ),
        (
            "user: NUL in Mobile",
            Rpc::User(proto::CreateUserRequest {
                mobile: "13900001234\0".into(),
                ..user.clone()
            }),
            "Mobile",
            "Parameter.Invalid",
        ),
        (
            "user: NUL in Extension",
            Rpc::User(proto::CreateUserRequest {
                extension: "80\09".into(),
                ..user.clone()
            }),
            "Extension",
            "Parameter.Invalid",
        ),
        // CreateAccessToken
        (
            "token: NUL in InstanceId",
            Rpc::Token(proto::CreateAccessTokenRequest {
                instance_id: "ccc-test\0".into(),
                ..token.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "token: NUL in UserId",
            Rpc::Token(proto::CreateAccessTokenRequest {
                user_id: format!("{alice}\0"),
                ..token.clone()
            }),
            "UserId",
            "Parameter.Invalid",
        ),
        // RevokeAccessToken
        (
            "revoke: NUL in InstanceId",
            Rpc::Revoke(proto::RevokeAccessTokenRequest {
                instance_id: "ccc-test\0".into(),
                ..revoke.clone()
            }),
            "InstanceId",
            "Parameter.Invalid",
        ),
        (
            "revoke: NUL in TokenId",
            Rpc::Revoke(proto::RevokeAccessTokenRequest {
                token_id: "tok-0123456789abcde\0".into(),
                ..revoke.clone()
            }),
            "TokenId",
            "Parameter.Invalid",
        ),
    ];
    let before = snapshot(&app).await;
    let events = app.event_count().await;

    for (case, rpc, field, reason) in cases {
        let err = rpc.send(&app).await.expect_err(case);

        assert_error(&err, Code::InvalidArgument, reason, 400);
        assert_names(&err, field);
        assert_small(&err);
        assert!(!err.message().contains('\0'), "{case}: {err:?}");
        assert_eq!(app.event_count().await, events, "{case}");
        assert_eq!(snapshot(&app).await, before, "{case}");
    }
    assert_eq!(app.stored_agent(&alice).await.0, "TALKING");
}

/// Limits count characters, not bytes: text of exactly the limit in
/// multi-byte characters passes, and tab, line feed and carriage return
/// are ordinary text.
#[sqlx::test]
async fn text_limits_count_characters(pool: PgPool) {
    let app = spawn_app(pool).await;
    let name = "名".repeat(128); // 384 bytes
    let description = format!("{}\tline\r\nnext", "é".repeat(1013)); // 1024 characters
    assert_eq!(description.chars().count(), 1024);

    let created = app
        .admin
        .clone()
        .create_instance(proto::CreateInstanceRequest {
            instance_id: INSTANCE.into(),
            name: name.clone(),
            description: description.clone(),
        })
        .await
        .expect("128 and 1024 characters pass")
        .into_inner()
        .data
        .unwrap();
    assert_eq!(
        (created.name, created.description),
        (name.clone(), description)
    );

    let user = app
        .admin
        .clone()
        .create_user(proto::CreateUserRequest {
            instance_id: INSTANCE.into(),
            login_name: "alice".into(),
            display_name: name.clone(),
            work_mode: proto::WorkMode::OnSite as i32,
            mobile: String::new(),
            extension: String::new(),
        })
        .await
        .expect("128 characters of DisplayName pass")
        .into_inner()
        .data
        .unwrap();
    assert_eq!(user.display_name, name);
    app.ready(&user.user_id).await.unwrap();

    let started = app
        .calls
        .clone()
        .start_conference(proto::StartConferenceRequest {
            instance_id: INSTANCE.into(),
            user_id: user.user_id.clone(),
            participant_list_json: format!(r#"["{CUSTOMER}"]"#),
            timeout_seconds: None,
            tags: "ü".repeat(128),
        })
        .await
        .expect("128 characters of Tags pass")
        .into_inner()
        .data
        .unwrap()
        .call_context
        .unwrap();
    let customer = started
        .channel_contexts
        .iter()
        .find(|c| c.destination == CUSTOMER)
        .unwrap()
        .channel_id
        .clone();

    app.report_release(
        &started.job_id,
        &customer,
        ChannelState::Released,
        &"名".repeat(128),
        &"é".repeat(128),
    )
    .await
    .expect("128 characters of ReleaseInitiator and ReleaseReason pass");
    let stored = app.stored_channels(&started.job_id).await;
    let released = stored.iter().find(|c| c.0 == CUSTOMER).unwrap();
    assert_eq!(
        (released.2.chars().count(), released.3.chars().count()),
        (128, 128)
    );
}

/// A 1 MB bad participant (with a limit that lets it in) is echoed as a
/// short prefix, not whole.
#[sqlx::test]
async fn a_huge_bad_value_is_echoed_cut_short(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: std::time::Duration::ZERO,
            max_request_bytes: 4 * 1024 * 1024,
            ..ServeOptions::default()
        },
    )
    .await;
    let agents = app.ready_agents(&["alice"]).await;
    let before = snapshot(&app).await;
    let entry = "9".repeat(1024 * 1024) + "x";

    let err = Rpc::Start(proto::StartConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: agents[0].0.clone(),
        participant_list_json: serde_json::to_string(&[&entry]).unwrap(),
        timeout_seconds: None,
        tags: String::new(),
    })
    .send(&app)
    .await
    .unwrap_err();

    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_names(&err, "ParticipantListJson");
    assert_small(&err);
    assert!(
        err.message().contains(&format!("{:?}…", "9".repeat(32))),
        "{}",
        err.message()
    );
    assert_eq!(snapshot(&app).await, before);
}

/// Bytes sent as they are, so a test can send what no client would.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `bytes` as the one message of a call to `path`, with `token` (if
/// any) as the bearer.
async fn send_raw(
    app: &TestApp,
    path: &'static str,
    token: Option<&str>,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = tonic::Request::new(bytes);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// Bytes that are no request of the method's type are `Request.Malformed`
/// on every rpc, naming the type and nothing of the decoder's words, with
/// or without a token: a request is decoded before anything else.
#[sqlx::test]
async fn undecodable_requests_are_malformed_on_every_rpc(pool: PgPool) {
    let app = spawn_app(pool).await;
    arrange(&app).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    // Field 1 is InstanceId, a string, in every request type.
    let cases: [(&str, Vec<u8>); 5] = [
        ("invalid UTF-8 in a string", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("wrong wire type", vec![0x08, 0x01]),
        ("truncated varint", vec![0x0a, 0x80]),
        ("length past the end", vec![0x0a, 0x10, b'c', b'c', b'c']),
        ("garbage", vec![0xff; 16]),
    ];
    let before = snapshot(&app).await;

    for (path, message_type) in METHODS {
        for (case, bytes) in &cases {
            for token in [Some(token.as_str()), None] {
                let err = send_raw(&app, path, token, bytes.clone())
                    .await
                    .expect_err(case);

                let what = format!("{path}, {case}, token: {}", token.is_some());
                assert_error(&err, Code::InvalidArgument, "Request.Malformed", 400);
                assert_eq!(
                    err.message(),
                    format!("The request could not be decoded as a {message_type} message."),
                    "{what}"
                );
                assert!(violations(&err).is_empty(), "{what}");
                assert_small(&err);
            }
        }
    }
    // A well-formed message still gets through the same way.
    let ok = send_raw(
        &app,
        METHODS[2].0,
        Some(&token),
        proto::PollUserStatusRequest {
            instance_id: INSTANCE.into(),
            user_id: format!("alice@{INSTANCE}"),
        }
        .encode_to_vec(),
    )
    .await
    .expect("a valid PollUserStatus");
    assert!(proto::PollUserStatusResponse::decode(&ok[..]).is_ok());
    assert_eq!(snapshot(&app).await, before);
}

/// Sends `body` as it is as the HTTP/2 body of a gRPC call to `path`, and
/// returns the status of the (trailers-only) answer.
async fn send_body(app: &TestApp, path: &str, token: &str, body: &[u8]) -> Status {
    let (status, _) = send_body_with(app, path, token, body, &[]).await;
    status.expect("a trailers-only answer")
}

/// [`send_body`] with `extra` request headers: the status of a
/// trailers-only answer (`None` for an answer with a message), and the
/// answer's headers.
async fn send_body_with(
    app: &TestApp,
    path: &str,
    token: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> (Option<Status>, http::HeaderMap) {
    let mut channel = app.channel.clone();
    let body = String::from_utf8(body.to_vec()).expect("test bodies are ASCII");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(tonic::body::Body::new(body)).unwrap();
    poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = channel.call(request).await.unwrap();
    let status = Status::from_header_map(response.headers());
    (status, response.headers().clone())
}

/// A compressed request (we accept none) is UNIMPLEMENTED, as gRPC asks,
/// with our ErrorInfo and the encodings we do accept, on every method; it
/// changes nothing. `identity` is no compression, and goes through.
#[sqlx::test]
async fn compressed_requests_are_refused_with_the_encodings_we_accept(pool: PgPool) {
    let app = spawn_app(pool).await;
    arrange(&app).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let before = snapshot(&app).await;
    // A compressed frame; what it holds does not matter, it is never read.
    let frame: &[u8] = &[1, 0, 0, 0, 2, b'x', b'y'];

    for (path, _) in METHODS {
        for encoding in ["gzip", "deflate", "snappy"] {
            let (status, headers) =
                send_body_with(&app, path, &token, frame, &[("grpc-encoding", encoding)]).await;
            let status = status.expect("a trailers-only answer");

            assert_error(
                &status,
                Code::Unimplemented,
                "Request.UnsupportedEncoding",
                415,
            );
            assert_eq!(
                status.message(),
                format!(
                    "The request is compressed with {encoding}, which this service does not accept; send it uncompressed."
                ),
                "{path}"
            );
            assert_eq!(
                headers.get("grpc-accept-encoding").map(|v| v.as_bytes()),
                Some(&b"identity"[..]),
                "{path}"
            );
        }
    }
    assert_eq!(snapshot(&app).await, before);

    let plain = proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: format!("alice@{INSTANCE}"),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    body.extend_from_slice(&plain);
    let ascii: Vec<u8> = body.iter().map(|b| b & 0x7f).collect();
    assert_eq!(ascii, body, "the test's body must be ASCII for send_body");
    let (status, _) = send_body_with(
        &app,
        METHODS[2].0,
        &token,
        &body,
        &[("grpc-encoding", "identity")],
    )
    .await;
    assert!(status.is_none(), "answered with a message: {status:?}");
}

/// gRPC frames that tonic itself rejects before any message is decoded (a
/// frame cut short, no frame, a compression flag without compression) are
/// `Request.Malformed` too, not tonic's INTERNAL.
#[sqlx::test]
async fn broken_frames_are_malformed(pool: PgPool) {
    let app = spawn_app(pool).await;
    arrange(&app).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let cases: [(&str, &[u8]); 4] = [
        ("frame cut short", &[0, 0, 0, 0, 100, 0x0a, 0x01, b'c']),
        ("header cut short", &[0, 0, 0]),
        ("no message", &[]),
        ("compressed flag, no encoding", &[1, 0, 0, 0, 0]),
    ];
    let before = snapshot(&app).await;

    for (path, message_type) in METHODS {
        for (case, body) in cases {
            let status = send_body(&app, path, &token, body).await;

            assert_error(&status, Code::InvalidArgument, "Request.Malformed", 400);
            assert_eq!(
                status.message(),
                format!("The request could not be decoded as a {message_type} message."),
                "{path}, {case}"
            );
            assert_small(&status);
        }
    }
    assert_eq!(snapshot(&app).await, before);
}

/// A request over the limit (64 KiB by default) is `Request.TooLarge` on
/// every rpc, whatever its bytes, and one just under it is read as usual.
#[sqlx::test]
async fn oversized_requests_are_too_large_on_every_rpc(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (alice, ..) = arrange(&app).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let before = snapshot(&app).await;
    let limit = ServeOptions::default().max_request_bytes;

    for (path, _) in METHODS {
        for bytes in [vec![0xff; limit + 1], vec![0x0a; 1024 * 1024]] {
            let err = send_raw(&app, path, Some(&token), bytes)
                .await
                .expect_err(path);

            assert_error(&err, Code::ResourceExhausted, "Request.TooLarge", 413);
            assert_eq!(
                err.message(),
                format!("The request is larger than the limit of {limit} bytes."),
                "{path}"
            );
            assert_small(&err);
        }
    }
    // Through the generated client: a 1 MB participant list.
    let huge = Rpc::Start(proto::StartConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice.clone(),
        participant_list_json: serde_json::to_string(&["9".repeat(1024 * 1024)]).unwrap(),
        timeout_seconds: None,
        tags: String::new(),
    });
    let err = huge.send(&app).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "Request.TooLarge", 413);
    assert_small(&err);
    // Just under the limit: read, and refused for what it says.
    let under = Rpc::Start(proto::StartConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: alice,
        participant_list_json: format!(r#"["{CUSTOMER}"]"#),
        timeout_seconds: None,
        tags: "x".repeat(limit - 200),
    });
    let err = under.send(&app).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_names(&err, "Tags");
    assert_eq!(snapshot(&app).await, before);
}

/// The limit is the configured one.
#[sqlx::test]
async fn the_request_limit_is_configurable(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: std::time::Duration::ZERO,
            max_request_bytes: 2048,
            ..ServeOptions::default()
        },
    )
    .await;
    app.create_instance(INSTANCE).await;

    let err = Rpc::Instance(proto::CreateInstanceRequest {
        instance_id: "ccc-other".into(),
        name: "Other".into(),
        description: "d".repeat(2100),
    })
    .send(&app)
    .await
    .unwrap_err();

    assert_error(&err, Code::ResourceExhausted, "Request.TooLarge", 413);
    assert_eq!(
        err.message(),
        "The request is larger than the limit of 2048 bytes."
    );
}

/// Only `Bearer`, exactly, then one space: other spellings are the same
/// `InvalidAccessToken` as no token at all.
#[sqlx::test]
async fn only_the_exact_bearer_scheme_authenticates(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let poll = || proto::PollUserStatusRequest {
        instance_id: INSTANCE.into(),
        user_id: format!("nobody@{INSTANCE}"),
    };
    let before = snapshot(&app).await;

    for header in [
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer  {token}"),
        format!("Bearer\t{token}"),
        format!("Bearer{token}"),
    ] {
        let err = app
            .clients(Bearer::raw(&header))
            .calls
            .poll_user_status(poll())
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "InvalidAccessToken", 401);
        assert_eq!(
            err.message(),
            "The access token is missing, malformed, unknown, revoked or expired."
        );
    }
    // The exact form gets past authentication (to the unknown user).
    let err = app
        .clients(Bearer::raw(&format!("Bearer {token}")))
        .calls
        .poll_user_status(poll())
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);
    assert_eq!(snapshot(&app).await, before);
}
