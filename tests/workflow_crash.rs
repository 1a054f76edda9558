//! Crash test of the workflow engine with real processes, on both backends: 500 runs of a
//! 3-step workflow whose steps each write a ledger row inside the step's transaction, while
//! worker processes are SIGKILLed at random moments (and replaced). Every run completes and
//! every step's database effect is in the ledger exactly once.

mod common;

use common::{Backend, fresh};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steward::store::runs::RunState;
use steward::workflow::{Engine, WorkflowCatalog};

const RUNS: usize = 500;

const WORKFLOW: &str = r#"
name = "three_writes"
[params]
step_ms = { default = 0 }
[[steps]]
name = "a"
handler = "ledger.append"
job = "workflow_step"
[[steps]]
name = "b"
handler = "ledger.append"
job = "workflow_step"
[[steps]]
name = "c"
handler = "ledger.append"
job = "workflow_step"
"#;

/// Not the defaults, on purpose: a 1.5 s lease (default 10 s) so a killed worker's steps are
/// rescued within the test's kill interval, and 6 at a time so each kill cuts few attempts.
fn spawn_worker(url: &str, dir: &Path, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"))
        .args([
            "worker",
            "--queue",
            "workflows=6",
            "--lease-ms",
            "1500",
            "--poll-ms",
            "100",
            "--batch",
            "6",
        ])
        .env("DATABASE_URL", url)
        .env("STEWARD_JOBS_DIR", dir.join("jobs"))
        .env("STEWARD_WORKFLOWS_DIR", dir.join("workflows"))
        .env("STEWARD_WORKER_ID", name)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn steward worker")
}

async fn killed_workers_leave_each_step_effect_once(backend: Backend, workers: usize) {
    let t = fresh(backend).await;
    let url = match &t.schema {
        Some(schema) => {
            let separator = if t.url.contains('?') { '&' } else { '?' };
            format!("{}{separator}options=-c%20search_path%3D{schema}", t.url)
        }
        None => t.url.clone(),
    };
    // The repository's job kinds, but steps get many attempts: a step whose worker is
    // killed again and again must outlive the test's kills, not land in the dead-letter queue.
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, jobs.join(path.file_name().unwrap())).unwrap();
    }
    let step_kind = std::fs::read_to_string(jobs.join("workflow_step.toml")).unwrap();
    std::fs::write(
        jobs.join("workflow_step.toml"),
        step_kind.replace("max_attempts = 10", "max_attempts = 100"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows").join("three_writes.toml"),
        WORKFLOW,
    )
    .unwrap();
    let kinds = steward::kinds::KindCatalog::load_dir(&jobs).unwrap();
    assert_eq!(kinds.get("workflow_step").unwrap().max_attempts, 100);
    let registry = steward::lifecycle::step_registry(common::scratch_exports());
    let catalog = WorkflowCatalog::load_dir(&dir.path().join("workflows"), &kinds, &|h| {
        registry.contains(h)
    })
    .unwrap();
    let engine = Engine::new(t.store.clone(), catalog, kinds, registry);
    for _ in 0..RUNS {
        engine
            .start("three_writes", json!({"step_ms": 15}), None)
            .await
            .unwrap();
    }

    let mut generation = 0;
    let mut children: Vec<Child> = (0..workers)
        .map(|i| spawn_worker(&url, dir.path(), &format!("wf-crash-{i}-0")))
        .collect();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next_kill = Instant::now() + Duration::from_millis(800 + fastrand::u64(0..700));
    // Kills come with time and, however fast the machine, each time another fifth of the runs
    // has completed (so a quick drain still sees its workers killed mid-way).
    let mut next_fifth = 1;
    loop {
        let runs = t.store.runs_list(None, 10_000).await.unwrap();
        let completed = runs
            .iter()
            .filter(|r| r.state == RunState::Completed)
            .count();
        if runs.len() == RUNS && completed == RUNS {
            break;
        }
        if next_fifth < 5 && completed >= RUNS * next_fifth / 5 {
            next_fifth += 1;
            next_kill = Instant::now();
        }
        assert!(
            runs.iter().all(|r| r.state != RunState::Failed),
            "a run failed: {:?}",
            runs.iter().find(|r| r.state == RunState::Failed)
        );
        assert!(Instant::now() < deadline, "runs not completed in time");
        if Instant::now() >= next_kill {
            generation += 1;
            let victim = kills % children.len();
            children[victim].kill().expect("SIGKILL");
            let _ = children[victim].wait();
            children[victim] =
                spawn_worker(&url, dir.path(), &format!("wf-crash-{victim}-{generation}"));
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(800 + fastrand::u64(0..1200));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(kills >= 3, "the test must kill workers (killed {kills})");

    let entries: Vec<String> = match (&t.pg, &t.sqlite) {
        (Some(pg), _) => {
            sqlx::query_scalar("SELECT entry FROM steward_ledger WHERE entry IS NOT NULL")
                .fetch_all(pg.pool())
                .await
                .unwrap()
        }
        (_, Some(sqlite)) => {
            sqlx::query_scalar("SELECT entry FROM steward_ledger WHERE entry IS NOT NULL")
                .fetch_all(sqlite.pool())
                .await
                .unwrap()
        }
        _ => unreachable!("a test store has a backend"),
    };
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for entry in &entries {
        *counts.entry(entry.as_str()).or_default() += 1;
    }
    assert_eq!(entries.len(), RUNS * 3, "three effects per run");
    assert!(
        counts.values().all(|n| *n == 1),
        "every effect exactly once"
    );
    for run in t.store.runs_list(None, 10_000).await.unwrap() {
        for step in ["a", "b", "c"] {
            assert_eq!(
                counts.get(format!("run {} step {step}", run.id).as_str()),
                Some(&1)
            );
        }
    }
    eprintln!(
        "workflow crash test ({backend:?}): {RUNS} runs, {kills} SIGKILLs, every step effect once"
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_workers_leave_each_step_effect_once() {
    killed_workers_leave_each_step_effect_once(Backend::Postgres, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_workers_leave_each_step_effect_once() {
    killed_workers_leave_each_step_effect_once(Backend::Sqlite, 1).await;
}
