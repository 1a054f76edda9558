//! Flow control across real worker processes, on both backends: three `steward worker`
//! processes (default settings) share one rate limit and one concurrency limit declared in
//! their `jobs/` (the repository's kinds, with `noop` rate-limited per tenant and `sleep`
//! limited to two running at once). Checked from the attempts' recorded start and end times:
//! no one-second window holds more starts than the limit, the limit's rate is reached, a key
//! at its limit does not slow another key, never more than two `sleep` jobs run at once, and
//! waiting uses no attempt. A circuit breaker in front of a real HTTP receiver that is down
//! for four seconds lets one probe reach it per period, and every job is delivered once it
//! is up, none dead. (The full runs, 100/s for 60 s and a receiver down for 30 s, are
//! `steward bench --scenario rate_limit` and `--scenario circuit_breaker`, whose figures are
//! in BENCHMARKS.md.)

mod common;

use common::process::{self, Running};
use common::{Backend, fresh};
use serde_json::json;
use std::time::Duration;
use steward::types::{JobFilter, JobRecord, JobState};
use steward::{Client, EnqueueOptions};

per_backend!(
    a_rate_limit_holds_across_processes_per_key,
    a_concurrency_limit_holds_across_processes,
    an_open_circuit_lets_one_probe_through_per_period_and_loses_nothing,
);

const RATE: usize = 20;

/// The repository's kinds, with `noop` and `sleep` limited.
fn jobs_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs");
    for entry in std::fs::read_dir(repo).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("noop.toml"),
        format!(
            "kind = \"noop\"\nqueue = \"rated\"\n[rate_limit]\nlimit = {RATE}\nperiod_secs = 1\nkey = \"{{tenant}}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sleep.toml"),
        "kind = \"sleep\"\nqueue = \"bounded\"\n[concurrency_limit]\nlimit = 2\n\
         [payload]\nms = { type = \"integer\", required = true }\n",
    )
    .unwrap();
    dir
}

fn workers(t: &common::TestStore, jobs: &tempfile::TempDir) -> Vec<Running> {
    let url = process::url_of(t);
    (1..=3)
        .map(|n| {
            Running(
                process::command(&["worker"], &url)
                    .env("STEWARD_JOBS_DIR", jobs.path())
                    .env("STEWARD_WORKER_ID", format!("flow-{n}"))
                    .spawn()
                    .expect("spawn steward worker"),
            )
        })
        .collect()
}

/// Start the three workers and wait until all of them are registered, so that they compete
/// for the jobs enqueued next.
async fn workers_up(t: &common::TestStore, jobs: &tempfile::TempDir) -> Vec<Running> {
    let running = workers(t, jobs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while t
        .store
        .workers_list()
        .await
        .unwrap()
        .iter()
        .filter(|w| w.alive)
        .count()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

async fn completed(t: &common::TestStore, kind: &str, n: usize) -> Vec<JobRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let done = t
            .store
            .jobs_list(&JobFilter {
                kind: Some(kind.into()),
                state: Some(JobState::Completed),
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap();
        if done.len() == n {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} `{kind}` jobs completed",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_ms(job: &JobRecord) -> i64 {
    job.attempted_at.expect("started").timestamp_micros() / 1000
}

async fn a_rate_limit_holds_across_processes_per_key(backend: Backend) {
    let t = fresh(backend).await;
    let dir = jobs_dir();
    let kinds = steward::kinds::KindCatalog::load_dir(dir.path()).unwrap();
    let client = Client::new(t.store.clone(), kinds);
    let _workers = workers_up(&t, &dir).await;
    let (busy, other) = (100, 10);
    for (tenant, n) in [("busy", busy), ("other", other)] {
        let options = EnqueueOptions {
            tenant: Some(tenant.into()),
            ..Default::default()
        };
        let job = client.build("noop", json!({}), options).unwrap();
        client.enqueue_many(&vec![job; n]).await.unwrap();
    }
    let done = completed(&t, "noop", busy + other).await;
    assert!(
        done.iter().all(|j| j.attempt == 1),
        "waiting for the limit used no attempt"
    );
    let starts = |tenant: &str| {
        let mut s: Vec<i64> = done
            .iter()
            .filter(|j| j.tenant == tenant)
            .map(start_ms)
            .collect();
        s.sort_unstable();
        s
    };
    for (tenant, n) in [("busy", busy), ("other", other)] {
        let s = starts(tenant);
        let most = (0..s.len())
            .map(|i| s[i..].iter().take_while(|&&x| x < s[i] + 1000).count())
            .max()
            .unwrap();
        assert!(
            most <= RATE + RATE / 20,
            "{tenant}: {most} starts in one second, limit {RATE}/s"
        );
        // The limit is reached, not undershot: n starts spaced 1/RATE s apart.
        let span = s[n - 1] - s[0];
        let expected = ((n - 1) * 1000 / RATE) as i64;
        assert!(
            span >= expected * 95 / 100 && span <= expected * 120 / 100 + 100,
            "{tenant}: {n} starts over {span} ms, expected about {expected} ms"
        );
    }
    // The other tenant's ten jobs ran while the busy tenant's hundred were still waiting.
    let (busy_starts, other_starts) = (starts("busy"), starts("other"));
    assert!(
        other_starts[other - 1] < busy_starts[0] + 2000,
        "a key at its limit does not slow another key: the other tenant finished {} ms after \
         the busy one began (which took {} ms)",
        other_starts[other - 1] - busy_starts[0],
        busy_starts[busy - 1] - busy_starts[0]
    );
    t.cleanup().await;
}

async fn a_concurrency_limit_holds_across_processes(backend: Backend) {
    let t = fresh(backend).await;
    let dir = jobs_dir();
    let kinds = steward::kinds::KindCatalog::load_dir(dir.path()).unwrap();
    let client = Client::new(t.store.clone(), kinds);
    let _workers = workers_up(&t, &dir).await;
    let n = 30;
    let job = client
        .build("sleep", json!({"ms": 100}), EnqueueOptions::default())
        .unwrap();
    client.enqueue_many(&vec![job; n]).await.unwrap();
    let done = completed(&t, "sleep", n).await;
    assert!(
        done.iter().all(|j| j.attempt == 1),
        "waiting for the limit used no attempt"
    );
    // Starts (+1) and ends (-1) in time order, an end before a start at the same instant.
    let mut events: Vec<(i64, i32)> = done
        .iter()
        .flat_map(|j| {
            let end = j.finished_at.expect("finished").timestamp_micros();
            [(j.attempted_at.unwrap().timestamp_micros(), 1), (end, -1)]
        })
        .collect();
    events.sort_unstable();
    let (mut running, mut most) = (0, 0);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert_eq!(most, 2, "at most two running at once, and the limit used");
    // On PostgreSQL every node is woken when jobs come back, so the three share the work. On
    // SQLite, jobs that come back wake only the process that staged them (others poll), so
    // one may take them all: the limit is still the database's, as the conformance suite shows.
    if t.store.capabilities().cross_process_notify {
        let workers: std::collections::HashSet<_> =
            done.iter().filter_map(|j| j.leased_by.clone()).collect();
        assert!(
            workers.len() >= 2,
            "several processes shared the work: {workers:?}"
        );
    }
    t.cleanup().await;
}

/// A loopback receiver that answers 503 for `down`, then 204; it records when each request
/// came and whether it was refused.
async fn receiver(
    down: Duration,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, bool)>>>,
) {
    use axum::http::StatusCode;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let up_at = std::time::Instant::now() + down;
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let log = log.clone();
            async move {
                let now = std::time::Instant::now();
                let refused = now < up_at;
                log.lock().unwrap().push((now, refused));
                if refused {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

async fn an_open_circuit_lets_one_probe_through_per_period_and_loses_nothing(backend: Backend) {
    use steward::queue::{JobContext, JobError, QueueConfig, Runtime, RuntimeConfig, builtin};
    let t = fresh(backend).await;
    let (url, seen) = receiver(Duration::from_secs(4)).await;
    let kind = steward::kinds::KindCatalog::parse(
        std::path::Path::new("jobs/call.toml"),
        "kind = \"call\"\nqueue = \"calls\"\nmax_attempts = 6\ntimeout_secs = 5\n\
         [backoff]\nbase_ms = 100\nmax_ms = 200\n\
         [circuit_breaker]\nkey = \"{url}\"\nfailures = 3\nopen_secs = 1\n",
    )
    .unwrap();
    let kinds = common::kinds_of(&[kind]);
    let client = Client::new(t.store.clone(), kinds.clone());
    let n = 20;
    let job = client
        .build("call", json!({"url": url}), EnqueueOptions::default())
        .unwrap();
    client.enqueue_many(&vec![job; n]).await.unwrap();
    let mut registry = builtin::registry();
    let http = reqwest::Client::new();
    registry.register("call", move |args: serde_json::Value, _: JobContext| {
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
    // Default settings but for two jobs at a time, so that few calls are in flight when the
    // circuit opens.
    let config = RuntimeConfig::new(
        "breaker-test",
        vec![QueueConfig {
            name: "calls".into(),
            concurrency: 2,
        }],
    );
    let runtime = Runtime::new(t.store.clone(), registry, kinds, config).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    // While the receiver is down, operators see the circuit open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let breakers = t.store.breakers_list().await.unwrap();
        if breakers
            .iter()
            .any(|b| b.state == "open" && b.failures >= 3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never seen open: {breakers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = completed(&t, "call", n).await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    let refused: Vec<_> = seen.iter().filter(|(_, r)| *r).map(|(at, _)| *at).collect();
    // None dead, and the only attempts used are the calls that failed: waiting for the
    // circuit used none.
    let attempts: i32 = done.iter().map(|j| j.attempt).sum();
    assert_eq!(
        attempts as usize,
        n + refused.len(),
        "attempts: one each, plus each failed call"
    );
    // Three failures open it (two calls may be in flight then); after that one probe a second
    // during the four seconds down.
    assert!(
        refused.len() <= 3 + 2 + 5,
        "{} calls reached the receiver while it was down",
        refused.len()
    );
    let opened = refused[2];
    let probes: Vec<_> = refused
        .iter()
        .filter(|at| **at > opened + Duration::from_millis(500))
        .collect();
    for pair in probes.windows(2) {
        assert!(
            *pair[1] - *pair[0] >= Duration::from_millis(900),
            "one probe per open period: {:?} apart",
            *pair[1] - *pair[0]
        );
    }
    assert!(!probes.is_empty(), "the circuit was probed while open");
    assert_eq!(
        seen.iter().filter(|(_, r)| !*r).count(),
        n,
        "each job delivered once it was up"
    );
    let breakers = t.store.breakers_list().await.unwrap();
    assert_eq!(breakers.len(), 1);
    assert_eq!(
        (breakers[0].state.as_str(), breakers[0].failures),
        ("closed", 0)
    );
    t.cleanup().await;
}
