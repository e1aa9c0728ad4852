//! The connections a replica keeps between units of work (`store::warm`),
//! on a real pool: reused as they are, given back to the pool once unused,
//! closed with the pool.

use std::time::Duration;

use ccc_callcontrol::store::{Store, warm};
use sqlx::PgPool;

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
