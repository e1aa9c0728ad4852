//! The gRPC edge, translation only: requests are parsed into the app's
//! commands (every parameter checked, all violations reported at once),
//! results are turned into the documented response envelope, and errors
//! into statuses in exactly one place ([`status`]).

mod admin;
mod call_control;
pub mod codec;
mod convert;
mod idempotency;
mod request;
pub mod status;
mod telephony;

use std::time::Duration;

use tonic::service::Routes;

use crate::app::App;
use crate::proto::{
    FILE_DESCRIPTOR_SET, admin_server::AdminServer, call_control_server::CallControlServer,
    telephony_server::TelephonyServer,
};
use codec::DecodeGuard;

pub use idempotency::IDEMPOTENCY_HEADER;
pub use request::REQUEST_ID_HEADER;

/// Each request's parameter checks, pure and in the handlers' order, for
/// the fuzz target (`fuzz/`): it runs exactly what the handlers run.
pub mod parse {
    pub use super::admin::{
        CreateAccessTokenParams, RevokeAccessTokenParams, parse_create_access_token,
        parse_create_instance, parse_create_user, parse_revoke_access_token,
    };
    pub use super::call_control::{
        AgentParams, EndConferenceParams, StartConferenceParams, parse_end_conference,
        parse_poll_user_status, parse_ready_for_service, parse_start_conference,
    };
    pub use super::telephony::parse_report_channel_event;
}

/// Every service of the contract, plus (unless turned off) reflection (v1
/// and v1alpha, so grpcurl 1.8 works) and `grpc.health.v1`, which need no
/// token. Reflection also knows the `google.rpc` detail types, so `grpcurl`
/// prints error details decoded.
///
/// A request to our services larger than `max_request_bytes` (encoded) is
/// refused from its frame header, before its body is read, as
/// `Request.TooLarge` (see [`codec::DecodeGuard`]).
pub async fn routes(
    app: App,
    reflection: bool,
    health: bool,
    max_request_bytes: usize,
) -> anyhow::Result<Routes> {
    let limit = max_request_bytes;
    let mut routes = Routes::builder();
    routes
        .add_service(DecodeGuard::new(
            CallControlServer::new(call_control::CallControlService::new(app.clone()))
                .max_decoding_message_size(limit),
            limit,
        ))
        .add_service(DecodeGuard::new(
            TelephonyServer::new(telephony::TelephonyService::new(app.clone()))
                .max_decoding_message_size(limit),
            limit,
        ))
        .add_service(DecodeGuard::new(
            AdminServer::new(admin::AdminService::new(app.clone()))
                .max_decoding_message_size(limit),
            limit,
        ));
    if reflection {
        let descriptors = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = descriptors().build_v1()?;
        let reflection_v1alpha = descriptors().build_v1alpha()?;

        routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
    }
    if health {
        let (reporter, service) = tonic_health::server::health_reporter();
        // The first check before serving: a health query never finds the
        // services unregistered.
        let first = report_health(&reporter, &app, None).await;
        tokio::spawn(keep_reporting_health(reporter, app, first));
        routes.add_service(service);
    }
    Ok(routes.routes())
}

/// Keeps the health status of every service in step with whether the
/// database answers: a replica that cannot reach PostgreSQL reports
/// NOT_SERVING so the mesh routes around it.
async fn keep_reporting_health(
    reporter: tonic_health::server::HealthReporter,
    app: App,
    mut last: tonic_health::ServingStatus,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        last = report_health(&reporter, &app, Some(last)).await;
    }
}

/// Checks the database once and publishes the result if it changed.
async fn report_health(
    reporter: &tonic_health::server::HealthReporter,
    app: &App,
    last: Option<tonic_health::ServingStatus>,
) -> tonic_health::ServingStatus {
    use tonic_health::ServingStatus;
    const NAMES: &[&str] = &[
        "",
        "ccc.v20200701.CallControl",
        "ccc.v20200701.Telephony",
        "ccc.v20200701.Admin",
    ];
    let status = if app.store().ping(Duration::from_secs(2)).await {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    if last != Some(status) {
        tracing::info!(?status, "health");
        for name in NAMES {
            reporter.set_service_status(*name, status).await;
        }
    }
    status
}
