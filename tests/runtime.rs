//! The worker runtime end to end, on both backends: jobs run once, fail with backoff into the
//! dead-letter queue, time out, are cancelled while running, and survive a graceful shutdown.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use steward::kinds::{Backoff, JobKind};
use steward::queue::{
    JobContext, JobError, QueueConfig, Registry, Runtime, RuntimeConfig, builtin,
};
use steward::types::{JobFilter, JobState};
use steward::{Client, EnqueueOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

per_backend!(
    every_job_runs_and_its_effect_is_recorded_once,
    failures_retry_with_backoff_then_dead_letter,
    a_job_past_its_timeout_is_stopped,
    cancelling_a_running_job_stops_its_handler,
    shutdown_lets_running_jobs_finish_or_releases_them,
    a_queue_never_runs_more_than_its_concurrency,
    a_panicking_handler_fails_its_attempt_and_the_worker_goes_on,
    a_snoozed_job_waits_without_using_an_attempt,
    typed_jobs_enqueued_into_an_idle_queue_run_once_each_at_their_first_attempt,
);

/// The `ledger` kind's arguments, typed ([`steward::Job`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Ledger {
    ms: u64,
}

impl steward::Job for Ledger {
    const KIND: &'static str = "ledger";
}

/// Jobs enqueued one at a time (`Client::enqueue_job`, typed) into a queue whose producer in
/// this process is idle: handed over at enqueue (`store::handoff`) or fetched, each runs once,
/// at its first attempt, and its lease is this worker's.
async fn typed_jobs_enqueued_into_an_idle_queue_run_once_each_at_their_first_attempt(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let client = Client::new(t.store.clone(), common::repo_kinds());
    let config = config(&[("ledger", 4)]);
    let worker = config.worker_id.clone();
    let running = start(&t, builtin::registry(), common::builtin_kinds(), config);
    let mut ids = Vec::new();
    for _ in 0..50 {
        let enqueued = client
            .enqueue_job(&Ledger { ms: 0 }, EnqueueOptions::default())
            .await
            .unwrap();
        ids.push(enqueued.id);
        // Let the queue go idle again between most of them.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.wait_for_counts(Duration::from_secs(60), "50 completed", |n| {
        n(JobState::Completed) == 50
    })
    .await;
    running.stop().await;
    let ledger = t.store.ledger_entries().await.unwrap();
    assert_eq!(ledger.len(), 50, "each job's effect exactly once");
    assert!(ledger.iter().all(|(_, by)| *by == worker), "{ledger:?}");
    for id in ids {
        let job = t.store.job_get(id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Completed, 1),
            "{job:?}"
        );
        assert_eq!(job.payload, json!({"ms": 0}));
    }
    t.cleanup().await;
}

/// Not the defaults, on purpose: these tests watch leases expire, heartbeats stop handlers,
/// rescues and staging happen, so the lease (900 ms, default 10 s), the poll (100 ms) and the
/// stager's period are short enough for each to happen within a test's wait.
fn config(queues: &[(&str, usize)]) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(
        format!("test-{}", fastrand::u32(..)),
        queues
            .iter()
            .map(|(name, n)| QueueConfig {
                name: name.to_string(),
                concurrency: *n,
            })
            .collect(),
    )
    .with_lease(Duration::from_millis(900));
    config.poll_interval = Duration::from_millis(100);
    config.maintenance.stage_every = Duration::from_millis(20);
    config.maintenance.rescue_every = Duration::from_millis(100);
    config.shutdown_grace = Duration::from_secs(5);
    config
}

struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), steward::queue::RuntimeError>>,
}

fn start(
    t: &TestStore,
    registry: Registry,
    kinds: steward::kinds::KindCatalog,
    config: RuntimeConfig,
) -> Running {
    let runtime = Runtime::new(t.store.clone(), registry, kinds, config).expect("runtime");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    Running { shutdown, handle }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("join")
            .expect("runtime ends cleanly");
    }
}

async fn every_job_runs_and_its_effect_is_recorded_once(backend: Backend) {
    let t = fresh(backend).await;
    let client = Client::new(t.store.clone(), common::repo_kinds());
    let mut ids = Vec::new();
    for i in 0..500 {
        let options = EnqueueOptions {
            tenant: Some(format!("tenant-{}", i % 7)),
            ..Default::default()
        };
        ids.push(
            client
                .enqueue("ledger", json!({}), options)
                .await
                .unwrap()
                .id,
        );
    }
    let running = start(
        &t,
        builtin::registry(),
        common::builtin_kinds(),
        config(&[("ledger", 50)]),
    );
    t.wait_for_counts(Duration::from_secs(60), "500 completed", |n| {
        n(JobState::Completed) == 500
    })
    .await;
    running.stop().await;
    let mut ledger: Vec<i64> = t
        .store
        .ledger_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ledger.sort_unstable();
    ids.sort_unstable();
    assert_eq!(ledger, ids, "each job's effect exactly once");
    t.cleanup().await;
}

async fn failures_retry_with_backoff_then_dead_letter(backend: Backend) {
    let t = fresh(backend).await;
    let mut kind = JobKind::new("fail", "default");
    kind.max_attempts = 3;
    kind.backoff = Backoff {
        base_ms: 30,
        max_ms: 200,
        jitter: false,
    };
    let kinds = common::kinds_of(&[kind]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let flaky = client
        .enqueue(
            "fail",
            json!({"message": "flaky"}),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let fatal = client
        .enqueue(
            "fail",
            json!({"message": "bad input", "fatal": true}),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let heals = client
        .enqueue(
            "fail",
            json!({"succeed_on_attempt": 2}),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let running = start(&t, builtin::registry(), kinds, config(&[("default", 10)]));
    t.wait_for_counts(Duration::from_secs(30), "two dead, one completed", |n| {
        n(JobState::Dead) == 2 && n(JobState::Completed) == 1
    })
    .await;
    running.stop().await;
    let flaky = t.store.job_get(flaky).await.unwrap().unwrap();
    assert_eq!(flaky.state, JobState::Dead);
    assert_eq!(flaky.attempts.len(), 3);
    let gaps: Vec<i64> = flaky
        .attempts
        .windows(2)
        .map(|w| (w[1].started_at.unwrap() - w[0].finished_at.unwrap()).num_milliseconds())
        .collect();
    assert!(
        gaps[0] >= 30 && gaps[1] >= 60,
        "exponential backoff between attempts: {gaps:?}"
    );
    let fatal = t.store.job_get(fatal).await.unwrap().unwrap();
    assert_eq!(
        (fatal.state, fatal.attempts.len()),
        (JobState::Dead, 1),
        "a fatal error is not retried"
    );
    assert_eq!(fatal.attempts[0].error.as_deref(), Some("bad input"));
    let heals = t.store.job_get(heals).await.unwrap().unwrap();
    assert_eq!((heals.state, heals.attempt), (JobState::Completed, 2));
    t.cleanup().await;
}

async fn a_job_past_its_timeout_is_stopped(backend: Backend) {
    let t = fresh(backend).await;
    let mut kind = JobKind::new("sleep", "default");
    kind.max_attempts = 1;
    kind.timeout = Duration::from_millis(200);
    let kinds = common::kinds_of(&[kind]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let id = client
        .enqueue("sleep", json!({"ms": 60_000}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let running = start(&t, builtin::registry(), kinds, config(&[("default", 1)]));
    t.wait_for_counts(Duration::from_secs(20), "the job dead", |n| {
        n(JobState::Dead) == 1
    })
    .await;
    running.stop().await;
    let job = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        job.attempts[0].error.as_deref(),
        Some("timed out after 200 ms")
    );
    t.cleanup().await;
}

/// A handler that reports when it starts and when it is stopped (its future dropped).
fn blocking_registry(events: mpsc::UnboundedSender<(&'static str, i64)>) -> Registry {
    struct OnDrop(mpsc::UnboundedSender<(&'static str, i64)>, i64);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(("stopped", self.1));
        }
    }
    let mut registry = Registry::new();
    registry.register("block", move |args: Value, ctx: JobContext| {
        let events = events.clone();
        async move {
            let _guard = OnDrop(events.clone(), ctx.job.id);
            let _ = events.send(("started", ctx.job.id));
            let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<(), JobError>(())
        }
    });
    registry
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<(&'static str, i64)>,
) -> (&'static str, i64) {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("event in time")
        .expect("open")
}

async fn cancelling_a_running_job_stops_its_handler(backend: Backend) {
    let t = fresh(backend).await;
    let kinds = common::kinds_of(&[JobKind::new("block", "default")]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let id = client
        .enqueue("block", json!({}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let (tx, mut events) = mpsc::unbounded_channel();
    let running = start(&t, blocking_registry(tx), kinds, config(&[("default", 5)]));
    assert_eq!(next_event(&mut events).await, ("started", id));
    let cancelled = t
        .store
        .jobs_cancel(&JobFilter {
            ids: vec![id],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.count, 1);
    // The next heartbeat finds the lease gone and stops the handler.
    assert_eq!(next_event(&mut events).await, ("stopped", id));
    running.stop().await;
    assert_eq!(
        t.store.job_get(id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    t.cleanup().await;
}

async fn shutdown_lets_running_jobs_finish_or_releases_them(backend: Backend) {
    let t = fresh(backend).await;
    let kinds = common::kinds_of(&[JobKind::new("block", "default")]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let quick = client
        .enqueue("block", json!({"ms": 300}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let stuck = client
        .enqueue("block", json!({"ms": 600_000}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut config = config(&[("default", 5)]);
    config.shutdown_grace = Duration::from_millis(1500);
    let running = start(&t, blocking_registry(tx), kinds, config);
    let mut started = HashMap::new();
    while started.len() < 2 {
        let (what, id) = next_event(&mut events).await;
        started.insert(id, what);
    }
    running.stop().await;
    let quick = t.store.job_get(quick).await.unwrap().unwrap();
    assert_eq!(
        quick.state,
        JobState::Completed,
        "a job that finishes within the grace period completes"
    );
    let stuck = t.store.job_get(stuck).await.unwrap().unwrap();
    assert_eq!(
        stuck.state,
        JobState::Retryable,
        "a job still running after the grace period is released"
    );
    assert!(
        stuck.attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("shutting down")
    );
    assert!(
        stuck.run_at <= chrono::Utc::now(),
        "released for another worker at once"
    );
    let running_left = t
        .store
        .jobs_list(&JobFilter {
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(running_left.is_empty());
    t.cleanup().await;
}

/// A pruner never runs with a retention it cannot honour: zero, or one so long that date
/// arithmetic would overflow (and prune everything).
#[test]
fn out_of_range_retentions_are_refused_at_start_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = fresh(Backend::Sqlite).await;
        for (completed, dead) in [
            (Duration::ZERO, Duration::from_secs(3600)),
            (Duration::from_secs(3600), Duration::MAX),
            (Duration::from_secs(1), Duration::from_secs(3600)),
        ] {
            let mut config = config(&[("default", 1)]);
            config.maintenance.completed_retention = completed;
            config.maintenance.dead_retention = dead;
            let started = Runtime::new(
                t.store.clone(),
                Registry::new(),
                common::builtin_kinds(),
                config,
            );
            match started {
                Err(err) => assert!(err.to_string().contains("retention"), "{err}"),
                Ok(_) => panic!("retentions {completed:?} / {dead:?} must be refused"),
            }
        }
    });
}

/// A kind declared in `jobs/` without a handler in this binary does not stop start-up (a
/// rolling deploy runs old and new binaries side by side; `tests/cli.rs` checks the warning
/// names its file and line, `tests/production_defaults.rs` that its jobs are left for others).
#[test]
fn a_kind_without_a_handler_does_not_stop_start_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = fresh(Backend::Sqlite).await;
        let started = Runtime::new(
            t.store.clone(),
            Registry::new(),
            common::repo_kinds(),
            config(&[("default", 1)]),
        );
        assert!(started.is_ok(), "{:?}", started.err());
    });
}

async fn a_queue_never_runs_more_than_its_concurrency(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = fresh(backend).await;
    let kinds = common::kinds_of(&[JobKind::new("count", "narrow")]);
    let client = Client::new(t.store.clone(), kinds.clone());
    for _ in 0..30 {
        client
            .enqueue("count", json!({}), EnqueueOptions::default())
            .await
            .unwrap();
    }
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let (current, peak) = (Arc::clone(&current), Arc::clone(&peak));
        registry.register("count", move |_: Value, _: JobContext| {
            let (current, peak) = (Arc::clone(&current), Arc::clone(&peak));
            async move {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), JobError>(())
            }
        });
    }
    let running = start(&t, registry, kinds, config(&[("narrow", 3)]));
    t.wait_for_counts(Duration::from_secs(30), "30 completed", |n| {
        n(JobState::Completed) == 30
    })
    .await;
    running.stop().await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "the queue's limit is reached and never exceeded"
    );
    t.cleanup().await;
}

async fn a_panicking_handler_fails_its_attempt_and_the_worker_goes_on(backend: Backend) {
    let t = fresh(backend).await;
    let mut panics = JobKind::new("panics", "default");
    panics.max_attempts = 1;
    let kinds = common::kinds_of(&[panics, JobKind::new("noop", "default")]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let bad = client
        .enqueue("panics", json!({}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let mut registry = builtin::registry();
    registry.register("panics", |_: Value, _: JobContext| async move {
        if true {
            panic!("handler bug");
        }
        Ok::<(), JobError>(())
    });
    let running = start(&t, registry, kinds, config(&[("default", 1)]));
    t.wait_for_counts(Duration::from_secs(20), "the panicking job dead", |n| {
        n(JobState::Dead) == 1
    })
    .await;
    // The same worker (concurrency 1) still runs the next job.
    let good = client
        .enqueue("noop", json!({}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    t.wait_for_counts(Duration::from_secs(20), "the next job completed", |n| {
        n(JobState::Completed) == 1
    })
    .await;
    running.stop().await;
    let bad = t.store.job_get(bad).await.unwrap().unwrap();
    assert_eq!(
        bad.attempts[0].error.as_deref(),
        Some("handler panicked: handler bug")
    );
    assert_eq!(
        t.store.job_get(good).await.unwrap().unwrap().state,
        JobState::Completed
    );
    t.cleanup().await;
}

async fn a_snoozed_job_waits_without_using_an_attempt(backend: Backend) {
    let t = fresh(backend).await;
    // One attempt only: a snooze that used an attempt, or counted as a failure, would
    // dead-letter the job at its first snooze.
    let mut kind = JobKind::new("snoozy", "default");
    kind.max_attempts = 1;
    let kinds = common::kinds_of(&[kind]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let id = client
        .enqueue("snoozy", json!({}), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let (runs_tx, mut runs_rx) = mpsc::unbounded_channel();
    let mut registry = builtin::registry();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    registry.register("snoozy", move |_: Value, ctx: JobContext| {
        let (runs_tx, seen) = (runs_tx.clone(), seen.clone());
        async move {
            let _ = runs_tx.send((std::time::Instant::now(), ctx.job.attempt));
            // Snooze three times, then succeed.
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
                return Err(JobError::snooze(Duration::from_millis(300)));
            }
            Ok(())
        }
    });
    let running = start(&t, registry, kinds, config(&[("default", 2)]));
    t.wait_for_counts(Duration::from_secs(30), "the snoozed job completed", |n| {
        n(JobState::Completed) == 1
    })
    .await;
    running.stop().await;
    let mut runs = Vec::new();
    while let Ok(run) = runs_rx.try_recv() {
        runs.push(run);
    }
    assert_eq!(runs.len(), 4, "three snoozes, then the run that completed");
    assert!(
        runs.iter().all(|(_, attempt)| *attempt == 1),
        "every run is attempt 1: {runs:?}"
    );
    for pair in runs.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(
            waited >= Duration::from_millis(290),
            "a snoozed job waits its delay before it runs again ({waited:?})"
        );
    }
    let job = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Completed, 1));
    assert!(
        job.attempts.iter().all(|a| a.error.is_none()),
        "a snooze records no failure: {:?}",
        job.attempts
    );
    t.cleanup().await;
}
