//! `/metrics` in the Prometheus text format.
//!
//! Two sources: the database (jobs by queue and state, dead letters, run outcomes: true for
//! the whole deployment, whichever process is scraped) and this process's own recorder
//! (attempts and their durations, recorded by the worker's dispatcher; HTTP request
//! durations, recorded by the API).

use super::AppState;
use super::error::ApiError;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 1 ms to 5 minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Install this process's metrics recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
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

/// The whole `/metrics` page.
pub(super) async fn render(state: &AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    let jobs = state.store.jobs_count_by_state().await?;
    out.push_str("# HELP steward_jobs Jobs by queue and state (from the database).\n");
    out.push_str("# TYPE steward_jobs gauge\n");
    for count in &jobs {
        let _ = writeln!(
            out,
            "steward_jobs{{queue=\"{}\",state=\"{}\"}} {}",
            label(&count.queue),
            count.state,
            count.count
        );
    }
    out.push_str("# HELP steward_dead_letters Dead jobs waiting for an operator, by queue.\n");
    out.push_str("# TYPE steward_dead_letters gauge\n");
    for count in jobs
        .iter()
        .filter(|c| c.state == crate::types::JobState::Dead)
    {
        let _ = writeln!(
            out,
            "steward_dead_letters{{queue=\"{}\"}} {}",
            label(&count.queue),
            count.count
        );
    }
    out.push_str("# HELP steward_runs Workflow runs by workflow and state (run outcomes).\n");
    out.push_str("# TYPE steward_runs gauge\n");
    for (workflow, run_state, n) in state.store.runs_count_by_state().await? {
        let _ = writeln!(
            out,
            "steward_runs{{workflow=\"{}\",state=\"{run_state}\"}} {n}",
            label(&workflow)
        );
    }
    if let Some(handle) = install() {
        out.push_str(&handle.render());
    }
    Ok(out)
}
