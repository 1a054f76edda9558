//! One node runs the periodic services: three nodes elect one leader, only its services run
//! (each round is recorded with the node that ran it), and when the leader dies (its tasks
//! stop without resigning) another node takes over within one lease. Three worker runtimes
//! with the cron scheduler and the run sweeper: every round of every periodic service, as
//! each node's test signal (`Runtime::rounds`) reports it, comes from one node at a time.

mod common;

use async_trait::async_trait;
use common::{Backend, TestStore, fresh};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steward::maintenance::{self, Round, Service, elector};
use steward::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use steward::store::{SharedStore, StoreResult};
use steward::workflow::RunSweeper;
use steward::workflow::scheduler::CronScheduler;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// A periodic service that records which node ran each of its rounds.
struct Recorder {
    node: &'static str,
    rounds: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

#[async_trait]
impl Service for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(100)
    }
    async fn run_once(&self, _: &SharedStore) -> StoreResult<u64> {
        self.rounds
            .lock()
            .unwrap()
            .push((self.node, Instant::now()));
        Ok(1)
    }
}

async fn node_store(t: &TestStore) -> SharedStore {
    match &t.pg {
        Some(_) => Arc::new(
            steward::store::postgres::PgStore::connect(&t.url, t.schema.as_deref())
                .await
                .unwrap(),
        ),
        None => Arc::new(
            steward::store::sqlite::SqliteStore::connect(&t.url)
                .await
                .unwrap(),
        ),
    }
}

async fn one_node_runs_the_periodic_services(backend: Backend) {
    let t = fresh(backend).await;
    // The default lease: the elector's lease is the runtime's.
    let lease = RuntimeConfig::new("x", vec![]).lease;
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let store = node_store(&t).await;
        let stop = CancellationToken::new();
        let (leadership, elector) =
            elector::spawn(store.clone(), node.to_string(), lease, stop.clone());
        let recorder = Box::new(Recorder {
            node,
            rounds: rounds.clone(),
        });
        let service = maintenance::spawn_led(
            recorder,
            store,
            stop.clone(),
            leadership,
            maintenance::Rounds::default(),
        );
        nodes.push((node, stop, elector, service));
    }
    let wait_for_rounds = |from: Instant| {
        let rounds = rounds.clone();
        async move {
            let deadline = Instant::now() + lease * 2;
            loop {
                let since: Vec<_> = rounds
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, at)| *at > from)
                    .copied()
                    .collect();
                if since.len() >= 20 {
                    return since;
                }
                assert!(Instant::now() < deadline, "no leader ran: {since:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = wait_for_rounds(Instant::now() - Duration::from_secs(3600)).await;
    let leader = first[0].0;
    assert!(
        first.iter().all(|(node, _)| *node == leader),
        "rounds from more than one node: {first:?}"
    );
    // The leader dies: its tasks stop, nothing resigns.
    let died_at = Instant::now();
    for (node, _, elector, service) in &nodes {
        if *node == leader {
            elector.abort();
            service.abort();
        }
    }
    let after = wait_for_rounds(died_at).await;
    let next = after[0].0;
    assert_ne!(next, leader, "a live node took over");
    assert!(
        after.iter().all(|(node, _)| *node == next),
        "rounds from more than one node after the hand-over: {after:?}"
    );
    // Within one lease, plus the service's own tick (100 ms) and a little scheduling.
    assert!(
        after[0].1 - died_at <= lease + Duration::from_millis(300),
        "taken over within one lease: {:?}",
        after[0].1 - died_at
    );
    for (_, stop, elector, service) in nodes {
        stop.cancel();
        let _ = elector.await;
        let _ = service.await;
    }
    t.cleanup().await;
}

/// Which node ran a round, as the test signals report it.
type Seen = Arc<Mutex<Vec<(&'static str, Round)>>>;

/// Wait (on the signals, up to `within`) until `enough` holds of the rounds seen.
async fn wait_until(seen: &Seen, within: Duration, enough: impl Fn(&[(&str, Round)]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if enough(&seen.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the cron scheduler started, over the rounds seen.
fn cron_started(rounds: &[(&str, Round)]) -> u64 {
    rounds
        .iter()
        .filter(|(_, r)| r.service == "cron_scheduler")
        .filter_map(|(_, r)| r.outcome.as_ref().ok())
        .sum()
}

async fn the_singletons_of_three_runtimes_fire_from_one_node(backend: Backend) {
    let t = fresh(backend).await;
    let tick = "name = \"tick\"\n[trigger]\ncron = \"* * * * * *\"\nmissed = \"skip\"\n\
                [[steps]]\nname = \"only\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n";
    let seen: Seen = Arc::default();
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let store = node_store(&t).await;
        let engine = common::engine_of(store.clone(), tick);
        let mut registry = Registry::new();
        engine.register_jobs(&mut registry);
        // (A runtime names each queue it works with a width; the ticks' runs need few.)
        let config = RuntimeConfig::new(
            node,
            vec![QueueConfig {
                name: "workflows".into(),
                concurrency: 10,
            }],
        );
        let periods = config.maintenance.clone();
        let runtime = Runtime::new(store, registry, common::repo_kinds(), config)
            .unwrap()
            .with_service(Box::new(RunSweeper {
                engine: engine.clone(),
                every: periods.sweep_every,
            }))
            .with_service(Box::new(CronScheduler::new(engine, periods.cron_every)));
        let mut rounds = runtime.rounds().subscribe();
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match rounds.recv().await {
                    Ok(round) => seen.lock().unwrap().push((node, round)),
                    Err(RecvError::Lagged(n)) => panic!("{node}: {n} rounds lost"),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let stop = CancellationToken::new();
        let running = tokio::spawn(runtime.run(stop.clone()));
        nodes.push((node, stop, running));
    }
    let lease = RuntimeConfig::new("x", vec![]).lease;

    // Three ticks fired, and the sweeper and the stager ran, all from one node.
    wait_until(&seen, lease * 2, |rounds| {
        cron_started(rounds) >= 3
            && rounds.iter().any(|(_, r)| r.service == "run_sweeper")
            && rounds.iter().any(|(_, r)| r.service == "stager")
    })
    .await;
    let first: Vec<_> = std::mem::take(&mut *seen.lock().unwrap());
    let leader = first[0].0;
    assert!(
        first.iter().all(|(node, _)| *node == leader),
        "rounds from more than one node: {first:?}"
    );
    let mut fired = cron_started(&first);

    // The leader stops; another node takes over and the ticks go on.
    let at = nodes.iter().position(|(node, ..)| *node == leader).unwrap();
    let (_, stop, running) = nodes.remove(at);
    stop.cancel();
    running.await.unwrap().unwrap();
    // Its last rounds (between the first look and its stop) count for the ticks it fired.
    let last: Vec<_> = {
        let mut seen = seen.lock().unwrap();
        let (last, others) = seen.drain(..).partition(|(node, _)| *node == leader);
        *seen = others;
        last
    };
    fired += cron_started(&last);
    wait_until(&seen, lease * 2, |rounds| cron_started(rounds) >= 2).await;
    let after: Vec<_> = std::mem::take(&mut *seen.lock().unwrap());
    let next = after[0].0;
    assert!(
        after.iter().all(|(node, _)| *node == next),
        "rounds from more than one node after the hand-over: {after:?}"
    );
    for (_, stop, running) in nodes {
        stop.cancel();
        running.await.unwrap().unwrap();
    }

    // Each tick ran once, and every run was started by a round the signals reported.
    let runs = t.store.runs_list(None, 1000).await.unwrap();
    let ticks: std::collections::BTreeSet<_> =
        runs.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(ticks.len(), runs.len(), "a tick ran twice: {runs:?}");
    let reported = fired + cron_started(&after) + cron_started(&seen.lock().unwrap());
    assert_eq!(runs.len() as u64, reported);
    t.cleanup().await;
}

per_backend!(
    one_node_runs_the_periodic_services,
    the_singletons_of_three_runtimes_fire_from_one_node
);
