//! One node runs the singletons, with real processes: three `steward worker` processes (default
//! settings) on one database, a workflow that the cron scheduler fires every second. Each
//! process logs every maintenance round it runs (`steward::maintenance` at trace, as JSON);
//! the test reads which process ran each cron tick and each sweeper round: one node at a time.
//! The leader is then SIGKILLed (it cannot resign): another process takes over within one
//! lease (10 s by default), and every tick still starts one run.

mod common;

use common::process::{self, Running};
use common::{Backend, fresh};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TICK: &str = "name = \"tick\"\n[trigger]\ncron = \"* * * * * *\"\nmissed = \"skip\"\n\
                    [[steps]]\nname = \"only\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n";

/// A maintenance round as a process logged it.
#[derive(Debug, Clone)]
struct Round {
    node: usize,
    service: String,
    jobs: u64,
    at: Instant,
}

type Rounds = Arc<Mutex<Vec<Round>>>;

/// Start worker `node`, its log lines parsed into `rounds` as they come (until the returned
/// thread ends, at the process's exit).
fn start(
    url: &str,
    workflows: &std::path::Path,
    node: usize,
    rounds: &Rounds,
) -> (Running, std::thread::JoinHandle<()>) {
    let mut child = process::command(&["worker"], url)
        .env("STEWARD_WORKER_ID", format!("node-{node}"))
        .env("STEWARD_WORKFLOWS_DIR", workflows)
        .env("STEWARD_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,steward::maintenance=trace")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn steward worker");
    let stderr = child.stderr.take().expect("its stderr");
    let rounds = rounds.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["message"] == "maintenance round" {
                rounds.lock().unwrap().push(Round {
                    node,
                    service: fields["service"].as_str().unwrap_or_default().to_string(),
                    jobs: fields["jobs"].as_u64().unwrap_or(0),
                    at: Instant::now(),
                });
            }
        }
    });
    (Running(child), reader)
}

/// Wait (at most `within`) until `done` holds over the rounds seen.
async fn wait_for(rounds: &Rounds, within: Duration, what: &str, done: impl Fn(&[Round]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if done(&rounds.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {:?}",
            rounds.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the cron scheduler started over `rounds`.
fn ticks(rounds: &[Round]) -> u64 {
    rounds
        .iter()
        .filter(|r| r.service == "cron_scheduler")
        .map(|r| r.jobs)
        .sum()
}

async fn the_singletons_of_three_worker_processes_fire_from_one_node(backend: Backend) {
    let t = fresh(backend).await;
    let url = process::url_of(&t);
    // The repository's workflows, and one that fires every second.
    let workflows = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    for entry in std::fs::read_dir(repo).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, workflows.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(workflows.path().join("tick.toml"), TICK).unwrap();
    let rounds: Rounds = Arc::default();
    let mut nodes: Vec<Option<(Running, std::thread::JoinHandle<()>)>> = (0..3)
        .map(|n| Some(start(&url, workflows.path(), n, &rounds)))
        .collect();
    let lease = Duration::from_secs(10);

    // Three ticks and a sweeper round, every round from one node.
    wait_for(&rounds, Duration::from_secs(60), "three ticks", |r| {
        ticks(r) >= 3 && r.iter().any(|r| r.service == "run_sweeper")
    })
    .await;
    let first = std::mem::take(&mut *rounds.lock().unwrap());
    let leader = first[0].node;
    assert!(
        first.iter().all(|r| r.node == leader),
        "rounds from more than one node: {first:?}"
    );

    // SIGKILL the leader: another node takes over within one lease.
    let (mut killed, reader) = nodes[leader].take().unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let killed_at = Instant::now();
    reader.join().unwrap();
    let before_kill: Vec<Round> = std::mem::take(&mut *rounds.lock().unwrap());
    assert!(
        before_kill.iter().all(|r| r.node == leader),
        "rounds from more than one node before the kill: {before_kill:?}"
    );
    wait_for(&rounds, lease * 3, "a tick after the kill", |r| {
        ticks(r) >= 2
    })
    .await;
    let after = std::mem::take(&mut *rounds.lock().unwrap());
    let next = after[0].node;
    assert_ne!(next, leader);
    assert!(
        after.iter().all(|r| r.node == next),
        "rounds from more than one node after the hand-over: {after:?}"
    );
    let took = after[0].at - killed_at;
    eprintln!("the leader was replaced {took:?} after its SIGKILL");
    assert!(
        took <= lease,
        "the hand-over took {took:?}, the lease is {lease:?}"
    );
    for (node, reader) in nodes.into_iter().flatten() {
        let mut node = node;
        assert!(process::terminate(&mut node.0, Duration::from_secs(20)).success());
        reader.join().unwrap();
    }

    // Each tick started one run (every run here is a cron tick: `tick`'s, and the repository
    // workflows' whose missed tick of the last day runs once).
    let ticked = t.store.runs_list(None, 10_000).await.unwrap();
    assert!(ticked.iter().any(|r| r.workflow == "tick"));
    let keys: std::collections::BTreeSet<_> = ticked
        .iter()
        .map(|r| (r.workflow.clone(), r.idempotency_key.clone()))
        .collect();
    assert_eq!(keys.len(), ticked.len(), "a tick ran twice");
    let reported =
        ticks(&first) + ticks(&before_kill) + ticks(&after) + ticks(&rounds.lock().unwrap());
    assert_eq!(
        ticked.len() as u64,
        reported,
        "every run is a tick a node reported"
    );
    t.cleanup().await;
}

per_backend!(the_singletons_of_three_worker_processes_fire_from_one_node);
