//! One node runs the periodic services: three nodes elect one leader, only its services run
//! (each round is recorded with the node that ran it), and when the leader dies (its tasks
//! stop without resigning) another node takes over within one lease.

mod common;

use async_trait::async_trait;
use common::{Backend, TestStore, fresh};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steward::maintenance::{self, Service, elector};
use steward::queue::RuntimeConfig;
use steward::store::{SharedStore, StoreResult};
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
        let service = maintenance::spawn_led(recorder, store, stop.clone(), leadership);
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
    assert!(
        after[0].1 - died_at <= lease + Duration::from_secs(2),
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

per_backend!(one_node_runs_the_periodic_services);
