//! The gRPC edge, translation only: requests are parsed into the app's
//! commands (every parameter checked, all violations reported at once),
//! results are turned into the documented response envelope, and errors
//! into statuses in exactly one place ([`status`]).

mod admin;
mod call_control;
pub mod codec;
mod convert;
mod events;
pub mod health;
mod idempotency;
mod request;
pub mod status;
mod telephony;

use tonic::service::Routes;

use crate::app::App;
use crate::proto::{
    FILE_DESCRIPTOR_SET, admin_server::AdminServer, call_control_server::CallControlServer,
    events_server::EventsServer, telephony_server::TelephonyServer,
};
use codec::DecodeGuard;

pub use health::Health;
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
    pub use super::events::{WatchEventsParams, parse_watch_events};
    pub use super::telephony::parse_report_channel_event;
}

/// Every service of the contract, plus (unless turned off) reflection (v1
/// and v1alpha, so grpcurl 1.8 works) and `grpc.health.v1` (returned as
/// the handle that flips it), which need no token. Reflection also knows the `google.rpc` detail types, so `grpcurl`
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
) -> anyhow::Result<(Routes, Option<Health>)> {
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
        ))
        .add_service(DecodeGuard::new(
            EventsServer::new(events::EventsService::new(app.clone()))
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
    let health = if health {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        health.serving().await;
        routes.add_service(service);
        Some(health)
    } else {
        None
    };
    Ok((routes.routes(), health))
}
