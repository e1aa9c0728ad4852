//! The benchmark harness drives a real server: a short run of each
//! workload against the test's own server completes requests without
//! errors, and its watchers receive every change. No timing is asserted;
//! the figures belong to docs/performance.md.

use std::time::Duration;

use ccc_callcontrol::bench::{self, Settings, Target, Watch};
use ccc_callcontrol::config::BenchWorkload;
use ccc_callcontrol::domain::access::Role;
use sqlx::PgPool;

use crate::helpers::*;

/// The test's own server, and the bench's target on it: one connection,
/// an operator token. Keep the server for as long as the target.
async fn one_server(pool: &PgPool) -> (TestApp, Target) {
    let app = spawn_app(pool.clone()).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let target = Target {
        channels: vec![app.channel.clone()],
        replicas: 1,
        token,
        watch_channels: Vec::new(),
    };
    (app, target)
}

async fn run(pool: PgPool, workload: BenchWorkload, watchers: usize) -> bench::Report {
    let (_app, target) = one_server(&pool).await;
    let watch = Watch {
        database: Some(pool),
        ..Watch::default()
    };
    let settings = Settings {
        workload,
        in_flight: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        parties: 3,
        agents: 8,
        watchers,
    };
    bench::drive(&target, &watch, &settings)
        .await
        .expect("the bench runs")
}

#[sqlx::test]
async fn end_conference_bench_completes_requests_without_errors(pool: PgPool) {
    let report = run(pool, BenchWorkload::EndConference, 0).await;

    assert!(report.requests > 0, "{report:?}");
    assert_eq!((report.errors, report.dropped_groups), (0, 0), "{report:?}");
    assert_eq!(
        report.actions.keys().collect::<Vec<_>>(),
        ["EndConference"],
        "only EndConference is timed"
    );
    assert!(report.latency_ms.is_some());
    assert!(report.table().contains("EndConference"));
}

#[sqlx::test]
async fn mixed_bench_runs_whole_lifecycles_without_errors(pool: PgPool) {
    let report = run(pool, BenchWorkload::Mixed, 0).await;

    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(report.actions.contains_key("StartConference"));
    assert!(report.actions.contains_key("EndConference"));
}

/// Whole lifecycles with each request sent to one of two replicas at
/// random: most actions reach a replica that did not act on the call or
/// its agents last, and every one still succeeds.
#[sqlx::test]
async fn mixed_bench_over_two_replicas_runs_whole_lifecycles_without_errors(pool: PgPool) {
    let (one, two) = (spawn_app(pool.clone()).await, spawn_app(pool.clone()).await);
    let token = create_token(&one.direct, None, Role::Admin, None, None).await;
    let target = Target {
        channels: vec![one.channel.clone(), two.channel.clone()],
        replicas: 2,
        token,
        watch_channels: Vec::new(),
    };
    let settings = Settings {
        workload: BenchWorkload::Mixed,
        in_flight: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        parties: 3,
        agents: 8,
        watchers: 0,
    };
    let report = bench::drive(&target, &Watch::default(), &settings)
        .await
        .expect("the bench runs");

    assert_eq!(report.replicas, 2);
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    for action in [
        "ReadyForService",
        "StartConference",
        "ReportChannelEvent",
        "EndConference",
    ] {
        assert!(report.actions.contains_key(action), "{action}: {report:?}");
    }
    assert!(report.table().contains("to 2 replicas"));
}

#[sqlx::test]
async fn every_watcher_receives_every_end_conference_change(pool: PgPool) {
    let report = run(pool, BenchWorkload::EndConference, 3).await;

    assert_eq!((report.errors, report.dropped_groups), (0, 0), "{report:?}");
    let watch = report.watch.as_ref().expect("a watch section");
    let end_conferences = report.actions["EndConference"].requests;
    assert!(end_conferences > 0, "{report:?}");
    assert_eq!(watch.watchers, 3);
    assert_eq!(watch.changes, end_conferences, "one change per response");
    assert_eq!(watch.delivered, 3 * end_conferences, "{watch:?}");
    assert_eq!(
        (
            watch.missing,
            watch.complete_watchers,
            watch.out_of_order,
            watch.errors
        ),
        (0, 3, 0, 0),
        "{watch:?}"
    );
    assert!(watch.latency_ms.is_some());
    assert!(
        report.table().contains("watch latency"),
        "{}",
        report.table()
    );
}

/// `--window-hook` runs as each measurement window starts and ends, and
/// only then: never around the warm-up's windows or the preparation.
#[sqlx::test]
async fn the_window_hook_brackets_each_measurement_window(pool: PgPool) {
    let (_app, target) = one_server(&pool).await;
    let log = std::env::temp_dir().join(format!("ccc-window-hook-{}", uuid::Uuid::new_v4()));
    let watch = Watch {
        window_hook: Some(format!("echo >>{}", log.display())),
        ..Watch::default()
    };
    let settings = Settings {
        workload: BenchWorkload::EndConference,
        in_flight: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        parties: 3,
        // Two groups a window: several windows in the second.
        agents: 4,
        watchers: 0,
    };
    let report = bench::drive(&target, &watch, &settings)
        .await
        .expect("the bench runs");
    let phases = std::fs::read_to_string(&log).expect("the hook ran");
    let _ = std::fs::remove_file(&log);

    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(report.windows > 1, "{report:?}");
    assert_eq!(phases, "start\nend\n".repeat(report.windows as usize));
}
