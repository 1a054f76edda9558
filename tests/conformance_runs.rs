//! The storage conformance suite for workflow runs (`RunStore`, `StepTx`) and the queue
//! primitives the other suites do not reach (`capabilities`, `migrate`, `subscribe`, the
//! ledger, `ping`, the transactional enqueue, the throughput per minute), on both backends:
//! every method is called directly on the store, as River's driver suite does, so a backend
//! that drifts from the other fails here before any engine or operation notices.

mod common;

use chrono::Utc;
use common::lifecycle::{module, publish, tenant};
use common::{Backend, TestStore, fresh, new_job};
use serde_json::{Value, json};
use std::time::Duration;
use steward::domain::ident::{ModuleTable, Slug};
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus;
use steward::store::domain::{ModuleRequest, StatusChange};
use steward::store::runs::{
    CompletionOutcome, DeadStep, NextStep, RunCancel, RunId, RunStart, RunState, StepCompletion,
    StepState,
};
use steward::store::{FetchParams, StepTx, TransactionalEnqueue};
use steward::types::{FetchedJob, JobState, NewJob, Outcome};

per_backend!(
    a_run_starts_once_per_key_and_waits_behind_its_concurrency_key,
    a_step_commits_its_effects_with_its_completion_and_the_next_job,
    a_dead_step_compensates_then_fails_and_a_retry_resumes_it,
    a_retry_takes_the_runs_dead_jobs_out_of_the_dead_letter_queue,
    a_failed_outcome_commits_and_fails_or_compensates,
    a_cancel_compensates_or_ends_the_run_at_once,
    a_fanned_out_step_waits_for_every_child,
    module_primitives_run_inside_the_step_transaction,
    queue_primitives_answer_on_both_backends,
    a_signal_is_kept_once_and_wakes_the_waiting_step,
);

async fn a_signal_is_kept_once_and_wakes_the_waiting_step(backend: Backend) {
    let t = fresh(backend).await;
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    // The first step's job waits (snoozed far ahead), as a wait.signal step's does.
    let job = fetch_one(&t, "w").await;
    t.store
        .jobs_apply_outcomes(
            "w",
            &[Outcome::Released {
                lease: job.lease(),
                retry_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            }],
        )
        .await
        .unwrap();
    let state = |t: &TestStore| {
        let store = t.store.clone();
        async move { store.job_get(job.id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(&t).await, JobState::Scheduled);
    assert_eq!(t.store.run_signal_get(run, "go").await.unwrap(), None);
    assert!(
        t.store
            .run_signal_send(run, "go", &json!({"n": 1}), "ops")
            .await
            .unwrap()
    );
    assert_eq!(
        state(&t).await,
        JobState::Available,
        "the waiting step is due now"
    );
    assert!(
        !t.store.run_wake(run).await.unwrap(),
        "nothing waits any more"
    );
    // A step that parked after the signal came (it was looking just then) is woken again.
    let job = fetch_one(&t, "w").await;
    t.store
        .jobs_apply_outcomes(
            "w",
            &[Outcome::Released {
                lease: job.lease(),
                retry_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            }],
        )
        .await
        .unwrap();
    assert!(t.store.run_wake(run).await.unwrap());
    assert_eq!(state(&t).await, JobState::Available);
    assert!(
        !t.store
            .run_signal_send(run, "go", &json!({"n": 2}), "ops")
            .await
            .unwrap(),
        "a signal is sent once"
    );
    let signal = t.store.run_signal_get(run, "go").await.unwrap().unwrap();
    assert_eq!(
        (
            signal.name.as_str(),
            signal.payload,
            signal.sent_by.as_str()
        ),
        ("go", json!({"n": 1}), "ops")
    );
    t.cleanup().await;
}

const STEPS: &[&str] = &["first", "second", "third"];

fn step_job(idx: i32, compensate: bool) -> NewJob {
    NewJob {
        payload: json!({"run_id": 0, "step": idx, "compensate": compensate}),
        ..new_job("workflow_step", "workflows")
    }
}

/// Step `idx`'s job (in a chain: it needs the step before it) or its compensation's.
fn next(idx: i32, compensate: bool) -> NextStep {
    NextStep {
        idx,
        job: step_job(idx, compensate),
        needs: if compensate || idx == 0 {
            Vec::new()
        } else {
            vec![idx - 1]
        },
    }
}

fn start(key: Option<&str>, concurrency: Option<&str>) -> RunStart {
    RunStart {
        workflow: "conformance".into(),
        params: json!({"n": 1}),
        idempotency_key: key.map(str::to_string),
        concurrency_key: concurrency.map(str::to_string),
        step_names: STEPS.iter().map(|s| s.to_string()).collect(),
        version: "v1".into(),
        first_jobs: vec![next(0, false)],
    }
}

async fn fetch_one(t: &TestStore, worker: &str) -> FetchedJob {
    let mut jobs = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "workflows",
            limit: 1,
            worker,
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "one step job is available");
    jobs.remove(0)
}

async fn begin(t: &TestStore, job: &FetchedJob, worker: &str) -> Box<dyn StepTx> {
    t.store
        .step_begin(job.lease(), worker)
        .await
        .unwrap()
        .expect("the lease is this worker's")
}

async fn state(t: &TestStore, run: RunId) -> RunState {
    t.store.run_get(run).await.unwrap().unwrap().state
}

/// Complete the current step (its job fetched by `worker`) and queue `next`.
async fn complete(t: &TestStore, run: RunId, idx: i32, then: Vec<NextStep>) {
    let job = fetch_one(t, "w").await;
    let mut tx = begin(t, &job, "w").await;
    tx.step_completed(run, idx, &json!({"done": idx}), then)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn kill(t: &TestStore, job: &FetchedJob, worker: &str) {
    let now = Utc::now();
    t.store
        .jobs_apply_outcomes(
            worker,
            &[Outcome::Failed {
                lease: job.lease(),
                error: "boom".into(),
                started_at: now,
                finished_at: now,
                retry_at: None,
            }],
        )
        .await
        .unwrap();
}

async fn a_run_starts_once_per_key_and_waits_behind_its_concurrency_key(backend: Backend) {
    let t = fresh(backend).await;
    let (run, created) = t
        .store
        .run_start(&start(Some("k"), Some("tenant-1")))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(
        t.store
            .run_start(&start(Some("k"), Some("tenant-1")))
            .await
            .unwrap(),
        (run, false),
        "the same idempotency key returns the same run"
    );
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Running);
    assert_eq!(
        record.version.as_deref(),
        Some("v1"),
        "the run keeps its version"
    );
    // A version's steps are kept once.
    let steps = json!([{"name": "a"}]);
    t.store
        .workflow_version_put("conformance", "v1", &steps)
        .await
        .unwrap();
    t.store
        .workflow_version_put("conformance", "v1", &json!([]))
        .await
        .unwrap();
    assert_eq!(
        t.store
            .workflow_version_get("conformance", "v1")
            .await
            .unwrap(),
        Some(steps)
    );
    assert_eq!(
        t.store
            .workflow_version_get("conformance", "v2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(record.steps.len(), 3);
    assert_eq!(record.steps[0].state, StepState::Queued);
    assert_eq!(record.steps[1].state, StepState::Pending);
    // Same concurrency key: queued, without a job, until the first run ends.
    let (waiting, _) = t
        .store
        .run_start(&start(None, Some("tenant-1")))
        .await
        .unwrap();
    assert_eq!(state(&t, waiting).await, RunState::Queued);
    assert!(t.store.runs_promotable(10).await.unwrap().is_empty());
    let many = t
        .store
        .runs_get_many(&[waiting, run, 999_999])
        .await
        .unwrap();
    assert_eq!(
        many.iter()
            .map(|r| r.as_ref().map(|r| r.id))
            .collect::<Vec<_>>(),
        [Some(waiting), Some(run), None]
    );
    let listed = t.store.runs_list(Some(RunState::Queued), 10).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [waiting]);
    assert_eq!(t.store.runs_list(None, 10).await.unwrap().len(), 2);
    // Pages both ways, newest first.
    let (third, _) = t
        .store
        .run_start(&RunStart {
            workflow: "paging".into(),
            params: json!({"tenant_id": 7}),
            // Its step job stays out of the queue the rest of this test fetches from.
            first_jobs: vec![NextStep {
                job: NewJob {
                    queue: "paging".into(),
                    ..step_job(0, false)
                },
                ..next(0, false)
            }],
            ..start(None, None)
        })
        .await
        .unwrap();
    let page = |before_id, after_id| {
        let store = t.store.clone();
        async move {
            store
                .runs_page(&steward::store::runs::RunPage {
                    before_id,
                    after_id,
                    limit: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, None).await, [third]);
    assert_eq!(page(Some(third), None).await, [waiting]);
    assert_eq!(
        page(None, Some(run)).await,
        [waiting],
        "the page just newer than the first run"
    );
    // A tenant's runs only (its `tenant_id` parameter): the paging run is tenant 7's.
    let of_tenant = |tenant| {
        let store = t.store.clone();
        async move {
            store
                .runs_page(&steward::store::runs::RunPage {
                    tenant: Some(tenant),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(of_tenant(7).await, [third]);
    assert!(of_tenant(8).await.is_empty());
    let counts = t.store.runs_count_by_state().await.unwrap();
    assert!(counts.contains(&("conformance".into(), RunState::Running, 1)));
    assert!(counts.contains(&("conformance".into(), RunState::Queued, 1)));

    complete(&t, run, 0, vec![next(1, false)]).await;
    complete(&t, run, 1, vec![next(2, false)]).await;
    complete(&t, run, 2, vec![]).await;
    assert_eq!(state(&t, run).await, RunState::Completed);
    assert_eq!(t.store.runs_promotable(10).await.unwrap(), [waiting]);
    assert!(
        t.store
            .run_promote(waiting, vec![next(0, false)])
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .run_promote(waiting, vec![next(0, false)])
            .await
            .unwrap(),
        "promoted once"
    );
    assert_eq!(state(&t, waiting).await, RunState::Running);
    t.cleanup().await;
}

async fn a_step_commits_its_effects_with_its_completion_and_the_next_job(backend: Backend) {
    let t = fresh(backend).await;
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    let job = fetch_one(&t, "w1").await;
    // Another worker's attempt commits nothing: refused at the start or at the commit.
    if let Some(other) = t.store.step_begin(job.lease(), "w2").await.unwrap() {
        let refused = other.commit().await.unwrap_err();
        assert!(
            matches!(refused, steward::store::StoreError::Conflict(_)),
            "{refused:?}"
        );
    }
    assert_eq!(
        t.store.job_get(job.id).await.unwrap().unwrap().state,
        JobState::Running
    );
    // Rolled back on drop: nothing of the attempt lands.
    let mut tx = begin(&t, &job, "w1").await;
    tx.ledger_append(job.id, "w1", "dropped").await.unwrap();
    drop(tx);
    assert!(t.store.ledger_entries().await.unwrap().is_empty());
    let mut tx = begin(&t, &job, "w1").await;
    tx.ledger_append(job.id, "w1", "kept").await.unwrap();
    tx.step_completed(run, 0, &json!({"out": 1}), vec![next(1, false)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        t.store.ledger_entries().await.unwrap(),
        [(job.id, "w1".to_string())]
    );
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(record.current_step, 1);
    assert_eq!(record.steps[0].output, Some(json!({"out": 1})));
    assert_eq!(
        t.store.job_get(job.id).await.unwrap().map(|j| j.state),
        Some(JobState::Completed),
        "the step's job is acknowledged with it"
    );
    // A batch of completions of steps that wrote nothing, each fenced on its own lease.
    let second = fetch_one(&t, "w1").await;
    let completion = |lease, worker: &str| StepCompletion {
        lease,
        worker: worker.into(),
        run_id: run,
        idx: 1,
        output: json!({"out": 2}),
        next: vec![next(2, false)],
        chain: true,
    };
    let lost = t
        .store
        .steps_complete_many(&[completion(second.lease(), "w9")])
        .await
        .unwrap();
    assert_eq!(lost, [CompletionOutcome::LeaseLost]);
    assert_eq!(t.store.run_get(run).await.unwrap().unwrap().current_step, 1);
    let applied = t
        .store
        .steps_complete_many(&[completion(second.lease(), "w1")])
        .await
        .unwrap();
    assert_eq!(applied, [CompletionOutcome::Applied]);
    // A stale step (the run moved on) records nothing.
    let third = fetch_one(&t, "w1").await;
    let mut tx = begin(&t, &third, "w1").await;
    let err = tx
        .step_completed(run, 1, &json!({}), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, steward::store::StoreError::Stale(_)),
        "{err:?}"
    );
    drop(tx);
    // Progress is visible at once, outside any step transaction.
    t.store
        .step_progress(run, 2, &json!({"rows": 5, "of": 10}))
        .await
        .unwrap();
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(record.steps[2].progress, Some(json!({"rows": 5, "of": 10})));
    t.cleanup().await;
}

async fn a_dead_step_compensates_then_fails_and_a_retry_resumes_it(backend: Backend) {
    let t = fresh(backend).await;
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    complete(&t, run, 0, vec![next(1, false)]).await;
    let job = fetch_one(&t, "w").await;
    kill(&t, &job, "w").await;
    let dead = t.store.runs_dead_steps(10).await.unwrap();
    assert_eq!(
        dead,
        [DeadStep {
            run_id: run,
            idx: 1,
            compensating: false,
            error: "boom".into(),
        }]
    );
    assert!(
        t.store
            .run_step_died(&dead[0], vec![next(0, true)])
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .run_step_died(&dead[0], vec![next(0, true)])
            .await
            .unwrap(),
        "handled once"
    );
    assert_eq!(state(&t, run).await, RunState::Compensating);
    let compensation = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &compensation, "w").await;
    tx.step_compensated(run, 0, vec![]).await.unwrap();
    tx.commit().await.unwrap();
    let failed = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(failed.current_step, 1, "pointing at the dead step");
    assert_eq!(failed.steps[0].state, StepState::Compensated);
    assert!(failed.error.unwrap().contains("boom"));
    // A retry from the earliest undone step; a stale retry (wrong failed step) does nothing.
    assert!(
        !t.store
            .run_retry(run, 0, &[0, 1], vec![next(0, false)])
            .await
            .unwrap()
    );
    assert!(
        t.store
            .run_retry(run, 1, &[0, 1], vec![next(0, false)])
            .await
            .unwrap()
    );
    let retried = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(
        (retried.state, retried.current_step),
        (RunState::Running, 0)
    );
    complete(&t, run, 0, vec![next(1, false)]).await;
    t.cleanup().await;
}

/// A retried run's dead jobs leave the DLQ: its dead step's (the step gets a new job) and a
/// compensation's that died (its step stays completed: the retry resumes past it).
async fn a_retry_takes_the_runs_dead_jobs_out_of_the_dead_letter_queue(backend: Backend) {
    let t = fresh(backend).await;
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    complete(&t, run, 0, vec![next(1, false)]).await;
    let step = fetch_one(&t, "w").await;
    kill(&t, &step, "w").await;
    let dead = t.store.runs_dead_steps(10).await.unwrap();
    assert!(
        t.store
            .run_step_died(&dead[0], vec![next(0, true)])
            .await
            .unwrap()
    );
    let compensation = fetch_one(&t, "w").await;
    kill(&t, &compensation, "w").await;
    let dead = t.store.runs_dead_steps(10).await.unwrap();
    assert!(dead[0].compensating);
    assert!(t.store.run_step_died(&dead[0], vec![]).await.unwrap());
    let failed = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(failed.state, RunState::Failed);
    let job_state = |id| {
        let store = t.store.clone();
        async move { store.job_get(id).await.unwrap().unwrap().state }
    };
    for id in [step.id, compensation.id] {
        assert_eq!(job_state(id).await, JobState::Dead);
    }
    assert!(
        t.store
            .run_retry(run, failed.current_step, &[1], vec![next(1, false)])
            .await
            .unwrap()
    );
    for id in [step.id, compensation.id] {
        assert_eq!(job_state(id).await, JobState::Cancelled, "job {id}");
    }
    t.cleanup().await;
}

async fn a_failed_outcome_commits_and_fails_or_compensates(backend: Backend) {
    let t = fresh(backend).await;
    // Without anything to compensate: failed at once, with the step's error and output.
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    let job = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &job, "w").await;
    tx.ledger_append(job.id, "w", "rolled back, for real")
        .await
        .unwrap();
    tx.step_failed(run, 0, &json!({"failed": "why"}), "why", vec![])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert_eq!(record.error.as_deref(), Some("step 0 failed: why"));
    assert_eq!(record.steps[0].state, StepState::Dead);
    assert_eq!(record.steps[0].output, Some(json!({"failed": "why"})));
    assert_eq!(
        t.store.ledger_entries().await.unwrap(),
        [(job.id, "w".to_string())],
        "the step's effects committed"
    );
    // Parallel branches (steps 1 and 2 both need only step 0): the failed run points at the
    // branch that failed, not at the branch queued last, and the other branch stops.
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    let branch = |idx| NextStep {
        needs: vec![0],
        ..next(idx, false)
    };
    complete(&t, run, 0, vec![branch(1), branch(2)]).await;
    let jobs = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "workflows",
            limit: 2,
            worker: "w",
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .unwrap();
    let first = jobs
        .iter()
        .find(|j| j.payload["step"] == 1)
        .expect("step 1's job is available");
    let mut tx = begin(&t, first, "w").await;
    tx.step_failed(run, 1, &Value::Null, "why", vec![])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.current_step),
        (RunState::Failed, 1),
        "pointing at the failed branch"
    );
    assert_eq!(
        record.steps[2].state,
        StepState::Pending,
        "the other branch stopped"
    );
    // With a completed step to undo: compensating first.
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    complete(&t, run, 0, vec![next(1, false)]).await;
    let job = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &job, "w").await;
    tx.step_failed(run, 1, &Value::Null, "why", vec![next(0, true)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(state(&t, run).await, RunState::Compensating);
    t.cleanup().await;
}

async fn a_cancel_compensates_or_ends_the_run_at_once(backend: Backend) {
    let t = fresh(backend).await;
    let cancel = |id, current_step, compensations| RunCancel {
        id,
        by: "ops".into(),
        current_step,
        compensations,
    };
    // Nothing done yet: cancelled at once, its queued job too.
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    assert!(
        !t.store.run_cancel(&cancel(run, 1, vec![])).await.unwrap(),
        "a cancel decided on a stale read applies nothing"
    );
    assert!(t.store.run_cancel(&cancel(run, 0, vec![])).await.unwrap());
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Cancelled);
    assert_eq!(record.error.as_deref(), Some("cancelled by ops"));
    let job = record.steps[0].job_id.unwrap();
    assert_eq!(
        t.store.job_get(job).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(!t.store.run_cancel(&cancel(run, 0, vec![])).await.unwrap());
    // A completed step to undo: compensating, then cancelled (not failed).
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    complete(&t, run, 0, vec![next(1, false)]).await;
    assert!(
        t.store
            .run_cancel(&cancel(run, 1, vec![next(0, true)]))
            .await
            .unwrap()
    );
    assert_eq!(state(&t, run).await, RunState::Compensating);
    let compensation = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &compensation, "w").await;
    tx.step_compensated(run, 0, vec![]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(state(&t, run).await, RunState::Cancelled);
    t.cleanup().await;
}

async fn a_fanned_out_step_waits_for_every_child(backend: Backend) {
    let t = fresh(backend).await;
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    let job = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &job, "w").await;
    let children: Vec<NewJob> = (0..3).map(|_| new_job("noop", "children")).collect();
    assert_eq!(tx.spawn_children(run, 0, &children).await.unwrap(), 3);
    assert_eq!(tx.spawned(), 3);
    tx.step_waiting(run, 0, &json!({"sent": 3})).await.unwrap();
    tx.commit().await.unwrap();
    assert!(t.store.runs_fanned_in(10).await.unwrap().is_empty());
    let leased = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "children",
            limit: 10,
            worker: "c",
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let now = Utc::now();
    let outcomes: Vec<Outcome> = leased[..2]
        .iter()
        .map(|j| Outcome::Completed {
            lease: j.lease(),
            finished_at: now,
        })
        .collect();
    t.store.jobs_apply_outcomes("c", &outcomes).await.unwrap();
    assert!(
        t.store.runs_fanned_in(10).await.unwrap().is_empty(),
        "one child is still running"
    );
    kill(&t, &leased[2], "c").await;
    assert_eq!(t.store.runs_fanned_in(10).await.unwrap(), [(run, 0)]);
    assert!(
        t.store
            .run_fan_in(run, 0, vec![next(1, false)])
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .run_fan_in(run, 0, vec![next(1, false)])
            .await
            .unwrap()
    );
    let record = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(
        record.steps[0].output.as_ref().unwrap()["children"],
        json!({"succeeded": 2, "dead": 1, "cancelled": 0})
    );
    assert_eq!(record.current_step, 1);
    t.cleanup().await;
}

async fn module_primitives_run_inside_the_step_transaction(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let version = t.store.versions_of("inventory").await.unwrap()[0].id;
    t.store
        .tenant_module_request(&ModuleRequest {
            tenant_id: a,
            module: "inventory",
            version_id: version,
            status: TenantModuleStatus::Provisioning,
            reason: None,
            expected: None,
            actor: "test",
            tenant_seen: None,
        })
        .await
        .unwrap();
    // Published before the step's transaction (on SQLite that holds the one writer).
    let upgrade = t
        .store
        .version_publish(
            "inventory",
            &steward::store::domain::NewVersion {
                version: "1.1.0".into(),
                major: 1,
                minor: 1,
                patch: 0,
                build_hash: "h".into(),
                changelog: String::new(),
                up_sql: "CREATE TABLE tenant_inventory_moves (id BIGINT NOT NULL, \
                         tenant_id BIGINT NOT NULL, \
                         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);"
                    .into(),
                down_sql: "DROP TABLE tenant_inventory_moves;".into(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: vec!["tenant_inventory_moves".into()],
            },
        )
        .await
        .unwrap();
    let (run, _) = t.store.run_start(&start(None, None)).await.unwrap();
    let job = fetch_one(&t, "w").await;
    let mut tx = begin(&t, &job, "w").await;
    let report = tx.module_migrate("inventory", version).await.unwrap();
    assert!(report.created);
    assert_eq!(report.tables.len(), 2);
    let moved = tx
        .tenant_module_move(&StatusChange::new(
            a,
            "inventory",
            Some(TenantModuleStatus::Provisioning),
            TenantModuleStatus::Enabled,
            "test",
            "module.enable",
        ))
        .await
        .unwrap();
    assert_eq!(moved.status, TenantModuleStatus::Enabled);
    let report = tx
        .module_upgrade("inventory", upgrade.id, &[a])
        .await
        .unwrap();
    assert_eq!(report.version, "1.1.0");
    let slug = Slug::parse("inventory").unwrap();
    let table = ModuleTable::parse(&slug, "tenant_inventory_items").unwrap();
    tx.module_rows_delete(&table, a, 0).await.unwrap();
    let err = tx.module_rows_delete(&table, a, 5).await.unwrap_err();
    assert!(
        matches!(err, steward::store::StoreError::Conflict(_)),
        "{err:?}"
    );
    tx.step_completed(run, 0, &json!({}), vec![next(1, false)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(common::lifecycle::table_exists(&t, "tenant_inventory_moves").await);
    t.cleanup().await;
}

async fn queue_primitives_answer_on_both_backends(backend: Backend) {
    let t = fresh(backend).await;
    let capabilities = t.store.capabilities();
    assert_eq!(capabilities.multi_node, backend == Backend::Postgres);
    assert_eq!(
        capabilities.cross_process_notify,
        backend == Backend::Postgres
    );
    t.store
        .migrate()
        .await
        .expect("migrating again changes nothing");
    t.store.ping().await.unwrap();
    let mut signals = t.store.subscribe();
    t.store
        .jobs_insert_many(&[new_job("noop", "signals")])
        .await
        .unwrap();
    let queue = tokio::time::timeout(Duration::from_secs(5), signals.recv())
        .await
        .expect("an enqueue into an empty queue signals it")
        .unwrap();
    assert_eq!(queue, "signals");
    // The transactional enqueue follows the caller's transaction.
    let inserted = match (&t.pg, &t.sqlite) {
        (Some(pg), _) => {
            let mut tx = pg.pool().begin().await.unwrap();
            let done = tx.insert_jobs(&[new_job("noop", "tx")]).await.unwrap();
            tx.commit().await.unwrap();
            done
        }
        (_, Some(sqlite)) => {
            let mut tx = sqlite.pool().begin().await.unwrap();
            let done = tx.insert_jobs(&[new_job("noop", "tx")]).await.unwrap();
            tx.commit().await.unwrap();
            done
        }
        _ => unreachable!(),
    };
    assert!(inserted[0].inserted);
    // The ledger and the throughput per minute.
    t.store
        .ledger_append(inserted[0].id, "w", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        t.store.ledger_entries().await.unwrap(),
        [(inserted[0].id, "w".to_string())]
    );
    let job = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "tx",
            limit: 1,
            worker: "w",
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .unwrap()
        .remove(0);
    t.store
        .jobs_apply_outcomes(
            "w",
            &[Outcome::Completed {
                lease: job.lease(),
                finished_at: Utc::now(),
            }],
        )
        .await
        .unwrap();
    let per_minute = t.store.jobs_per_minute(None, 60).await.unwrap();
    assert_eq!(per_minute.iter().map(|m| m.completed).sum::<i64>(), 1);
    let of_queue = |q| {
        let store = t.store.clone();
        async move { store.jobs_per_minute(Some(q), 60).await.unwrap() }
    };
    assert_eq!(
        of_queue("tx")
            .await
            .iter()
            .map(|m| m.completed)
            .sum::<i64>(),
        1
    );
    assert!(of_queue("elsewhere").await.is_empty());
    t.cleanup().await;
}

/// The suite calls every method of every store trait: a method added to a trait without a
/// conformance test fails here, naming it.
#[test]
fn every_store_method_has_a_conformance_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let suites: String = [
        "tests/conformance.rs",
        "tests/conformance_runs.rs",
        "tests/conformance_domain.rs",
    ]
    .iter()
    .map(|path| read(path))
    .collect();
    let mut missing = Vec::new();
    let mut methods = 0;
    for source in [
        "src/store/mod.rs",
        "src/store/runs.rs",
        "src/store/domain.rs",
        "src/store/data.rs",
        "src/store/control.rs",
        "src/store/limits.rs",
    ] {
        let text = read(source);
        let mut in_trait = false;
        for line in text.lines() {
            if line.starts_with("pub trait ") {
                in_trait = true;
            } else if line == "}" {
                in_trait = false;
            } else if in_trait {
                let trimmed = line.trim_start();
                let rest = trimmed
                    .strip_prefix("async fn ")
                    .or_else(|| trimmed.strip_prefix("fn "));
                if let Some(rest) = rest {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    methods += 1;
                    // `migrate` runs in every test's set-up too; it is called here as well.
                    if !suites.contains(&format!(".{name}(")) {
                        missing.push(format!("{source}: {name}"));
                    }
                }
            }
        }
    }
    assert!(
        methods >= 85,
        "the trait parser found only {methods} methods"
    );
    assert!(
        missing.is_empty(),
        "store methods without a conformance test: {missing:?}"
    );
}
