//! steward as a library: `examples/custom_app.rs` (its own typed job kind and workflow step,
//! steward's CLI) is built by `cargo test`; here it is run as a user runs it: migrate, enqueue
//! its kind and start its workflow from its own command line, then its worker runs both.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use steward::store::runs::RunState;
use steward::store::{JobAdmin, RunStore};
use steward::types::JobState;

/// The example's binary, next to the `steward` binary the tests run.
fn example() -> PathBuf {
    let steward = PathBuf::from(env!("CARGO_BIN_EXE_steward"));
    let dir = steward.parent().expect("target directory");
    dir.join("examples").join("custom_app")
}

fn app(args: &[&str], url: &str) -> Command {
    let mut command = Command::new(example());
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env(
            "STEWARD_JOBS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs"),
        )
        .env(
            "STEWARD_WORKFLOWS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/workflows"),
        )
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    command
}

fn run(args: &[&str], url: &str) -> Output {
    let output = app(args, url).output().expect("run the example");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_its_own_job_and_step_through_steward() {
    assert!(
        example().exists(),
        "{} is missing: `cargo test` builds the examples",
        example().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    assert!(run(&["migrate"], &url).status.success());
    // Its kind, typed: arguments that do not decode are refused before anything is written.
    let refused = run(
        &["enqueue", "greet", "--payload", r#"{"nom": "Ana"}"#],
        &url,
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let enqueued = run(
        &["enqueue", "greet", "--payload", r#"{"name": "Ana"}"#],
        &url,
    );
    assert!(enqueued.status.success(), "{enqueued:?}");
    let started = run(&["run", "shout", "--param", "name=ana"], &url);
    assert!(started.status.success(), "{started:?}");

    let mut worker = app(&["worker"], &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example's worker");
    let store = steward::store::sqlite::SqliteStore::connect(&url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (greeted, run) = loop {
        let ledger = store.ledger_entries().await.unwrap();
        let runs = store.runs_list(None, 10).await.unwrap();
        if !ledger.is_empty() && runs.iter().any(|r| r.state == RunState::Completed) {
            break (ledger, runs.into_iter().next().unwrap());
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!("the example's worker did not run its job and run: {ledger:?} {runs:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(greeted.len(), 1);
    assert_eq!(
        greeted[0].1, "hello Ana",
        "the handler got its arguments decoded"
    );
    let job = store.job_get(greeted[0].0).await.unwrap().unwrap();
    assert_eq!(
        (job.kind.as_str(), job.state),
        ("greet", JobState::Completed)
    );
    assert_eq!(run.workflow, "shout");
    assert_eq!(
        run.steps[0].output,
        Some(serde_json::json!({"shouted": "ANA"})),
        "the step handler registered in code ran"
    );
}
