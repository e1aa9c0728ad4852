//! CreateInstance and CreateUser.

use ccc_callcontrol::proto::{self, UserState};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

fn user(
    instance: &str,
    login: &str,
    mode: proto::WorkMode,
    mobile: &str,
    extension: &str,
) -> proto::CreateUserRequest {
    proto::CreateUserRequest {
        instance_id: instance.into(),
        login_name: login.into(),
        display_name: login.into(),
        work_mode: mode as i32,
        mobile: mobile.into(),
        extension: extension.into(),
    }
}

#[sqlx::test]
async fn instances_are_created_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut admin = app.admin.clone();
    let request = proto::CreateInstanceRequest {
        instance_id: INSTANCE.into(),
        name: "Test".into(),
        description: "the test instance".into(),
    };

    let created = admin
        .create_instance(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.code.as_str(), created.http_status_code),
        ("OK", 200)
    );
    let data = created.data.unwrap();
    assert_eq!(
        (data.instance_id.as_str(), data.name.as_str()),
        (INSTANCE, "Test")
    );
    assert!(data.create_time > 0);

    let err = admin.create_instance(request).await.unwrap_err();
    assert_error(&err, Code::AlreadyExists, "Duplicated.InstanceId", 409);
    assert_eq!(err.message(), "The instance ccc-test already exists.");

    let blank = proto::CreateInstanceRequest {
        instance_id: "Bad_Id".into(),
        name: String::new(),
        description: String::new(),
    };
    let err = admin.create_instance(blank).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let fields: Vec<_> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["InstanceId", "Name"]);
}

#[sqlx::test]
async fn agents_get_an_id_and_the_lowest_free_extension(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let mut admin = app.admin.clone();

    let a = admin
        .create_user(user(INSTANCE, "alice", proto::WorkMode::OnSite, "", ""))
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    let b = admin
        .create_user(user(INSTANCE, "bob", proto::WorkMode::OnSite, "", "8003"))
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    let c = admin
        .create_user(user(
            INSTANCE,
            "carol",
            proto::WorkMode::OffSite,
            "13900001111",
            "",
        ))
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();
    let d = admin
        .create_user(user(INSTANCE, "dave", proto::WorkMode::OfficePhone, "", ""))
        .await
        .unwrap()
        .into_inner()
        .data
        .unwrap();

    assert_eq!(
        (a.user_id.as_str(), a.extension.as_str()),
        ("alice@ccc-test", "8001")
    );
    assert_eq!(b.extension, "8003");
    assert_eq!(c.extension, "8002");
    assert_eq!(d.extension, "8004");
    assert_eq!(c.mobile, "13900001111");
    assert_eq!(c.work_mode(), proto::WorkMode::OffSite);
    let ctx = a.user_context.unwrap();
    assert_eq!(ctx.user_state(), UserState::Offline);
    assert_eq!(
        ctx.device_state(),
        proto::user_context::DeviceState::Unregistered
    );
    let stored: (String, String, String) = sqlx::query_as(
        "SELECT login_name, display_name, user_state FROM agents WHERE user_id = 'alice@ccc-test'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, ("alice".into(), "alice".into(), "OFFLINE".into()));
    // The mobile number is not copied into the event log.
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE strpos(after::text, $1) > 0")
            .bind("13900001111")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(logged, 0);
}

#[sqlx::test]
async fn duplicates_and_bad_agents_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let mut admin = app.admin.clone();
    admin
        .create_user(user(INSTANCE, "alice", proto::WorkMode::OnSite, "", "8001"))
        .await
        .unwrap();

    let err = admin
        .create_user(user(INSTANCE, "alice", proto::WorkMode::OnSite, "", ""))
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "Duplicated.LoginName", 409);
    assert_eq!(
        err.message(),
        "The login name alice already exists in instance ccc-test."
    );
    let err = admin
        .create_user(user(INSTANCE, "bob", proto::WorkMode::OnSite, "", "8001"))
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "Duplicated.Extension", 409);
    assert_eq!(
        err.message(),
        "The extension 8001 already exists in instance ccc-test."
    );

    let err = admin
        .create_user(user("nowhere", "bob", proto::WorkMode::OnSite, "", ""))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NotExists.InstanceId", 404);
    let err = admin
        .create_user(user(INSTANCE, "bob", proto::WorkMode::OffSite, "", ""))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(
        err.message(),
        "The parameter Mobile must not be null or empty."
    );
    let err = admin
        .create_user(user(INSTANCE, "bob", proto::WorkMode::Unspecified, "", ""))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Blank", 400);
    assert_eq!(violations(&err)[0].0, "WorkMode");
    let err = admin
        .create_user(user(
            INSTANCE,
            "bob smith",
            proto::WorkMode::OnSite,
            "12",
            "1",
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    let fields: Vec<_> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["LoginName", "Mobile", "Extension"]);
}
