//! How many times an EndConference waits for PostgreSQL, counted on the
//! wire by a relay between the server's pool and the database
//! (`bench::relay`: every `Sync` and every simple `Query` the pool sends is
//! one round trip): the pool's handling of the connection included, sqlx's
//! ping as a connection goes back to the pool too (which it does not after
//! a unit that ended cleanly: `store::warm`). A count, not a timing; and
//! the same for 3 parties as for 9. How many depends on what the replica
//! knows of the call (`app::known`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use ccc_callcontrol::bench::relay::Relay;
use ccc_callcontrol::proto::UserState;
use ccc_callcontrol::proto::channel_context::ChannelState;
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

/// A replica whose one database connection goes through a counting relay.
async fn counted_replica(pool: &PgPool) -> (Relay, TestApp) {
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
    let mut args = service_args(pool);
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
    (relay, app)
}

/// Caches `agent`'s token on the counted replica, so what is counted next
/// is the action alone.
async fn warm(agent: &Clients) {
    agent
        .calls
        .clone()
        .poll_user_status(ccc_callcontrol::proto::PollUserStatusRequest {
            instance_id: INSTANCE.into(),
            user_id: String::new(),
        })
        .await
        .unwrap();
}

/// How an EndConference finds its call on the counted replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// The counted replica made the call as it is (it started it and
    /// reported its channels): decided on what it knows, written at once.
    AsItIs,
    /// Another replica made the call: read, then written.
    NotAtAll,
    /// The counted replica made the call, then another changed it: the
    /// guarded write finds it moved on and writes nothing; then the call
    /// is read, and written. (A replica that has lately found its known
    /// calls as known sends the plain write.)
    Stale,
    /// As `Stale`, on a replica that has just found another known call
    /// stale: its write carries the read, so it reads the call instead of
    /// writing; then the call is written.
    StaleLately,
}

#[sqlx::test]
async fn end_conference_round_trips_whatever_the_parties(pool: PgPool) {
    let (relay, app) = counted_replica(&pool).await;
    // Another replica on the same database, not counted.
    let other = spawn_app(pool.clone()).await;
    let logins: Vec<String> = (1..=11).map(|i| format!("agent{i}")).collect();
    let logins: Vec<&str> = logins.iter().map(String::as_str).collect();
    let mut agents = app.ready_agents(&logins).await;
    // Two to make the replica expect stale calls (`Known::StaleLately`).
    let spare = agents.split_off(9);
    let lead = &agents[0].0;
    let as_lead = app.agent(lead).await;
    let others: Vec<&str> = agents[1..].iter().map(|a| a.1.as_str()).collect();

    let mut counts = Vec::new();
    for known in [
        Known::AsItIs,
        Known::NotAtAll,
        Known::Stale,
        Known::StaleLately,
    ] {
        for parties in [3, 9, 3, 9] {
            for (user, _) in &agents {
                app.ready(user).await.unwrap();
            }
            let maker = if known == Known::NotAtAll {
                &other
            } else {
                &app
            };
            let conf = maker
                .answered_conference(lead, &others[..parties - 1])
                .await;
            let mut left = 1;
            if matches!(known, Known::Stale | Known::StaleLately) {
                other.end(&agents[1].0, &conf.job_id).await.unwrap();
                left = 2;
            }
            if known == Known::StaleLately {
                app.find_a_known_call_stale(&other, &spare[0], &spare[1])
                    .await;
            }
            warm(&as_lead).await;

            let (ended, n) =
                counted(&relay, end_with(&as_lead.calls, INSTANCE, "", &conf.job_id)).await;
            let ended = ended.expect("EndConference");
            counts.push((known, parties, n));
            // Whatever the replica knew, the answer is the call as stored.
            let call = ended.call_context.unwrap();
            let stored = other.stored_channels(&conf.job_id).await;
            let released = |c: &ccc_callcontrol::proto::ChannelContext| {
                c.channel_state == ChannelState::Released as i32
            };
            assert_eq!(call.channel_contexts.len(), stored.len());
            assert_eq!(
                call.channel_contexts.iter().filter(|c| released(c)).count(),
                stored.iter().filter(|c| c.1 == "RELEASED").count(),
                "{known:?}: {call:?} against {stored:?}"
            );
            assert!(
                call.channel_contexts.iter().filter(|c| released(c)).count() >= left,
                "{known:?}: the lead's and any earlier leaver's channels are released"
            );
            // The others leave too, so the next round starts clean.
            for (user, _) in &agents[left..parties] {
                app.end(user, &conf.job_id).await.unwrap();
            }
        }
    }

    println!("round trips per EndConference (known, parties, count): {counts:?}");
    let steady = |known: Known| -> Vec<u64> {
        // The first two rounds may still prepare statements.
        let of: Vec<u64> = counts
            .iter()
            .filter(|c| c.0 == known)
            .map(|c| c.2)
            .collect();
        of[2..].to_vec()
    };
    assert_eq!(
        steady(Known::AsItIs),
        [1, 1],
        "the apply alone, for 3 parties as for 9: {counts:?}"
    );
    assert_eq!(
        steady(Known::NotAtAll),
        [2, 2],
        "the load and the apply, for 3 parties as for 9: {counts:?}"
    );
    assert_eq!(
        steady(Known::Stale),
        [3, 3],
        "the apply, the load and the apply: {counts:?}"
    );
    assert_eq!(
        steady(Known::StaleLately),
        [2, 2],
        "the apply that read instead, and the apply: {counts:?}"
    );
}

/// Bob leaves through a replica that knows the call and lately finds known
/// calls stale, while another writer holds the call's row and moves its
/// version. The guard waits for that lock, then fails; the read in the
/// same statement sees the call from before that write (its snapshot was
/// taken first), at the very versions known. Deciding on that would fail
/// the guard again and retry the whole action after a back-off: 5 round
/// trips (the failed attempt's connection is pinged as it goes back). The
/// replica reads the call afresh instead: 3, and no retry.
#[sqlx::test]
async fn a_write_that_waited_on_another_reads_afresh(pool: PgPool) {
    let (relay, app) = counted_replica(&pool).await;
    let other = spawn_app(pool.clone()).await;
    let agents = app
        .ready_agents(&["alice", "bob", "carol", "dave", "erin"])
        .await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);
    let conf = app.answered_conference(alice, &["8002", "8003"]).await;
    // Twice, so the write with the read in it is prepared too.
    for _ in 0..2 {
        app.find_a_known_call_stale(&other, &agents[3], &agents[4])
            .await;
    }
    let as_bob = app.agent(bob).await;
    warm(&as_bob).await;

    let mut writer = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE calls SET context_id = nextval(pg_get_serial_sequence('events', 'event_id'))
         WHERE instance_id = $1 AND job_id = $2",
    )
    .bind(INSTANCE)
    .bind(&conf.job_id)
    .execute(&mut *writer)
    .await
    .unwrap();
    let trips = relay.round_trips();
    let before = trips.load(Ordering::SeqCst);
    let calls = as_bob.calls.clone();
    let job = conf.job_id.clone();
    let leaving = tokio::spawn(async move { end_with(&calls, INSTANCE, "", &job).await });
    // The replica's guard waits on the writer's lock.
    wait_for_lock_waiters(&pool, 1).await;
    writer.commit().await.unwrap();
    let left = leaving.await.unwrap().expect("EndConference");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = trips.load(Ordering::SeqCst) - before;

    let channels = left.call_context.unwrap().channel_contexts;
    assert_eq!(state_of(&channels, "8002"), ChannelState::Released);
    // Read through the other replica: the counted one's only connection
    // is kept by its server.
    assert_eq!(other.stored_channels(&conf.job_id).await[1].1, "RELEASED");
    assert_eq!(
        n, 3,
        "the apply that waited and read too early, the load, the apply"
    );
}

/// A writer outside the service takes `user` off any call, as a
/// supervisor's reset would, moving the agent's version as every writer
/// must.
async fn take_off_the_call(pool: &PgPool, user: &str) {
    sqlx::query(
        "UPDATE agents SET user_state = 'READY', job_id = NULL,
                context_id = nextval(pg_get_serial_sequence('events', 'event_id'))
         WHERE instance_id = $1 AND user_id = $2",
    )
    .bind(INSTANCE)
    .bind(user)
    .execute(pool)
    .await
    .unwrap();
}

/// The guard holds the call and the agents a decision went by, not every
/// party read with the call (`Changes::consulted`). Carol is taken off the
/// call from outside while this replica knows her as talking. Bob leaving
/// does not go by carol: written at once, one round trip, and her row
/// stays as the writer left it. Her channel released does go by her: the
/// guard stops the write decided on her as known (it would make her
/// WORKING on a call she is no longer on), and decided again on her as
/// stored she stays READY. Twice: the first round prepares the statements.
#[sqlx::test]
async fn the_guard_holds_only_the_agents_the_decision_went_by(pool: PgPool) {
    let (relay, app) = counted_replica(&pool).await;
    // Reads through another replica: the counted one's only connection is
    // kept by its server.
    let other = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0].0, &agents[1].0, &agents[2].0);
    let as_bob = app.agent(bob).await;
    let ready = ("READY".to_owned(), None);

    let mut counts = Vec::new();
    for _ in 0..2 {
        for user in [alice, bob, carol] {
            app.ready(user).await.unwrap();
        }
        let conf = app.answered_conference(alice, &["8002", "8003"]).await;
        take_off_the_call(&pool, carol).await;
        warm(&as_bob).await;

        let end = end_with(&as_bob.calls, INSTANCE, "", &conf.job_id);
        let (left, bob_left) = counted(&relay, end).await;
        let channels = left.expect("EndConference").call_context.unwrap();
        assert_eq!(
            state_of(&channels.channel_contexts, "8002"),
            ChannelState::Released
        );
        assert_eq!(other.stored_agent(carol).await, ready, "not written");

        let to_carol = conf.channel_to("8003");
        let release = app.report(&conf.job_id, &to_carol, ChannelState::Released);
        let (released, carol_released) = counted(&relay, release).await;
        released.expect("ReportChannelEvent");
        assert_eq!(
            other.stored_agent(carol).await,
            ready,
            "decided on as stored"
        );
        assert_eq!(other.stored_agent(alice).await.0, "WORKING", "call ended");
        counts.push((bob_left, carol_released));
    }
    assert_eq!(counts[1].0, 1, "bob's leaving, as known: {counts:?}");
    assert!(
        counts[1].1 > 1,
        "carol's release, found stale and read: {counts:?}"
    );
}

/// Alice starts a call with bob and a customer on `app`, which then ends,
/// and is made ready again: the round trips of her start and of her ready.
/// Rows are read through `other`: the counted replica's only connection is
/// kept by its server.
async fn start_then_ready(
    relay: &Relay,
    app: &TestApp,
    other: &TestApp,
    alice: &str,
    bob: &str,
) -> (u64, u64) {
    let (started, start) = counted(relay, app.start(alice, &["8002", CUSTOMER])).await;
    let call = started.expect("StartConference").call_context.unwrap();
    let conf = Conference {
        job_id: call.job_id.clone(),
        channels: call.channel_contexts,
    };
    let to_bob = conf.channel_to("8002");
    app.report(&conf.job_id, &to_bob, ChannelState::Released)
        .await
        .unwrap();
    app.end(alice, &conf.job_id).await.unwrap();
    assert_eq!(other.stored_agent(alice).await.0, "WORKING");
    assert_eq!(other.stored_agent(bob).await.0, "READY");
    let (ready, readied) = counted(relay, app.ready(alice)).await;
    assert_eq!(
        ready.expect("ReadyForService").user_state(),
        UserState::Ready
    );
    (start, readied)
}

/// StartConference and ReadyForService on agents the counted replica
/// knows (`app::known::KnownAgents`): the guarded write alone, one round
/// trip, whatever the parties. On an agent another replica moved since,
/// the write that writes nothing, the read, the write: three. Then, while
/// agents are lately found stale, the read and the write: two.
#[sqlx::test]
async fn start_and_ready_round_trips_on_known_agents(pool: PgPool) {
    let (relay, app) = counted_replica(&pool).await;
    let other = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].0);

    let mut counts = Vec::new();
    // The first two rounds may still prepare statements.
    for _ in 0..4 {
        counts.push(start_then_ready(&relay, &app, &other, alice, bob).await);
    }
    // Alice's call and ready through another replica move her on.
    other.make_working(alice).await;
    other.ready(alice).await.unwrap();
    counts.push(start_then_ready(&relay, &app, &other, alice, bob).await);
    counts.push(start_then_ready(&relay, &app, &other, alice, bob).await);

    println!("round trips per (StartConference, ReadyForService): {counts:?}");
    assert_eq!(counts[2..4], [(1, 1), (1, 1)], "as known: {counts:?}");
    assert_eq!(
        counts[4],
        (3, 2),
        "alice stale: the write that wrote nothing, the read, the write; \
         then no longer trusted: the read, the write: {counts:?}"
    );
    assert_eq!(counts[5], (2, 2), "not trusted yet: {counts:?}");
}
