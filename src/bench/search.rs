//! `job_search`: what the operators' job search costs on a table of `--jobs N` jobs (run it
//! with 1,000,000): the newest page, its total (counted up to 10,001), a queue and tenant's
//! page, a page deep in the past, a text search that hits a recent job, and text searches that
//! match nothing (the worst case: every job of the time range is read). Each figure is the
//! median of 5 calls, in milliseconds.

use super::FreshStore;
use crate::api::jobs::COUNT_CAP;
use crate::types::{JobFilter, NewJob};
use serde_json::{Value, json};
use std::time::Instant;

const QUEUES: [&str; 3] = ["default", "mail", "reports"];

pub(super) async fn job_search(fresh: &FreshStore, jobs: usize) -> Result<Value, String> {
    let store = &fresh.store;
    let mut first = None;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..jobs {
        batch.push(NewJob {
            kind: "noop".into(),
            queue: QUEUES[i % QUEUES.len()].into(),
            tenant: (i % 100 + 1).to_string(),
            payload: json!({"order": format!("ord-{i}"), "customer": format!("customer {}", i % 5000)}),
            priority: 0,
            max_attempts: 3,
            timeout_ms: 10_000,
            unique_key: None,
            run_at: None,
        });
        if batch.len() == 1000 || i + 1 == jobs {
            let ids = store
                .jobs_insert_many(&batch)
                .await
                .map_err(|e| e.to_string())?;
            first = first.or(ids.first().map(|e| e.id));
            batch.clear();
        }
    }
    let first = first.unwrap_or(1);
    let newest = |limit| JobFilter {
        newest_first: true,
        limit: Some(limit),
        ..JobFilter::default()
    };
    let hours = |h| Some(chrono::Utc::now() - chrono::Duration::hours(h));
    let searches: Vec<(&str, JobFilter, bool)> = vec![
        ("newest_page", newest(50), false),
        ("newest_total", newest(50), true),
        (
            "queue_tenant_page",
            JobFilter {
                queue: Some("mail".into()),
                tenant: Some("7".into()),
                ..newest(50)
            },
            false,
        ),
        (
            "deep_page",
            JobFilter {
                before_id: Some(first + jobs as i64 / 2),
                ..newest(50)
            },
            false,
        ),
        (
            "text_recent_hit",
            JobFilter {
                text: Some(format!("ord-{}", jobs.saturating_sub(10))),
                ..newest(50)
            },
            false,
        ),
        (
            "text_no_match_last_hour",
            JobFilter {
                text: Some("no such text".into()),
                since: hours(1),
                ..newest(50)
            },
            false,
        ),
        (
            "text_no_match_total_last_hour",
            JobFilter {
                text: Some("no such text".into()),
                since: hours(1),
                ..newest(50)
            },
            true,
        ),
    ];
    let mut result = json!({"jobs": jobs});
    for (name, filter, count) in searches {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            if count {
                store
                    .jobs_count(&filter, COUNT_CAP)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                store.jobs_list(&filter).await.map_err(|e| e.to_string())?;
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        result[format!("{name}_ms")] = json!((times[2] * 10.0).round() / 10.0);
    }
    Ok(result)
}
