//! Access tokens: which tokens authenticate, how they are stored, created,
//! revoked and expire, and the command-line bootstrap.

use std::process::Command;
use std::time::Duration;

use ccc_callcontrol::domain::access::{AccessToken, Role};
use ccc_callcontrol::proto::{self, UserState};
use ccc_callcontrol::startup::ServeOptions;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::*;
use crate::support::binary::database_url;

async fn poll_as(clients: &Clients, user: &str) -> Result<proto::UserContext, tonic::Status> {
    let r = clients
        .calls
        .clone()
        .poll_user_status(proto::PollUserStatusRequest {
            instance_id: INSTANCE.into(),
            user_id: user.into(),
        })
        .await?;
    Ok(r.into_inner().data.unwrap().user_context.unwrap())
}

async fn report_as(clients: &Clients) -> tonic::Status {
    clients
        .telephony
        .clone()
        .report_channel_event(proto::ReportChannelEventRequest {
            instance_id: INSTANCE.into(),
            job_id: "job-1".into(),
            channel_id: "ch:1".into(),
            channel_state: proto::channel_context::ChannelState::Answered as i32,
            release_initiator: String::new(),
            release_reason: String::new(),
        })
        .await
        .unwrap_err()
}

async fn create_instance_as(clients: &Clients) -> tonic::Status {
    clients
        .admin
        .clone()
        .create_instance(proto::CreateInstanceRequest {
            instance_id: INSTANCE.into(),
            name: "taken".into(),
            description: String::new(),
        })
        .await
        .unwrap_err()
}

/// Every way of not holding a live token gets the same answer, on every
/// service.
#[sqlx::test]
async fn no_usable_token_no_entry(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice"]).await;
    let revoked = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let ctx = ccc_callcontrol::app::RequestContext::local("t", "test");
    let id = app
        .direct
        .list_access_tokens(&ctx, None)
        .await
        .unwrap()
        .last()
        .unwrap()
        .token_id
        .clone();
    app.direct
        .revoke_access_token(
            &ctx,
            Some(&ccc_callcontrol::domain::ids::InstanceId::from_trusted(
                INSTANCE,
            )),
            &id,
            None,
        )
        .await
        .unwrap();
    let expiring = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, Some(1)).await;
    let unknown = AccessToken::from_random([7; 32]).reveal().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let bearers = [
        ("no metadata", Bearer::none()),
        ("not bearer", Bearer::raw(&format!("Basic {unknown}"))),
        ("malformed", Bearer::token("ccc_not-a-token")),
        ("no scheme", Bearer::raw(&unknown)),
        ("unknown", Bearer::token(&unknown)),
        ("revoked", Bearer::token(&revoked)),
        ("expired", Bearer::token(&expiring)),
    ];
    let mut messages = Vec::new();
    for (case, bearer) in bearers {
        let clients = app.clients(bearer);
        for err in [
            poll_as(&clients, &agents[0].0).await.unwrap_err(),
            report_as(&clients).await,
            create_instance_as(&clients).await,
        ] {
            assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
            assert_error(&err, Code::Unauthenticated, "InvalidAccessToken", 401);
            messages.push(err.message().to_owned());
        }
    }
    messages.dedup();
    assert_eq!(
        messages,
        ["The access token is missing, malformed, unknown, revoked or expired."]
    );
}

#[sqlx::test]
async fn the_token_comes_before_the_parameters(pool: PgPool) {
    let app = spawn_app(pool).await;
    let err = app
        .clients(Bearer::none())
        .calls
        .end_conference(proto::EndConferenceRequest::default())
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "InvalidAccessToken", 401);
}

#[sqlx::test]
async fn health_needs_no_token_and_both_can_be_turned_off(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let serving = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "ccc.v20200701.CallControl".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");

    let off = spawn_app_with(
        pool,
        ServeOptions {
            health: false,
            reflection: false,
            token_cache_ttl: Duration::ZERO,
            ..ServeOptions::default()
        },
    )
    .await;
    let err = HealthClient::new(off.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[sqlx::test]
async fn tokens_are_stored_only_as_hashes(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;
    let token = create_token(
        &app.direct,
        Some(INSTANCE),
        Role::Agent,
        Some("alice@ccc-test"),
        None,
    )
    .await;

    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT row_to_json(t)::text, token_hash FROM access_tokens t")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let events: Vec<String> = sqlx::query_scalar("SELECT after::text FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();

    let secret = &token["ccc_".len()..];
    assert!(rows.len() >= 2, "the operator's token and alice's");
    assert!(
        rows.iter().all(|(row, _)| !row.contains(secret)),
        "no plaintext in access_tokens"
    );
    assert!(
        events.iter().all(|e| !e.contains(secret)),
        "no plaintext in events"
    );
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    assert!(
        rows.iter().any(|(_, h)| h.as_slice() == hash),
        "the SHA-256 of the token is what is kept"
    );
}

#[sqlx::test]
async fn an_agent_token_acts_as_its_agent(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let admin = app.clients_as(Some(INSTANCE), Role::Admin, None).await;

    let created = admin
        .admin
        .clone()
        .create_access_token(proto::CreateAccessTokenRequest {
            instance_id: INSTANCE.into(),
            role: proto::AccessRole::Agent as i32,
            user_id: agents[0].0.clone(),
            expires_in_seconds: Some(3600),
        })
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    remember_secret(&created.token);
    assert!(
        AccessToken::parse(&created.token).is_some(),
        "ccc_ and 64 hex digits"
    );
    assert!(created.token_id.starts_with("tok-"));
    assert_eq!(created.role(), proto::AccessRole::Agent);
    assert_eq!(
        (created.instance_id.as_str(), created.user_id.as_str()),
        (INSTANCE, agents[0].0.as_str())
    );
    assert!(created.expires_at > 0);

    let alice = app.clients(Bearer::token(&created.token));
    let me = poll_as(&alice, "").await.unwrap();
    assert_eq!(
        (me.user_id.as_str(), me.user_state()),
        (agents[0].0.as_str(), UserState::Ready)
    );
    let err = poll_as(&alice, &agents[1].0).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "Permission.Common", 403);
    let (actor,): (String,) =
        sqlx::query_as("SELECT actor FROM events WHERE action = 'CreateAccessToken' ORDER BY event_id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(actor.starts_with("admin:tok-"), "{actor}");
}

#[sqlx::test]
async fn bad_token_requests(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.ready_agents(&["alice"]).await;
    let create = |role: proto::AccessRole, user: &str, expires: Option<i64>| {
        let mut admin = app.admin.clone();
        let request = proto::CreateAccessTokenRequest {
            instance_id: INSTANCE.into(),
            role: role as i32,
            user_id: user.into(),
            expires_in_seconds: expires,
        };
        async move { admin.create_access_token(request).await.unwrap_err() }
    };

    let err = create(proto::AccessRole::Unspecified, "", None).await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(violations(&err)[0].0, "Role");
    let err = create(proto::AccessRole::Agent, "", None).await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(violations(&err)[0].0, "UserId");
    let err = create(proto::AccessRole::Telephony, "alice@ccc-test", None).await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let err = create(proto::AccessRole::Admin, "", Some(0)).await;
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_eq!(violations(&err)[0].0, "ExpiresInSeconds");
    let err = create(proto::AccessRole::Agent, "zed@ccc-test", None).await;
    assert_error(&err, Code::NotFound, "NotExists.UserId", 404);

    let err = app
        .admin
        .clone()
        .revoke_access_token(proto::RevokeAccessTokenRequest {
            instance_id: INSTANCE.into(),
            token_id: "tok-12".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
}

/// With the token cache on, a revocation through this replica still takes
/// effect at once.
#[sqlx::test]
async fn a_revoked_token_stops_working_at_once(pool: PgPool) {
    let options = ServeOptions {
        token_cache_ttl: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    let agents = app.ready_agents(&["alice"]).await;
    let admin = app.clients_as(Some(INSTANCE), Role::Admin, None).await;
    let created = admin
        .admin
        .clone()
        .create_access_token(proto::CreateAccessTokenRequest {
            instance_id: INSTANCE.into(),
            role: proto::AccessRole::Agent as i32,
            user_id: agents[0].0.clone(),
            expires_in_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    remember_secret(&created.token);
    let alice = app.clients(Bearer::token(&created.token));
    poll_as(&alice, "").await.expect("works, and is now cached");

    let revoke = proto::RevokeAccessTokenRequest {
        instance_id: INSTANCE.into(),
        token_id: created.token_id.clone(),
    };
    let first = admin
        .admin
        .clone()
        .revoke_access_token(revoke.clone())
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    assert!(first.revoked_at > 0);

    let err = poll_as(&alice, "").await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "InvalidAccessToken", 401);
    let again = admin
        .admin
        .clone()
        .revoke_access_token(revoke)
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    assert_eq!(
        again.revoked_at, first.revoked_at,
        "revoking twice changes nothing"
    );

    // Another instance's admin cannot even see it.
    let err = app
        .admin
        .clone()
        .revoke_access_token(proto::RevokeAccessTokenRequest {
            instance_id: "ccc-other".into(),
            token_id: created.token_id,
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.InstanceId", 404);
}

fn cli(args: &[&str], url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ccc-callcontrol"))
        .args(args)
        .args(["--database-url", url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ccc-callcontrol")
}

#[sqlx::test]
async fn the_command_line_bootstraps_lists_and_revokes_tokens(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.ready_agents(&["alice"]).await;
    let url = database_url(&pool, None);

    let created = cli(
        &[
            "token",
            "create",
            "--role",
            "agent",
            "--instance",
            INSTANCE,
            "--user",
            "alice@ccc-test",
        ],
        &url,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    remember_secret(&token);
    assert!(
        AccessToken::parse(&token).is_some(),
        "stdout is the token alone: {token:?}"
    );

    let alice = app.clients(Bearer::token(&token));
    assert_eq!(poll_as(&alice, "").await.unwrap().user_id, "alice@ccc-test");

    let listed = cli(&["token", "list", "--instance", INSTANCE], &url);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.status.success());
    assert!(
        !listing.contains(&token["ccc_".len()..]),
        "list shows no secrets"
    );
    let line = listing
        .lines()
        .find(|l| l.contains("alice@ccc-test"))
        .expect("alice's token is listed");
    let token_id = line.split('\t').next().unwrap();
    assert!(line.contains("AGENT"));

    let revoked = cli(&["token", "revoke", token_id], &url);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let err = poll_as(&alice, "").await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "InvalidAccessToken", 401);

    let wrong = cli(
        &["token", "create", "--role", "agent", "--instance", INSTANCE],
        &url,
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("--user"));
    let operator = cli(&["token", "create", "--role", "admin"], &url);
    assert!(operator.status.success());
    let operator = String::from_utf8(operator.stdout)
        .unwrap()
        .trim()
        .to_owned();
    remember_secret(&operator);
    let err = create_instance_as(&app.clients(Bearer::token(&operator))).await;
    assert_error(&err, Code::AlreadyExists, "Duplicated.InstanceId", 409);
}
