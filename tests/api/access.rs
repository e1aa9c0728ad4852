//! Who may call what: every role × every rpc × (own instance, another
//! existing instance, an instance that does not exist) × (the agent itself,
//! another agent), each cell the exact status and reason.

use std::sync::atomic::{AtomicUsize, Ordering};

use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::proto::{self, channel_context::ChannelState};
use sqlx::PgPool;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::*;

const OWN: &str = "ccc-a";
const OTHER: &str = "ccc-b";
const MISSING: &str = "ccc-nowhere";
const ME: &str = "alice@ccc-a";
const SOMEONE_ELSE: &str = "bob@ccc-a";

#[derive(Debug, Clone, Copy)]
enum Who {
    Operator,
    Admin,
    Agent,
    Telephony,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    StartConference,
    EndConference,
    PollUserStatus,
    ReadyForService,
    ReportChannelEvent,
    CreateInstance,
    CreateUser,
    CreateAccessToken,
    RevokeAccessToken,
}

/// What a cell expects: success, or the gRPC code and contact-center code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Is {
    Ok,
    Err(Code, &'static str),
}

use Is::Ok as OK;
const DENIED: Is = Is::Err(Code::PermissionDenied, "Permission.Common");
const NO_INSTANCE: Is = Is::Err(Code::NotFound, "NotExists.InstanceId");
const NO_USER: Is = Is::Err(Code::NotFound, "NotExists.UserId");
const NO_CALL: Is = Is::Err(Code::NotFound, "NotExists.JobId");
const NO_TOKEN: Is = Is::Err(Code::NotFound, "NotExists.TokenId");
const DUPLICATE: Is = Is::Err(Code::AlreadyExists, "Duplicated.InstanceId");
/// StartConference invites extension 8099, which nobody has: an error
/// that comes after every lookup and changes nothing.
const NOBODY_AT_8099: Is = Is::Err(Code::InvalidArgument, "Parameter.Invalid");

/// Columns: (own instance, me), (own, someone else), (other instance, me),
/// (other, someone else), (missing instance, me), (missing, someone else).
/// "Me" is the agent alice@ccc-a, the AGENT token's own; the others name
/// her too, so in ccc-b she does not exist.
#[rustfmt::skip]
const MATRIX: &[(Who, Rpc, [Is; 6])] = &[
    (Who::Operator, Rpc::StartConference,    [NOBODY_AT_8099, NOBODY_AT_8099, NO_USER, NO_USER, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::EndConference,      [NO_CALL, NO_CALL, NO_USER, NO_USER, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::PollUserStatus,     [OK, OK, NO_USER, NO_USER, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::ReadyForService,    [OK, OK, NO_USER, NO_USER, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::ReportChannelEvent, [NO_CALL, NO_CALL, NO_CALL, NO_CALL, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::CreateInstance,     [DUPLICATE, DUPLICATE, DUPLICATE, DUPLICATE, OK, OK]),
    (Who::Operator, Rpc::CreateUser,         [OK, OK, OK, OK, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::CreateAccessToken,  [OK, OK, OK, OK, NO_INSTANCE, NO_INSTANCE]),
    (Who::Operator, Rpc::RevokeAccessToken,  [NO_TOKEN, NO_TOKEN, NO_TOKEN, NO_TOKEN, NO_INSTANCE, NO_INSTANCE]),

    (Who::Admin, Rpc::StartConference,       [NOBODY_AT_8099, NOBODY_AT_8099, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::EndConference,         [NO_CALL, NO_CALL, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::PollUserStatus,        [OK, OK, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::ReadyForService,       [OK, OK, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::ReportChannelEvent,    [NO_CALL, NO_CALL, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::CreateInstance,        [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::CreateUser,            [OK, OK, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::CreateAccessToken,     [OK, OK, DENIED, DENIED, DENIED, DENIED]),
    (Who::Admin, Rpc::RevokeAccessToken,     [NO_TOKEN, NO_TOKEN, DENIED, DENIED, DENIED, DENIED]),

    (Who::Agent, Rpc::StartConference,       [NOBODY_AT_8099, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::EndConference,         [NO_CALL, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::PollUserStatus,        [OK, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::ReadyForService,       [OK, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::ReportChannelEvent,    [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::CreateInstance,        [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::CreateUser,            [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::CreateAccessToken,     [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Agent, Rpc::RevokeAccessToken,     [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),

    (Who::Telephony, Rpc::StartConference,   [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::EndConference,     [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::PollUserStatus,    [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::ReadyForService,   [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::ReportChannelEvent,[NO_CALL, NO_CALL, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::CreateInstance,    [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::CreateUser,        [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::CreateAccessToken, [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
    (Who::Telephony, Rpc::RevokeAccessToken, [DENIED, DENIED, DENIED, DENIED, DENIED, DENIED]),
];

/// Makes names unique where a cell creates something.
static SERIAL: AtomicUsize = AtomicUsize::new(0);

fn fresh(prefix: &str) -> String {
    format!("{prefix}{}", SERIAL.fetch_add(1, Ordering::Relaxed))
}

async fn call(clients: &Clients, rpc: Rpc, instance: &str, user: &str) -> Result<(), Status> {
    let c = clients.clone();
    let (instance, user) = (instance.to_owned(), user.to_owned());
    match rpc {
        Rpc::StartConference => {
            let r = proto::StartConferenceRequest {
                instance_id: instance,
                user_id: user,
                participant_list_json: r#"["8099"]"#.into(),
                timeout_seconds: None,
                tags: String::new(),
            };
            c.calls.clone().start_conference(r).await.map(drop)
        }
        Rpc::EndConference => {
            let r = proto::EndConferenceRequest {
                instance_id: instance,
                user_id: user,
                job_id: "job-404".into(),
            };
            c.calls.clone().end_conference(r).await.map(drop)
        }
        Rpc::PollUserStatus => {
            let r = proto::PollUserStatusRequest {
                instance_id: instance,
                user_id: user,
            };
            c.calls.clone().poll_user_status(r).await.map(drop)
        }
        Rpc::ReadyForService => {
            let r = proto::ReadyForServiceRequest {
                instance_id: instance,
                user_id: user,
                outbound_scenario: false,
            };
            c.calls.clone().ready_for_service(r).await.map(drop)
        }
        Rpc::ReportChannelEvent => {
            let r = proto::ReportChannelEventRequest {
                instance_id: instance,
                job_id: "job-404".into(),
                channel_id: "ch:user:8001->8002:1:job-404".into(),
                channel_state: ChannelState::Answered as i32,
                release_initiator: String::new(),
                release_reason: String::new(),
            };
            c.telephony.clone().report_channel_event(r).await.map(drop)
        }
        Rpc::CreateInstance => {
            // The missing instance would exist after one cell: name a new
            // one each time.
            let id = if instance == MISSING {
                fresh("ccc-new-")
            } else {
                instance
            };
            let r = proto::CreateInstanceRequest {
                instance_id: id,
                name: "New".into(),
                description: String::new(),
            };
            c.admin.clone().create_instance(r).await.map(drop)
        }
        Rpc::CreateUser => {
            let r = proto::CreateUserRequest {
                instance_id: instance,
                login_name: fresh("user"),
                display_name: "User".into(),
                work_mode: proto::WorkMode::OnSite as i32,
                mobile: String::new(),
                extension: String::new(),
            };
            c.admin.clone().create_user(r).await.map(drop)
        }
        Rpc::CreateAccessToken => {
            let r = proto::CreateAccessTokenRequest {
                instance_id: instance,
                role: proto::AccessRole::Telephony as i32,
                user_id: String::new(),
                expires_in_seconds: None,
            };
            let created = c.admin.clone().create_access_token(r).await?;
            remember_secret(&created.into_inner().data.unwrap().token);
            Ok(())
        }
        Rpc::RevokeAccessToken => {
            let r = proto::RevokeAccessTokenRequest {
                instance_id: instance,
                token_id: "tok-0000000000000000".into(),
            };
            c.admin.clone().revoke_access_token(r).await.map(drop)
        }
    }
}

fn outcome(result: &Result<(), Status>) -> Is {
    match result {
        Ok(()) => Is::Ok,
        Err(status) => {
            let details = status.get_error_details();
            let reason = details
                .error_info()
                .map(|i| i.reason.clone())
                .unwrap_or_default();
            // Leak the reason string to compare with the table's &'static str.
            Is::Err(status.code(), Box::leak(reason.into_boxed_str()))
        }
    }
}

#[sqlx::test]
async fn every_role_every_rpc_every_instance_every_agent(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(OWN).await;
    app.create_instance(OTHER).await;
    for login in ["alice", "bob"] {
        let (user, _) = app.create_agent(OWN, login).await;
        app.calls
            .clone()
            .ready_for_service(proto::ReadyForServiceRequest {
                instance_id: OWN.into(),
                user_id: user,
                outbound_scenario: false,
            })
            .await
            .unwrap();
    }
    app.create_agent(OTHER, "carol").await;
    let operator = app.clients_as(None, Role::Admin, None).await;
    let admin = app.clients_as(Some(OWN), Role::Admin, None).await;
    let agent = app.clients_as(Some(OWN), Role::Agent, Some(ME)).await;
    let telephony = app.clients_as(Some(OWN), Role::Telephony, None).await;

    let columns = [
        (OWN, ME),
        (OWN, SOMEONE_ELSE),
        (OTHER, ME),
        (OTHER, SOMEONE_ELSE),
        (MISSING, ME),
        (MISSING, SOMEONE_ELSE),
    ];
    let mut failures = Vec::new();
    for (who, rpc, row) in MATRIX {
        let clients = match who {
            Who::Operator => &operator,
            Who::Admin => &admin,
            Who::Agent => &agent,
            Who::Telephony => &telephony,
        };
        for ((instance, user), expected) in columns.iter().zip(row) {
            let result = call(clients, *rpc, instance, user).await;
            let got = outcome(&result);
            if got != *expected {
                failures.push(format!("{who:?} {rpc:?} in {instance} for {user}: expected {expected:?}, got {got:?} {result:?}"));
            }
            if let Err(status) = &result {
                let http = status
                    .get_error_details()
                    .error_info()
                    .and_then(|i| i.metadata.get("HttpStatusCode").cloned());
                if *expected == DENIED && http.as_deref() != Some("403") {
                    failures.push(format!(
                        "{who:?} {rpc:?}: PERMISSION_DENIED without HttpStatusCode 403"
                    ));
                }
            }
        }
    }
    assert_eq!(MATRIX.len(), 4 * 9, "every role × every rpc");
    assert!(
        failures.is_empty(),
        "{} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[sqlx::test]
async fn outside_the_grant_existence_does_not_show(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(OWN).await;
    app.create_instance(OTHER).await;
    let admin = app.clients_as(Some(OWN), Role::Admin, None).await;

    let existing = call(&admin, Rpc::PollUserStatus, OTHER, "x@ccc-b")
        .await
        .unwrap_err();
    let missing = call(&admin, Rpc::PollUserStatus, MISSING, "x@ccc-nowhere")
        .await
        .unwrap_err();

    assert_error(&existing, Code::PermissionDenied, "Permission.Common", 403);
    assert_error(&missing, Code::PermissionDenied, "Permission.Common", 403);
    assert_eq!(
        existing.message().replace(OTHER, "X"),
        missing.message().replace(MISSING, "X"),
        "the same answer whether the instance exists or not"
    );
    assert!(
        existing
            .message()
            .starts_with("You have no permission to access. ")
    );
}
