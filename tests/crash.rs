//! Crash test with real processes: three `steward worker` processes share one PostgreSQL and
//! drain 20,000 jobs that each append their id to a ledger table, while one worker is killed
//! with SIGKILL every couple of seconds (and replaced). At the end every job is completed,
//! the ledger holds every id, and an id appears twice only for a job whose attempt was cut
//! off by a kill (its record shows the rescued attempt).

mod common;

use common::{Backend, fresh};
use serde_json::json;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steward::types::{JobFilter, JobState};
use steward::{Client, EnqueueOptions};

const JOBS: usize = 20_000;

fn spawn_worker(url: &str, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .args([
            "worker",
            "--queue",
            "ledger=12",
            "--lease-ms",
            "1500",
            "--poll-ms",
            "200",
            "--batch",
            "12",
        ])
        .env("DATABASE_URL", url)
        .env(
            "STEWARD_JOBS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs"),
        )
        .env("STEWARD_WORKER_ID", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn steward worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_no_job() {
    let t = fresh(Backend::Postgres).await;
    let schema = t.schema.clone().expect("postgres schema");
    let separator = if t.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}options=-c%20search_path%3D{schema}", t.url);

    let client = Client::new(t.store.clone(), common::repo_kinds());
    let template = client
        .build("ledger", json!({"ms": 20}), EnqueueOptions::default())
        .unwrap();
    let mut ids = Vec::with_capacity(JOBS);
    for chunk in vec![template; JOBS].chunks(1000) {
        ids.extend(
            client
                .enqueue_many(chunk)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id),
        );
    }

    let mut generation = 0;
    let mut workers: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&url, &format!("crash-{i}-0")))
        .collect();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next_kill = Instant::now() + Duration::from_millis(1500);
    loop {
        let counts = t.store.jobs_count_by_state().await.unwrap();
        let completed: i64 = counts
            .iter()
            .filter(|c| c.state == JobState::Completed)
            .map(|c| c.count)
            .sum();
        if completed as usize == JOBS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not drained in time: {counts:?}"
        );
        if Instant::now() >= next_kill {
            generation += 1;
            let victim = kills % workers.len();
            workers[victim].kill().expect("SIGKILL");
            let _ = workers[victim].wait();
            workers[victim] = spawn_worker(&url, &format!("crash-{victim}-{generation}"));
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(1500 + fastrand::u64(0..1500));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    assert!(
        kills >= 3,
        "the test must actually kill workers (killed {kills})"
    );

    let ledger = t.store.ledger_job_ids().await.unwrap();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for id in &ledger {
        *seen.entry(*id).or_default() += 1;
    }
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "ids missing from the ledger: {missing:?}"
    );
    assert_eq!(seen.len(), JOBS, "the ledger holds only our jobs");
    let duplicated: Vec<i64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    for chunk in duplicated.chunks(1000) {
        let jobs = t
            .store
            .jobs_list(&JobFilter {
                ids: chunk.to_vec(),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        for job in jobs {
            let cut_off = job
                .attempts
                .iter()
                .filter(|a| a.error.as_deref().unwrap_or("").contains("lease expired"))
                .count();
            assert!(
                cut_off >= seen[&job.id] - 1,
                "job {} ran {} times but only {cut_off} attempt(s) were cut off by a kill: {:?}",
                job.id,
                seen[&job.id],
                job.attempts
            );
        }
    }
    eprintln!(
        "crash test: {JOBS} jobs, {kills} SIGKILLs, {} duplicate runs, all from killed attempts",
        ledger.len() - JOBS
    );
    t.cleanup().await;
}
