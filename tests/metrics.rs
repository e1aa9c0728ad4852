//! The Prometheus listener, scraped after known traffic: the counters move
//! by exactly the requests made. A test binary of its own, because the
//! metrics recorder is one per process and other tests' traffic would
//! move the same counters.

use std::collections::BTreeMap;
use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::proto::{
    self, admin_client::AdminClient, call_control_client::CallControlClient,
};
use ccc_callcontrol::startup::{Application, ServeOptions, connect_pool};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

#[path = "common/operator.rs"]
mod operator;
use operator::operator_token;

/// Every sample of a scrape, keyed by name and its labels sorted.
type Samples = BTreeMap<String, f64>;

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// GET /metrics, parsed.
async fn scrape(addr: std::net::SocketAddr) -> Samples {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("a scrape within 10 s")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let mut samples = Samples::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: Vec<(&str, &str)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k, v.trim_matches('"'))
            })
            .collect();
        samples.insert(key(name, &labels), value.parse().unwrap());
    }
    samples
}

fn delta(before: &Samples, after: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let k = key(name, labels);
    after.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0)
}

#[sqlx::test]
async fn the_counters_move_by_exactly_the_requests_made(pool: PgPool) {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = free.local_addr().unwrap();
    drop(free);
    ccc_callcontrol::measure::install(metrics).expect("the metrics listener");

    let served = connect_pool(
        (*pool.connect_options()).clone(),
        &DatabaseArgs::for_url(""),
    )
    .await
    .unwrap();
    let app = Application::bind(
        "127.0.0.1:0".parse().unwrap(),
        served,
        ServeOptions {
            token_cache_ttl: Duration::from_secs(600),
            ..ServeOptions::default()
        },
    )
    .await
    .unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let token = operator_token(&pool).await;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    };
    let mut admin = AdminClient::with_interceptor(channel.clone(), auth.clone());
    let mut calls = CallControlClient::with_interceptor(channel, auth);
    admin
        .create_instance(proto::CreateInstanceRequest {
            instance_id: "ccc-metrics".into(),
            name: "metrics".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    admin
        .create_user(proto::CreateUserRequest {
            instance_id: "ccc-metrics".into(),
            login_name: "alice".into(),
            display_name: "Alice".into(),
            work_mode: proto::WorkMode::OnSite as i32,
            mobile: String::new(),
            extension: String::new(),
        })
        .await
        .unwrap();
    let poll = |user: &str| proto::PollUserStatusRequest {
        instance_id: "ccc-metrics".into(),
        user_id: user.into(),
    };
    let ready = proto::ReadyForServiceRequest {
        instance_id: "ccc-metrics".into(),
        user_id: "alice@ccc-metrics".into(),
        outbound_scenario: false,
    };
    let before = scrape(metrics).await;

    for _ in 0..3 {
        calls
            .poll_user_status(poll("alice@ccc-metrics"))
            .await
            .unwrap();
    }
    calls
        .poll_user_status(poll("nobody@ccc-metrics"))
        .await
        .unwrap_err();
    calls.ready_for_service(ready.clone()).await.unwrap();
    calls.ready_for_service(ready).await.unwrap();

    let after = scrape(metrics).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let requests = "ccc_requests_total";
    assert_eq!(
        d(
            requests,
            &[("rpc", "PollUserStatus"), ("code", "OK"), ("reason", "OK")]
        ),
        3.0
    );
    assert_eq!(
        d(
            requests,
            &[
                ("rpc", "PollUserStatus"),
                ("code", "NOT_FOUND"),
                ("reason", "NotExists.UserId")
            ]
        ),
        1.0
    );
    assert_eq!(
        d(
            requests,
            &[("rpc", "ReadyForService"), ("code", "OK"), ("reason", "OK")]
        ),
        2.0
    );
    assert_eq!(
        d(
            "ccc_request_duration_seconds_count",
            &[("rpc", "PollUserStatus")]
        ),
        4.0
    );
    assert_eq!(
        after.get(&key("ccc_requests_in_flight", &[])).copied(),
        Some(0.0)
    );
    // The first ReadyForService changed alice; the second found her ready.
    assert_eq!(
        d(
            "ccc_events_appended_total",
            &[("action", "ReadyForService")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "ccc_db_units_total",
            &[("action", "PollUserStatus"), ("outcome", "done")]
        ),
        4.0
    );
    assert_eq!(
        d(
            "ccc_db_units_total",
            &[("action", "ReadyForService"), ("outcome", "done")]
        ),
        2.0
    );
    // The token was looked up during set-up; these six found it cached.
    assert_eq!(d("ccc_token_cache_total", &[("result", "hit")]), 6.0);
    assert_eq!(d("ccc_token_cache_total", &[("result", "miss")]), 0.0);
    assert!(
        after
            .get(&key("ccc_db_pool_connections", &[("state", "open")]))
            .copied()
            >= Some(1.0)
    );
    // Every unit took its connection before its request was answered, so
    // none is still waiting, and the gauge exists since the first one.
    assert_eq!(
        after.get(&key("ccc_db_pool_waiting", &[])).copied(),
        Some(0.0)
    );
    // The server's pool holds connections to the test's database: stopped
    // first, or sqlx cannot drop the database and leaves it behind.
    drop(calls);
    drop(admin);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
