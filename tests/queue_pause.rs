//! Pausing a queue across real worker processes: three `steward worker` processes (default
//! settings) work 10,000 `ledger` jobs (each records its id at start, then works 200 ms). The
//! queue is paused mid-way: once the pause call returns, no job starts on any node (each
//! handler records its start time: none is later than the pause's return), jobs leased but
//! not started go back without using an attempt, and the workers stay alive without
//! starting anything. Resume drains the rest, each job once.

mod common;

use common::process::{self, terminate};
use common::{Backend, fresh};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use steward::queue::control;
use steward::types::{JobFilter, JobId, JobState};
use steward::{Client, EnqueueOptions};

const JOBS: usize = 10_000;

async fn ids_in(t: &common::TestStore, state: JobState) -> HashSet<JobId> {
    ids_in_queue(t, state, "ledger").await
}

/// Every handler start the ledger recorded: (job, unix milliseconds by the handler's clock).
async fn starts(t: &common::TestStore) -> Vec<(JobId, i64)> {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_as(
            "SELECT job_id, CAST(extract(epoch FROM at) * 1000 AS int8) FROM steward_ledger",
        )
        .fetch_all(pg.pool())
        .await
        .unwrap(),
        (_, Some(sqlite)) => sqlx::query_as("SELECT job_id, at FROM steward_ledger")
            .fetch_all(sqlite.pool())
            .await
            .unwrap(),
        _ => unreachable!(),
    }
}

async fn a_paused_queue_starts_nothing_on_any_node(backend: Backend) {
    let t = fresh(backend).await;
    let client = Client::new(t.store.clone(), common::repo_kinds());
    let job = client
        .build("ledger", json!({"ms": 200}), EnqueueOptions::default())
        .unwrap();
    for chunk in vec![job; JOBS].chunks(1000) {
        client.enqueue_many(chunk).await.unwrap();
    }
    let url = process::url_of(&t);
    let mut workers: Vec<_> = (1..=3)
        .map(|n| process::worker(&url, &format!("pause-test-{n}")))
        .collect();

    // All three working, some jobs done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let alive = t.store.workers_list().await.unwrap();
        let started = t.store.ledger_entries().await.unwrap().len();
        if alive.iter().filter(|w| w.alive).count() == 3 && started >= 600 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not start: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let report = control::set_paused(&t.store, "ledger", true, "test", control::DEFAULT_WAIT)
        .await
        .unwrap();
    let paused_at = chrono::Utc::now().timestamp_millis();
    assert!(report.changed && report.acknowledged(), "{report:?}");
    assert_eq!(report.applied_by.len(), 3, "{report:?}");
    // What may still start: what was leased when the pause returned (or already done).
    let leased = ids_in(&t, JobState::Running).await;
    let done_before = ids_in(&t, JobState::Completed).await;
    let allowed: HashSet<JobId> = leased.union(&done_before).copied().collect();

    // The leased jobs end (run to completion, or released unstarted).
    t.wait_for_counts(Duration::from_secs(30), "leased jobs to end", |n| {
        n(JobState::Running) == 0
    })
    .await;
    // Every worker beats twice more (alive, polling, its gate closed), still starting nothing.
    let settled = chrono::Utc::now();
    loop {
        let beats = t.store.workers_list().await.unwrap();
        if beats
            .iter()
            .filter(|w| w.alive && w.heartbeat_at > settled)
            .count()
            == 3
        {
            break;
        }
        assert!(
            chrono::Utc::now() - settled < chrono::Duration::seconds(30),
            "workers stopped beating: {beats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started: HashSet<JobId> = t
        .store
        .ledger_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let late: Vec<_> = started.difference(&allowed).collect();
    assert!(
        late.is_empty(),
        "jobs started after the pause returned: {late:?}"
    );
    // Not even one that was leased (fetched into a worker's buffer) when it returned.
    let late: Vec<_> = starts(&t)
        .await
        .into_iter()
        .filter(|(_, at)| *at > paused_at)
        .collect();
    assert!(
        late.is_empty(),
        "handlers started after the pause returned (at {paused_at}): {late:?}"
    );
    let waiting = t
        .store
        .jobs_list(&JobFilter {
            state: Some(JobState::Available),
            queue: Some("ledger".into()),
            limit: Some(JOBS as i64),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        waiting.len() > 1000,
        "the pause came too late to show anything"
    );
    assert!(
        waiting
            .iter()
            .all(|j| j.attempt == 0 && !started.contains(&j.id)),
        "a waiting job used an attempt or ran"
    );
    // A job leased when the pause returned that did not start went back unstarted, its
    // attempt unused.
    let waiting_ids: HashSet<JobId> = waiting.iter().map(|j| j.id).collect();
    let released: Vec<&JobId> = leased.iter().filter(|id| !started.contains(id)).collect();
    assert!(
        released.iter().all(|id| waiting_ids.contains(id)),
        "a leased job neither ran nor went back: {released:?}"
    );
    let released = released.len();
    eprintln!(
        "paused with {} leased ({released} released unstarted), {} waiting",
        leased.len(),
        waiting.len()
    );

    // Resume: the rest drains, each job once.
    let report = control::set_paused(&t.store, "ledger", false, "test", control::DEFAULT_WAIT)
        .await
        .unwrap();
    assert!(report.changed && report.acknowledged(), "{report:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ids_in(&t, JobState::Completed).await.len() < JOBS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger = t.store.ledger_entries().await.unwrap();
    let distinct: HashSet<JobId> = ledger.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), JOBS);
    assert_eq!(ledger.len(), JOBS, "a job ran twice");

    for worker in &mut workers {
        assert!(terminate(&mut worker.0, Duration::from_secs(20)).success());
    }
    // A graceful exit removes the worker's registration.
    assert!(t.store.workers_list().await.unwrap().is_empty());
    t.cleanup().await;
}

/// A job already fetched into a worker but not started when its queue is paused goes back
/// unstarted, its attempt unused. Made certain here by a rate limit (3 a second): the first
/// of two jobs fetched together starts at once, the second is held in the worker for its
/// reserved start a third of a second later; the first pauses the queue, so the second
/// reaches its handler with the gate closed.
async fn a_job_held_in_a_worker_when_its_queue_pauses_goes_back_unstarted(backend: Backend) {
    use std::sync::{Arc, Mutex};
    use steward::queue::{JobContext, QueueConfig, Runtime, RuntimeConfig, builtin};
    let t = fresh(backend).await;
    let kind = steward::kinds::KindCatalog::parse(
        std::path::Path::new("jobs/held.toml"),
        "kind = \"held\"\nqueue = \"held\"\n[rate_limit]\nlimit = 3\nperiod_secs = 1\n",
    )
    .unwrap();
    let kinds = common::kinds_of(&[kind]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let job = client
        .build("held", json!({}), EnqueueOptions::default())
        .unwrap();
    let ids: Vec<JobId> = client
        .enqueue_many(&[job.clone(), job])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let started: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let mut registry = builtin::registry();
    let seen = started.clone();
    registry.register("held", move |_: serde_json::Value, ctx: JobContext| {
        let seen = seen.clone();
        async move {
            let first = {
                let mut seen = seen.lock().unwrap();
                seen.push(ctx.job.id);
                seen.len() == 1
            };
            if first {
                let report =
                    control::set_paused(&ctx.store, "held", true, "test", control::DEFAULT_WAIT)
                        .await
                        .unwrap();
                assert!(report.acknowledged(), "{report:?}");
            }
            Ok(())
        }
    });
    // Default settings but the poll (50 ms, default 500 ms): this worker applies the pause
    // well before the held job's reserved start.
    let mut config = RuntimeConfig::new(
        "held-test",
        vec![QueueConfig {
            name: "held".into(),
            concurrency: 100,
        }],
    );
    config.poll_interval = Duration::from_millis(50);
    let runtime = Runtime::new(t.store.clone(), registry, kinds, config).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    // One job ran (and paused the queue); the other is back, unstarted and unused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (ran, back) = loop {
        let ran = ids_in_queue(&t, JobState::Completed, "held").await;
        let back = ids_in_queue(&t, JobState::Available, "held").await;
        if ran.len() == 1 && back.len() == 1 {
            break (ran, back);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ran {ran:?}, back {back:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let held = *back.iter().next().unwrap();
    assert_eq!(
        started.lock().unwrap().clone(),
        vec![*ran.iter().next().unwrap()]
    );
    let job = t.store.job_get(held).await.unwrap().unwrap();
    assert_eq!(job.attempt, 0, "the held job used an attempt: {job:?}");
    assert!(ids.contains(&held));
    // Resumed, it runs once.
    control::set_paused(&t.store, "held", false, "test", control::DEFAULT_WAIT)
        .await
        .unwrap();
    t.wait_for_counts(Duration::from_secs(30), "the held job runs", |n| {
        n(JobState::Completed) == 2
    })
    .await;
    assert_eq!(started.lock().unwrap().len(), 2, "each job started once");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    t.cleanup().await;
}

async fn ids_in_queue(t: &common::TestStore, state: JobState, queue: &str) -> HashSet<JobId> {
    t.store
        .jobs_list(&JobFilter {
            state: Some(state),
            queue: Some(queue.into()),
            limit: Some(JOBS as i64 + 1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect()
}

per_backend!(
    a_paused_queue_starts_nothing_on_any_node,
    a_job_held_in_a_worker_when_its_queue_pauses_goes_back_unstarted
);
