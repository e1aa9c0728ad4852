//! How many statements an EndConference sends PostgreSQL, counted in the
//! server's own statement log (a private server with `log_statement=all`):
//! each is one round trip on the request's path, the pool's check of the
//! connection included (sqlx's ping when the connection goes back to the
//! pool, after the answer, is not a statement and is not counted here; the
//! bench's relay counts it). A count, not a timing; and the same for 3
//! parties as for 9.

use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::startup::{ServeOptions, prepare_database};
use sqlx::Connection;

use crate::helpers::*;
use crate::support::private_pg::PrivatePg;

/// Statements the server has logged so far.
fn statements(pg: &PrivatePg) -> usize {
    pg.log()
        .lines()
        .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
        .count()
}

/// Statements logged while `action` ran.
async fn counted<T>(pg: &PrivatePg, action: impl Future<Output = T>) -> (T, usize) {
    let before = statements(pg);
    let out = action.await;
    // The log is written as statements run; give the last line a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (out, statements(pg) - before)
}

/// SLOW: about 5 s (a private PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_conference_sends_three_statements_whatever_the_parties() {
    let pg = PrivatePg::start().await;
    let url = pg.url("ccc_round_trips");
    let args = DatabaseArgs {
        // One connection, so every statement is prepared on it during the
        // warm-up and what is counted is the steady state.
        max_connections: 1,
        ..DatabaseArgs::for_url(url.clone())
    };
    let pool = prepare_database(&args).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("ALTER ROLE postgres SET log_statement = 'all'")
        .execute(&mut admin)
        .await
        .unwrap();
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::from_secs(600),
            ..ServeOptions::default()
        },
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

        let (left, n) = counted(&pg, end_with(&as_lead.calls, INSTANCE, "", &conf.job_id)).await;
        left.expect("EndConference");
        counts.push((parties, n));
        // The others leave too, so the next round starts clean.
        for (user, _) in &agents[1..parties] {
            app.end(user, &conf.job_id).await.unwrap();
        }
    }

    println!("statements per EndConference (parties, count): {counts:?}");
    // The first round may still prepare statements; the steady rounds are
    // the last two.
    let steady = &counts[2..];
    assert!(
        steady.iter().all(|&(_, n)| n <= 3),
        "at most 3 statements per EndConference: {counts:?}"
    );
    assert_eq!(
        steady[0].1, steady[1].1,
        "3 parties cost what 9 do: {counts:?}"
    );
}
