//! Queues (the list, and one queue with its depth, latency, throughput and failures over the
//! last hour, the workers that work it, and pause / resume) and the worker processes.

use super::html::{badge, button, ms, notice, time, url};
use super::overview::{charts, queue_table};
use super::{PageError, gate, render};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::queues as api_queues;
use crate::queue::control;
use crate::queue::summary;
use crate::store::control::WorkerRecord;
use crate::types::JobState;
use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use maud::{Markup, html};
use serde::Deserialize;

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    caller.may_read_deployment()?;
    let queues = summary::summaries(&state.store).await?;
    Ok(render("Queues", &caller, queue_table(&queues)))
}

/// After a pause or resume: what it did, as numbers (`?done=pause&n=3&pending=0`).
#[derive(Deserialize, Default)]
pub(super) struct Done {
    #[serde(default)]
    done: String,
    n: Option<usize>,
    pending: Option<usize>,
    #[serde(default)]
    unchanged: bool,
}

impl Done {
    fn text(&self, queue: &str) -> Option<String> {
        let verb = match self.done.as_str() {
            "pause" => "paused",
            "resume" => "resumed",
            _ => return None,
        };
        if self.unchanged {
            return Some(format!("nothing changed: queue {queue} already was {verb}"));
        }
        let applied = self.n.unwrap_or(0);
        Some(match self.pending.unwrap_or(0) {
            0 => format!("{verb} queue {queue}: applied by {applied} live worker(s)"),
            late => format!(
                "{verb} queue {queue} in the database, but {late} live worker(s) had not applied \
                 it yet (see Workers)"
            ),
        })
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(queue): Path<String>,
    Query(done): Query<Done>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    caller.may_read_deployment()?;
    let detail = api_queues::detail(&state, &queue).await?;
    let q = &detail.summary;
    let body = html! {
        (notice(done.text(&queue)))
        div id="queue-state" data-live {
            p {
                (badge(if q.paused { "paused" } else { "active" })) " "
                @if let Some(control) = &detail.control {
                    (if control.paused { "paused" } else { "resumed" }) " by " (control.changed_by)
                    " at " (time(Some(control.changed_at)))
                }
            }
            p {
                @if q.paused {
                    (button(&format!("/dashboard/queues/{}/resume", url(&queue)), "Resume", "primary"))
                } @else {
                    (button(&format!("/dashboard/queues/{}/pause", url(&queue)), "Pause", "danger"))
                }
                " " a href={ "/dashboard/jobs?queue=" (url(&queue)) } { "its jobs" }
                " · " a href={ "/dashboard/dead?queue=" (url(&queue)) } { "its dead letters" }
            }
            div.cards id="depth" {
                @for job_state in JobState::ALL {
                    a.card href={ "/dashboard/jobs?queue=" (url(&queue)) "&state=" (job_state.as_str()) } id={ "depth-" (job_state.as_str()) } {
                        (badge(job_state)) b { (q.count(job_state)) }
                    }
                }
                div.card id="latency" { "oldest waiting" b { (ms(q.oldest_available_ms)) } }
                div.card id="in-use" { "running / concurrency" b { (q.count(JobState::Running)) " / " (q.concurrency) } }
            }
        }
        div id="charts" data-live { (charts(&detail.per_minute, 60)) }
        @if !detail.breakers.is_empty() {
            h2 { "Circuit breakers" }
            table id="breakers" data-live {
                tr { th { "dependency" } th { "state" } th.num { "failures in a row" } th { "opened" } th { "probe from" } }
                @for b in &detail.breakers {
                    tr {
                        td { (b.key) } td { (badge(b.state.as_str())) } td.num { (b.failures) }
                        td { (time(b.opened_at)) } td { (time(b.probe_at)) }
                    }
                }
            }
        }
        h2 { "Workers on this queue" }
        (worker_table(&detail.workers))
    };
    Ok(render(&format!("Queue {queue}"), &caller, body))
}

pub(super) async fn act(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path((queue, action)): Path<(String, String)>,
) -> Result<Redirect, PageError> {
    let caller = gate(caller)?;
    let report =
        api_queues::set_paused(&state, &caller, &queue, &action, control::DEFAULT_WAIT).await?;
    Ok(Redirect::to(&format!(
        "/dashboard/queues/{}?done={}&n={}&pending={}&unchanged={}",
        url(&queue),
        url(&action),
        report.applied_by.len(),
        report.pending.len(),
        !report.changed
    )))
}

pub(super) async fn workers(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Html<String>, PageError> {
    let caller = gate(caller)?;
    caller.may_read_deployment()?;
    let workers = state.store.workers_list().await?;
    Ok(render("Workers", &caller, worker_table(&workers)))
}

fn worker_table(workers: &[WorkerRecord]) -> Markup {
    html! {
        table id="workers" data-live {
            tr {
                th { "worker" } th { "host" } th.num { "pid" } th { "alive" } th { "queues (concurrency)" }
                th.num { "jobs in hand" } th { "last heartbeat" } th { "started" }
            }
            @for w in workers {
                tr id={ "worker-" (w.id) } {
                    td { (w.id) } td { (w.host) } td.num { (w.pid) }
                    td { (badge(if w.alive { "active" } else { "gone" })) }
                    td {
                        @for (i, q) in w.queues.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href={ "/dashboard/queues/" (url(&q.name)) } { (q.name) } " (" (q.concurrency) ")"
                        }
                    }
                    td.num { (w.running) }
                    td { (time(Some(w.heartbeat_at))) }
                    td { (time(Some(w.started_at))) }
                }
            }
            @if workers.is_empty() { tr { td colspan="8" { "no worker process is registered" } } }
        }
    }
}
