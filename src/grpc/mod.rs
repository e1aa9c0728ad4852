//! The gRPC edge, translation only: requests are parsed into the app's
//! commands (every parameter checked, all violations reported at once),
//! results are turned into the documented response envelope, and errors
//! into statuses in exactly one place ([`status`]).

mod admin;
mod call_control;
mod convert;
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

pub use request::REQUEST_ID_HEADER;

/// Every service of the contract, plus (unless turned off) reflection (v1
/// and v1alpha, so grpcurl 1.8 works) and `grpc.health.v1`, which need no
/// token. Reflection also knows the `google.rpc` detail types, so `grpcurl`
/// prints error details decoded.
pub async fn routes(app: App, reflection: bool, health: bool) -> anyhow::Result<Routes> {
    let mut routes = Routes::builder();
    routes
        .add_service(CallControlServer::new(
            call_control::CallControlService::new(app.clone()),
        ))
        .add_service(TelephonyServer::new(telephony::TelephonyService::new(
            app.clone(),
        )))
        .add_service(AdminServer::new(admin::AdminService::new(app.clone())));
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
        tokio::spawn(report_health(reporter, app));
        routes.add_service(service);
    }
    Ok(routes.routes())
}

/// Keeps the health status of every service in step with whether the
/// database answers: a replica that cannot reach PostgreSQL reports
/// NOT_SERVING so the mesh routes around it.
async fn report_health(reporter: tonic_health::server::HealthReporter, app: App) {
    use tonic_health::ServingStatus;
    const NAMES: &[&str] = &[
        "",
        "ccc.v20200701.CallControl",
        "ccc.v20200701.Telephony",
        "ccc.v20200701.Admin",
    ];
    let mut last = None;
    loop {
        let status = if app.store().ping().await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            tracing::info!(?status, "health");
            for name in NAMES {
                reporter.set_service_status(*name, status).await;
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
