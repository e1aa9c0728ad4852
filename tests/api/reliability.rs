//! Under pressure: many actions on one call all get a domain answer, a hot
//! row holds one connection and not the pool, deadlines start nothing late
//! and cut nothing in half, and idempotency keys turn retries into replays.

use std::collections::BTreeSet;
use std::time::Duration;

use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::proto::{self, channel_context::ChannelState};
use ccc_callcontrol::startup::ServeOptions;
use sqlx::PgPool;
use tonic::{Code, Request, Status};

use crate::helpers::*;

/// A request carrying `x-idempotency-key: key` (if any) and
/// `x-request-id: request_id`.
fn keyed<T>(message: T, key: Option<&str>, request_id: &str) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(key) = key {
        r.metadata_mut()
            .insert("x-idempotency-key", key.parse().unwrap());
    }
    r.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    r
}

fn end_request(user: &str, job: &str) -> proto::EndConferenceRequest {
    proto::EndConferenceRequest {
        instance_id: INSTANCE.into(),
        user_id: user.into(),
        job_id: job.into(),
    }
}

fn release_request(job: &str, channel: &str) -> proto::ReportChannelEventRequest {
    proto::ReportChannelEventRequest {
        instance_id: INSTANCE.into(),
        job_id: job.into(),
        channel_id: channel.into(),
        channel_state: ChannelState::Released as i32,
        release_initiator: String::new(),
        release_reason: String::new(),
    }
}

/// One round of the pile-on: action `i` of 32 on `job`, through `app`.
async fn pile_on_action(
    app: &TestApp,
    i: usize,
    users: &[String],
    job: &str,
    customer_channel: &str,
) -> Result<(), Status> {
    match i % 4 {
        3 => app
            .telephony
            .clone()
            .report_channel_event(release_request(job, customer_channel))
            .await
            .map(drop),
        k => app.end(&users[k], job).await.map(drop),
    }
}

/// 32 actions at once on one call, from four replicas (so most of them
/// meet at the database's row locks, not in one replica's queue): every
/// one gets a domain answer, none UNAVAILABLE, and the call ends
/// consistently. A second round changes nothing.
#[sqlx::test]
async fn thirty_two_actions_on_one_call_all_get_a_domain_answer(pool: PgPool) {
    let first = spawn_app(pool.clone()).await;
    let agents = first.ready_agents(&["alice", "bob", "carol"]).await;
    let users: Vec<String> = agents.iter().map(|a| a.0.clone()).collect();
    let mut replicas = vec![first];
    for _ in 1..4 {
        replicas.push(spawn_app(pool.clone()).await);
    }
    let app = &replicas[0];

    for round in 0..5 {
        for user in &users {
            app.ready(user).await.unwrap();
        }
        let conf = app
            .answered_conference(&users[0], &["8002", "8003", CUSTOMER])
            .await;
        let customer = conf.channel_to(CUSTOMER);
        let events_before = app.event_count().await;

        for pass in 0..2 {
            let answers = futures::future::join_all(
                (0..32)
                    .map(|i| pile_on_action(&replicas[i % 4], i, &users, &conf.job_id, &customer)),
            )
            .await;
            let codes: BTreeSet<String> = answers
                .iter()
                .map(|a| match a {
                    Ok(()) => "OK".to_owned(),
                    Err(s) => format!("{:?}", s.code()),
                })
                .collect();
            for a in &answers {
                if let Err(s) = a {
                    assert_eq!(
                        s.code(),
                        Code::FailedPrecondition,
                        "round {round} pass {pass}: only domain answers: {s:?}"
                    );
                }
            }
            assert!(codes.contains("OK"), "round {round}: {codes:?}");
        }

        let stored = app.stored_channels(&conf.job_id).await;
        assert!(
            stored.iter().all(|c| c.1 == "RELEASED"),
            "round {round}: {stored:?}"
        );
        assert!(app.call_ended_at(&conf.job_id).await.is_some());
        for user in &users {
            assert_eq!(
                app.stored_agent(user).await,
                ("WORKING".into(), Some(conf.job_id.clone())),
                "round {round}"
            );
        }
        // Each party's channel is released once: at most one event per
        // party, and the second pass wrote nothing.
        let changes = app.event_count().await - events_before;
        assert!(
            (2..=4).contains(&changes),
            "round {round}: {changes} events"
        );
        let per_actor: Vec<(String, String)> = app.events_of(&conf.job_id).await;
        let leaves = per_actor
            .iter()
            .filter(|(action, _)| action == "EndConference")
            .count();
        assert!(leaves <= 3, "round {round}: {per_actor:?}");
    }
}

/// A row locked elsewhere: 16 callers pile onto it, and they wait on one
/// connection (in the replica's queue), so unrelated reads and writes go
/// through while the row is still locked.
#[sqlx::test]
async fn a_hot_row_holds_one_connection_not_the_pool(pool: PgPool) {
    let mut args = service_args(&pool);
    args.max_connections = 4;
    args.lock_timeout_ms = 30_000;
    let app = spawn_app_tuned(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            request_timeout: Duration::from_secs(30),
            db_timeout: Duration::from_secs(30),
            ..ServeOptions::default()
        },
        args,
    )
    .await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (agents[0].0.clone(), agents[1].0.clone());
    app.make_working(&alice).await;

    let holder = lock_agent(&app.pool, &alice).await;

    let hot = spawn_readies(&app.calls, &alice, 16);
    // Until the first of them waits on the row lock.
    let mut waiting = 0i64;
    for _ in 0..200 {
        waiting = lock_waiters(&app.pool).await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(waiting, 1, "one connection waits on the hot row");

    for _ in 0..10 {
        app.poll(&bob).await;
        app.ready(&bob).await.expect("an unrelated write");
        let started = app.start(&bob, &[CUSTOMER]).await.expect("a new call");
        app.end(&bob, &started.call_context.unwrap().job_id)
            .await
            .expect("leaving it");
        app.ready(&bob).await.unwrap();
    }
    assert!(
        hot.iter().all(|h| !h.is_finished()),
        "the hot row was still locked all along"
    );
    assert_eq!(lock_waiters(&app.pool).await, 1);

    holder.commit().await.unwrap();
    for h in hot {
        h.await
            .unwrap()
            .expect("the hot row's callers get their turn");
    }
}

/// The caller's deadline passes while its action waits: it hears
/// DEADLINE_EXCEEDED in time. An action that had started (it waited on the
/// row lock inside its transaction) still finishes and commits; one that
/// was still queued behind it never starts.
#[sqlx::test]
async fn a_passed_deadline_starts_nothing_and_cuts_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (agents[0].0.clone(), agents[1].0.clone());
    let conf = app.answered_conference(&alice, &["8002", CUSTOMER]).await;

    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE instance_id = $1 AND job_id = $2 FOR UPDATE")
        .bind(INSTANCE)
        .bind(&conf.job_id)
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut started = keyed(end_request(&alice, &conf.job_id), None, "started-late");
    started.set_timeout(Duration::from_millis(400));
    let mut queued = keyed(end_request(&bob, &conf.job_id), None, "queued-late");
    queued.set_timeout(Duration::from_millis(400));
    let (mut c1, mut c2) = (app.calls.clone(), app.calls.clone());
    let first = tokio::spawn(async move { c1.end_conference(started).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(async move { c2.end_conference(queued).await });

    for answer in [first.await.unwrap(), second.await.unwrap()] {
        let err = answer.unwrap_err();
        assert_error(
            &err,
            Code::DeadlineExceeded,
            "Request.DeadlineExceeded",
            504,
        );
    }
    holder.commit().await.unwrap();

    // The started one commits once it gets the lock; the queued one never
    // runs, whatever happens next.
    let leaves = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT request_id FROM events WHERE job_id = $1 AND action = 'EndConference'",
        )
        .bind(&conf.job_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    for _ in 0..200 {
        if !leaves().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = leaves().await;
    assert_eq!(done, vec!["started-late".to_owned()]);
    assert_eq!(app.stored_agent(&alice).await.0, "WORKING");
    assert_eq!(app.stored_agent(&bob).await.0, "TALKING");
}

/// A retry with the same key is answered with the first response, byte for
/// byte (RequestId included), and changes nothing more.
#[sqlx::test]
async fn a_retry_with_its_idempotency_key_replays_the_first_answer(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let alice = &agents[0].0;
    let conf = app
        .answered_conference(alice, &["8002", "8003", CUSTOMER])
        .await;
    let mut calls = app.calls.clone();

    let first = calls
        .end_conference(keyed(
            end_request(alice, &conf.job_id),
            Some("k-1"),
            "first",
        ))
        .await
        .unwrap()
        .into_inner();
    let events = app.event_count().await;
    // Meanwhile the call moves on.
    app.report(
        &conf.job_id,
        &conf.channel_to(CUSTOMER),
        ChannelState::Released,
    )
    .await
    .unwrap();
    let retry = calls
        .end_conference(keyed(
            end_request(alice, &conf.job_id),
            Some("k-1"),
            "retry",
        ))
        .await
        .unwrap();

    assert_eq!(
        retry.metadata().get("x-request-id").unwrap(),
        "retry",
        "the retry's own id is in its metadata"
    );
    assert_eq!(retry.into_inner(), first, "the first response, kept");
    assert_eq!(first.request_id, "first");
    assert_eq!(app.event_count().await, events + 1, "only the report wrote");

    // A different request under the same key is refused and changes nothing.
    let err = calls
        .end_conference(keyed(
            end_request(&agents[1].0, &conf.job_id),
            Some("k-1"),
            "other",
        ))
        .await
        .unwrap_err();
    assert_error(
        &err,
        Code::FailedPrecondition,
        "IdempotentParameterMismatch",
        400,
    );
    assert_eq!(app.stored_agent(&agents[1].0).await.0, "TALKING");

    // Keys are the caller's own: another caller's same key is another key.
    let as_bob = app.agent(&agents[1].0).await;
    as_bob
        .calls
        .clone()
        .end_conference(keyed(end_request("", &conf.job_id), Some("k-1"), "bob"))
        .await
        .unwrap();
    assert_eq!(app.stored_agent(&agents[1].0).await.0, "WORKING");
}

/// A replayed answer ends its transaction without a commit: sqlx queues the
/// ROLLBACK and sends it with the connection's next statement. Such a
/// connection is not kept for the next unit as it is (`store::warm`): the
/// pool's check sends the ROLLBACK at once, and no session stays idle in a
/// transaction, holding what the transaction locked.
#[sqlx::test]
async fn a_replayed_answer_leaves_no_transaction_open(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conf = app.answered_conference(alice, &["8002", CUSTOMER]).await;
    let mut calls = app.calls.clone();
    for id in ["first", "retry"] {
        calls
            .end_conference(keyed(end_request(alice, &conf.job_id), Some("k-1"), id))
            .await
            .unwrap();
    }

    let open = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    // The pool's check runs just after the answer.
    let mut left = open().await;
    for _ in 0..40 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = open().await;
    }
    assert_eq!(left, 0, "no session idle in a transaction after a replay");
    // And the next action on that connection is served as usual.
    app.poll(alice).await;
}

/// With one connection and many callers at once, each unit gets the
/// connection as the one before ends: a unit waiting on the pool also takes
/// a connection kept for reuse (`store::warm`), which the pool itself
/// counts as out, so would never hand over.
#[sqlx::test]
async fn one_connection_serves_many_callers_in_turn(pool: PgPool) {
    let mut args = service_args(&pool);
    args.max_connections = 1;
    args.acquire_timeout_ms = 2_000;
    let app = spawn_app_tuned(pool, ServeOptions::default(), args).await;
    let agents = app.ready_agents(&["alice"]).await;
    let alice = agents[0].0.clone();

    let polls: Vec<_> = (0..16)
        .map(|_| {
            let mut calls = app.calls.clone();
            let user = alice.clone();
            tokio::spawn(async move {
                calls
                    .poll_user_status(proto::PollUserStatusRequest {
                        instance_id: INSTANCE.into(),
                        user_id: user,
                    })
                    .await
            })
        })
        .collect();
    for p in polls {
        p.await.unwrap().expect("every caller is served in turn");
    }
}

/// 50 identical requests with one key, at once, on two replicas: exactly
/// one change, and all 50 answers are that change's.
#[sqlx::test]
async fn fifty_concurrent_duplicates_make_exactly_one_change(pool: PgPool) {
    let one = spawn_app(pool.clone()).await;
    let two = spawn_app(pool.clone()).await;
    let agents = one.ready_agents(&["alice", "bob"]).await;
    let alice = agents[0].0.clone();
    let token = create_token(&one.direct, Some(INSTANCE), Role::Admin, None, None).await;
    let replicas = [
        one.clients(Bearer::token(&token)),
        two.clients(Bearer::token(&token)),
    ];
    let calls_before = count_calls(&one.pool).await;

    let answers = futures::future::join_all((0..50).map(|i| {
        let mut calls = replicas[i % 2].calls.clone();
        let request = keyed(
            proto::StartConferenceRequest {
                instance_id: INSTANCE.into(),
                user_id: alice.clone(),
                participant_list_json: format!("[\"8002\", \"{CUSTOMER}\"]"),
                timeout_seconds: None,
                tags: "dup".into(),
            },
            Some("start-once"),
            &format!("dup-{i}"),
        );
        async move { calls.start_conference(request).await }
    }))
    .await;

    let jobs: BTreeSet<String> = answers
        .into_iter()
        .map(|a| {
            a.expect("every duplicate is answered")
                .into_inner()
                .data
                .unwrap()
                .call_context
                .unwrap()
                .job_id
        })
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(count_calls(&one.pool).await, calls_before + 1);
    let starts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE action = 'StartConference'")
            .fetch_one(&one.pool)
            .await
            .unwrap();
    assert_eq!(starts, 1);
}

async fn count_calls(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Keys are kept at least 24 hours, and then purged by the service itself.
#[sqlx::test]
async fn idempotency_keys_are_kept_a_day_then_purged(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    app.admin
        .clone()
        .create_instance(keyed(
            proto::CreateInstanceRequest {
                instance_id: "ccc-other".into(),
                name: "other".into(),
                description: String::new(),
            },
            Some("make-other"),
            "r",
        ))
        .await
        .unwrap();
    let kept = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(kept(app.pool.clone()).await, 1);

    let purged = app
        .direct
        .purge_idempotency_keys(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!((purged, kept(app.pool.clone()).await), (0, 1));

    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let purged = app
        .direct
        .purge_idempotency_keys(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!((purged, kept(app.pool.clone()).await), (1, 0));
}

/// CreateAccessToken's answer carries a secret that is never stored, so it
/// cannot be replayed: a key on it is refused, and no token is made.
#[sqlx::test]
async fn create_access_token_refuses_an_idempotency_key(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_instance(INSTANCE).await;
    let tokens = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM access_tokens")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = tokens(app.pool.clone()).await;

    let err = app
        .admin
        .clone()
        .create_access_token(keyed(
            proto::CreateAccessTokenRequest {
                instance_id: INSTANCE.into(),
                role: proto::AccessRole::Telephony as i32,
                user_id: String::new(),
                expires_in_seconds: None,
            },
            Some("tok"),
            "r",
        ))
        .await
        .unwrap_err();

    assert_error(&err, Code::InvalidArgument, "Parameter.Invalid", 400);
    assert_eq!(tokens(app.pool.clone()).await, before);
}

/// Beyond its limit of concurrent requests a replica sheds load at once,
/// with a retryable, documented error, instead of queueing.
#[sqlx::test]
async fn over_its_limit_a_replica_sheds_load(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            max_concurrent_requests: 2,
            ..ServeOptions::default()
        },
    )
    .await;
    let agents = app.ready_agents(&["alice"]).await;
    let alice = agents[0].0.clone();
    app.make_working(&alice).await;
    let holder = lock_agent(&app.pool, &alice).await;
    // Two requests stuck on the locked row fill the replica.
    let stuck = spawn_readies(&app.calls, &alice, 2);
    wait_for_lock_waiters(&app.pool, 1).await;

    let shed = app
        .calls
        .clone()
        .poll_user_status(proto::PollUserStatusRequest {
            instance_id: INSTANCE.into(),
            user_id: alice.clone(),
        })
        .await
        .unwrap_err();

    assert_error(&shed, Code::Unavailable, "Throttling", 503);
    holder.commit().await.unwrap();
    for s in stuck {
        s.await.unwrap().unwrap();
    }
    app.poll(&alice).await;
}

/// A flood of distinct unknown tokens draws only on the lookups' share of
/// the pool: a known caller's writes go through meanwhile, and the flood
/// hears only UNAUTHENTICATED (or a retryable UNAVAILABLE), never INTERNAL.
#[sqlx::test]
async fn a_flood_of_unknown_tokens_cannot_take_the_pool(pool: PgPool) {
    let mut args = service_args(&pool);
    args.max_connections = 4;
    let app = spawn_app_tuned(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::from_secs(60),
            ..ServeOptions::default()
        },
        args,
    )
    .await;
    let agents = app.ready_agents(&["alice"]).await;
    let alice = agents[0].0.clone();

    let flood: Vec<_> = (0..400u32)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            let token = ccc_callcontrol::domain::access::AccessToken::from_random(secret);
            let clients = app.clients(Bearer::token(token.reveal()));
            let alice = alice.clone();
            tokio::spawn(async move {
                clients
                    .calls
                    .clone()
                    .poll_user_status(proto::PollUserStatusRequest {
                        instance_id: INSTANCE.into(),
                        user_id: alice,
                    })
                    .await
                    .map(drop)
            })
        })
        .collect();
    for _ in 0..20 {
        app.ready(&alice).await.expect("a known caller's write");
        app.poll(&alice).await;
    }
    for answer in flood {
        let err = answer.await.unwrap().unwrap_err();
        assert!(
            matches!(err.code(), Code::Unauthenticated | Code::Unavailable),
            "{err:?}"
        );
    }
}

/// A unit cut off by its database timeout leaves its connection in a state
/// nobody knows (here: a statement still waiting on a row lock). That
/// connection is closed, not put back in the pool: its session ends while
/// the lock is still held, and the next action runs on a fresh one.
#[sqlx::test]
async fn a_unit_cut_off_by_its_timeout_closes_its_connection(pool: PgPool) {
    let mut args = service_args(&pool);
    args.max_connections = 2;
    // Neither timeout may end the waiting statement during the test: only
    // the connection's closing may.
    args.lock_timeout_ms = 30_000;
    args.statement_timeout_ms = 30_000;
    let app = spawn_app_tuned(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            db_timeout: Duration::from_millis(500),
            ..ServeOptions::default()
        },
        args,
    )
    .await;
    let agents = app.ready_agents(&["alice"]).await;
    let alice = agents[0].0.clone();
    app.make_working(&alice).await;

    let holder = lock_agent(&app.pool, &alice).await;
    let cut = spawn_readies(&app.calls, &alice, 1).pop().unwrap();
    wait_for_lock_waiters(&app.pool, 1).await;
    let waiting: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let status = cut
        .await
        .unwrap()
        .expect_err("cut off by the database timeout");
    assert_error(&status, Code::Unavailable, "ServiceUnavailable", 503);

    // Its session ends while the lock is still held: the connection was
    // closed (PostgreSQL notices within client_connection_check_interval,
    // 1 s).
    let mut alive = true;
    for _ in 0..60 {
        alive = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(waiting)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "the cut-off unit's session {waiting} still runs");
    assert_eq!(lock_waiters(&app.pool).await, 0);

    holder.rollback().await.unwrap();
    app.ready(&alice)
        .await
        .expect("the next action, on a fresh connection");
}
