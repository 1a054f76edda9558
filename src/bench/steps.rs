//! The workflow engine's step rate: no-op runs started up front, then one worker process
//! drives them to completion (`workflow_steps`: a chain; `workflow_dag`: a diamond, whose
//! completions take the general path, each checked under its run's lock).

use super::FreshStore;
use crate::kinds::{JobKind, KindCatalog};
use crate::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BENCH_WORKFLOW: &str = r#"
name = "bench_steps"
[[steps]]
name = "one"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "two"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "three"
handler = "bench.last"
job = "workflow_step"
"#;

const BENCH_DIAMOND: &str = r#"
name = "bench_steps"
[[steps]]
name = "one"
handler = "step.noop"
job = "workflow_step"
[[steps]]
name = "left"
handler = "step.noop"
job = "workflow_step"
needs = ["one"]
[[steps]]
name = "right"
handler = "step.noop"
job = "workflow_step"
needs = ["one"]
[[steps]]
name = "join"
handler = "bench.last"
job = "workflow_step"
needs = ["left", "right"]
"#;

/// `workflow_steps`: runs of a 3-step chain.
pub(super) async fn workflow_steps(fresh: &FreshStore, runs: usize) -> Result<Value, String> {
    drive(fresh, runs, BENCH_WORKFLOW, 3).await
}

/// `workflow_dag`: runs of a diamond (a step, two parallel branches, their join).
pub(super) async fn workflow_dag(fresh: &FreshStore, runs: usize) -> Result<Value, String> {
    drive(fresh, runs, BENCH_DIAMOND, 4).await
}

/// Start `runs` runs of `definition` (named `bench_steps`, its last step `bench.last`), then
/// time one worker driving them all to completion.
async fn drive(
    fresh: &FreshStore,
    runs: usize,
    definition: &str,
    steps_per_run: usize,
) -> Result<Value, String> {
    let store = &fresh.store;
    let concurrency: usize = std::env::var("STEWARD_BENCH_STEP_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    use crate::workflow::{Engine, RunSweeper, StepContext, StepFuture, WorkflowCatalog, steps};
    let mut step_kind = JobKind::new("workflow_step", "workflows");
    step_kind.max_attempts = 3;
    let mut kinds = KindCatalog::default();
    kinds.add(step_kind).map_err(|e| e.to_string())?;
    let finished = Arc::new(AtomicUsize::new(0));
    let all_finished = Arc::new(Notify::new());
    let mut handlers = steps::registry();
    {
        let finished = Arc::clone(&finished);
        let all_finished = Arc::clone(&all_finished);
        handlers.register(
            "bench.last",
            move |ctx: StepContext<'_>| -> StepFuture<'_> {
                if finished.fetch_add(1, Ordering::Relaxed) + 1 == runs {
                    all_finished.notify_one();
                }
                Box::pin(async move { Ok(ctx.input.clone()) })
            },
        );
    }
    let definition =
        WorkflowCatalog::parse(std::path::Path::new("<bench>"), definition, &kinds, &|h| {
            handlers.contains(h)
        })
        .map_err(|e| e.to_string())?;
    let mut catalog = WorkflowCatalog::default();
    catalog.add(definition).map_err(|e| e.to_string())?;
    let engine = Engine::new(Arc::clone(store), catalog, kinds.clone(), handlers);
    // Set-up, not measured: the runs are started 16 at a time.
    use futures::StreamExt;
    let starts: Vec<_> = futures::stream::iter(0..runs)
        .map(|_| engine.start("bench_steps", json!({}), None))
        .buffer_unordered(16)
        .collect()
        .await;
    for started in starts {
        started.map_err(|e| e.to_string())?;
    }
    fresh.analyze().await?;
    let mut registry = Registry::new();
    engine.register_jobs(&mut registry);
    let mut config = RuntimeConfig::new(
        "bench",
        vec![QueueConfig {
            name: "workflows".into(),
            concurrency,
        }],
    );
    config.batch_size = concurrency;
    let runtime = Runtime::new(Arc::clone(store), registry, kinds, config)
        .map_err(|e| e.to_string())?
        .with_service(Box::new(RunSweeper {
            engine: Arc::clone(&engine),
            every: Duration::from_millis(500),
        }));
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    all_finished.notified().await;
    shutdown.cancel();
    running
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let completed = store
        .runs_list(Some(crate::store::runs::RunState::Completed), 1)
        .await
        .map_err(|e| e.to_string())?;
    if completed.is_empty() {
        return Err("workflow_steps: no run completed".into());
    }
    let transitions = runs * steps_per_run;
    Ok(
        json!({"runs": runs, "steps_per_run": steps_per_run, "transitions": transitions,
              "transitions_per_s": (transitions as f64 / secs).round(),
              "runs_per_s": (runs as f64 / secs).round(), "seconds": secs}),
    )
}
