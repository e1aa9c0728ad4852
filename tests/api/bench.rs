//! The benchmark harness drives a real server: a short run of each
//! workload against the test's own server completes requests without
//! errors. No timing is asserted; the figures belong to
//! docs/performance.md.

use std::time::Duration;

use ccc_callcontrol::bench::{self, Settings, Target, Watch};
use ccc_callcontrol::config::BenchWorkload;
use ccc_callcontrol::domain::access::Role;
use sqlx::PgPool;

use crate::helpers::*;

async fn run(pool: PgPool, workload: BenchWorkload) -> bench::Report {
    let app = spawn_app(pool.clone()).await;
    let token = create_token(&app.direct, None, Role::Admin, None, None).await;
    let target = Target {
        channels: vec![app.channel.clone()],
        token,
    };
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
    };
    bench::drive(&target, &watch, &settings)
        .await
        .expect("the bench runs")
}

#[sqlx::test]
async fn end_conference_bench_completes_requests_without_errors(pool: PgPool) {
    let report = run(pool, BenchWorkload::EndConference).await;

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
    let report = run(pool, BenchWorkload::Mixed).await;

    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(report.actions.contains_key("StartConference"));
    assert!(report.actions.contains_key("EndConference"));
}
