//! WatchEvents: every change once, in order, resumable from any replica;
//! late commits still arrive; slow watchers catch up; filters and tokens
//! decide what is seen; shutdown and the caller's deadline end streams
//! with a resumable error.

use std::time::Duration;

use ccc_callcontrol::app::WatchOptions;
use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::domain::events::Cursor;
use ccc_callcontrol::proto::{self, UserState, channel_context::ChannelState};
use ccc_callcontrol::startup::ServeOptions;
use sqlx::PgPool;
use tonic::{Code, Status, Streaming};

use crate::helpers::*;

type Stream = Streaming<proto::WatchEventsResponse>;

fn watch(user: &str, job: &str, after: &str) -> proto::WatchEventsRequest {
    proto::WatchEventsRequest {
        instance_id: INSTANCE.into(),
        user_id: user.into(),
        job_id: job.into(),
        after_cursor: after.into(),
    }
}

async fn open(events: &Events, request: proto::WatchEventsRequest) -> Stream {
    events
        .clone()
        .watch_events(request)
        .await
        .expect("WatchEvents opens")
        .into_inner()
}

/// The next message, bookmarks included (10 s at most).
async fn next(stream: &mut Stream) -> proto::WatchEventsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream goes on")
        .expect("the stream is open")
}

/// The next change, skipping bookmarks.
async fn next_change(stream: &mut Stream) -> proto::WatchEventsResponse {
    loop {
        let m = next(stream).await;
        if m.action != "Bookmark" {
            return m;
        }
    }
}

/// `n` changes, skipping bookmarks.
async fn changes(stream: &mut Stream, n: usize) -> Vec<proto::WatchEventsResponse> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), next_change(stream)).await {
            Ok(m) => got.push(m),
            Err(_) => panic!(
                "{} of {n} changes within 10 s of the last; got {:?}",
                got.len(),
                ids(&got)
            ),
        }
    }
    got
}

/// The IDs of the instance's events after `after`, oldest first: what a
/// watcher from there must receive.
async fn stored_after(pool: &PgPool, after: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT event_id FROM events WHERE instance_id = $1 AND event_id > $2 ORDER BY event_id",
    )
    .bind(INSTANCE)
    .bind(after)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The stream's end: its status.
async fn end_of(stream: &mut Stream) -> Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

/// A replica whose quiet streams get a bookmark every `every`.
async fn spawn_with_bookmarks_every(pool: PgPool, every: Duration) -> TestApp {
    spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            watch: WatchOptions {
                bookmark_every: every,
                ..WatchOptions::default()
            },
            ..ServeOptions::default()
        },
    )
    .await
}

fn ids(messages: &[proto::WatchEventsResponse]) -> Vec<i64> {
    messages.iter().map(|m| m.context_id).collect()
}

#[sqlx::test]
async fn end_conference_arrives_with_the_whole_call_and_the_agent(pool: PgPool) {
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let alice = &agents[0].0;
    let conference = app
        .answered_conference(alice, &[&agents[1].1, CUSTOMER])
        .await;
    let mut stream = open(&app.events, watch("", "", "")).await;

    let ended = app.end(alice, &conference.job_id).await.unwrap();

    let m = next_change(&mut stream).await;
    assert_eq!(m.action, "EndConference");
    assert_eq!(m.context_id, ended.context_id);
    assert_eq!(m.instance_id, INSTANCE);
    assert_eq!(m.job_id, conference.job_id);
    assert!(!m.request_id.is_empty());
    assert!(
        m.timestamp > 1_700_000_000_000,
        "milliseconds: {}",
        m.timestamp
    );
    assert!(!m.cursor.is_empty());
    // The same call the response carried: every channel, Alice's released.
    assert_eq!(m.call_context, ended.call_context);
    let call = m.call_context.unwrap();
    assert_eq!(call.channel_contexts.len(), 3);
    let users: Vec<&str> = m.user_contexts.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(users, [alice.as_str()]);
    assert_eq!(Some(&m.user_contexts[0]), ended.user_context.as_ref());
    assert_ne!(m.user_contexts[0].user_state, UserState::Talking as i32);
}

#[sqlx::test]
async fn resuming_from_the_last_cursor_gets_every_later_change_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    // From the start of the log: everything the set-up wrote.
    let first = stored_after(&pool, 0).await;
    let mut stream = open(&app.events, watch("", "", "c1.0")).await;
    let got = changes(&mut stream, first.len()).await;
    assert_eq!(ids(&got), first);
    let cursor = got.last().unwrap().cursor.clone();
    drop(stream);

    // Changes while nobody watches, then resume.
    for (user, _) in &agents {
        app.make_working(user).await;
    }
    let later = stored_after(&pool, *first.last().unwrap()).await;
    assert!(later.len() >= 6);
    let mut resumed = open(&app.events, watch("", "", &cursor)).await;
    let got = changes(&mut resumed, later.len()).await;
    assert_eq!(ids(&got), later, "every later change, once, in order");

    // And nothing more: the next message is a bookmark or a new change.
    app.ready(&agents[0].0).await.unwrap();
    let m = next_change(&mut resumed).await;
    assert_eq!(m.action, "ReadyForService");
    assert_eq!(Some(&m.context_id), stored_after(&pool, 0).await.last());
}

#[sqlx::test]
async fn a_watch_on_one_replica_sees_writes_through_another(pool: PgPool) {
    let writer = spawn_app(pool.clone()).await;
    let watcher = spawn_app(pool.clone()).await;
    let agents = writer.ready_agents(&["alice", "bob"]).await;
    let mut stream = open(&watcher.events, watch("", "", "")).await;
    let started = writer.start(&agents[0].0, &[&agents[1].1]).await.unwrap();
    let m = next_change(&mut stream).await;
    assert_eq!(m.action, "StartConference");
    assert_eq!(m.context_id, started.context_id);
    assert_eq!(m.call_context, started.call_context);
}

/// The tail keeps the calls it follows from one read to the next. An
/// instance nobody watched for a while was not read meanwhile: when it is
/// watched again its calls are rebuilt from the log, not from what the
/// tail kept, or the answers made meanwhile would be missing.
#[sqlx::test]
async fn a_call_that_changed_while_nobody_watched_it_arrives_whole(pool: PgPool) {
    let app = spawn_with_bookmarks_every(pool, Duration::from_millis(100)).await;
    // Watched throughout, so the tail goes on reading, without ccc-test
    // while ccc-test has no watcher.
    app.create_instance("ccc-other").await;
    let other_watch = proto::WatchEventsRequest {
        instance_id: "ccc-other".into(),
        ..Default::default()
    };
    let mut other = open(&app.events, other_watch).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let (alice, bob) = (&agents[0].0, &agents[1].1);

    let mut first = open(&app.events, watch("", "", "")).await;
    let started = app.start(alice, &[bob, CUSTOMER]).await.unwrap();
    assert_eq!(next_change(&mut first).await.context_id, started.context_id);
    drop(first);
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while app.direct.watchers() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    gone.await.expect("the first watcher is gone within 10 s");

    let call = started.call_context.unwrap();
    let conference = Conference {
        job_id: call.job_id,
        channels: call.channel_contexts,
    };
    let job = &conference.job_id;
    let mut answered = 0;
    for p in [bob.as_str(), CUSTOMER] {
        answered = app
            .report(job, &conference.channel_to(p), ChannelState::Answered)
            .await
            .unwrap()
            .context_id;
    }
    // The tail has read past the answers (without ccc-test).
    loop {
        let m = next(&mut other).await;
        if Cursor::parse("Cursor", &m.cursor).unwrap().0 >= answered {
            break;
        }
    }

    let mut second = open(&app.events, watch("", "", "")).await;
    let ended = app.end(alice, job).await.unwrap();
    let m = next_change(&mut second).await;
    assert_eq!(m.context_id, ended.context_id);
    assert_eq!(m.call_context, ended.call_context, "the answers are in it");
    let call = m.call_context.unwrap();
    assert_eq!(
        state_of(&call.channel_contexts, CUSTOMER),
        ChannelState::Answered
    );
}

/// A transaction that drew an event ID and has not committed holds back
/// every later change; when it commits it arrives, in its place.
#[sqlx::test]
async fn a_change_that_commits_late_still_arrives_in_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let mut stream = open(&app.events, watch("", "", "")).await;

    let mut held = pool.begin().await.unwrap();
    let held_id: i64 = sqlx::query_scalar(
        "INSERT INTO events (instance_id, request_id, action, actor, after)
         VALUES ($1, 'held', 'HeldChange', 'test', '{}') RETURNING event_id",
    )
    .bind(INSTANCE)
    .fetch_one(&mut *held)
    .await
    .unwrap();
    // Later changes commit while it is open.
    app.make_working(&agents[0].0).await;
    app.make_working(&agents[1].0).await;
    let later = stored_after(&pool, held_id).await;
    assert!(!later.is_empty());
    // Nothing after the held ID may be sent before it: wait well past a
    // poll, then commit.
    let early = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    if let Ok(Ok(Some(m))) = &early {
        assert!(
            m.action == "Bookmark" || m.context_id < held_id,
            "a change after the held one arrived first: {m:?}"
        );
    }
    held.commit().await.unwrap();

    let mut expected = vec![held_id];
    expected.extend(later);
    let got = changes(&mut stream, expected.len()).await;
    assert_eq!(ids(&got), expected);
    assert_eq!(got[0].action, "HeldChange");
}

/// Concurrent changes on several calls: the stream holds all of them, in
/// ContextId order (so each call's changes are in order too).
#[sqlx::test]
async fn concurrent_changes_arrive_all_and_in_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let logins: Vec<String> = (0..6).map(|i| format!("agent{i}")).collect();
    let logins: Vec<&str> = logins.iter().map(String::as_str).collect();
    let agents = app.ready_agents(&logins).await;
    let before = *stored_after(&pool, 0).await.last().unwrap();
    let mut stream = open(&app.events, watch("", "", "")).await;

    let mut tasks = Vec::new();
    for (user, _) in agents.clone() {
        let calls = app.calls.clone();
        let telephony = app.telephony.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let started = calls
                    .clone()
                    .start_conference(proto::StartConferenceRequest {
                        instance_id: INSTANCE.into(),
                        user_id: user.clone(),
                        participant_list_json: format!("[\"{CUSTOMER}\"]"),
                        timeout_seconds: None,
                        tags: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .data
                    .unwrap()
                    .call_context
                    .unwrap();
                let customer = started
                    .channel_contexts
                    .iter()
                    .find(|c| c.destination == CUSTOMER)
                    .unwrap()
                    .channel_id
                    .clone();
                telephony
                    .clone()
                    .report_channel_event(proto::ReportChannelEventRequest {
                        instance_id: INSTANCE.into(),
                        job_id: started.job_id.clone(),
                        channel_id: customer,
                        channel_state: ChannelState::Answered as i32,
                        release_initiator: String::new(),
                        release_reason: String::new(),
                    })
                    .await
                    .unwrap();
                end_with(&calls, INSTANCE, &user, &started.job_id)
                    .await
                    .unwrap();
                calls
                    .clone()
                    .ready_for_service(ready_request(&user))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = stored_after(&pool, before).await;
    let got = changes(&mut stream, expected.len()).await;
    assert_eq!(ids(&got), expected);
    // Each call's story, as the stream told it, in order.
    for m in &got {
        if m.action == "EndConference" {
            let call = m.call_context.as_ref().unwrap();
            assert!(
                call.channel_contexts
                    .iter()
                    .all(|c| { c.channel_state == ChannelState::Released as i32 })
            );
        }
    }
}

/// A watcher that reads nothing while thousands of changes commit falls
/// out of the broadcast's backlog; it then reads from the database and
/// still gets every change once, in order.
#[sqlx::test]
async fn a_slow_watcher_catches_up_from_the_database(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.ready_agents(&["alice"]).await;
    let before = *stored_after(&pool, 0).await.last().unwrap();
    let mut stream = open(&app.events, watch("", "", "")).await;
    // Committed in a few big transactions, far more than the backlog holds.
    for _ in 0..4 {
        sqlx::query(
            "INSERT INTO events (instance_id, request_id, action, actor, after)
             SELECT $1, 'bulk-' || n, 'BulkChange', 'test', '{}'
             FROM generate_series(1, 5000) AS n",
        )
        .bind(INSTANCE)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Let the tail broadcast it all while this watcher reads nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = stored_after(&pool, before).await;
    assert_eq!(expected.len(), 20_000);
    let got = changes(&mut stream, expected.len()).await;
    assert!(
        ids(&got) == expected,
        "every change once and in order ({} received)",
        got.len()
    );
}

#[sqlx::test]
async fn filters_and_tokens_decide_what_is_seen(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&agents[0], &agents[1], &agents[2]);
    let bobs = app.agent(&bob.0).await;
    let telephony = app.clients_as(Some(INSTANCE), Role::Telephony, None).await;
    // Bob's own token, blank UserId: Bob's changes and Bob's calls.
    let mut as_bob = open(&bobs.events, watch("", "", "")).await;
    let mut of_carol = open(&telephony.events, watch(&carol.0, "", "")).await;

    // Carol alone: not Bob's.
    app.make_working(&carol.0).await;
    // Alice calls Bob: Bob's, from its first change.
    let conference = app.answered_conference(&alice.0, &[&bob.1]).await;
    let mut job_only = open(&app.events, watch("", &conference.job_id, "")).await;
    app.end(&alice.0, &conference.job_id).await.unwrap();

    let m = next_change(&mut as_bob).await;
    assert_eq!(m.action, "StartConference", "Carol's call is not Bob's");
    assert_eq!(m.job_id, conference.job_id);
    let rest = changes(&mut as_bob, 2).await;
    assert_eq!(rest[0].action, "ReportChannelEvent");
    assert_eq!(rest[1].action, "EndConference", "Alice left Bob's call");

    let carol_sees = changes(&mut of_carol, 2).await;
    assert_eq!(carol_sees[0].action, "StartConference");
    assert!(carol_sees.iter().all(|m| m.job_id != conference.job_id));

    let job_sees = next_change(&mut job_only).await;
    assert_eq!(job_sees.action, "EndConference");
    assert_eq!(job_sees.job_id, conference.job_id);

    // An agent may not watch another; the rest is refused like any rpc.
    let refused = bobs
        .events
        .clone()
        .watch_events(watch(&alice.0, "", ""))
        .await
        .unwrap_err();
    assert_error(&refused, Code::PermissionDenied, "Permission.Common", 403);
    let cases: [(proto::WatchEventsRequest, Code, &str, u16); 6] = [
        (
            proto::WatchEventsRequest {
                instance_id: String::new(),
                ..watch("", "", "")
            },
            Code::InvalidArgument,
            "Parameter.Blank",
            400,
        ),
        (
            watch("", "", "not-a-cursor"),
            Code::InvalidArgument,
            "Parameter.Invalid",
            400,
        ),
        (
            watch("", "", "c1.9000000000000000000"),
            Code::InvalidArgument,
            "Parameter.Invalid",
            400,
        ),
        (
            watch("nobody@ccc-test", "", ""),
            Code::NotFound,
            "NotExists.UserId",
            404,
        ),
        (
            watch("", "job-1", ""),
            Code::NotFound,
            "NotExists.JobId",
            404,
        ),
        (
            proto::WatchEventsRequest {
                instance_id: "ccc-nowhere".into(),
                ..watch("", "", "")
            },
            Code::NotFound,
            "NotExists.InstanceId",
            404,
        ),
    ];
    for (request, code, reason, http) in cases {
        let status = app.events.clone().watch_events(request).await.unwrap_err();
        assert_error(&status, code, reason, http);
    }
    // An agent token outside its instance: refused before any lookup.
    let elsewhere = bobs
        .events
        .clone()
        .watch_events(proto::WatchEventsRequest {
            instance_id: "ccc-other".into(),
            ..watch("", "", "")
        })
        .await
        .unwrap_err();
    assert_error(&elsewhere, Code::PermissionDenied, "Permission.Common", 403);
}

/// A filtered watcher that sees nothing still gets bookmarks, whose
/// cursors move past what it skipped.
#[sqlx::test]
async fn bookmarks_move_a_quiet_watchers_cursor(pool: PgPool) {
    let app = spawn_with_bookmarks_every(pool.clone(), Duration::from_millis(300)).await;
    let agents = app.ready_agents(&["alice", "bob"]).await;
    let mut of_bob = open(&app.events, watch(&agents[1].0, "", "")).await;
    app.make_working(&agents[0].0).await;
    let last = *stored_after(&pool, 0).await.last().unwrap();
    // Bookmarks until one is past Alice's changes (the first may come
    // before the tail read them).
    let bookmark = loop {
        let m = next(&mut of_bob).await;
        assert_eq!(m.action, "Bookmark", "nothing of Bob's happened: {m:?}");
        assert_eq!(m.context_id, 0);
        assert!(m.call_context.is_none() && m.user_contexts.is_empty());
        if Cursor::parse("Cursor", &m.cursor).unwrap().0 >= last {
            break m;
        }
    };
    // Resuming from it, unfiltered: Alice's changes do not come again.
    let mut resumed = open(&app.events, watch("", "", &bookmark.cursor)).await;
    let ready = app.ready(&agents[0].0).await.unwrap();
    let m = next_change(&mut resumed).await;
    assert_eq!(m.action, "ReadyForService");
    assert_eq!(m.user_contexts, [ready]);
}

#[sqlx::test]
async fn shutdown_ends_streams_unavailable_and_another_replica_resumes(pool: PgPool) {
    let mut first = spawn_app(pool.clone()).await;
    let second = spawn_app(pool.clone()).await;
    let agents = first.ready_agents(&["alice"]).await;
    let mut stream = open(&first.events, watch("", "", "")).await;
    first.make_working(&agents[0].0).await;
    let m = next_change(&mut stream).await;

    first.shut_down();
    let status = end_of(&mut stream).await;
    assert_error(&status, Code::Unavailable, "ServiceUnavailable", 503);

    // Resume on the other replica from the last cursor: the rest, once.
    let expected = stored_after(&pool, m.context_id).await;
    let mut resumed = open(&second.events, watch("", "", &m.cursor)).await;
    let got = changes(&mut resumed, expected.len()).await;
    assert_eq!(ids(&got), expected);
}

#[sqlx::test]
async fn a_replica_holds_at_most_its_watchers(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        ServeOptions {
            token_cache_ttl: Duration::ZERO,
            watch: WatchOptions {
                max_watchers: 1,
                ..WatchOptions::default()
            },
            ..ServeOptions::default()
        },
    )
    .await;
    app.ready_agents(&["alice"]).await;
    let first = open(&app.events, watch("", "", "")).await;
    let refused = app
        .events
        .clone()
        .watch_events(watch("", "", ""))
        .await
        .unwrap_err();
    assert_error(&refused, Code::Unavailable, "Throttling", 503);
    drop(first);
    // The slot comes back when the stream goes.
    let mut reopened = None;
    for _ in 0..50 {
        match app.events.clone().watch_events(watch("", "", "")).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(reopened.is_some(), "the slot was given back");
}

/// Days past the retention are dropped whole; a cursor from before what
/// was dropped is refused as expired, one from after it still resumes.
#[sqlx::test]
async fn a_cursor_older_than_the_kept_events_is_out_of_range(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let agents = app.ready_agents(&["alice"]).await;
    let before_old = *stored_after(&pool, 0).await.last().unwrap();
    // A change made long ago: it lands in the partition that holds
    // everything from before the migration day.
    let old: i64 = sqlx::query_scalar(
        "INSERT INTO events (instance_id, request_id, action, actor, after, created_at)
         VALUES ($1, 'old', 'OldChange', 'test', '{}', '2020-01-01 12:00Z') RETURNING event_id",
    )
    .bind(INSTANCE)
    .fetch_one(&pool)
    .await
    .unwrap();
    // The next change is made today, in today's partition.
    app.make_working(&agents[0].0).await;
    let today: String = sqlx::query_scalar("SELECT tableoid::regclass::text FROM events WHERE event_id = (SELECT max(event_id) FROM events)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(today.starts_with("events_p"), "{today}");

    // A retention of 7 days keeps every partition here.
    let kept = app.direct.maintain_event_log(7).await.unwrap();
    assert!(kept.dropped.is_empty(), "{kept:?}");
    // 0 days drops every day that has ended: the archive, the old change
    // with it, but not today.
    let done = app.direct.maintain_event_log(0).await.unwrap();
    assert_eq!(done.dropped, ["events_archive"]);
    let left: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM events WHERE event_id <= $1")
        .bind(old)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(left.iter().all(|id| *id != old), "the old change is gone");
    // The days ahead exist (the service made them at start already).
    let ahead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ahead >= 8, "today and a week ahead: {ahead}");

    let refused = app
        .events
        .clone()
        .watch_events(watch("", "", &format!("c1.{before_old}")))
        .await
        .unwrap_err();
    assert_error(&refused, Code::OutOfRange, "Cursor.Expired", 410);
    assert!(refused.message().contains("PollUserStatus"));

    let mut resumed = open(&app.events, watch("", "", &format!("c1.{old}"))).await;
    let expected = stored_after(&pool, old).await;
    let got = changes(&mut resumed, expected.len()).await;
    assert_eq!(ids(&got), expected);
    // A second run has nothing to do.
    let again = app.direct.maintain_event_log(0).await.unwrap();
    assert!(again.dropped.is_empty() && again.created == 0, "{again:?}");
}

/// A stream ends at its caller's own deadline (`grpc-timeout`) with
/// DEADLINE_EXCEEDED, not before it, having sent every change until then;
/// its last cursor resumes with nothing lost or doubled.
#[sqlx::test]
async fn a_stream_ends_at_its_callers_deadline_and_its_cursor_resumes(pool: PgPool) {
    let app = spawn_with_bookmarks_every(pool.clone(), Duration::from_millis(200)).await;
    let agents = app.ready_agents(&["alice"]).await;
    let before = *stored_after(&pool, 0).await.last().unwrap();

    let deadline = Duration::from_millis(1500);
    let mut request = tonic::Request::new(watch("", "", ""));
    request.set_timeout(deadline);
    let opened = std::time::Instant::now();
    let mut stream = app
        .events
        .clone()
        .watch_events(request)
        .await
        .expect("WatchEvents opens")
        .into_inner();
    app.make_working(&agents[0].0).await;

    let mut got = Vec::new();
    let mut last_cursor = String::new();
    let read_to_the_end = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    last_cursor = m.cursor.clone();
                    if m.action != "Bookmark" {
                        got.push(m);
                    }
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        }
    };
    // Bookmarks keep coming, so the bound is on the whole stream.
    let status = tokio::time::timeout(deadline + Duration::from_secs(10), read_to_the_end)
        .await
        .expect("the stream ends within 10 s of its deadline");
    let lasted = opened.elapsed();
    assert!(lasted >= deadline, "ended {lasted:?} after it opened");
    assert_error(
        &status,
        Code::DeadlineExceeded,
        "Request.DeadlineExceeded",
        504,
    );
    assert_eq!(ids(&got), stored_after(&pool, before).await);

    let mut resumed = open(&app.events, watch("", "", &last_cursor)).await;
    let ready = app.ready(&agents[0].0).await.unwrap();
    let m = next_change(&mut resumed).await;
    assert_eq!(m.action, "ReadyForService");
    assert_eq!(m.user_contexts, [ready]);
}
