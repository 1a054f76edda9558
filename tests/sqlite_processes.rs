//! Processes sharing one SQLite file, as README says works. SQLite has one writer across
//! processes: every write transaction begins IMMEDIATE and waits its turn (busy timeout).
//! - `steward serve` takes 800 settings PATCHes while `steward worker` drains 20,000 jobs,
//!   and no request fails with "database is locked".
//! - A worker's step holds the writer for longer than a lease: another worker's job, whose
//!   heartbeats waited for that writer meanwhile, is not rescued and runs once.

mod common;

use common::lifecycle::*;
use common::process::{self, Running};
use common::{Backend, fresh};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use steward::api::auth::{AuthKeys, Role};
use steward::store::runs::RunState;
use steward::types::JobState;
use steward::workflow::{Engine, WorkflowCatalog};
use steward::{Client, EnqueueOptions};

/// `steward <args>` on `url`, loading the workflows of `workflows`.
fn steward_with(args: &[&str], url: &str, workflows: &Path) -> Running {
    Running(
        process::command(args, url)
            .env("STEWARD_WORKFLOWS_DIR", workflows)
            .env("RUST_LOG", "error")
            .spawn()
            .expect("spawn steward"),
    )
}

fn steward(args: &[&str], url: &str) -> Running {
    steward_with(
        args,
        url,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_a_worker_share_one_sqlite_file_without_locked_errors() {
    let t = fresh(Backend::Sqlite).await;
    let (tenant, _) = stock_in_use(&t).await;
    let noop = Client::new(t.store.clone(), common::repo_kinds())
        .build("noop", json!({}), EnqueueOptions::default())
        .unwrap();
    let jobs = vec![noop; 20_000];
    for chunk in jobs.chunks(5_000) {
        t.store.jobs_insert_many(chunk).await.unwrap();
    }
    let listen = process::free_address();
    let api = steward(&["serve", "--listen", &listen], &t.url);
    let worker = steward(&["worker", "--queue", "default"], &t.url);
    let token = AuthKeys::new(process::SECRET)
        .unwrap()
        .mint("test", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    process::await_healthy(&base).await;
    let completed = || async {
        t.store
            .jobs_count_by_state()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.state == JobState::Completed)
            .map(|c| c.count)
            .sum::<i64>()
    };
    // The PATCHes begin once the worker is draining.
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed().await == 0 {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done_before = completed().await;
    let mut statuses = std::collections::BTreeMap::new();
    let mut server_errors = Vec::new();
    for i in 0..800 {
        let response = http
            .patch(format!("{base}/api/tenant/{tenant}/modules/stock"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(json!({"settings": {"n": i}}).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        if status >= 500 {
            server_errors.push(response.text().await.unwrap());
        }
    }
    // The worker was draining meanwhile (the two processes wrote the file at the same time).
    let done_after = completed().await;
    assert!(
        done_before < 20_000 && done_after > done_before,
        "no overlap: {done_before} jobs done before the PATCHes, {done_after} after"
    );
    // Wait for the rest.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = t.store.jobs_count_by_state().await.unwrap();
        let done: i64 = counts
            .iter()
            .filter(|c| c.state == JobState::Completed)
            .map(|c| c.count)
            .sum();
        if done >= 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((api, worker));
    assert!(
        server_errors.is_empty(),
        "{} of 800 PATCHes failed ({statuses:?}): {:?}",
        server_errors.len(),
        server_errors.first()
    );
    assert_eq!(statuses.get(&200), Some(&800), "{statuses:?}");
    let settings = t.store.settings_get(tenant, "stock").await.unwrap();
    assert_eq!(settings, json!({"n": 799}));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_step_in_one_process_costs_another_process_no_lease() {
    let t = fresh(Backend::Sqlite).await;
    let sqlite = t.sqlite.as_ref().unwrap();
    let workflows = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), workflows.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        workflows.path().join("holding.toml"),
        common::HOLDING_WORKFLOW,
    )
    .unwrap();

    // The worker that will hold the writer starts first and leads (it runs the rescuer): the
    // rescuer that waits for the writer in the same process as the long step.
    let holder = steward_with(
        &["worker", "--queue", "workflows", "--worker-id", "holder"],
        &t.url,
        workflows.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader: Option<String> = sqlx::query_scalar("SELECT holder FROM steward_leaders")
            .fetch_optional(sqlite.pool())
            .await
            .unwrap();
        if leader.as_deref() == Some("holder") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holder never led: {leader:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another process runs a plain 14 s job.
    let client = Client::new(t.store.clone(), common::repo_kinds());
    let sleep = client
        .enqueue("sleep", json!({"ms": 14_000}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let other = steward(
        &["worker", "--queue", "default", "--worker-id", "other"],
        &t.url,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.store.job_get(sleep).await.unwrap().unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "the sleep job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the step: it holds the writer for 15 s, so the other worker's heartbeats wait.
    let kinds = common::repo_kinds();
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let catalog =
        WorkflowCatalog::load_dir(workflows.path(), &kinds, &|h| steps.contains(h)).unwrap();
    let engine = Engine::new(t.store.clone(), catalog, kinds, steps);
    let (run, _) = engine.start("holding", json!({}), None).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let run = t.store.run_get(run).await.unwrap().unwrap();
        let job = t.store.job_get(sleep).await.unwrap().unwrap();
        assert_ne!(run.state, RunState::Failed, "{run:?}");
        if run.state == RunState::Completed && job.state == JobState::Completed {
            break;
        }
        assert!(Instant::now() < deadline, "not done: {run:?} {job:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop((holder, other));
    // The sleep, the holding step, and whatever the workers' own schedules started.
    let jobs = common::jobs_each_completed_once(&t).await;
    assert!(
        jobs.iter().any(|j| j.id == sleep)
            && jobs
                .iter()
                .any(|j| j.kind == "workflow_step" && j.payload["run_id"] == run),
        "{jobs:?}"
    );
    assert_eq!(t.store.ledger_entries().await.unwrap().len(), 1);
    t.cleanup().await;
}
