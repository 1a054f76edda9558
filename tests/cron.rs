//! Cron triggers fire exactly one run per tick, however many schedulers run.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{Backend, fresh};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use steward::workflow::Engine;
use steward::workflow::scheduler::CronScheduler;

per_backend!(
    two_schedulers_fire_each_tick_once,
    run_once_fires_the_missed_tick
);

fn every_second(missed: &str) -> String {
    format!(
        "name = \"tick\"\n[trigger]\ncron = \"* * * * * *\"\nmissed = \"{missed}\"\n\
         [[steps]]\nname = \"only\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n"
    )
}

fn engine(t: &common::TestStore, definition: &str) -> Arc<Engine> {
    common::engine_of(t.store.clone(), definition)
}

fn ticks_of(runs: &[steward::store::runs::RunRecord]) -> Vec<DateTime<Utc>> {
    runs.iter()
        .map(|r| {
            let key = r.idempotency_key.as_deref().expect("cron runs have keys");
            let at = key.strip_prefix("tick:cron:").expect("cron key");
            DateTime::parse_from_rfc3339(at)
                .expect("tick time")
                .with_timezone(&Utc)
        })
        .collect()
}

async fn two_schedulers_fire_each_tick_once(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, &every_second("skip"));
    let a = CronScheduler::new(Arc::clone(&engine), Duration::from_millis(100));
    let b = CronScheduler::new(Arc::clone(&engine), Duration::from_millis(100));
    let t0 =
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(500);
    assert_eq!(
        a.fire_due(t0).await.unwrap() + b.fire_due(t0).await.unwrap(),
        0,
        "skip: nothing in the past"
    );
    let mut started = 0;
    for step in 1..=20 {
        // Both schedulers wake at slightly different moments and both see the same ticks.
        let now = t0 + chrono::Duration::milliseconds(500 * step);
        started += a.fire_due(now).await.unwrap();
        started += b
            .fire_due(now + chrono::Duration::milliseconds(30))
            .await
            .unwrap();
    }
    let runs = t.store.runs_list(None, 1000).await.unwrap();
    let ticks: BTreeSet<DateTime<Utc>> = ticks_of(&runs).into_iter().collect();
    assert_eq!(runs.len(), 10, "ten seconds, ten ticks, ten runs");
    assert_eq!(started, 10);
    assert_eq!(ticks.len(), 10);
    let expected: BTreeSet<DateTime<Utc>> = (1..=10)
        .map(|s| Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, s).unwrap())
        .collect();
    assert_eq!(ticks, expected);
    t.cleanup().await;
}

async fn run_once_fires_the_missed_tick(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, &every_second("run_once"));
    let scheduler = CronScheduler::new(Arc::clone(&engine), Duration::from_millis(100));
    let now =
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(700);
    assert_eq!(
        scheduler.fire_due(now).await.unwrap(),
        1,
        "the latest missed tick runs once"
    );
    assert_eq!(scheduler.fire_due(now).await.unwrap(), 0);
    let other = CronScheduler::new(Arc::clone(&engine), Duration::from_millis(100));
    assert_eq!(
        other.fire_due(now).await.unwrap(),
        0,
        "another scheduler does not fire it again"
    );
    let runs = t.store.runs_list(None, 10).await.unwrap();
    assert_eq!(
        ticks_of(&runs),
        vec![Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()]
    );
    t.cleanup().await;
}

fn spawn_worker(url: &str, workflows: &std::path::Path, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"))
        .args(["worker", "--poll-ms", "100"])
        .env("DATABASE_URL", url)
        .env(
            "STEWARD_JOBS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs"),
        )
        .env("STEWARD_WORKFLOWS_DIR", workflows)
        .env("STEWARD_WORKER_ID", name)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn steward worker")
}

/// Two scheduler processes, an every-second cron, 30 seconds: one run per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_processes_for_thirty_seconds() {
    let t = fresh(Backend::Postgres).await;
    let schema = t.schema.clone().unwrap();
    let separator = if t.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}options=-c%20search_path%3D{schema}", t.url);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tick.toml"), every_second("skip")).unwrap();
    let mut workers = vec![
        spawn_worker(&url, dir.path(), "cron-a"),
        spawn_worker(&url, dir.path(), "cron-b"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let runs = t.store.runs_list(None, 1000).await.unwrap();
        let ticks: BTreeSet<_> = ticks_of(&runs).into_iter().collect();
        if let (Some(first), Some(last)) = (ticks.first(), ticks.last())
            && (*last - *first).num_seconds() >= 30
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedulers did not fire for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let runs = t.store.runs_list(None, 1000).await.unwrap();
    let ticks = ticks_of(&runs);
    let distinct: BTreeSet<_> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "no tick fired twice");
    let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    let span = (last - first).num_seconds() + 1;
    assert_eq!(
        distinct.len() as i64,
        span,
        "every second between the first and last tick fired: {distinct:?}"
    );
    assert!(span >= 31);
    t.cleanup().await;
}
