//! SIGTERM to the real binary: requests in flight finish and the process
//! exits 0; with work that cannot finish, it still exits by the shutdown
//! deadline, and the unfinished work is rolled back.

use std::process::Command;
use std::time::{Duration, Instant};

use ccc_callcontrol::domain::access::Role;
use sqlx::PgPool;

use crate::helpers::*;
use crate::support::binary::{Served, database_url};
use crate::support::proxy::Proxy;

/// The address of the server of `DATABASE_URL`.
fn database_server() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    let host_port = server.rsplit_once('@').map_or(server, |(_, h)| h);
    let host_port = host_port
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// The binary over `pool`'s database, with `flags`.
async fn serve(pool: &PgPool, flags: &[&str]) -> Served {
    Served::start(&database_url(pool, None), flags, &[]).await
}

/// Clients on a connection of their own, sending `token`.
async fn clients(served: &Served, token: &str) -> Clients {
    Clients::new(served.connect().await, Bearer::token(token))
}

/// Requests in flight when SIGTERM arrives (held on a locked row) all
/// finish OK, other traffic meanwhile gets OK or is refused by the
/// transport (UNAVAILABLE, or CANCELLED for a stream the closing
/// connection reset; the drain window of the operations issue will keep
/// answering those), never INTERNAL, and the process exits 0.
#[sqlx::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_zero(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (agents[0].0.clone(), agents[1].0.clone());
    app.make_working(&alice).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let mut served = serve(
        &pool,
        &["--shutdown-timeout-ms", "20000", "--drain-ms", "0"],
    )
    .await;
    let clients = clients(&served, &token).await;

    let holder = lock_agent(&pool, &alice).await;
    let in_flight = spawn_readies(&clients.calls, &alice, 3);
    wait_for_lock_waiters(&pool, 1).await;
    // Steady traffic on another agent, through the signal.
    let steady = {
        let calls = clients.calls.clone();
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..400 {
                let answer = calls.clone().ready_for_service(ready_request(&bob)).await;
                let code = answer.map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                codes.push(code);
                if code != tonic::Code::Ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    served.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();

    for request in in_flight {
        request
            .await
            .unwrap()
            .expect("a request in flight at SIGTERM finishes");
    }
    let codes = steady.await.unwrap();
    assert!(
        codes.iter().all(|c| matches!(
            c,
            tonic::Code::Ok | tonic::Code::Unavailable | tonic::Code::Cancelled
        )),
        "{codes:?}"
    );
    assert_eq!(served.exit_code(Duration::from_secs(30)).await, Some(0));
}

/// SIGTERM under steady load, as an orchestrator sends it: a health Watch
/// sees NOT_SERVING before the listener closes; every request started
/// while the replica still serves (well inside the drain window) is
/// answered OK, and so are requests in flight across the close (held on
/// a locked row until after it); anything refused later is refused as
/// retryable (UNAVAILABLE, or CANCELLED for a stream the closing
/// connection reset), never failed; the process exits 0.
#[sqlx::test]
async fn sigterm_under_load_drains_then_closes_and_loses_nothing(pool: PgPool) {
    use tonic_health::pb::health_check_response::ServingStatus;

    const DRAIN: Duration = Duration::from_millis(1500);
    let app = spawn_app(pool.clone()).await;
    let logins = ["alice", "bob", "carol", "dave", "erin"];
    let agents = app.ready_agents(&logins).await;
    let alice = agents[0].0.clone();
    app.make_working(&alice).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let mut served = serve(
        &pool,
        // The held row stays locked through the drain: about 2 s.
        &[
            "--drain-ms",
            "1500",
            "--shutdown-timeout-ms",
            "20000",
            "--lock-timeout-ms",
            "10000",
        ],
    )
    .await;
    let addr: std::net::SocketAddr = served.addr.parse().unwrap();

    let mut watch = health_watch(&served).await;
    let not_serving_at = tokio::spawn(async move {
        loop {
            match watch.message().await {
                Ok(Some(m)) if m.status() == ServingStatus::NotServing => break Instant::now(),
                Ok(Some(_)) => continue,
                other => panic!("the watch ended before NOT_SERVING: {other:?}"),
            }
        }
    });

    // Steady load: four clients, each on its own connection, back to back.
    let stop_load = Instant::now() + Duration::from_secs(15);
    let mut load = Vec::new();
    for (user, _) in agents.iter().skip(1) {
        let clients = clients(&served, &token).await;
        let user = user.clone();
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < stop_load {
                let started = Instant::now();
                let answer = clients
                    .calls
                    .clone()
                    .ready_for_service(ready_request(&user))
                    .await;
                let code = answer.map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                answers.push((started, code));
                if code != tonic::Code::Ok {
                    break;
                }
            }
            answers
        }));
    }
    // Requests that will be in flight when the listener closes.
    let held_clients = clients(&served, &token).await;
    let holder = lock_agent(&pool, &alice).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    served.terminate();
    let not_serving = tokio::time::timeout(Duration::from_secs(10), not_serving_at)
        .await
        .expect("NOT_SERVING within 10 s")
        .unwrap();
    let in_flight = spawn_readies(&held_clients.calls, &alice, 3);
    wait_for_lock_waiters(&pool, 1).await;
    // The listener closes at the end of the drain: new connections are
    // refused from then on.
    let closed = loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break Instant::now();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();

    assert!(
        not_serving < closed,
        "NOT_SERVING was seen before the listener closed"
    );
    assert!(
        closed - signalled >= DRAIN - Duration::from_millis(100),
        "served through the drain window: closed {:?} after SIGTERM",
        closed - signalled
    );
    for request in in_flight {
        request
            .await
            .unwrap()
            .expect("a request in flight across the close finishes OK");
    }
    let mut served_ok = 0;
    for task in load {
        for (started, code) in task.await.unwrap() {
            if started < signalled + DRAIN / 2 {
                assert_eq!(code, tonic::Code::Ok, "a request while the replica serves");
            } else {
                assert!(
                    matches!(
                        code,
                        tonic::Code::Ok | tonic::Code::Unavailable | tonic::Code::Cancelled
                    ),
                    "refused late, but only as retryable: {code:?}"
                );
            }
            served_ok += usize::from(code == tonic::Code::Ok);
        }
    }
    assert!(served_ok > 20, "the load was steady: {served_ok} answered");
    assert_eq!(served.exit_code(Duration::from_secs(30)).await, Some(0));
}

/// Work that cannot finish (its row stays locked) does not keep the process
/// alive past the shutdown deadline, and what it had not committed is
/// rolled back.
#[sqlx::test]
async fn sigterm_with_stuck_work_exits_by_the_deadline_and_rolls_it_back(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let alice = agents[0].0.clone();
    app.make_working(&alice).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let mut served = serve(
        &pool,
        &[
            "--drain-ms",
            "0",
            "--shutdown-timeout-ms",
            "1500",
            "--lock-timeout-ms",
            "600000",
            "--db-timeout-ms",
            "600000",
            "--request-timeout-ms",
            "600000",
        ],
    )
    .await;
    let clients = clients(&served, &token).await;

    let holder = lock_agent(&pool, &alice).await;
    let mut calls = clients.calls.clone();
    let stuck = tokio::spawn(async move { calls.ready_for_service(ready_request(&alice)).await });
    wait_for_lock_waiters(&pool, 1).await;

    served.terminate();
    let code = served.exit_code(Duration::from_secs(20)).await;

    assert_eq!(code, Some(0), "exits by itself, by the deadline");
    assert!(stuck.await.unwrap().is_err(), "the stuck request was cut");
    // Its statement still waits for the lock in PostgreSQL; the server
    // checks every second that its client is there, and aborts it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    holder.commit().await.unwrap();
    let alice = agents[0].0.clone();
    assert_eq!(
        app.stored_agent(&alice).await.0,
        "WORKING",
        "the unfinished ReadyForService was rolled back"
    );
}

/// SIGTERM: a health Watch sees NOT_SERVING at once, requests are still
/// served through the drain window (so load balancers can move away), and
/// then the process exits 0.
#[sqlx::test]
async fn sigterm_turns_health_not_serving_and_serves_through_the_drain(pool: PgPool) {
    use tonic_health::pb::health_check_response::ServingStatus;

    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let mut served = serve(&pool, &["--drain-ms", "2000"]).await;
    let clients = clients(&served, &token).await;
    let mut watch = health_watch(&served).await;

    served.terminate();

    assert_eq!(
        next_status(&mut watch).await,
        Some(ServingStatus::NotServing)
    );
    for _ in 0..5 {
        clients
            .calls
            .clone()
            .ready_for_service(ready_request(&agents[0].0))
            .await
            .expect("still served while draining");
    }
    assert_eq!(served.exit_code(Duration::from_secs(30)).await, Some(0));
}

/// A health Watch of the whole server on a connection of its own, past
/// its first status (SERVING).
async fn health_watch(served: &Served) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut watch = HealthClient::new(served.connect().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_status(&mut watch).await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
    watch
}

/// The next status a health Watch reports (10 s at most).
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a health change within 10 s")
        .unwrap()
        .map(|m| m.status())
}

/// A database that stops answering (connections up, no bytes) does not
/// keep the process alive past the shutdown deadline either.
#[sqlx::test]
async fn sigterm_with_a_silent_database_exits_by_the_deadline(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let token = create_token(&app.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let proxy = Proxy::start(database_server()).await;
    let mut served = Served::start(
        &database_url(&pool, Some(proxy.addr())),
        &[
            "--drain-ms",
            "0",
            "--shutdown-timeout-ms",
            "1500",
            "--db-timeout-ms",
            "600000",
            "--request-timeout-ms",
            "600000",
            "--token-cache-ms",
            "60000",
        ],
        &[],
    )
    .await;
    let clients = clients(&served, &token).await;
    clients
        .calls
        .clone()
        .ready_for_service(ready_request(&agents[0].0))
        .await
        .expect("served through the proxy");

    proxy.stall();
    let stuck = spawn_readies(&clients.calls, &agents[0].0, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.terminate();
    let code = served.exit_code(Duration::from_secs(20)).await;

    assert_eq!(code, Some(0), "exits by itself, by the deadline");
    for s in stuck {
        assert!(s.await.unwrap().is_err(), "a stuck request was cut");
    }
}

/// With no database to reach, `serve` keeps trying (and says so) for
/// `--connect-wait-ms`, then exits non-zero naming the cause.
#[tokio::test]
async fn serve_waits_for_the_database_then_gives_up() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let log = serve_until_it_gives_up(
        format!("postgres://postgres@127.0.0.1:{port}/nowhere"),
        &["--connect-wait-ms", "1500"],
    )
    .await;
    assert!(
        log.matches("PostgreSQL does not answer yet").count() >= 2,
        "it retried: {log}"
    );
    assert!(log.contains("Failed to reach PostgreSQL"), "{log}");
}

/// What waiting cannot mend, `serve` does not wait for: a login the
/// database refuses (here a role it does not have: SQLSTATE 28000) ends
/// it at its first attempt, though `--connect-wait-ms` (60 s by default)
/// would allow a minute of retries, each logged.
#[sqlx::test]
async fn serve_gives_up_at_once_on_a_refused_login(pool: PgPool) {
    let url = database_url(&pool, None);
    let (_, rest) = url.split_once("://").expect("a URL");
    let server = rest.rsplit_once('@').map_or(rest, |(_, server)| server);
    let refused = format!("postgres://ccc_no_such_role@{server}");
    let log = serve_until_it_gives_up(refused, &[]).await;
    assert!(!log.contains("does not answer yet"), "no retries: {log}");
    assert!(log.contains("Failed to connect to PostgreSQL"), "{log}");
    assert!(log.contains("ccc_no_such_role"), "the reason: {log}");
}

/// Runs `serve` over `url` with `flags` until it exits, which it must do
/// unsuccessfully; its log.
async fn serve_until_it_gives_up(url: String, flags: &[&str]) -> String {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ccc-callcontrol"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&flags)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "serve exited unsuccessfully");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
