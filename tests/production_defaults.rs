//! The runtime under its production defaults (PostgreSQL pool of 10 work connections, queue
//! concurrency 100, 10 s leases), on both backends: handlers that hold their step transaction
//! for a long time do not starve the runtime's own bookkeeping, so no healthy job of the same
//! worker loses its lease or runs twice. Nothing here overrides a default.

mod common;

use common::{Backend, fresh};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use steward::queue::{QueueConfig, Runtime, RuntimeConfig, builtin};
use steward::store::runs::RunState;
use steward::types::{JobFilter, JobState};
use steward::workflow::{Engine, WorkflowCatalog};
use steward::{Client, EnqueueOptions};
use tokio_util::sync::CancellationToken;

async fn long_steps_do_not_starve_bookkeeping(backend: Backend, steps_count: usize) {
    let t = fresh(backend).await;
    let kinds = common::repo_kinds();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("holding.toml"), common::HOLDING_WORKFLOW).unwrap();
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let catalog = WorkflowCatalog::load_dir(dir.path(), &kinds, &|h| steps.contains(h)).unwrap();
    let engine = Arc::new(Engine::new(t.store.clone(), catalog, kinds.clone(), steps));
    for _ in 0..steps_count {
        engine.start("holding", json!({}), None).await.unwrap();
    }
    let client = Client::new(t.store.clone(), kinds.clone());
    let sleep = client
        .build("sleep", json!({"ms": 14_000}), EnqueueOptions::default())
        .unwrap();
    client
        .enqueue_many(&[sleep.clone(), sleep.clone(), sleep])
        .await
        .unwrap();

    let mut registry = builtin::registry();
    engine.register_jobs(&mut registry);
    let queue = |name: &str| QueueConfig {
        name: name.into(),
        concurrency: 100,
    };
    let config = RuntimeConfig::new("defaults-test", vec![queue("default"), queue("workflows")]);
    // The kinds this binary has handlers for (`webhook_deliver` is the lifecycle's own).
    let handled: Vec<_> = kinds
        .iter()
        .filter(|k| registry.contains(&k.name))
        .cloned()
        .collect();
    let runtime = Runtime::new(
        t.store.clone(),
        registry,
        common::kinds_of(&handled),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));

    // On SQLite the steps hold the one writer in turn: the deadline grows with their number.
    let deadline = Instant::now() + Duration::from_secs(60 + 15 * steps_count as u64);
    loop {
        let runs = t.store.runs_list(None, 100).await.unwrap();
        let sleeps = t
            .store
            .jobs_list(&JobFilter {
                kind: Some("sleep".into()),
                state: Some(JobState::Completed),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert!(
            runs.iter().all(|r| r.state != RunState::Failed),
            "a run failed: {runs:?}"
        );
        if sleeps.len() == 3 && runs.iter().all(|r| r.state == RunState::Completed) {
            break;
        }
        assert!(Instant::now() < deadline, "not done in time: {runs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let jobs = common::jobs_each_completed_once(&t).await;
    assert_eq!(
        jobs.len(),
        steps_count + 3,
        "the step jobs and 3 sleeps: {jobs:?}"
    );
    let ledger = t.store.ledger_entries().await.unwrap();
    assert_eq!(ledger.len(), steps_count, "each step's write landed once");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_long_steps_do_not_starve_bookkeeping() {
    long_steps_do_not_starve_bookkeeping(Backend::Postgres, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_long_steps_do_not_starve_bookkeeping() {
    // SQLite has one writer: steps holding it run one after another, so the 12 take three
    // minutes here (eighteen leases of held writer), the whole scenario all the same.
    long_steps_do_not_starve_bookkeeping(Backend::Sqlite, 12).await;
}

/// A job whose kind this worker has no handler for (another deployment has it) is released
/// without using an attempt and kept away for a while, not dead-lettered.
async fn a_kind_without_a_handler_here_is_left_for_another_worker(backend: Backend) {
    let t = fresh(backend).await;
    let mut kinds: Vec<_> = common::builtin_kinds().iter().cloned().collect();
    let mut elsewhere = kinds.iter().find(|k| k.name == "noop").unwrap().clone();
    elsewhere.name = "handled_elsewhere".into();
    kinds.push(elsewhere);
    let kinds = common::kinds_of(&kinds);
    let client = Client::new(t.store.clone(), kinds.clone());
    let job = client
        .build("handled_elsewhere", json!({}), EnqueueOptions::default())
        .unwrap();
    let id = client.enqueue_many(&[job]).await.unwrap()[0].id;
    let config = RuntimeConfig::new(
        "old-binary",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 100,
        }],
    );
    let runtime = Runtime::new(t.store.clone(), builtin::registry(), kinds, config).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = t.store.job_get(id).await.unwrap().unwrap();
        if job.state == JobState::Scheduled {
            break job;
        }
        assert!(
            matches!(job.state, JobState::Available | JobState::Running),
            "{job:?}"
        );
        assert!(Instant::now() < deadline, "{job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(job.attempt, 0, "no attempt used: {job:?}");
    assert!(job.attempts.is_empty(), "no failure recorded: {job:?}");
    assert!(
        job.run_at > chrono::Utc::now(),
        "kept away for a while: {job:?}"
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_kind_without_a_handler_here_is_left_for_another_worker() {
    a_kind_without_a_handler_here_is_left_for_another_worker(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_kind_without_a_handler_here_is_left_for_another_worker() {
    a_kind_without_a_handler_here_is_left_for_another_worker(Backend::Sqlite).await;
}

/// Pools the server cannot take are refused at start-up, saying what to change (rather than
/// handlers and bookkeeping timing out later); the default pools connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_larger_than_the_server_allows_are_refused_at_start() {
    use steward::store::postgres::{PgStore, PoolSizes};
    let t = fresh(Backend::Postgres).await;
    let sized = PgStore::connect_sized(
        &t.url,
        t.schema.as_deref(),
        PoolSizes {
            work: 100_000,
            service: 4,
        },
    )
    .await;
    let Err(err) = sized else {
        panic!("pools of 100,004 connections were accepted");
    };
    let text = err.to_string();
    assert!(
        text.contains("STEWARD_DB_POOL 100000")
            && text.contains("raise PostgreSQL's max_connections"),
        "{text}"
    );
    PgStore::connect(&t.url, t.schema.as_deref())
        .await
        .expect("the default pools fit a stock server");
    t.cleanup().await;
}
