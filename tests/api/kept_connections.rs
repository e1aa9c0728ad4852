//! The connections a replica keeps between units of work (`store::warm`),
//! on a real pool: reused as they are, given back to the pool once unused,
//! closed with the pool, and closed if the database does not answer as
//! they go back.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::startup::connect_pool;
use ccc_callcontrol::store::{Store, warm};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::support::pki::{ca, leaf};
use crate::support::private_pg::PrivatePg;
use crate::support::proxy::Proxy;

async fn backend_pid(conn: &mut warm::Conn) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn.raw())
        .await
        .unwrap()
}

/// Waits (2 s at most) until the pool holds `n` idle connections of its own:
/// a connection given back to sqlx reaches its idle list from a task.
async fn pool_idle(pool: &PgPool, n: usize) -> usize {
    for _ in 0..200 {
        if pool.num_idle() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pool.num_idle()
}

/// Where `target`'s server listens, for a proxy in front of it.
async fn address_of(target: &PgConnectOptions) -> SocketAddr {
    tokio::net::lookup_host((target.get_host(), target.get_port()))
        .await
        .unwrap()
        .next()
        .expect("the test database's address")
}

/// A store over `pool` keeping the one connection it has used.
async fn one_kept(pool: &PgPool) -> Store {
    let store = Store::new(pool.clone());
    let mut conn = store.acquire().await.unwrap();
    backend_pid(&mut conn).await;
    store.reuse(conn);
    store
}

#[sqlx::test]
async fn a_clean_connection_is_the_next_units_most_recent_first(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut first = store.acquire().await.unwrap();
    let mut second = store.acquire().await.unwrap();
    backend_pid(&mut first).await;
    let second_pid = backend_pid(&mut second).await;
    store.reuse(first);
    store.reuse(second);

    let mut next = store.acquire().await.unwrap();
    assert_eq!(
        backend_pid(&mut next).await,
        second_pid,
        "the most recently kept"
    );
    // Kept, not back in sqlx's pool: both still count as its connections
    // in use, and as idle for the service's own gauge.
    store.reuse(next);
    assert_eq!(pool.num_idle(), 0);
    assert_eq!(store.connections(), (2, 2));
}

#[sqlx::test]
async fn kept_connections_go_back_to_the_pool_once_unused(pool: PgPool) {
    let store = one_kept(&pool).await;

    store.sweep();
    assert_eq!(pool.num_idle(), 0, "just used: still kept");

    tokio::time::sleep(warm::WARM_FOR + Duration::from_millis(100)).await;
    store.sweep();
    assert_eq!(
        pool_idle(&pool, 1).await,
        1,
        "unused for WARM_FOR: back in the pool, whose idle timeout applies"
    );
    assert_eq!(store.connections(), (1, 1));
}

#[sqlx::test]
async fn closing_the_store_closes_the_kept_connections(pool: PgPool) {
    let store = one_kept(&pool).await;

    // The pool's close waits for every connection it counts as in use,
    // the kept ones included: they must be handed back to it.
    tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .expect("closed without waiting on its own kept connections");
    assert!(pool.is_closed());
    assert_eq!(pool.size(), 0);
}

/// sqlx pings each connection that comes back to its pool and waits for
/// the answer without a time limit (sqlx issue #4349); the service's
/// bounded ping before it closes a connection the database does not
/// answer. Here the network goes silent (a proxy that forwards nothing)
/// just as a connection goes back: its slot is free again within the
/// bound, and the pool opens a new connection once the network is back.
#[sqlx::test]
async fn a_connection_given_back_to_a_silent_database_frees_its_slot(direct: PgPool) {
    let target = (*direct.connect_options()).clone();
    let upstream = address_of(&target).await;
    silent_database_frees_the_slot(upstream, target.ssl_mode(PgSslMode::Disable)).await;
}

/// The same over TLS, where a graceful close would wait on the silent
/// server too: a private server with a certificate of the test's own.
#[tokio::test]
async fn a_connection_given_back_to_a_silent_database_frees_its_slot_over_tls() {
    let (cert, key) = leaf(&["127.0.0.1"], &ca("database CA"));
    let pg = PrivatePg::start_with_tls(cert, key).await;
    let target = PgConnectOptions::from_str(&pg.url("postgres"))
        .unwrap()
        .ssl_mode(PgSslMode::Require);
    silent_database_frees_the_slot(pg.addr(), target).await;
}

/// Connects to `upstream` through a proxy, as `target` says but for the
/// address, and silences the proxy as the one connection goes back.
async fn silent_database_frees_the_slot(upstream: SocketAddr, target: PgConnectOptions) {
    let proxy = Proxy::start(upstream).await;
    let mut args = DatabaseArgs::for_url(String::new());
    args.acquire_timeout_ms = 300;
    let options = target.host("127.0.0.1").port(proxy.addr().port());
    let pool = connect_pool(options, &args).await.unwrap();
    let store = Store::new(pool.clone());
    let mut conn = store.acquire().await.unwrap();
    backend_pid(&mut conn).await;
    assert_eq!(pool.size(), 1);

    proxy.stall();
    conn.give_back();
    // Generous: the bound is 300 ms; unbounded, the slot stays taken for
    // as long as the proxy is silent.
    for _ in 0..1000 {
        if pool.size() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.size(), 0, "the unanswered connection was closed");

    proxy.resume();
    let mut fresh = store.acquire().await.unwrap();
    backend_pid(&mut fresh).await;
    store.reuse(fresh);
    assert_eq!(pool.size(), 1);
}

/// A unit that waits for a connection asks sqlx's pool for one and takes a
/// kept one if it comes first; the request it leaves must still open its
/// connection, or where opening one takes longer than a unit (a slow
/// network, TLS) the pool never grows past the connections it has. Here
/// every reply of the database comes 10 ms late, so opening a connection
/// (several exchanges) takes longer than a unit on a kept one (one).
#[sqlx::test]
async fn the_pool_grows_to_its_size_when_connecting_is_slower_than_a_unit(direct: PgPool) {
    const SIZE: u32 = 4;
    let target = (*direct.connect_options()).clone();
    let upstream = address_of(&target).await;
    let proxy = Proxy::start(upstream).await;
    let mut args = DatabaseArgs::for_url(String::new());
    args.max_connections = SIZE;
    let options = target.host("127.0.0.1").port(proxy.addr().port());
    let pool = connect_pool(options, &args).await.unwrap();
    let store = Store::new(pool.clone());
    let mut first = store.acquire().await.unwrap();
    backend_pid(&mut first).await;
    store.reuse(first);
    proxy.delay_replies(Duration::from_millis(10));

    let units = (0..SIZE).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let mut conn = store.acquire().await.unwrap();
                backend_pid(&mut conn).await;
                store.reuse(conn);
            }
        })
    });
    for unit in units.collect::<Vec<_>>() {
        unit.await.unwrap();
    }
    assert_eq!(pool.size(), SIZE, "one connection per unit at once");
}
