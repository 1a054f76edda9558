//! The workflow engine on both backends: steps advance atomically with their effects,
//! outputs feed the next step, a dead step triggers compensation in reverse order, a retry
//! resumes from the failed step, starts are idempotent.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use steward::kinds::{JobKind, KindCatalog};
use steward::queue::{JobError, QueueConfig, Registry, Runtime, RuntimeConfig};
use steward::store::FetchParams;
use steward::store::runs::{
    CompletionOutcome, NextStep, RunId, RunState, StepCompletion, StepState,
};
use steward::types::{JobState, Lease, NewJob};
use steward::workflow::{
    Engine, EngineError, RunSweeper, StepContext, StepFuture, StepRegistry, WorkflowCatalog,
};
use tokio_util::sync::CancellationToken;

per_backend!(
    a_run_advances_step_by_step_with_each_effect_once,
    a_dead_step_compensates_in_reverse_and_retry_resumes_there,
    a_retry_resumes_at_the_failed_step_without_rerunning_completed_ones,
    starting_twice_with_one_key_is_one_run,
    a_long_step_reports_progress_while_it_runs,
    a_step_fans_out_ten_thousand_children_and_fans_in_with_counts,
    runs_sharing_a_concurrency_key_run_one_at_a_time,
    batched_step_completions_are_fenced_and_guarded_one_by_one,
    runs_in_flight_finish_on_the_definition_they_started_with,
    a_signal_wait_resumes_on_its_signal_and_timeouts_take_their_path,
    signals_reach_a_run_over_the_api_from_the_roles_declared_only,
    a_timer_wait_sleeps_until_its_time_without_a_worker,
    a_diamond_runs_its_branches_in_parallel_and_joins_once,
    a_dead_branch_compensates_in_reverse_topological_order_and_retry_resumes_it,
    cancelling_a_graph_stops_every_live_branch_and_undoes_completed_ones,
    a_cancelled_runs_undoing_waits_until_its_running_step_has_stopped,
    batched_completions_of_parallel_branches_start_their_join_once,
);

fn kinds() -> KindCatalog {
    let mut step = JobKind::new("workflow_step", "workflows");
    step.max_attempts = 1;
    common::kinds_of(&[step])
}

fn catalog(definitions: &[&str], steps: &StepRegistry) -> WorkflowCatalog {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in definitions.iter().enumerate() {
        std::fs::write(dir.path().join(format!("w{i}.toml")), text).unwrap();
    }
    WorkflowCatalog::load_dir(dir.path(), &kinds(), &|h| steps.contains(h))
        .expect("valid workflows")
}

const THREE_STEPS: &str = r#"
name = "three"
[params]
tenant = { default = "acme" }
[[steps]]
name = "first"
handler = "ledger.append"
job = "workflow_step"
[[steps]]
name = "second"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "third"
handler = "ledger.append"
job = "workflow_step"
"#;

struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), steward::queue::RuntimeError>>,
}

/// Not the defaults, on purpose: a 5 s lease (default 10 s) and a 100 ms poll, so a step job
/// whose attempt ends is picked up and a lost one rescued within a test's wait.
fn start(t: &TestStore, engine: &Arc<Engine>) -> Running {
    let mut registry = Registry::new();
    engine.register_jobs(&mut registry);
    let mut config = RuntimeConfig::new(
        format!("wf-{}", fastrand::u32(..)),
        vec![QueueConfig {
            name: "workflows".into(),
            concurrency: 20,
        }],
    )
    .with_lease(Duration::from_secs(5));
    config.poll_interval = Duration::from_millis(100);
    let runtime = Runtime::new(t.store.clone(), registry, kinds(), config)
        .unwrap()
        .with_service(Box::new(RunSweeper {
            engine: Arc::clone(engine),
            every: Duration::from_millis(50),
        }));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    Running { shutdown, handle }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

async fn wait_runs(
    t: &TestStore,
    what: &str,
    check: impl Fn(&[steward::store::runs::RunRecord]) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = t.store.runs_list(None, 10_000).await.unwrap();
        if check(&runs) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ledger_entries(t: &TestStore) -> Vec<String> {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_scalar(
            "SELECT entry FROM steward_ledger WHERE entry IS NOT NULL ORDER BY seq",
        )
        .fetch_all(pg.pool())
        .await
        .unwrap(),
        (_, Some(sqlite)) => sqlx::query_scalar(
            "SELECT entry FROM steward_ledger WHERE entry IS NOT NULL ORDER BY seq",
        )
        .fetch_all(sqlite.pool())
        .await
        .unwrap(),
        _ => unreachable!("a test store has a backend"),
    }
}

async fn a_run_advances_step_by_step_with_each_effect_once(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[THREE_STEPS], &steps),
        kinds(),
        steps,
    );
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(engine.start("three", json!({}), None).await.unwrap().0);
    }
    let running = start(&t, &engine);
    wait_runs(&t, "25 completed runs", |runs| {
        runs.len() == 25 && runs.iter().all(|r| r.state == RunState::Completed)
    })
    .await;
    running.stop().await;
    let entries = ledger_entries(&t).await;
    assert_eq!(entries.len(), 50, "two ledger steps per run, once each");
    for id in &ids {
        for step in ["first", "third"] {
            let entry = format!("run {id} step {step}");
            assert_eq!(
                entries.iter().filter(|e| **e == entry).count(),
                1,
                "{entry}"
            );
        }
        let run = engine.run(*id).await.unwrap();
        assert_eq!(
            run.params,
            json!({"tenant": "acme"}),
            "defaults are filled in"
        );
        assert!(run.steps.iter().all(|s| s.state == StepState::Completed));
        assert_eq!(
            run.steps[1].output, run.steps[0].output,
            "a step's output is the next step's input"
        );
        assert_eq!(
            run.steps[0].output,
            Some(json!({"wrote": format!("run {id} step first")}))
        );
    }
    let err = engine
        .start("three", json!({"bogus": 1}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidParams { .. }), "{err}");
    let err = engine.start("nope", json!({}), None).await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownWorkflow(_)), "{err}");
    t.cleanup().await;
}

/// The built-in step handlers plus `test.gate`, which fails for good while `open` is false
/// and, once open, writes a ledger row.
fn gated_steps(open: &Arc<AtomicBool>) -> StepRegistry {
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    let open = Arc::clone(open);
    steps.register(
        "test.gate",
        move |mut ctx: StepContext<'_>| -> StepFuture<'_> {
            let open = open.load(Ordering::SeqCst);
            Box::pin(async move {
                if !open {
                    return Err(JobError::Fatal("the gate is closed".into()));
                }
                let entry = format!("run {} step {}", ctx.run_id, ctx.step);
                let (job_id, worker) = (ctx.job.id, ctx.worker);
                ctx.tx()
                    .await?
                    .ledger_append(job_id, worker, &entry)
                    .await?;
                Ok(Value::Null)
            })
        },
    );
    steps
}

const COMPENSATED: &str = r#"
name = "saga"
[[steps]]
name = "reserve"
handler = "ledger.append"
job = "workflow_step"
compensate = "ledger.undo"
[[steps]]
name = "notify"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "charge"
handler = "ledger.append"
job = "workflow_step"
compensate = "ledger.undo"
[[steps]]
name = "gate"
handler = "test.gate"
job = "workflow_step"
"#;

async fn a_dead_step_compensates_in_reverse_and_retry_resumes_there(backend: Backend) {
    let t = fresh(backend).await;
    let open = Arc::new(AtomicBool::new(false));
    let steps = gated_steps(&open);
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[COMPENSATED], &steps),
        kinds(),
        steps,
    );
    let (id, _) = engine.start("saga", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    wait_runs(&t, "the run failed after compensating", |runs| {
        runs[0].state == RunState::Failed
    })
    .await;
    let run = engine.run(id).await.unwrap();
    assert_eq!(run.current_step, 3, "the run points at its dead step");
    let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![
            StepState::Compensated,
            StepState::Completed,
            StepState::Compensated,
            StepState::Dead
        ]
    );
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("the gate is closed"),
        "{:?}",
        run.error
    );
    assert_eq!(run.steps[3].error.as_deref(), Some("the gate is closed"));
    let dead_job = run.steps[3].job_id.unwrap();
    let job_state = |job| {
        let store = t.store.clone();
        async move { store.job_get(job).await.unwrap().map(|j| j.state) }
    };
    assert_eq!(job_state(dead_job).await, Some(JobState::Dead));
    assert_eq!(
        ledger_entries(&t).await,
        vec![
            format!("run {id} step reserve"),
            format!("run {id} step charge"),
            format!("run {id} undo charge"),
            format!("run {id} undo reserve"),
        ],
        "compensations run latest first"
    );

    // An operator fixes the cause and retries. Compensation undid `reserve` and `charge`, so
    // the run resumes at `reserve`, the earliest undone step: nothing runs on rolled-back work.
    let err = engine.retry(id + 1000).await.unwrap_err();
    assert!(matches!(err, EngineError::NoRun(_)));
    open.store(true, Ordering::SeqCst);
    engine.retry(id).await.unwrap();
    // The dead step's job leaves the dead-letter queue with the retry: its step has a new job.
    assert_eq!(job_state(dead_job).await, Some(JobState::Cancelled));
    wait_runs(&t, "the retried run completed", |runs| {
        runs[0].state == RunState::Completed
    })
    .await;
    running.stop().await;
    let entries = ledger_entries(&t).await;
    assert_eq!(
        entries[4..].to_vec(),
        vec![
            format!("run {id} step reserve"),
            format!("run {id} step charge"),
            format!("run {id} step gate"),
        ],
        "{entries:?}"
    );
    let err = engine.retry(id).await.unwrap_err();
    assert!(
        matches!(err, EngineError::NotRetryable { .. }),
        "a completed run is not retried"
    );
    t.cleanup().await;
}

async fn starting_twice_with_one_key_is_one_run(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[THREE_STEPS], &steps),
        kinds(),
        steps,
    );
    let key = Some("provision:acme:chat".to_string());
    let (first, created) = engine.start("three", json!({}), key.clone()).await.unwrap();
    assert!(created);
    let (second, created) = engine
        .start("three", json!({"tenant": "other"}), key)
        .await
        .unwrap();
    assert_eq!((second, created), (first, false));
    assert_eq!(t.store.runs_list(None, 100).await.unwrap().len(), 1);
    let run = engine.run(first).await.unwrap();
    assert_eq!(run.steps.len(), 3);
    assert_eq!(run.steps[0].state, StepState::Queued);
    assert_eq!(
        t.store.jobs_list(&Default::default()).await.unwrap().len(),
        1,
        "one first-step job"
    );
    t.cleanup().await;
}

#[test]
fn workflow_definitions_in_the_repository_are_valid() {
    let kinds = common::repo_kinds();
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let catalog = WorkflowCatalog::load_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")),
        &kinds,
        &|h| steps.contains(h),
    )
    .expect("workflows/ loads");
    assert!(catalog.get("demo_saga").is_some());
}

async fn a_long_step_reports_progress_while_it_runs(backend: Backend) {
    let t = fresh(backend).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    {
        let release = Arc::clone(&release);
        steps.register("test.long", move |ctx: StepContext<'_>| -> StepFuture<'_> {
            let release = Arc::clone(&release);
            Box::pin(async move {
                ctx.progress
                    .report(json!({"rows": 500, "of": 1000}))
                    .await?;
                release.notified().await;
                Ok(json!({"rows": 1000}))
            })
        });
    }
    let definition = "name = \"long\"\n[[steps]]\nname = \"export\"\nhandler = \"test.long\"\njob = \"workflow_step\"\n";
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[definition], &steps),
        kinds(),
        steps,
    );
    let (id, _) = engine.start("long", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = engine.run(id).await.unwrap();
        if run.steps[0].progress == Some(json!({"rows": 500, "of": 1000})) {
            assert_eq!(run.state, RunState::Running);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "progress never showed: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();
    wait_runs(&t, "the long run completed", |runs| {
        runs[0].state == RunState::Completed
    })
    .await;
    running.stop().await;
    t.cleanup().await;
}

async fn a_step_fans_out_ten_thousand_children_and_fans_in_with_counts(backend: Backend) {
    let t = fresh(backend).await;
    let mut step_kind = JobKind::new("workflow_step", "workflows");
    step_kind.max_attempts = 1;
    let mut noop = JobKind::new("noop", "children");
    noop.max_attempts = 1;
    let mut fail = JobKind::new("fail", "children");
    fail.max_attempts = 1;
    let kinds = common::kinds_of(&[step_kind, noop, fail]);
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    steps.register("test.fan", |mut ctx: StepContext<'_>| -> StepFuture<'_> {
        Box::pin(async move {
            let ok = (0..10_000).map(|i| (format!("tenant-{}", i % 50), json!({})));
            let spawned = ctx.fan_out("noop", ok).await?;
            let bad = (0..7).map(|_| (String::new(), json!({"fatal": true, "message": "no"})));
            let spawned = spawned + ctx.fan_out("fail", bad).await?;
            Ok(json!({"spawned": spawned}))
        })
    });
    let definition = "name = \"fan\"\n[[steps]]\nname = \"notify_all\"\nhandler = \"test.fan\"\njob = \"workflow_step\"\n\
                      [[steps]]\nname = \"after\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fan.toml"), definition).unwrap();
    let catalog = WorkflowCatalog::load_dir(dir.path(), &kinds, &|h| steps.contains(h)).unwrap();
    let engine = Engine::new(t.store.clone(), catalog, kinds.clone(), steps);
    let (id, _) = engine.start("fan", json!({}), None).await.unwrap();

    let mut registry = steward::queue::builtin::registry();
    engine.register_jobs(&mut registry);
    // (A runtime names each queue it works with a width; 10 runs the fanned-out children
    // side by side.)
    let mut config = RuntimeConfig::new(
        "fan-test",
        vec![
            QueueConfig {
                name: "workflows".into(),
                concurrency: 10,
            },
            QueueConfig {
                name: "children".into(),
                concurrency: 500,
            },
        ],
    );
    config.batch_size = 500;
    config.poll_interval = Duration::from_millis(100);
    let runtime = Runtime::new(t.store.clone(), registry, kinds, config)
        .unwrap()
        .with_service(Box::new(RunSweeper {
            engine: Arc::clone(&engine),
            every: Duration::from_millis(100),
        }));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let run = engine.run(id).await.unwrap();
        if run.state == RunState::Completed {
            let counts = &run.steps[0].output.as_ref().expect("output")["children"];
            assert_eq!(counts["succeeded"], json!(10_000));
            assert_eq!(counts["dead"], json!(7));
            assert_eq!(counts["cancelled"], json!(0));
            assert_eq!(
                run.steps[0].output.as_ref().unwrap()["spawned"],
                json!(10_007)
            );
            assert_eq!(
                run.steps[1].output, run.steps[0].output,
                "the counts are the next step's input"
            );
            break;
        }
        assert!(
            run.state == RunState::Running,
            "the run must not fail: {run:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "fan-in never happened: {:?}",
            run.steps
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    t.cleanup().await;
}

async fn a_retry_resumes_at_the_failed_step_without_rerunning_completed_ones(backend: Backend) {
    let t = fresh(backend).await;
    let open = Arc::new(AtomicBool::new(false));
    let steps = gated_steps(&open);
    let definition = "name = \"plain\"\n[[steps]]\nname = \"first\"\nhandler = \"ledger.append\"\njob = \"workflow_step\"\n\
                      [[steps]]\nname = \"gate\"\nhandler = \"test.gate\"\njob = \"workflow_step\"\n";
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[definition], &steps),
        kinds(),
        steps,
    );
    let (id, _) = engine.start("plain", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    wait_runs(&t, "the run failed", |runs| {
        runs[0].state == RunState::Failed
    })
    .await;
    assert_eq!(engine.run(id).await.unwrap().current_step, 1);
    open.store(true, Ordering::SeqCst);
    engine.retry(id).await.unwrap();
    wait_runs(&t, "the retried run completed", |runs| {
        runs[0].state == RunState::Completed
    })
    .await;
    running.stop().await;
    assert_eq!(
        ledger_entries(&t).await,
        vec![
            format!("run {id} step first"),
            format!("run {id} step gate")
        ],
        "the completed first step did not run again"
    );
    t.cleanup().await;
}

async fn runs_sharing_a_concurrency_key_run_one_at_a_time(backend: Backend) {
    let t = fresh(backend).await;
    let open = Arc::new(AtomicBool::new(false));
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    {
        let open = Arc::clone(&open);
        steps.register(
            "test.hold",
            move |mut ctx: StepContext<'_>| -> StepFuture<'_> {
                let open = Arc::clone(&open);
                Box::pin(async move {
                    while !open.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let entry = format!("run {} step {}", ctx.run_id, ctx.step);
                    let (job_id, worker) = (ctx.job.id, ctx.worker);
                    ctx.tx()
                        .await?
                        .ledger_append(job_id, worker, &entry)
                        .await?;
                    Ok(Value::Null)
                })
            },
        );
    }
    let definition = "name = \"keyed\"\nconcurrency_key = \"tenant:{tenant}\"\n[params]\ntenant = { required = true }\n\
                      [[steps]]\nname = \"hold\"\nhandler = \"test.hold\"\njob = \"workflow_step\"\n";
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[definition], &steps),
        kinds(),
        steps,
    );
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(
            engine
                .start("keyed", json!({"tenant": "a"}), None)
                .await
                .unwrap()
                .0,
        );
    }
    let (b, _) = engine
        .start("keyed", json!({"tenant": "b"}), None)
        .await
        .unwrap();
    let state = |runs: &[steward::store::runs::RunRecord], id: i64| {
        runs.iter().find(|r| r.id == id).map(|r| r.state)
    };
    let runs = t.store.runs_list(None, 10).await.unwrap();
    assert_eq!(state(&runs, a[0]), Some(RunState::Running));
    assert_eq!(state(&runs, a[1]), Some(RunState::Queued));
    assert_eq!(state(&runs, a[2]), Some(RunState::Queued));
    assert_eq!(
        state(&runs, b),
        Some(RunState::Running),
        "another key is not held back"
    );
    let running = start(&t, &engine);
    open.store(true, Ordering::SeqCst);
    wait_runs(&t, "all four runs completed", |runs| {
        runs.len() == 4 && runs.iter().all(|r| r.state == RunState::Completed)
    })
    .await;
    running.stop().await;
    let entries = ledger_entries(&t).await;
    let order: Vec<String> = entries
        .into_iter()
        .filter(|e| a.iter().any(|id| e.starts_with(&format!("run {id} "))))
        .collect();
    assert_eq!(
        order,
        a.iter()
            .map(|id| format!("run {id} step hold"))
            .collect::<Vec<_>>(),
        "runs of one key ran one after another, in order"
    );
    t.cleanup().await;
}

const ONE_STEP: &str = r#"
name = "single"
[[steps]]
name = "only"
handler = "step.noop"
job = "workflow_step"
"#;

/// `steps_complete_many` (the batch that records completions of steps that wrote nothing):
/// in one call, a completion whose lease holds and whose step is current is applied with the
/// next step's job and its acknowledgement; one for a step the run is not at is stale, one
/// from a lost attempt is refused; neither of those changes anything. A completion without a
/// next step completes its run.
async fn batched_step_completions_are_fenced_and_guarded_one_by_one(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[THREE_STEPS, ONE_STEP], &steps),
        kinds(),
        steps,
    );
    let mut runs: Vec<RunId> = Vec::new();
    for _ in 0..3 {
        runs.push(engine.start("three", json!({}), None).await.unwrap().0);
    }
    // The fourth run's only step is its last: completing it completes the run.
    runs.push(engine.start("single", json!({}), None).await.unwrap().0);
    let fetched = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "workflows",
            limit: 10,
            worker: "w",
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(fetched.len(), 4);
    let job_of = |run: RunId| {
        fetched
            .iter()
            .find(|j| j.payload["run_id"] == json!(run))
            .expect("each run's first step job is fetched")
    };
    let next_job = NewJob {
        kind: "workflow_step".into(),
        queue: "workflows".into(),
        tenant: String::new(),
        payload: json!({"step": 1}),
        priority: 0,
        max_attempts: 1,
        timeout_ms: 60_000,
        unique_key: None,
        run_at: None,
    };
    let completion = |run: RunId, idx: i32, lease: Lease, last: bool| StepCompletion {
        lease,
        worker: "w".into(),
        run_id: run,
        idx,
        output: json!({"from": run}),
        next: (!last)
            .then(|| NextStep {
                idx: idx + 1,
                job: next_job.clone(),
                needs: vec![idx],
            })
            .into_iter()
            .collect(),
        chain: true,
    };
    let lease = |run: RunId| job_of(run).lease();
    let lost = Lease {
        id: lease(runs[2]).id,
        attempt: lease(runs[2]).attempt + 1,
    };
    let outcomes = t
        .store
        .steps_complete_many(&[
            completion(runs[0], 0, lease(runs[0]), false),
            completion(runs[1], 1, lease(runs[1]), false),
            completion(runs[2], 0, lost, false),
            completion(runs[3], 0, lease(runs[3]), true),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            CompletionOutcome::Applied,
            CompletionOutcome::Stale,
            CompletionOutcome::LeaseLost,
            CompletionOutcome::Applied,
        ]
    );

    let advanced = engine.run(runs[0]).await.unwrap();
    assert_eq!(advanced.state, RunState::Running);
    assert_eq!(advanced.current_step, 1);
    assert_eq!(advanced.steps[0].state, StepState::Completed);
    assert_eq!(advanced.steps[0].output, Some(json!({"from": runs[0]})));
    assert_eq!(advanced.steps[1].state, StepState::Queued);
    let queued = advanced.steps[1].job_id.expect("the next step has its job");
    let next = t.store.job_get(queued).await.unwrap().unwrap();
    assert_eq!(next.state, JobState::Available);
    assert_eq!(next.payload["run_id"], json!(runs[0]));
    let acked = t.store.job_get(lease(runs[0]).id).await.unwrap().unwrap();
    assert_eq!(acked.state, JobState::Completed);

    for untouched in [runs[1], runs[2]] {
        let run = engine.run(untouched).await.unwrap();
        assert_eq!(run.current_step, 0);
        assert_eq!(run.steps[0].state, StepState::Queued);
        assert_eq!(run.steps[0].output, None);
        let job = t
            .store
            .job_get(job_of(untouched).id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            job.state,
            JobState::Running,
            "its job is left to its worker"
        );
    }

    let finished = engine.run(runs[3]).await.unwrap();
    assert_eq!(finished.state, RunState::Completed);
    assert!(finished.finished_at.is_some());
}

/// `three`, edited: its steps renamed and cut to two.
const THREE_EDITED: &str = r#"
name = "three"
[params]
tenant = { default = "acme" }
[[steps]]
name = "only"
handler = "ledger.append"
job = "workflow_step"
[[steps]]
name = "last"
handler = "step.noop"
job = "workflow_step"
"#;

async fn runs_in_flight_finish_on_the_definition_they_started_with(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let before = Engine::new(
        t.store.clone(),
        catalog(&[THREE_STEPS], &steps),
        kinds(),
        steps,
    );
    let mut old_runs = Vec::new();
    for _ in 0..5 {
        old_runs.push(before.start("three", json!({}), None).await.unwrap().0);
    }
    // The file is edited (and the workers restarted on it) while those runs wait.
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let after = Engine::new(
        t.store.clone(),
        catalog(&[THREE_EDITED], &steps),
        kinds(),
        steps,
    );
    let old_version = before.workflows().get("three").unwrap().version.clone();
    let new_version = after.workflows().get("three").unwrap().version.clone();
    assert_ne!(old_version, new_version);
    // Reported at start-up: five runs on the old version, whose steps the file lost.
    let drift = after.versions_in_flight().await.unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(
        (
            drift[0].version.as_str(),
            drift[0].runs,
            drift[0].steps_gone.clone()
        ),
        (
            old_version.as_str(),
            5,
            vec!["first".to_string(), "second".into(), "third".into()]
        )
    );
    assert!(drift[0].handlers_missing.is_empty());
    let new_run = after.start("three", json!({}), None).await.unwrap().0;
    let running = start(&t, &after);
    wait_runs(&t, "every run completed", |runs| {
        runs.len() == 6 && runs.iter().all(|r| r.state == RunState::Completed)
    })
    .await;
    running.stop().await;
    for id in &old_runs {
        let run = t.store.run_get(*id).await.unwrap().unwrap();
        assert_eq!(run.version.as_deref(), Some(old_version.as_str()));
        let names: Vec<_> = run.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["first", "second", "third"]);
        assert!(run.steps.iter().all(|s| s.state == StepState::Completed));
        assert_eq!(
            after
                .steps_of(&run)
                .await
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            ["first", "second", "third"],
            "the edited engine follows the run's recorded steps"
        );
    }
    let run = t.store.run_get(new_run).await.unwrap().unwrap();
    assert_eq!(run.version.as_deref(), Some(new_version.as_str()));
    assert_eq!(run.steps.len(), 2);
    // Each old run wrote its first and third steps' entries; the new one its first.
    let entries = ledger_entries(&t).await;
    for id in &old_runs {
        for step in ["first", "third"] {
            let entry = format!("run {id} step {step}");
            assert_eq!(
                entries.iter().filter(|e| **e == entry).count(),
                1,
                "{entry}: {entries:?}"
            );
        }
    }
    assert!(entries.contains(&format!("run {new_run} step only")));
    t.cleanup().await;
}

const SIGNALLED: &str = r#"
name = "signalled"
[signals]
approval = { sent_by = ["master_admin"] }
[[steps]]
name = "await"
handler = "wait.signal"
job = "workflow_step"
signal = "approval"
timeout_secs = 600
[[steps]]
name = "after"
handler = "ledger.append"
job = "workflow_step"
"#;

const IMPATIENT: &str = r#"
name = "impatient"
[signals]
approval = { sent_by = ["master_admin"] }
[[steps]]
name = "await"
handler = "wait.signal"
job = "workflow_step"
signal = "approval"
timeout_secs = 1
on_timeout = "continue"
[[steps]]
name = "after"
handler = "step.noop"
job = "workflow_step"
"#;

const STRICT: &str = r#"
name = "strict"
[signals]
approval = { sent_by = [] }
[[steps]]
name = "await"
handler = "wait.signal"
job = "workflow_step"
signal = "approval"
timeout_secs = 1
"#;

/// `POST /api/runs/{id}/signal/{name}` on a real socket: a token is needed, only the roles
/// the declaration names may send it (refused with 403, nothing recorded), an undeclared
/// signal or a second send is a 409, an unknown run a 404; the accepted one resumes the run.
async fn signals_reach_a_run_over_the_api_from_the_roles_declared_only(backend: Backend) {
    use steward::api::AppState;
    use steward::api::auth::{AuthKeys, Role};
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[SIGNALLED, STRICT], &steps),
        kinds(),
        steps,
    );
    let waiting = engine.start("signalled", json!({}), None).await.unwrap().0;
    let strict = engine.start("strict", json!({}), None).await.unwrap().0;
    let keys = AuthKeys::new("a-test-secret-of-at-least-32-bytes!!").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let state = AppState::new(Arc::clone(&engine), t.exports.clone(), keys.clone());
    let until = stop.clone();
    tokio::spawn(async move {
        steward::http::serve(listener, state, async move { until.cancelled().await }).await
    });
    let token = |role| {
        keys.mint("test", role, None, chrono::Duration::hours(1))
            .unwrap()
    };
    let http = reqwest::Client::new();
    let post = async |run: RunId, name: &str, token: Option<String>| {
        let mut request = http
            .post(format!("{base}/api/runs/{run}/signal/{name}"))
            .header("content-type", "application/json")
            .body(json!({"payload": {"approved": true}}).to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    };
    assert_eq!(post(waiting, "approval", None).await.0, 401);
    let (status, body) = post(waiting, "approval", Some(token(Role::Service))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = post(strict, "approval", Some(token(Role::MasterAdmin))).await;
    assert_eq!(status, 403, "a signal no role may send: {body}");
    let (status, body) = post(waiting, "nope", Some(token(Role::MasterAdmin))).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("declares no signal `nope`")
    );
    assert_eq!(
        post(999_999, "approval", Some(token(Role::MasterAdmin)))
            .await
            .0,
        404
    );
    let (status, body) = post(waiting, "approval", Some(token(Role::MasterAdmin))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"run": waiting, "signal": "approval"}));
    let (status, body) = post(waiting, "approval", Some(token(Role::MasterAdmin))).await;
    assert_eq!(status, 409, "sent once: {body}");
    let running = start(&t, &engine);
    wait_runs(&t, "the signalled run completed", |runs| {
        runs.iter()
            .any(|r| r.id == waiting && r.state == RunState::Completed)
    })
    .await;
    let run = t.store.run_get(waiting).await.unwrap().unwrap();
    let output = run.steps[0].output.clone().expect("the wait's output");
    assert_eq!(output["payload"], json!({"approved": true}), "{output}");
    assert!(
        output["sent_by"]
            .as_str()
            .is_some_and(|by| by.contains("test")),
        "{output}"
    );
    running.stop().await;
    stop.cancel();
    t.cleanup().await;
}

/// The state of a run's current step job.
async fn step_job_state(t: &TestStore, run: RunId) -> Option<JobState> {
    let run = t.store.run_get(run).await.unwrap().unwrap();
    let job = run.steps[run.current_step as usize].job_id?;
    Some(t.store.job_get(job).await.unwrap().unwrap().state)
}

async fn a_signal_wait_resumes_on_its_signal_and_timeouts_take_their_path(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[SIGNALLED, IMPATIENT, STRICT], &steps),
        kinds(),
        steps,
    );
    let waiting = engine.start("signalled", json!({}), None).await.unwrap().0;
    let impatient = engine.start("impatient", json!({}), None).await.unwrap().0;
    let strict = engine.start("strict", json!({}), None).await.unwrap().0;
    let running = start(&t, &engine);
    // Waiting holds no worker: the step's job is back in its queue, scheduled.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while step_job_state(&t, waiting).await != Some(JobState::Scheduled) {
        assert!(
            std::time::Instant::now() < deadline,
            "the wait never parked its job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only declared signals, only by the roles they name, to runs that wait for them.
    let refused = engine
        .signal(waiting, "approval", &json!({}), "t", Some("tenant_admin"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EngineError::SignalRefused(_)),
        "{refused}"
    );
    let unknown = engine
        .signal(waiting, "nope", &json!({}), "ops", Some("master_admin"))
        .await
        .unwrap_err();
    assert!(matches!(unknown, EngineError::Signal(_)), "{unknown}");
    let operations_only = engine
        .signal(strict, "approval", &json!({}), "ops", Some("master_admin"))
        .await
        .unwrap_err();
    assert!(
        matches!(operations_only, EngineError::SignalRefused(_)),
        "{operations_only}"
    );
    engine
        .signal(
            waiting,
            "approval",
            &json!({"approved": true}),
            "ops",
            Some("master_admin"),
        )
        .await
        .unwrap();
    let twice = engine
        .signal(waiting, "approval", &json!({}), "ops", Some("master_admin"))
        .await
        .unwrap_err();
    assert!(matches!(twice, EngineError::Signal(_)), "{twice}");
    wait_runs(
        &t,
        "the signalled run completed, the timeouts took their paths",
        |runs| {
            let state = |id| runs.iter().find(|r| r.id == id).map(|r| r.state);
            state(waiting) == Some(RunState::Completed)
                && state(impatient) == Some(RunState::Completed)
                && state(strict) == Some(RunState::Failed)
        },
    )
    .await;
    running.stop().await;
    let run = t.store.run_get(waiting).await.unwrap().unwrap();
    let output = run.steps[0].output.clone().unwrap();
    assert_eq!(
        (output["payload"].clone(), output["sent_by"].clone()),
        (json!({"approved": true}), json!("ops"))
    );
    let run = t.store.run_get(impatient).await.unwrap().unwrap();
    assert_eq!(
        run.steps[0].output.clone().unwrap()["timed_out"],
        json!(true)
    );
    let run = t.store.run_get(strict).await.unwrap().unwrap();
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains("did not come within 1s")),
        "{:?}",
        run.error
    );
    // Waiting used no attempt: one attempt each.
    for id in [waiting, impatient] {
        let run = t.store.run_get(id).await.unwrap().unwrap();
        let job = t
            .store
            .job_get(run.steps[0].job_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.attempt, 1, "run {id}: {job:?}");
    }
    t.cleanup().await;
}

const TIMER: &str = r#"
name = "timer"
[params]
at = { required = true, type = "string" }
[[steps]]
name = "sleep"
handler = "wait.until"
job = "workflow_step"
until = "at"
[[steps]]
name = "after"
handler = "step.noop"
job = "workflow_step"
"#;

async fn a_timer_wait_sleeps_until_its_time_without_a_worker(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(t.store.clone(), catalog(&[TIMER], &steps), kinds(), steps);
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let run = engine
        .start("timer", json!({"at": at.to_rfc3339()}), None)
        .await
        .unwrap()
        .0;
    let past = engine
        .start("timer", json!({"at": "2020-01-01"}), None)
        .await
        .unwrap()
        .0;
    let running = start(&t, &engine);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while step_job_state(&t, run).await != Some(JobState::Scheduled) {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer never parked its job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_runs(&t, "both timers done", |runs| {
        runs.len() == 2 && runs.iter().all(|r| r.state == RunState::Completed)
    })
    .await;
    running.stop().await;
    let record = t.store.run_get(run).await.unwrap().unwrap();
    let woke = record.steps[0].finished_at.unwrap();
    assert!(woke >= at, "not before its time: woke {woke}, due {at}");
    assert!(
        woke - at < chrono::Duration::milliseconds(1500),
        "on time, within a poll: woke {woke}, due {at}"
    );
    let job = t
        .store
        .job_get(record.steps[0].job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.attempt, 1, "sleeping used no attempt");
    assert_eq!(
        t.store.run_get(past).await.unwrap().unwrap().state,
        RunState::Completed
    );
    t.cleanup().await;
}

/// The built-in handlers plus `test.meet`, which completes only once `expected` steps are in
/// it at the same time (so it proves they run in parallel; run one after another, the first
/// gives up after 20 s and fails), and `test.fail_after_sibling`, which waits until the
/// run's step `charge` has completed and then fails for good while `open` is false.
fn graph_steps(expected: usize, open: &Arc<AtomicBool>) -> StepRegistry {
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    steps.register("test.meet", move |ctx: StepContext<'_>| -> StepFuture<'_> {
        let inside = Arc::clone(&inside);
        Box::pin(async move {
            inside.fetch_add(1, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while inside.load(Ordering::SeqCst) < expected {
                if std::time::Instant::now() > deadline {
                    return Err(JobError::Fatal("the branches did not run together".into()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(json!({"met": ctx.step}))
        })
    });
    let open = Arc::clone(open);
    steps.register(
        "test.fail_after_sibling",
        move |ctx: StepContext<'_>| -> StepFuture<'_> {
            let open = open.load(Ordering::SeqCst);
            Box::pin(async move {
                if open {
                    return Ok(json!({"shipped": true}));
                }
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let run = ctx.store().run_get(ctx.run_id).await?.expect("its run");
                    let charge = run.steps.iter().find(|s| s.name == "charge");
                    if charge.is_some_and(|s| s.state == StepState::Completed) {
                        return Err(JobError::Fatal("the carrier refused".into()));
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(JobError::Fatal("charge never completed".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        },
    );
    steps
}

const DIAMOND: &str = r#"
name = "diamond"
[[steps]]
name = "reserve"
handler = "ledger.append"
job = "workflow_step"
[[steps]]
name = "left"
handler = "test.meet"
job = "workflow_step"
needs = ["reserve"]
[[steps]]
name = "right"
handler = "test.meet"
job = "workflow_step"
needs = ["reserve"]
[[steps]]
name = "join"
handler = "test.join"
job = "workflow_step"
needs = ["left", "right"]
"#;

async fn a_diamond_runs_its_branches_in_parallel_and_joins_once(backend: Backend) {
    let t = fresh(backend).await;
    let mut steps = graph_steps(2, &Arc::new(AtomicBool::new(true)));
    // The join records what its handler reads (each time it runs).
    let joined: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let seen = Arc::clone(&joined);
    steps.register("test.join", move |ctx: StepContext<'_>| -> StepFuture<'_> {
        seen.lock().unwrap().push(ctx.input.clone());
        Box::pin(async move { Ok(json!({"joined": true})) })
    });
    let engine = Engine::new(t.store.clone(), catalog(&[DIAMOND], &steps), kinds(), steps);
    let (id, _) = engine.start("diamond", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    wait_runs(&t, "the diamond completed", |runs| {
        matches!(runs[0].state, RunState::Completed | RunState::Failed)
    })
    .await;
    running.stop().await;
    let run = engine.run(id).await.unwrap();
    assert!(
        run.steps.iter().all(|s| s.compensation.is_none()),
        "a retry clears the undone steps' compensations: {:?}",
        run.steps
    );
    assert_eq!(run.state, RunState::Completed, "{run:#?}");
    assert_eq!(
        ledger_entries(&t).await,
        vec![format!("run {id} step reserve")],
        "the first step ran once"
    );
    let (left, right, join) = (&run.steps[1], &run.steps[2], &run.steps[3]);
    assert_eq!(left.output, Some(json!({"met": "left"})));
    assert_eq!(right.output, Some(json!({"met": "right"})));
    // The join's handler ran once and read both parents' outputs.
    let joined = joined.lock().unwrap().clone();
    assert_eq!(joined.len(), 1, "{joined:?}");
    let read = joined[0].to_string();
    assert!(
        read.contains(r#"{"met":"left"}"#) && read.contains(r#"{"met":"right"}"#),
        "the join read {read}"
    );
    let branches_ended = left.finished_at.max(right.finished_at).unwrap();
    assert!(
        join.started_at.unwrap() >= branches_ended,
        "the join started once both branches had ended"
    );

    // The run's page draws the graph by level: the two branches side by side, between the
    // step they need and their join, which lists what it needs and reads both outputs.
    let keys = steward::api::auth::AuthKeys::new("a-dashboard-secret-of-32-bytes-or-more").unwrap();
    let stop = CancellationToken::new();
    let base = common::serve_http(&t, Arc::clone(&engine), keys.clone(), &stop).await;
    let token = keys
        .mint(
            "ops",
            steward::api::auth::Role::MasterAdmin,
            None,
            chrono::Duration::hours(1),
        )
        .unwrap();
    let page = reqwest::Client::new()
        .get(format!("{base}/dashboard/runs/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop.cancel();
    let levels: Vec<&str> = page.split("class=\"level\"").skip(1).collect();
    assert_eq!(levels.len(), 3, "{page}");
    assert!(levels[0].contains("id=\"node-0\"") && !levels[0].contains("id=\"node-1\""));
    assert!(levels[1].contains("id=\"node-1\"") && levels[1].contains("id=\"node-2\""));
    assert!(levels[2].contains("id=\"node-3\""));
    let join_section = page
        .split("id=\"step-3\"")
        .nth(1)
        .expect("the join's section");
    assert!(join_section.contains("left, right"), "{join_section}");
    assert!(join_section.contains("&quot;left&quot;"), "{join_section}");
    t.cleanup().await;
}

/// `ship` is declared before `charge` but runs beside it; it fails once `charge` completed,
/// so compensation must undo `charge` (declared after the dead step) and then `reserve`.
const BRANCHES: &str = r#"
name = "branches"
[[steps]]
name = "reserve"
handler = "ledger.append"
job = "workflow_step"
compensate = "ledger.undo"
[[steps]]
name = "ship"
handler = "test.fail_after_sibling"
job = "workflow_step"
needs = ["reserve"]
[[steps]]
name = "charge"
handler = "ledger.append"
job = "workflow_step"
compensate = "ledger.undo"
needs = ["reserve"]
[[steps]]
name = "confirm"
handler = "ledger.append"
job = "workflow_step"
needs = ["ship", "charge"]
"#;

async fn a_dead_branch_compensates_in_reverse_topological_order_and_retry_resumes_it(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let open = Arc::new(AtomicBool::new(false));
    let steps = graph_steps(2, &open);
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[BRANCHES], &steps),
        kinds(),
        steps,
    );
    let (id, _) = engine.start("branches", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    wait_runs(&t, "the run failed after compensating", |runs| {
        runs[0].state == RunState::Failed
    })
    .await;
    let run = engine.run(id).await.unwrap();
    let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![
            StepState::Compensated,
            StepState::Dead,
            StepState::Compensated,
            StepState::Pending
        ]
    );
    assert_eq!(run.current_step, 1, "the run points at its dead step");
    // A compensated step keeps its forward job and timing; its undo has its own job, which
    // started after the step finished.
    for undone in [&run.steps[0], &run.steps[2]] {
        let undo = undone.compensation.as_ref().expect("the undo is recorded");
        let forward = undone.job_id.expect("the forward job");
        assert_ne!(undo.job_id, forward, "{undone:?}");
        for job in [forward, undo.job_id] {
            let job = t.store.job_get(job).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Completed, "{job:?}");
        }
        let (ran, finished) = (undone.started_at.unwrap(), undone.finished_at.unwrap());
        let (undo_start, undo_end) = (undo.started_at.unwrap(), undo.finished_at.unwrap());
        assert!(
            ran <= finished && finished <= undo_start && undo_start <= undo_end,
            "{undone:?}"
        );
    }
    assert!(run.steps[1].compensation.is_none() && run.steps[3].compensation.is_none());
    assert_eq!(
        ledger_entries(&t).await,
        vec![
            format!("run {id} step reserve"),
            format!("run {id} step charge"),
            format!("run {id} undo charge"),
            format!("run {id} undo reserve"),
        ],
        "the completed branch is undone first, then what it needed"
    );
    // The cause is fixed. The operator retries the dead branch's job from the dead-letter
    // queue: it is retried through its run, which resumes every undone step and the dead
    // branch, from `reserve` (everything downstream of an undone step runs again).
    open.store(true, Ordering::SeqCst);
    let dead_job = run.steps[1].job_id.expect("the dead branch's job");
    let retried = steward::lifecycle::operator::Operator::new(Arc::clone(&engine))
        .retry_jobs(
            &steward::types::JobFilter {
                ids: vec![dead_job],
                ..Default::default()
            },
            &steward::domain::actor::Actor::master_admin("ops"),
        )
        .await
        .unwrap();
    assert_eq!(retried.runs, [id], "the job is retried through its run");
    assert_eq!(retried.jobs, 0);
    wait_runs(&t, "the retried run completed", |runs| {
        runs[0].state == RunState::Completed
    })
    .await;
    running.stop().await;
    let entries = ledger_entries(&t).await;
    assert_eq!(
        entries[4..].to_vec(),
        vec![
            format!("run {id} step reserve"),
            format!("run {id} step charge"),
            format!("run {id} step confirm"),
        ],
        "{entries:?}"
    );
    let run = engine.run(id).await.unwrap();
    assert_eq!(
        run.steps[3].output,
        Some(json!({"wrote": format!("run {id} step confirm")}))
    );
    t.cleanup().await;
}

const WAITING_BRANCHES: &str = r#"
name = "waiting_branches"
[signals]
go = {}
[[steps]]
name = "reserve"
handler = "ledger.append"
job = "workflow_step"
compensate = "ledger.undo"
[[steps]]
name = "left"
handler = "wait.signal"
job = "workflow_step"
signal = "go"
needs = ["reserve"]
[[steps]]
name = "right"
handler = "wait.signal"
job = "workflow_step"
signal = "go"
needs = ["reserve"]
"#;

async fn cancelling_a_graph_stops_every_live_branch_and_undoes_completed_ones(backend: Backend) {
    let t = fresh(backend).await;
    let steps = graph_steps(2, &Arc::new(AtomicBool::new(true)));
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[WAITING_BRANCHES], &steps),
        kinds(),
        steps,
    );
    let (id, _) = engine
        .start("waiting_branches", json!({}), None)
        .await
        .unwrap();
    let running = start(&t, &engine);
    // Both branches are live (their jobs parked, waiting for the signal).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = engine.run(id).await.unwrap();
        let mut parked = 0;
        for step in &run.steps[1..] {
            if let Some(job) = step.job_id
                && t.store.job_get(job).await.unwrap().map(|j| j.state) == Some(JobState::Scheduled)
            {
                parked += 1;
            }
        }
        if parked == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the branches never parked: {run:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live: Vec<i64> = engine.run(id).await.unwrap().steps[1..]
        .iter()
        .filter_map(|s| s.job_id)
        .collect();
    engine.cancel(id, "ops").await.unwrap();
    wait_runs(&t, "the run cancelled after undoing reserve", |runs| {
        runs[0].state == RunState::Cancelled
    })
    .await;
    running.stop().await;
    for job in live {
        assert_eq!(
            t.store.job_get(job).await.unwrap().map(|j| j.state),
            Some(JobState::Cancelled),
            "every live branch's job is cancelled"
        );
    }
    let run = engine.run(id).await.unwrap();
    let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![
            StepState::Compensated,
            StepState::Pending,
            StepState::Pending
        ]
    );
    assert_eq!(
        ledger_entries(&t).await,
        vec![
            format!("run {id} step reserve"),
            format!("run {id} undo reserve")
        ]
    );
    t.cleanup().await;
}

const BUSY: &str = r#"
name = "busy"
[[steps]]
name = "reserve"
handler = "ledger.append"
job = "workflow_step"
compensate = "test.undo"
[[steps]]
name = "work"
handler = "test.busy"
job = "workflow_step"
"#;

/// Set while a `test.busy` attempt runs; cleared when its future ends or is dropped.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// An operator cancels a run while one of its steps is running: the completed step's
/// compensation starts only once that attempt has stopped (its worker stops it at its next
/// heartbeat), never beside it. (Undoing `reserve` while `work` still runs could undo what
/// `work` is about to commit on top of it.)
async fn a_cancelled_runs_undoing_waits_until_its_running_step_has_stopped(backend: Backend) {
    let t = fresh(backend).await;
    let busy = Arc::new(AtomicBool::new(false));
    let undone = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let mut steps = steward::lifecycle::step_registry(common::scratch_exports());
    {
        let busy = Arc::clone(&busy);
        steps.register(
            "test.busy",
            move |_ctx: StepContext<'_>| -> StepFuture<'_> {
                let busy = Arc::clone(&busy);
                Box::pin(async move {
                    busy.store(true, Ordering::SeqCst);
                    let _running = Busy(busy);
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    Ok(json!({}))
                })
            },
        );
    }
    {
        let (busy, undone) = (Arc::clone(&busy), Arc::clone(&undone));
        steps.register(
            "test.undo",
            move |_ctx: StepContext<'_>| -> StepFuture<'_> {
                let seen = match busy.load(Ordering::SeqCst) {
                    true => "undone while `work` ran",
                    false => "undone after `work` stopped",
                };
                undone.lock().unwrap().push(seen);
                Box::pin(async move { Ok(json!({"undone": true})) })
            },
        );
    }
    let engine = Engine::new(t.store.clone(), catalog(&[BUSY], &steps), kinds(), steps);
    let (id, _) = engine.start("busy", json!({}), None).await.unwrap();
    let running = start(&t, &engine);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !busy.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "`work` never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.cancel(id, "ops").await.unwrap();
    wait_runs(&t, "the run cancelled after undoing reserve", |runs| {
        runs[0].state == RunState::Cancelled
    })
    .await;
    running.stop().await;
    assert_eq!(*undone.lock().unwrap(), vec!["undone after `work` stopped"]);
    let run = engine.run(id).await.unwrap();
    let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, vec![StepState::Compensated, StepState::Pending]);
    t.cleanup().await;
}

const NOOP_DIAMOND: &str = r#"
name = "noop_diamond"
[[steps]]
name = "a"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "b"
handler = "step.noop"
job = "workflow_step"
needs = ["a"]
[[steps]]
name = "c"
handler = "step.noop"
job = "workflow_step"
needs = ["a"]
[[steps]]
name = "d"
handler = "step.noop"
job = "workflow_step"
needs = ["b", "c"]
"#;

/// The store decides joins: two branches of one run completed in one batch start their join
/// once; one branch alone does not start it (nor end the run); the last step ends the run.
async fn batched_completions_of_parallel_branches_start_their_join_once(backend: Backend) {
    let t = fresh(backend).await;
    let steps = steward::lifecycle::step_registry(common::scratch_exports());
    let engine = Engine::new(
        t.store.clone(),
        catalog(&[NOOP_DIAMOND], &steps),
        kinds(),
        steps,
    );
    let (together, _) = engine.start("noop_diamond", json!({}), None).await.unwrap();
    let (apart, _) = engine.start("noop_diamond", json!({}), None).await.unwrap();
    let fetch = || async {
        t.store
            .jobs_fetch_available(FetchParams {
                queue: "workflows",
                limit: 100,
                worker: "w",
                lease_for: Duration::from_secs(30),
                after: None,
            })
            .await
            .unwrap()
    };
    let job = |idx: i32| NewJob {
        payload: json!({"step": idx}),
        max_attempts: 1,
        ..common::new_job("workflow_step", "workflows")
    };
    let next = |idx: i32, needs: Vec<i32>| NextStep {
        idx,
        job: job(idx),
        needs,
    };
    let done = |j: &steward::types::FetchedJob, next: Vec<NextStep>| StepCompletion {
        lease: j.lease(),
        worker: "w".into(),
        run_id: j.payload["run_id"].as_i64().unwrap(),
        idx: j.payload["step"].as_i64().unwrap() as i32,
        output: json!({"from": j.payload["step"]}),
        next,
        chain: false,
    };
    let all_applied = |outcomes: Vec<CompletionOutcome>| {
        assert!(
            outcomes.iter().all(|o| *o == CompletionOutcome::Applied),
            "{outcomes:?}"
        );
    };
    // `a` of both runs: each starts `b` and `c`.
    let firsts = fetch().await;
    assert_eq!(firsts.len(), 2);
    let batch: Vec<StepCompletion> = firsts
        .iter()
        .map(|j| done(j, vec![next(1, vec![0]), next(2, vec![0])]))
        .collect();
    all_applied(t.store.steps_complete_many(&batch).await.unwrap());
    let branches = fetch().await;
    assert_eq!(branches.len(), 4, "two branches per run");
    let join = || next(3, vec![1, 2]);
    let of = |run: RunId| {
        branches
            .iter()
            .filter(move |j| j.payload["run_id"] == json!(run))
    };
    // One run's branches end together, the other's one at a time.
    let batch: Vec<StepCompletion> = of(together).map(|j| done(j, vec![join()])).collect();
    let mut apart_branches = of(apart);
    let first_apart = apart_branches.next().unwrap();
    let second_apart = apart_branches.next().unwrap();
    let mut batch = batch;
    batch.push(done(first_apart, vec![join()]));
    all_applied(t.store.steps_complete_many(&batch).await.unwrap());
    let joins = fetch().await;
    assert_eq!(joins.len(), 1, "one join started, once: {joins:?}");
    assert_eq!(joins[0].payload["run_id"], json!(together));
    let waiting = engine.run(apart).await.unwrap();
    assert_eq!(waiting.state, RunState::Running);
    assert_eq!(
        waiting.steps[3].state,
        StepState::Pending,
        "one branch is not enough"
    );
    all_applied(
        t.store
            .steps_complete_many(&[done(second_apart, vec![join()])])
            .await
            .unwrap(),
    );
    let second_join = fetch().await;
    assert_eq!(second_join.len(), 1);
    assert_eq!(second_join[0].payload["run_id"], json!(apart));
    // Each join reads both branches' outputs and ends its run.
    let run = engine.run(together).await.unwrap();
    assert_eq!(run.steps[3].state, StepState::Queued);
    let batch = [done(&joins[0], vec![]), done(&second_join[0], vec![])];
    all_applied(t.store.steps_complete_many(&batch).await.unwrap());
    for id in [together, apart] {
        let run = engine.run(id).await.unwrap();
        assert_eq!(run.state, RunState::Completed, "{run:#?}");
    }
    t.cleanup().await;
}
