//! Health as a mesh reads it: our services stay SERVING through a database
//! outage (every replica shares the database; flipping would only turn
//! clear UNAVAILABLE answers into "no healthy upstream"), while the
//! Storage entry follows the database, with hysteresis.

use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::startup::{ServeOptions, prepare_database};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::*;
use crate::support::private_pg::PrivatePg;
use crate::support::proxy::Proxy;

async fn status(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("a health answer")
        .into_inner()
        .status()
}

/// Polls until `service` reports `wanted` (at most 30 s); how many polls.
async fn until(channel: &Channel, service: &str, wanted: ServingStatus) -> usize {
    for polls in 1..=300 {
        if status(channel, service).await == wanted {
            return polls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never became {wanted:?}");
}

/// The database goes away and comes back: the services never leave
/// SERVING; Storage turns NOT_SERVING after a few failed checks and
/// SERVING again after a few good ones.
///
/// SLOW: about 15 s (three checks two seconds apart, each way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_flips_only_the_storage_entry() {
    let pg = PrivatePg::start().await;
    let proxy = Proxy::start(pg.addr()).await;
    let args = DatabaseArgs {
        max_connections: 2,
        acquire_timeout_ms: 500,
        ..DatabaseArgs::for_url(proxy.url("ccc_health"))
    };
    let pool = prepare_database(&args).await.expect("the private database");
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            ..ServeOptions::default()
        },
    )
    .await;
    for service in ["", "ccc.v20200701.CallControl", "ccc.v20200701.Storage"] {
        assert_eq!(status(&app.channel, service).await, ServingStatus::Serving);
    }

    proxy.refuse(true);
    proxy.cut();
    until(
        &app.channel,
        "ccc.v20200701.Storage",
        ServingStatus::NotServing,
    )
    .await;
    for service in [
        "",
        "ccc.v20200701.CallControl",
        "ccc.v20200701.Telephony",
        "ccc.v20200701.Admin",
    ] {
        assert_eq!(
            status(&app.channel, service).await,
            ServingStatus::Serving,
            "{service:?} stays SERVING through the outage"
        );
    }
    // Meanwhile callers hear the retryable ServiceUnavailable.
    let err = app
        .admin
        .clone()
        .create_instance(ccc_callcontrol::proto::CreateInstanceRequest {
            instance_id: "ccc-during".into(),
            name: "during".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&err, tonic::Code::Unavailable, "ServiceUnavailable", 503);

    proxy.forward_normally();
    until(
        &app.channel,
        "ccc.v20200701.Storage",
        ServingStatus::Serving,
    )
    .await;
    app.create_instance("ccc-after").await;
}
