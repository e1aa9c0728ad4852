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

/// With autovacuum off PostgreSQL keeps no statistics, and the service's
/// plans degrade as its tables grow (docs/performance.md, "Plans made for
/// empty tables"): starting says so, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_warns_when_autovacuum_is_off() {
    init_logs();
    let pg = PrivatePg::start().await;
    let warned = |db: &str| {
        let log = std::fs::read_to_string(LOG_FILE).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("autovacuum is off") && l.contains(&format!("database=\"{db}\"")))
    };

    set_autovacuum(&pg, "off").await;
    prepare_database(&DatabaseArgs::for_url(pg.url("ccc_autovacuum_off")))
        .await
        .expect("the private database");
    assert!(warned("ccc_autovacuum_off"));

    set_autovacuum(&pg, "on").await;
    prepare_database(&DatabaseArgs::for_url(pg.url("ccc_autovacuum_on")))
        .await
        .expect("the private database");
    assert!(!warned("ccc_autovacuum_on"));
}

/// Sets autovacuum on the private server and waits until a new session
/// sees it (a reload is signalled, not awaited).
async fn set_autovacuum(pg: &PrivatePg, value: &str) {
    let url = pg.url("postgres");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("ALTER SYSTEM SET autovacuum = {value}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    for _ in 0..100 {
        let fresh = sqlx::PgPool::connect(&url).await.unwrap();
        let now: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(&fresh)
            .await
            .unwrap();
        fresh.close().await;
        if now == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("autovacuum did not become {value}");
}
