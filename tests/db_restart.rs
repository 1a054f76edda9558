//! PostgreSQL stopping and starting under running workers. Always on a throwaway cluster that
//! `scripts/test.sh` initdb's and starts for these tests alone (`STEWARD_TEST_OUTAGE_*`), never
//! a server the test command did not start; without one these tests fail. The tests of this
//! binary take turns on that one server.

mod common;

use serde_json::json;
use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use steward::maintenance::{self, MaintenanceConfig};
use steward::queue::{QueueConfig, Runtime, RuntimeConfig, builtin};
use steward::store::postgres::PgStore;
use steward::store::{JobAdmin, JobStore, SharedStore};
use steward::types::{JobFilter, JobState};
use steward::{Client, EnqueueOptions};
use tokio_util::sync::CancellationToken;

/// The throwaway server: its URL and the commands that stop and start it.
struct Outage {
    url: String,
    start: String,
    stop: String,
}

fn outage() -> Outage {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests stop and start a PostgreSQL of their own, which \
                 scripts/test.sh starts (run the tests through it)"
            )
        })
    };
    Outage {
        url: var("STEWARD_TEST_OUTAGE_DATABASE_URL"),
        start: var("STEWARD_TEST_OUTAGE_START"),
        stop: var("STEWARD_TEST_OUTAGE_STOP"),
    }
}

fn shell(command: &str) {
    let status = Command::new("sh")
        .args(["-c", command])
        .status()
        .expect("run sh");
    assert!(status.success(), "`{command}` failed: {status:?}");
}

/// One test at a time on the one server.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh schema on the throwaway server, with the default pool.
async fn store_on(url: &str) -> PgStore {
    let schema = format!(
        "steward_outage_{}_{}",
        std::process::id(),
        fastrand::u32(..)
    );
    let store = PgStore::connect(url, Some(&schema)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Wait until `check` holds, reading through errors while the server is away.
async fn wait_until(store: &PgStore, what: &str, check: impl Fn(&[(JobState, i64)]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(counts) = store.jobs_count_by_state().await {
            let counts: Vec<(JobState, i64)> = counts.iter().map(|c| (c.state, c.count)).collect();
            if check(&counts) {
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(counts: &[(JobState, i64)], state: JobState) -> i64 {
    counts
        .iter()
        .filter(|(s, _)| *s == state)
        .map(|(_, n)| n)
        .sum()
}

/// With the default lease (10 s), the server stops for twice the lease while a worker holds
/// running jobs, then starts again: the live worker's jobs are not rescued and run once. The
/// rescuer runs on another node that leads by election (the worker runs no maintenance): it
/// loses the leadership during the outage, so its rescuer sees nothing of it, and wins it
/// back when the database returns; its first rounds as leader must not take live jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_takes_no_job_from_a_live_worker() {
    let _turn = TURN.lock().await;
    let outage = outage();
    let store = store_on(&outage.url).await;
    let shared: SharedStore = Arc::new(store.clone());
    let client = Client::new(shared.clone(), common::repo_kinds());
    let job = client
        .build("sleep", json!({"ms": 30_000}), EnqueueOptions::default())
        .unwrap();
    client
        .enqueue_many(&[job.clone(), job.clone(), job])
        .await
        .unwrap();
    let mut config = RuntimeConfig::new(
        "outage-test",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 100,
        }],
    );
    config.run_maintenance = false;
    let lease = config.lease;
    let runtime = Runtime::new(
        shared.clone(),
        builtin::registry(),
        common::builtin_kinds(),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    // Another node: its own pool and its maintenance services (rescuer included), with the
    // defaults. Its first round after the outage must not take the live worker's jobs.
    let other: SharedStore = Arc::new(PgStore::connect(&outage.url, store.schema()).await.unwrap());
    let (leadership, elector) =
        maintenance::elector::spawn(other.clone(), "other-node".into(), lease, shutdown.clone());
    let mut other_node: Vec<_> = MaintenanceConfig::default()
        .services()
        .into_iter()
        .map(|service| {
            maintenance::spawn_led(
                service,
                other.clone(),
                shutdown.clone(),
                leadership.clone(),
                maintenance::Rounds::default(),
            )
        })
        .collect();
    other_node.push(elector);
    wait_until(&store, "3 jobs running", |c| {
        count(c, JobState::Running) == 3
    })
    .await;

    shell(&outage.stop);
    // The outage itself: twice the lease, during which no heartbeat can land.
    tokio::time::sleep(lease * 2).await;
    shell(&outage.start);

    wait_until(&store, "the 3 jobs completed", |c| {
        count(c, JobState::Completed) == 3
    })
    .await;
    let jobs = store
        .jobs_list(&JobFilter {
            state: Some(JobState::Completed),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    for job in &jobs {
        assert_eq!(
            job.attempt, 1,
            "job {} ran more than once: {:?}",
            job.id, job.attempts
        );
        assert!(
            job.attempts.iter().all(|a| a.error.is_none()),
            "job {} lost an attempt: {:?}",
            job.id,
            job.attempts
        );
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    for service in other_node {
        service.await.unwrap();
    }
    store.drop_schema().await.unwrap();
}

/// `steward <args>` on `url`, returned once it logs that it waits for the database (its
/// stderr is drained from then on).
fn spawn_waiting(args: &[&str], url: &str) -> common::process::Running {
    use std::io::{BufRead, BufReader};
    let mut child = common::process::command(args, url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("waiting for the database") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "`steward {}` exited: {seen}",
            args.join(" ")
        );
        seen.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    common::process::Running(child)
}

/// `steward worker` and `steward serve` started while the server is down wait for it, then
/// work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_database_is_down_begins_when_it_comes_up() {
    let _turn = TURN.lock().await;
    let outage = outage();
    let schema = format!("steward_outage_worker_{}", std::process::id());
    let url = format!("{}?options=-csearch_path%3D{schema}", outage.url);
    // Migrated before the server stops, as a deployment runs `steward migrate` first (the
    // worker itself never changes the schema).
    let migrated = PgStore::connect(&outage.url, Some(&schema)).await.unwrap();
    migrated.migrate().await.unwrap();
    migrated.pool().close().await;
    shell(&outage.stop);
    let worker = spawn_waiting(&["worker", "--queue", "default"], &url);
    let listen = common::process::free_address();
    let server = spawn_waiting(&["serve", "--listen", &listen], &url);
    shell(&outage.start);

    let store = PgStore::connect(&outage.url, Some(&schema)).await.unwrap();
    store.migrate().await.unwrap();
    let shared: SharedStore = Arc::new(store.clone());
    let client = Client::new(shared, common::repo_kinds());
    let job = client
        .build("noop", json!({}), EnqueueOptions::default())
        .unwrap();
    client.enqueue_many(&[job]).await.unwrap();
    wait_until(&store, "the worker ran the job", |c| {
        count(c, JobState::Completed) == 1
    })
    .await;
    // The server answers once it has its database (its health is 200 only then).
    common::process::await_healthy(&format!("http://{listen}")).await;
    drop((worker, server));
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_no_job() {
    let _turn = TURN.lock().await;
    let outage = outage();
    let pg = store_on(&outage.url).await;
    let store: SharedStore = Arc::new(pg.clone());
    let client = Client::new(store.clone(), common::repo_kinds());
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
    // (20 at a time: enough jobs held running across the outage for the test to watch.)
    let config = RuntimeConfig::new(
        "restart-test",
        vec![QueueConfig {
            name: "ledger".into(),
            concurrency: 20,
        }],
    );
    let runtime = Runtime::new(
        store.clone(),
        builtin::registry(),
        common::builtin_kinds(),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));

    wait_until(&pg, "some jobs done before the restart", |c| {
        count(c, JobState::Completed) >= 300
    })
    .await;
    let pool = pg.pool().clone();
    let started_before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(&pool)
            .await
            .unwrap();
    shell(&outage.stop);
    shell(&outage.start);

    // The test's own pool also lost its connections: wait for the server, then for the jobs.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match store.jobs_count_by_state().await {
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
    let ledger: HashSet<i64> = store
        .ledger_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        ids.iter().all(|id| ledger.contains(id)),
        "every job's effect is in the ledger"
    );
    pg.drop_schema().await.unwrap();
}

/// Two waiting runs (one for a signal, one until a time) in `steward worker` processes: every
/// worker is SIGKILLed and the server restarted while they wait; new workers finish both, the
/// signalled one when its signal comes and the sleeping one on time (within one poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runs_survive_killed_workers_and_a_database_restart() {
    use common::process::{self, Running};
    let _turn = TURN.lock().await;
    let outage = outage();
    let schema = format!("steward_waits_{}_{}", std::process::id(), fastrand::u32(..));
    let pg = PgStore::connect(&outage.url, Some(&schema)).await.unwrap();
    pg.migrate().await.unwrap();
    let store: SharedStore = Arc::new(pg.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("waits.toml"),
        "name = \"waits_signal\"\n[signals]\ngo = { sent_by = [\"master_admin\"] }\n\
         [[steps]]\nname = \"wait\"\nhandler = \"wait.signal\"\njob = \"workflow_step\"\nsignal = \"go\"\n\
         [[steps]]\nname = \"after\"\nhandler = \"ledger.append\"\njob = \"workflow_step\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sleeps.toml"),
        "name = \"waits_timer\"\n[params]\nat = { required = true, type = \"string\" }\n\
         [[steps]]\nname = \"sleep\"\nhandler = \"wait.until\"\njob = \"workflow_step\"\nuntil = \"at\"\n\
         [[steps]]\nname = \"after\"\nhandler = \"ledger.append\"\njob = \"workflow_step\"\n",
    )
    .unwrap();
    let kinds = common::repo_kinds();
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let workflows =
        steward::workflow::WorkflowCatalog::load_dir(dir.path(), &kinds, &|h| steps.contains(h))
            .unwrap();
    let engine = steward::workflow::Engine::new(store.clone(), workflows, kinds, steps);
    let at = chrono::Utc::now() + chrono::Duration::seconds(20);
    let (signalled, _) = engine.start("waits_signal", json!({}), None).await.unwrap();
    let (timed, _) = engine
        .start("waits_timer", json!({"at": at.to_rfc3339()}), None)
        .await
        .unwrap();
    let url = format!("{}?options=-c%20search_path%3D{schema}", outage.url);
    let workers = |round: &str| -> Vec<Running> {
        (1..=2)
            .map(|n| {
                Running(
                    process::command(&["worker"], &url)
                        .env("STEWARD_WORKFLOWS_DIR", dir.path())
                        .env("STEWARD_WORKER_ID", format!("waits-{round}-{n}"))
                        .spawn()
                        .expect("spawn steward worker"),
                )
            })
            .collect()
    };
    let mut first = workers("a");
    // Both runs park their step job: scheduled, held by no worker.
    let parked = |n: i64| move |c: &[(JobState, i64)]| count(c, JobState::Scheduled) == n;
    wait_until(&pg, "both waits parked", parked(2)).await;
    for worker in &mut first {
        worker.0.kill().unwrap();
        worker.0.wait().unwrap();
    }
    shell(&outage.stop);
    shell(&outage.start);
    let _second = workers("b");
    // Still waiting after the restart; then the signal comes.
    wait_until(&pg, "still parked after the restart", parked(2)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(err) = engine
        .signal(
            signalled,
            "go",
            &json!({"ok": true}),
            "ops",
            Some("master_admin"),
        )
        .await
    {
        assert!(std::time::Instant::now() < deadline, "cannot signal: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = |id| {
        let store = store.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(run)) = store.run_get(id).await
                    && run.state == steward::store::runs::RunState::Completed
                {
                    return run;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "run {id} did not complete"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let run = done(signalled).await;
    assert_eq!(
        run.steps[0].output.clone().unwrap()["payload"],
        json!({"ok": true})
    );
    let run = done(timed).await;
    let woke = run.steps[0].finished_at.unwrap();
    assert!(woke >= at, "not before its time: {woke} < {at}");
    assert!(
        woke - at < chrono::Duration::seconds(2),
        "on time after the restart, within a poll: woke {woke}, due {at}"
    );
}
