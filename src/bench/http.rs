//! `enqueue_http`: jobs enqueued over `POST /api/jobs` by the platform (a service token), on
//! a real loopback socket: batches of `--batch` jobs from `--callers` concurrent callers, then
//! one job per request from 16 callers; beside `enqueue_batch_parallel` and `enqueue_single`,
//! which enqueue through the Rust client.

use super::FreshStore;
use crate::api::AppState;
use crate::api::auth::{AuthKeys, Role};
use crate::kinds::{JobKind, KindCatalog};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(super) async fn enqueue_http(
    fresh: &FreshStore,
    jobs: usize,
    batch: usize,
    callers: usize,
) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut noop = JobKind::new("noop", "default");
    noop.enqueued_by = vec!["service".into()];
    noop.payload = Some(Vec::new());
    let mut kinds = KindCatalog::default();
    kinds.add(noop).map_err(|e| err(&e))?;
    let engine = crate::workflow::Engine::new(
        Arc::clone(&fresh.store),
        crate::workflow::WorkflowCatalog::default(),
        kinds,
        crate::workflow::steps::registry(),
    );
    let secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
    let keys = AuthKeys::new(&secret).map_err(|e| err(&e))?;
    let token = keys
        .mint("bench", Role::Service, None, chrono::Duration::hours(1))
        .map_err(|e| err(&e))?;
    let exports: crate::export::SharedExports = Arc::new(crate::export::local::LocalStorage::new(
        std::env::temp_dir().join("steward-bench-exports"),
    ));
    let state = AppState::new(engine, exports, keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(&e))?;
    let url = format!(
        "http://{}/api/jobs",
        listener.local_addr().map_err(|e| err(&e))?
    );
    let stop = CancellationToken::new();
    let until = stop.clone();
    let server = tokio::spawn(crate::http::serve(listener, state, async move {
        until.cancelled().await
    }));
    let http = reqwest::Client::new();

    let batch = batch.clamp(1, crate::api::enqueue::BATCH_LIMIT);
    let body = json!({"jobs": vec![json!({"kind": "noop"}); batch]}).to_string();
    let batched = run(&http, &url, &token, &body, jobs.div_ceil(batch), callers).await?;
    let batched_jobs = jobs.div_ceil(batch) * batch;
    let single_jobs = (jobs / 10).max(1);
    let one = json!({"kind": "noop"}).to_string();
    let single = run(&http, &url, &token, &one, single_jobs, 16).await?;
    stop.cancel();
    let _ = server.await;
    Ok(json!({
        "jobs": batched_jobs,
        "batch": batch,
        "callers": callers,
        "jobs_per_s": (batched_jobs as f64 / batched).round(),
        "single_jobs": single_jobs,
        "single_callers": 16,
        "single_jobs_per_s": (single_jobs as f64 / single).round(),
    }))
}

/// Post `body` `requests` times from `callers` concurrent callers; the seconds it took.
async fn run(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &str,
    requests: usize,
    callers: usize,
) -> Result<f64, String> {
    let (http, url, token, body) = (
        http.clone(),
        Arc::<str>::from(url),
        Arc::<str>::from(token),
        Arc::<str>::from(body),
    );
    super::spread(callers, requests, move || {
        let (http, url, token, body) = (
            http.clone(),
            Arc::clone(&url),
            Arc::clone(&token),
            Arc::clone(&body),
        );
        async move {
            let answer = http
                .post(&*url)
                .bearer_auth(&*token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if answer.status().as_u16() != 201 {
                return Err(format!("POST /api/jobs answered {}", answer.status()));
            }
            Ok(())
        }
    })
    .await
}
