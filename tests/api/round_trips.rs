//! How many times an EndConference waits for PostgreSQL, counted on the
//! wire by a relay between the server's pool and the database
//! (`bench::relay`: every `Sync` and every simple `Query` the pool sends is
//! one round trip): the pool's handling of the connection included, sqlx's
//! ping as a connection goes back to the pool too (which it does not after
//! a unit that ended cleanly: `store::warm`). A count, not a timing; and
//! the same for 3 parties as for 9.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ccc_callcontrol::bench::relay::Relay;
use ccc_callcontrol::startup::ServeOptions;
use sqlx::PgPool;
use sqlx::postgres::{PgPoolOptions, PgSslMode};

use crate::helpers::*;

/// Round trips the relay counted while `action` ran, and for a while after
/// (a connection that goes back to the pool is pinged after the answer).
async fn counted<T>(relay: &Relay, action: impl Future<Output = T>) -> (T, u64) {
    let trips = relay.round_trips();
    let before = trips.load(Ordering::SeqCst);
    let out = action.await;
    // A connection that goes back to the pool is pinged after the answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (out, trips.load(Ordering::SeqCst) - before)
}

#[sqlx::test]
async fn end_conference_takes_two_round_trips_whatever_the_parties(pool: PgPool) {
    let direct = (*pool.connect_options()).clone();
    let relay = Relay::start(direct.get_host(), direct.get_port())
        .await
        .unwrap();
    let relayed = PgPoolOptions::new().max_connections(1).connect_lazy_with(
        direct
            .host("127.0.0.1")
            .port(relay.port())
            .ssl_mode(PgSslMode::Disable),
    );
    let mut args = service_args(&pool);
    // One connection, so every statement is prepared on it during the
    // warm-up and what is counted is the steady state.
    args.max_connections = 1;
    let app = spawn_app_tuned(
        relayed,
        ServeOptions {
            token_cache_ttl: Duration::from_secs(600),
            // Its checks would go through the relay too.
            health: false,
            ..ServeOptions::default()
        },
        args,
    )
    .await;
    let logins: Vec<String> = (1..=9).map(|i| format!("agent{i}")).collect();
    let logins: Vec<&str> = logins.iter().map(String::as_str).collect();
    let agents = app.ready_agents(&logins).await;
    let lead = &agents[0].0;
    let as_lead = app.agent(lead).await;
    let others: Vec<&str> = agents[1..].iter().map(|a| a.1.as_str()).collect();

    let mut counts = Vec::new();
    for parties in [3, 9, 3, 9] {
        for (user, _) in &agents {
            app.ready(user).await.unwrap();
        }
        let conf = app.answered_conference(lead, &others[..parties - 1]).await;
        // Warm: the lead's token is cached, every statement prepared.
        as_lead
            .calls
            .clone()
            .poll_user_status(ccc_callcontrol::proto::PollUserStatusRequest {
                instance_id: INSTANCE.into(),
                user_id: String::new(),
            })
            .await
            .unwrap();

        let (left, n) = counted(&relay, end_with(&as_lead.calls, INSTANCE, "", &conf.job_id)).await;
        left.expect("EndConference");
        counts.push((parties, n));
        // The others leave too, so the next round starts clean.
        for (user, _) in &agents[1..parties] {
            app.end(user, &conf.job_id).await.unwrap();
        }
    }

    println!("round trips per EndConference (parties, count): {counts:?}");
    // The first round may still prepare statements; the steady rounds are
    // the last two.
    let steady = &counts[2..];
    assert!(
        steady.iter().all(|&(_, n)| n == 2),
        "2 round trips per EndConference, the load and the apply: {counts:?}"
    );
    assert_eq!(
        steady[0].1, steady[1].1,
        "3 parties cost what 9 do: {counts:?}"
    );
}
