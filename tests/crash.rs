//! Crash test with real processes: three `steward worker` processes share one PostgreSQL and
//! drain 20,000 jobs that each append their id to a ledger table, while one worker is killed
//! with SIGKILL every couple of seconds (and replaced). At the end every job is completed,
//! the ledger holds every id, and an id appears twice only when its earlier run was an attempt
//! that one of the test's kills cut: the killed worker held that very job running when it died
//! (the kill log records each victim's running jobs; the ledger row names the worker).

mod common;

use common::{Backend, fresh};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steward::types::{JobFilter, JobState};
use steward::{Client, EnqueueOptions};

const JOBS: usize = 20_000;

/// A worker with non-default settings, on purpose: a short lease (1.5 s, default 10 s) so a
/// killed worker's jobs are rescued within the test's kill interval, and a concurrency and
/// batch of 12 so each kill cuts a bounded number of attempts the test can account for.
fn spawn_worker(url: &str, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"))
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
    let mut names: Vec<String> = (0..3).map(|i| format!("crash-{i}-0")).collect();
    // The kill log: each worker id whose process this test SIGKILLed, with the attempts the
    // kill cut (the jobs it held running when it died: their lease was still its own).
    let mut killed: HashMap<String, HashSet<i64>> = HashMap::new();
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
            let victim = killed.len() % workers.len();
            workers[victim].kill().expect("SIGKILL");
            let _ = workers[victim].wait();
            let cut: HashSet<i64> = t
                .store
                .jobs_list(&JobFilter {
                    state: Some(JobState::Running),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|j| j.leased_by.as_deref() == Some(names[victim].as_str()))
                .map(|j| j.id)
                .collect();
            killed.insert(names[victim].clone(), cut);
            names[victim] = format!("crash-{victim}-{generation}");
            workers[victim] = spawn_worker(&url, &names[victim]);
            next_kill = Instant::now() + Duration::from_millis(1500 + fastrand::u64(0..1500));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let kills = killed.len();
    assert!(
        kills >= 3,
        "the test must actually kill workers (killed {kills})"
    );

    let ledger = t.store.ledger_entries().await.unwrap();
    let mut runs_of: HashMap<i64, Vec<&str>> = HashMap::new();
    for (id, worker) in &ledger {
        runs_of.entry(*id).or_default().push(worker);
    }
    let missing: Vec<_> = ids.iter().filter(|id| !runs_of.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "ids missing from the ledger: {missing:?}"
    );
    assert_eq!(runs_of.len(), JOBS, "the ledger holds only our jobs");
    // A job may run twice only because a kill cut that attempt: every run of a job but its
    // last was made by a worker the test killed while it held that very job running, and
    // each kill cuts at most the 12 jobs a worker holds at once.
    let mut duplicates = 0;
    for (id, runs) in &runs_of {
        let (_last, earlier) = runs.split_last().expect("at least one run");
        for worker in earlier {
            let cut = killed.get(*worker);
            assert!(
                cut.is_some_and(|cut| cut.contains(id)),
                "job {id} ran again after a run by {worker}, whose kill did not cut it \
                 (runs: {runs:?}, cut by that kill: {cut:?})"
            );
        }
        duplicates += earlier.len();
    }
    assert!(
        duplicates <= kills * 12,
        "{duplicates} duplicate runs from {kills} kills of workers holding at most 12 jobs each"
    );
    eprintln!(
        "crash test: {JOBS} jobs, {kills} SIGKILLs, {duplicates} duplicate runs, all by killed workers"
    );
    t.cleanup().await;
}
