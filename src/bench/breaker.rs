//! `circuit_breaker`: a webhook-like receiver on loopback (axum) answers 503 for `--seconds`
//! (30 by default), then 204. 200 jobs of a kind with `[circuit_breaker] failures = 5,
//! open_secs = 5` call it (10 at a time, 6 attempts each, backoff 200 ms to 1 s). Reported:
//! calls that reached it while it was down, the probes among them (calls after the circuit
//! opened) and the shortest gap between two probes, jobs delivered and dead, and the attempts
//! used beyond one per job (each a failed call: waiting for the circuit uses none).

use crate::kinds::KindCatalog;
use crate::queue::{JobContext, JobError, QueueConfig, Registry, Runtime, RuntimeConfig};
use crate::store::SharedStore;
use crate::types::{JobFilter, JobState};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 200;

/// Run the scenario: the receiver is down for `down_secs`.
pub(super) async fn circuit_breaker(store: &SharedStore, down_secs: u64) -> Result<Value, String> {
    let seen: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let up_at = Instant::now() + Duration::from_secs(down_secs);
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let log = Arc::clone(&log);
            async move {
                let now = Instant::now();
                let refused = now < up_at;
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((now, refused));
                if refused {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/hook",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let kind = KindCatalog::parse(
        std::path::Path::new("<bench>/call.toml"),
        "kind = \"call\"\nqueue = \"calls\"\nmax_attempts = 6\ntimeout_secs = 5\n\
         [backoff]\nbase_ms = 200\nmax_ms = 1000\n\
         [circuit_breaker]\nkey = \"{url}\"\nfailures = 5\nopen_secs = 5\n",
    )
    .map_err(|e| e.to_string())?;
    let mut kinds = KindCatalog::default();
    kinds.add(kind).map_err(|e| e.to_string())?;
    let client = crate::Client::new(Arc::clone(store), kinds.clone());
    let job = client
        .build("call", json!({"url": url}), Default::default())
        .map_err(|e| e.to_string())?;
    client
        .enqueue_many(&vec![job; JOBS])
        .await
        .map_err(|e| e.to_string())?;
    let http = reqwest::Client::new();
    let mut registry = Registry::new();
    registry.register("call", move |args: Value, _: JobContext| {
        let http = http.clone();
        async move {
            let url = args["url"].as_str().unwrap_or_default().to_string();
            let answer = http
                .post(url)
                .send()
                .await
                .map_err(|e| JobError::Retryable(e.to_string()))?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(JobError::Retryable(format!("answered {}", answer.status())))
            }
        }
    });
    let config = RuntimeConfig::new(
        "bench-breaker",
        vec![QueueConfig {
            name: "calls".into(),
            concurrency: 10,
        }],
    );
    let runtime =
        Runtime::new(Arc::clone(store), registry, kinds, config).map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(down_secs + 120);
    let (mut completed, mut dead);
    loop {
        let counts = store
            .jobs_count_by_state()
            .await
            .map_err(|e| e.to_string())?;
        let count = |s| {
            counts
                .iter()
                .filter(|c| c.state == s)
                .map(|c| c.count)
                .sum::<i64>()
        };
        (completed, dead) = (count(JobState::Completed), count(JobState::Dead));
        if completed + dead == JOBS as i64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let attempts: i64 = store
        .jobs_list(&JobFilter {
            limit: Some(JOBS as i64),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|j| i64::from(j.attempt))
        .sum();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let refused: Vec<Instant> = seen.iter().filter(|(_, r)| *r).map(|(at, _)| *at).collect();
    // Calls after the fifth failure (the circuit opened) plus the ones then in flight.
    let opened = refused.get(4).copied();
    let probes: Vec<Instant> = match opened {
        Some(at) => refused
            .iter()
            .copied()
            .filter(|t| *t > at + Duration::from_millis(500))
            .collect(),
        None => Vec::new(),
    };
    let shortest_gap = probes
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    Ok(json!({
        "jobs": JOBS,
        "down_seconds": down_secs,
        "calls_while_down": refused.len(),
        "probes_while_open": probes.len(),
        "shortest_seconds_between_probes": if shortest_gap.is_finite() { json!((shortest_gap * 1000.0).round() / 1000.0) } else { Value::Null },
        "delivered": completed,
        "dead": dead,
        "attempts_beyond_one_per_job": attempts - JOBS as i64,
    }))
}
