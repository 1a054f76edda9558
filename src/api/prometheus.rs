//! `/metrics` in the Prometheus text format.
//!
//! Two sources: the database (jobs by queue and state, dead letters, the age of each queue's
//! oldest available job, running jobs per worker, the leader, run outcomes: true for the
//! whole deployment, whichever process is scraped) and this process's own recorder (attempts
//! and their durations, recorded by the worker's dispatcher; HTTP request durations, recorded
//! by the API). Every series has `# HELP` and `# TYPE`; a database series whose count falls to
//! zero stays, at 0, for every queue the kinds declare or the database holds and every
//! workflow defined (a graph of it drops to zero instead of ending).

use super::AppState;
use super::error::ApiError;
use crate::store::runs::RunState;
use crate::types::JobState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 1 ms to 5 minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How often the recorder's pending histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Install this process's metrics recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            // The recorder keeps every histogram sample until a render or an upkeep folds it
            // into the buckets: a worker nobody scrapes would otherwise grow by a sample per job
            // for ever (16 bytes a job: 20 MB a minute at 20,000 jobs/s, seen in the
            // `sustained` bench). A thread, not a task: installed before or outside a runtime.
            let upkept = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkept.run_upkeep();
                    }
                })
                .ok()?;
            metrics::describe_counter!(
                "steward_job_attempts_total",
                "Job attempts this process ran, by queue, kind and outcome (completed, failed, \
                 fatal, interrupted, released, snoozed)."
            );
            metrics::describe_histogram!(
                "steward_job_duration_seconds",
                metrics::Unit::Seconds,
                "How long this process's job attempts ran, by queue and kind."
            );
            metrics::describe_histogram!(
                "steward_http_request_duration_seconds",
                metrics::Unit::Seconds,
                "HTTP requests this process answered, by method, route template and status class."
            );
            Some(handle)
        })
        .as_ref()
}

/// Escape a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP` and `# TYPE` of a gauge.
fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// The whole `/metrics` page.
pub(super) async fn render(state: &AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    let counts = state.store.jobs_count_by_state().await?;
    let gauges = state.store.runtime_gauges().await?;
    let mut queues: BTreeSet<String> = state.engine.kinds().queues().into_iter().collect();
    queues.extend(counts.iter().map(|c| c.queue.clone()));
    let jobs: HashMap<(&str, JobState), i64> = counts
        .iter()
        .map(|c| ((c.queue.as_str(), c.state), c.count))
        .collect();

    gauge(
        &mut out,
        "steward_jobs",
        "Jobs by queue and state (from the database; completed: those not yet pruned).",
    );
    for queue in &queues {
        for job_state in JobState::ALL {
            let n = jobs.get(&(queue.as_str(), job_state)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "steward_jobs{{queue=\"{}\",state=\"{job_state}\"}} {n}",
                label(queue)
            );
        }
    }
    gauge(
        &mut out,
        "steward_dead_letters",
        "Dead jobs waiting for an operator, by queue.",
    );
    for queue in &queues {
        let n = jobs
            .get(&(queue.as_str(), JobState::Dead))
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "steward_dead_letters{{queue=\"{}\"}} {n}",
            label(queue)
        );
    }
    gauge(
        &mut out,
        "steward_queue_oldest_available_seconds",
        "How long the oldest available job of each queue has been due (the queue's latency; 0 \
         when none waits).",
    );
    let oldest: BTreeMap<&str, i64> = gauges
        .oldest_available_ms
        .iter()
        .map(|(q, ms)| (q.as_str(), *ms))
        .collect();
    for queue in &queues {
        let ms = oldest.get(queue.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "steward_queue_oldest_available_seconds{{queue=\"{}\"}} {:.3}",
            label(queue),
            ms as f64 / 1000.0
        );
    }
    gauge(
        &mut out,
        "steward_queue_paused",
        "1 while a queue is paused (no job of it starts on any node), else 0.",
    );
    let paused: BTreeSet<String> = state
        .store
        .queue_states()
        .await?
        .into_iter()
        .filter(|q| q.paused)
        .map(|q| q.queue)
        .collect();
    for queue in queues.iter().chain(paused.difference(&queues)) {
        let _ = writeln!(
            out,
            "steward_queue_paused{{queue=\"{}\"}} {}",
            label(queue),
            u8::from(paused.contains(queue))
        );
    }
    gauge(
        &mut out,
        "steward_circuit_open",
        "1 while a circuit breaker is open or half-open (its jobs wait, using no attempt), 0 \
         once closed; by breaker key (`breaker:<name>:<key>`).",
    );
    for breaker in state.store.breakers_list().await? {
        let _ = writeln!(
            out,
            "steward_circuit_open{{key=\"{}\"}} {}",
            label(&breaker.key),
            u8::from(breaker.state != "closed")
        );
    }
    gauge(
        &mut out,
        "steward_workers_alive",
        "Worker processes whose registration is live (they beat within their lease).",
    );
    let alive: BTreeSet<String> = state
        .store
        .workers_list()
        .await?
        .into_iter()
        .filter(|w| w.alive)
        .map(|w| w.id)
        .collect();
    let _ = writeln!(out, "steward_workers_alive {}", alive.len());
    gauge(
        &mut out,
        "steward_worker_running_jobs",
        "Running jobs each worker process holds a lease on (0 for a live one holding none).",
    );
    // Every live worker, at zero when it holds nothing; and any worker that still holds jobs.
    let mut running: BTreeMap<&str, i64> = alive.iter().map(|w| (w.as_str(), 0)).collect();
    for (worker, n) in &gauges.running_by_worker {
        running.insert(worker, *n);
    }
    for (worker, n) in &running {
        let _ = writeln!(
            out,
            "steward_worker_running_jobs{{worker=\"{}\"}} {n}",
            label(worker)
        );
    }
    gauge(
        &mut out,
        "steward_leader",
        "1 for the worker process that runs the periodic services (cron, sweeper, rescuer, \
         pruner) now, 0 for every other live one.",
    );
    let mut leaders: BTreeMap<(&str, &str), u8> = BTreeMap::new();
    for worker in &alive {
        leaders.insert((crate::maintenance::elector::NAME, worker), 0);
    }
    for (name, holder) in &gauges.leaders {
        for worker in &alive {
            leaders.entry((name, worker)).or_insert(0);
        }
        leaders.insert((name, holder), 1);
    }
    for ((name, worker), leads) in &leaders {
        let _ = writeln!(
            out,
            "steward_leader{{name=\"{}\",worker=\"{}\"}} {leads}",
            label(name),
            label(worker)
        );
    }
    gauge(
        &mut out,
        "steward_runs",
        "Workflow runs by workflow and state (run outcomes).",
    );
    let mut runs: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for workflow in state.engine.workflows().iter() {
        for run_state in RunState::ALL {
            runs.insert((workflow.name.clone(), run_state.as_str()), 0);
        }
    }
    for (workflow, run_state, n) in state.store.runs_count_by_state().await? {
        runs.insert((workflow, run_state.as_str()), n);
    }
    for ((workflow, run_state), n) in &runs {
        let _ = writeln!(
            out,
            "steward_runs{{workflow=\"{}\",state=\"{run_state}\"}} {n}",
            label(workflow)
        );
    }
    if let Some(handle) = install() {
        out.push_str(&handle.render());
    }
    Ok(out)
}
