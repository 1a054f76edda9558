//! PostgreSQL restarts under a running worker: the runtime rides it out (fetch, heartbeat and
//! acknowledgements retry transient errors, LISTEN reconnects) and no job is lost.
//!
//! The restart command is `STEWARD_TEST_PG_RESTART` (set by `scripts/test.sh`), else the
//! local Debian cluster's `pg_ctlcluster … restart`. This file is its own test binary, so no
//! other test runs while the server restarts.

mod common;

use common::{Backend, fresh};
use serde_json::json;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use steward::queue::{QueueConfig, Runtime, RuntimeConfig, builtin};
use steward::types::JobState;
use steward::{Client, EnqueueOptions};
use tokio_util::sync::CancellationToken;

fn restart_command() -> String {
    if let Ok(command) = std::env::var("STEWARD_TEST_PG_RESTART") {
        return command;
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut dir| dir.next())
        .and_then(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().to_string())
        .expect("set STEWARD_TEST_PG_RESTART to a command that restarts the test PostgreSQL");
    format!("pg_ctlcluster --skip-systemctl-redirect {version} main restart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_no_job() {
    let t = fresh(Backend::Postgres).await;
    let client = Client::new(t.store.clone(), common::repo_kinds());
    let job = client
        .build("ledger", json!({"ms": 2}), EnqueueOptions::default())
        .unwrap();
    let mut ids = Vec::new();
    for chunk in vec![job; 3000].chunks(1000) {
        ids.extend(
            client
                .enqueue_many(chunk)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id),
        );
    }
    let mut config = RuntimeConfig::new(
        "restart-test",
        vec![QueueConfig {
            name: "ledger".into(),
            concurrency: 20,
        }],
    )
    .with_lease(Duration::from_secs(15));
    config.poll_interval = Duration::from_millis(200);
    let runtime = Runtime::new(
        t.store.clone(),
        builtin::registry(),
        common::builtin_kinds(),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));

    t.wait_for_counts(
        Duration::from_secs(60),
        "some jobs done before the restart",
        |n| n(JobState::Completed) >= 300,
    )
    .await;
    let pool = t.pg.as_ref().unwrap().pool().clone();
    let started_before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&pool)
            .await
            .unwrap();
    let status = Command::new("sh")
        .args(["-c", &restart_command()])
        .status()
        .expect("run restart");
    assert!(status.success(), "restarting PostgreSQL failed: {status:?}");

    // The test's own pool also lost its connections: wait for the server, then for the jobs.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match t.store.jobs_count_by_state().await {
            Ok(counts) => {
                let completed: i64 = counts
                    .iter()
                    .filter(|c| c.state == JobState::Completed)
                    .map(|c| c.count)
                    .sum();
                let dead: i64 = counts
                    .iter()
                    .filter(|c| c.state == JobState::Dead)
                    .map(|c| c.count)
                    .sum();
                assert_eq!(dead, 0, "no job may die of a restart: {counts:?}");
                if completed == 3000 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "jobs not drained after the restart: {counts:?}"
                );
            }
            Err(err) => assert!(
                std::time::Instant::now() < deadline,
                "database did not come back: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!running.is_finished(), "the runtime survived the restart");
    let started_after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        started_after > started_before,
        "the server really restarted"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let ledger: HashSet<i64> = t
        .store
        .ledger_job_ids()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        ids.iter().all(|id| ledger.contains(id)),
        "every job's effect is in the ledger"
    );
    t.cleanup().await;
}
