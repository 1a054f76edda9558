//! `steward bench`: throughput and latency of the queue on the backend `DATABASE_URL` names.
//!
//! Every scenario runs on a fresh schema (PostgreSQL) or a fresh file (SQLite) and prints one
//! JSON object per line. Scenarios:
//! - `enqueue_batch`: jobs inserted 1,000 per statement by one caller;
//! - `enqueue_batch_parallel`: the same by `--callers` concurrent callers (default 4);
//! - `enqueue_single`: jobs inserted one per statement by 16 concurrent callers;
//! - `execute_noop`: a backlog of no-op jobs drained by one worker process (fetch, run, ack);
//! - `pickup_latency`: on an idle queue, time from the enqueue call to the handler starting,
//!   enqueuing through the worker's own store (woken in process);
//! - `pickup_latency_cross`: the same, enqueuing through a second connection pool, so the
//!   worker is woken only by PostgreSQL's NOTIFY, as a worker on another machine would be;
//! - `workflow_steps` ([`steps`]): 3-step no-op workflow runs driven to completion; each step
//!   transition (step committed with the next step's job and its own acknowledgement) is one
//!   transaction (batched with others).
//! - `workflow_dag` ([`steps`]): the same with a 4-step diamond (two parallel branches and
//!   their join).
//! - `provision_tenants` ([`provision`]): `--tenants N` tenants provision a two-table module.
//! - `plan_sync` ([`plan_sync`]): a module added to a plan reaches `--subscribers N` tenants.
//! - `scale_out` ([`scale_out`]): 1, 2 and 3 `steward worker` processes drain one backlog;
//!   the rescue time of a SIGKILLed one.
//! - `job_search` ([`search`]): the operators' job search on `--jobs N` jobs.
//! - `enqueue_http` ([`http`]): jobs enqueued over `POST /api/jobs`, batched and one by one.
//! - `enqueue_sql`: jobs enqueued from SQL (`steward_enqueue_many` with arrays, PostgreSQL),
//!   `--batch` per statement, by `--callers` concurrent connections.
//! - `sustained` ([`sustained`]): `--rate` jobs/s offered for `--seconds` while one worker
//!   executes them; per `--interval-secs`: rate, pickup, backlog, table sizes, RSS.

mod breaker;
mod data;
mod flow;
mod http;
mod plan_sync;
mod provision;
mod scale_out;
mod search;
mod steps;
mod sustained;

use crate::config::Settings;
use crate::kinds::{JobKind, KindCatalog};
use crate::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use crate::store::SharedStore;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::types::NewJob;
use clap::Args;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Options of `steward bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all).
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// Jobs per throughput scenario.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Samples for the latency scenario.
    #[arg(long, default_value_t = 1_000)]
    pub samples: usize,
    /// Concurrent callers of `enqueue_batch_parallel`.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Jobs per statement in the batched enqueue scenarios.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Subscribers of the `plan_sync` scenario.
    #[arg(long, default_value_t = 100_000)]
    pub subscribers: usize,
    /// Tenants of the `provision_tenants` scenario.
    #[arg(long, default_value_t = 1_000)]
    pub tenants: usize,
    /// Rows of the `purge_export` scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Usage log rows of the `cost_aggregate` scenario.
    #[arg(long, default_value_t = 10_000_000)]
    pub usage_rows: usize,
    /// Deliveries of the `webhooks` scenario.
    #[arg(long, default_value_t = 10_000)]
    pub deliveries: usize,
    /// How long the `circuit_breaker` scenario's receiver is down, in seconds.
    #[arg(long, default_value_t = 30)]
    pub down_secs: u64,
    /// How long the `rate_limit` and `sustained` scenarios measure, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Jobs offered per second by the `sustained` scenario.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds between two reports of the `sustained` scenario.
    #[arg(long, default_value_t = 60)]
    pub interval_secs: u64,
    /// Completed jobs' retention in the `sustained` scenario (the product's default is a day:
    /// a minute shows in ten minutes the steady state a day reaches).
    #[arg(long, default_value_t = 60)]
    pub retention_secs: u64,
    /// Handler concurrency and fetch batch of the execute scenario.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
}

const SCENARIOS: [&str; 20] = [
    "enqueue_batch",
    "enqueue_batch_parallel",
    "enqueue_single",
    "execute_noop",
    "pickup_latency",
    "pickup_latency_cross",
    "workflow_steps",
    "workflow_dag",
    "provision_tenants",
    "plan_sync",
    "purge_export",
    "cost_aggregate",
    "webhooks",
    "scale_out",
    "job_search",
    "enqueue_http",
    "enqueue_sql",
    "rate_limit",
    "circuit_breaker",
    "sustained",
];

/// Run the chosen scenarios and print their results.
pub async fn run(settings: &Settings, args: &BenchArgs) -> Result<(), String> {
    // Measure what a worker pays: its metrics recorder (attempt counters and histograms) on.
    crate::api::prometheus::install();
    let chosen: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    for name in &chosen {
        if !SCENARIOS.contains(&name.as_str()) {
            return Err(format!(
                "unknown scenario `{name}`; known: {}",
                SCENARIOS.join(", ")
            ));
        }
    }
    for name in chosen {
        let fresh = FreshStore::open(&settings.database_url).await?;
        let result = match name.as_str() {
            "enqueue_batch" => enqueue_batch(&fresh.store, args.jobs, args.batch, 1).await,
            "enqueue_batch_parallel" => {
                enqueue_batch(&fresh.store, args.jobs, args.batch, args.callers).await
            }
            "enqueue_single" => enqueue_single(&fresh.store, (args.jobs / 5).max(1)).await,
            "execute_noop" => execute_noop(&fresh.store, args.jobs, args.concurrency).await,
            "pickup_latency" => pickup_latency(&fresh.store, &fresh.store, args.samples).await,
            "workflow_steps" => steps::workflow_steps(&fresh, (args.jobs / 10).max(1)).await,
            "workflow_dag" => steps::workflow_dag(&fresh, (args.jobs / 10).max(1)).await,
            "plan_sync" => plan_sync::plan_sync(&fresh, args.subscribers).await,
            "purge_export" => data::purge_export(&fresh, args.rows).await,
            "cost_aggregate" => data::cost_aggregate(&fresh, args.usage_rows).await,
            "webhooks" => data::webhooks(&fresh, args.deliveries).await,
            "scale_out" => scale_out::scale_out(&settings.database_url, args.jobs).await,
            "job_search" => search::job_search(&fresh, args.jobs).await,
            "enqueue_http" => http::enqueue_http(&fresh, args.jobs, args.batch, args.callers).await,
            "enqueue_sql" => enqueue_sql(&fresh, args.jobs, args.batch, args.callers).await,
            "circuit_breaker" => breaker::circuit_breaker(&fresh.store, args.down_secs).await,
            "sustained" => {
                let load = sustained::Load {
                    seconds: args.seconds,
                    rate: args.rate,
                    interval_secs: args.interval_secs,
                    retention_secs: args.retention_secs,
                    concurrency: args.concurrency,
                };
                sustained::sustained(&fresh, load).await
            }
            "rate_limit" => {
                flow::rate_limit(
                    &fresh,
                    &settings.database_url,
                    &settings.jobs_dir,
                    args.seconds,
                )
                .await
            }
            "provision_tenants" => {
                provision::provision_tenants(&fresh, settings, args.tenants).await
            }
            _ => match fresh.second_handle(&settings.database_url).await? {
                Some(other) => pickup_latency(&fresh.store, &other, args.samples).await,
                None => Ok(json!({"skipped": "SQLite wakes other processes by polling only"})),
            },
        };
        fresh.close().await;
        let mut line = result?;
        line["scenario"] = json!(name);
        line["backend"] = json!(fresh.backend);
        line["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{line}");
    }
    Ok(())
}

struct FreshStore {
    store: SharedStore,
    backend: &'static str,
    schema: Option<String>,
    pg: Option<PgStore>,
    sqlite: Option<SqliteStore>,
    _dir: Option<tempdir::TempDir>,
}

mod tempdir {
    /// A directory removed on drop (the bench's SQLite files).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl FreshStore {
    async fn open(url: &str) -> Result<Self, String> {
        let err = |e: crate::store::StoreError| e.to_string();
        if url.starts_with("sqlite:") {
            let dir = std::env::temp_dir().join(format!(
                "steward-bench-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let file = dir.join("bench.db");
            let store = SqliteStore::connect(&format!("sqlite://{}", file.display()))
                .await
                .map_err(err)?;
            crate::store::JobStore::migrate(&store).await.map_err(err)?;
            Ok(Self {
                store: Arc::new(store.clone()),
                backend: "sqlite",
                schema: None,
                pg: None,
                sqlite: Some(store),
                _dir: Some(tempdir::TempDir(dir)),
            })
        } else {
            let schema = format!("steward_bench_{}_{}", std::process::id(), fastrand::u32(..));
            // A pool of 40 (default 10): the bench runs its enqueuing callers (`--callers`,
            // the HTTP scenario's 16) and runtimes of up to 100 concurrent jobs side by side,
            // and measures the queue, not a wait for connections.
            let store = PgStore::connect_with(url, Some(&schema), 40)
                .await
                .map_err(err)?;
            crate::store::JobStore::migrate(&store).await.map_err(err)?;
            Ok(Self {
                store: Arc::new(store.clone()),
                backend: "postgres",
                schema: Some(schema),
                pg: Some(store),
                sqlite: None,
                _dir: None,
            })
        }
    }

    /// Refresh the planner's statistics, as autovacuum does on a live database: right after
    /// a bulk set-up the tables have none, and plans made on guesses are not what runs in
    /// production.
    async fn analyze(&self) -> Result<(), String> {
        if let Some(pg) = &self.pg {
            sqlx::query("ANALYZE steward_jobs, steward_runs, steward_run_steps")
                .execute(pg.pool())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Run set-up SQL (one or more statements) on the bench's database.
    async fn raw(&self, sql: &str) -> Result<(), String> {
        let done = match (&self.pg, &self.sqlite) {
            (Some(pg), _) => sqlx::raw_sql(sql).execute(pg.pool()).await.map(drop),
            (_, Some(sqlite)) => sqlx::raw_sql(sql).execute(sqlite.pool()).await.map(drop),
            _ => Ok(()),
        };
        done.map_err(|e| format!("bench set-up failed: {e}"))
    }

    /// A second, independent handle on the same PostgreSQL schema (`None` for SQLite).
    async fn second_handle(&self, url: &str) -> Result<Option<SharedStore>, String> {
        match &self.schema {
            Some(schema) => {
                let other = PgStore::connect_with(url, Some(schema), 2)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(Arc::new(other)))
            }
            None => Ok(None),
        }
    }

    async fn close(&self) {
        if let Some(pg) = &self.pg {
            let _ = pg.drop_schema().await;
        }
    }
}

fn job(kind: &str, queue: &str) -> NewJob {
    NewJob {
        kind: kind.into(),
        queue: queue.into(),
        tenant: String::new(),
        payload: json!({}),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        unique_key: None,
        run_at: None,
    }
}

/// Run `work` `count` times, spread over `callers` concurrent tasks (each takes the next call
/// until all are taken); the seconds it took.
pub(super) async fn spread<F, Fut>(callers: usize, count: usize, work: F) -> Result<f64, String>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers.max(1) {
        let (next, work) = (Arc::clone(&next), work.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                work().await?;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn enqueue_batch(
    store: &SharedStore,
    jobs: usize,
    batch_size: usize,
    callers: usize,
) -> Result<Value, String> {
    let batch_size = batch_size.max(1);
    let batches = jobs.div_ceil(batch_size);
    let batch: Arc<Vec<NewJob>> =
        Arc::new((0..batch_size).map(|_| job("noop", "default")).collect());
    let store = Arc::clone(store);
    let secs = spread(callers, batches, move || {
        let (store, batch) = (Arc::clone(&store), Arc::clone(&batch));
        async move {
            store
                .jobs_insert_many(&batch)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    let jobs = batches * batch_size;
    Ok(
        json!({"jobs": jobs, "batch": batch_size, "callers": callers, "jobs_per_s": (jobs as f64 / secs).round(), "seconds": secs}),
    )
}

/// Jobs enqueued from SQL, `batch` per statement (PostgreSQL only): the batch form,
/// `steward_enqueue_many` with one array per column (as a client in any language binds them),
/// the same function the Rust client calls.
async fn enqueue_sql(
    fresh: &FreshStore,
    jobs: usize,
    batch: usize,
    callers: usize,
) -> Result<Value, String> {
    let Some(pg) = &fresh.pg else {
        return Ok(json!({"skipped": "SQLite has no stored functions"}));
    };
    let batch = batch.max(1);
    let statements = jobs.div_ceil(batch);
    let pool = pg.pool().clone();
    let secs = spread(callers, statements, move || {
        let pool = pool.clone();
        async move {
            let n = batch as i32;
            sqlx::query(
                "SELECT count(*) FROM steward_enqueue_many(\
                     array_fill('noop'::text, ARRAY[$1]), array_fill('default'::text, ARRAY[$1]), \
                     array_fill(''::text, ARRAY[$1]), array_fill('{}'::jsonb, ARRAY[$1]), \
                     array_fill(0::int2, ARRAY[$1]), array_fill(20, ARRAY[$1]), \
                     array_fill(60000::int8, ARRAY[$1]), array_fill(NULL::text, ARRAY[$1]), \
                     array_fill(NULL::timestamptz, ARRAY[$1]))",
            )
            .bind(n)
            .execute(&pool)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        }
    })
    .await?;
    let jobs = statements * batch;
    Ok(
        json!({"jobs": jobs, "batch": batch, "callers": callers, "jobs_per_s": (jobs as f64 / secs).round(), "seconds": secs}),
    )
}

async fn enqueue_single(store: &SharedStore, jobs: usize) -> Result<Value, String> {
    let callers = 16;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let store = Arc::clone(store);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let one = [job("noop", "default")];
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let t = Instant::now();
                store
                    .jobs_insert_many(&one)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(&mut latencies);
    Ok(
        json!({"jobs": jobs, "callers": callers, "jobs_per_s": (jobs as f64 / secs).round(),
              "p50_ms": p50, "p99_ms": p99, "seconds": secs}),
    )
}

fn noop_kinds() -> KindCatalog {
    let mut kinds = KindCatalog::default();
    let _ = kinds.add(JobKind::new("noop", "default"));
    kinds
}

async fn execute_noop(
    store: &SharedStore,
    jobs: usize,
    concurrency: usize,
) -> Result<Value, String> {
    let batch: Vec<NewJob> = (0..1000).map(|_| job("noop", "default")).collect();
    let mut done = 0;
    while done < jobs {
        let n = (jobs - done).min(batch.len());
        store
            .jobs_insert_many(&batch[..n])
            .await
            .map_err(|e| e.to_string())?;
        done += n;
    }
    let ran = Arc::new(AtomicUsize::new(0));
    let all_ran = Arc::new(Notify::new());
    let mut registry = Registry::new();
    {
        let ran = Arc::clone(&ran);
        let all_ran = Arc::clone(&all_ran);
        registry.register("noop", move |_: Value, _| {
            let ran = Arc::clone(&ran);
            let all_ran = Arc::clone(&all_ran);
            async move {
                if ran.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                    all_ran.notify_one();
                }
                Ok(())
            }
        });
    }
    let mut config = RuntimeConfig::new(
        "bench",
        vec![QueueConfig {
            name: "default".into(),
            concurrency,
        }],
    );
    config.batch_size = concurrency;
    config.shutdown_grace = Duration::from_secs(5);
    let runtime = Runtime::new(Arc::clone(store), registry, noop_kinds(), config)
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    all_ran.notified().await;
    let handlers_done = started.elapsed().as_secs_f64();
    // Shutdown drains the completer: the time includes writing every acknowledgement.
    shutdown.cancel();
    running
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let left = store
        .jobs_count_by_state()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.state != crate::types::JobState::Completed)
        .map(|c| c.count)
        .sum::<i64>();
    if left != 0 {
        return Err(format!("execute_noop: {left} jobs not completed"));
    }
    Ok(
        json!({"jobs": jobs, "concurrency": concurrency, "jobs_per_s": (jobs as f64 / secs).round(),
              "seconds": secs, "handlers_done_s": handlers_done}),
    )
}

async fn pickup_latency(
    store: &SharedStore,
    enqueue_through: &SharedStore,
    samples: usize,
) -> Result<Value, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut registry = Registry::new();
    registry.register("noop", move |_: Value, _| {
        let _ = tx.send(Instant::now());
        async { Ok(()) }
    });
    let config = RuntimeConfig::new(
        "bench",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 10,
        }],
    );
    let runtime = Runtime::new(Arc::clone(store), registry, noop_kinds(), config)
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    // Let the producer reach its idle wait before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = [job("noop", "default")];
    let mut latencies = Vec::with_capacity(samples);
    let mut enqueue_calls = Vec::with_capacity(samples);
    let mut after_commit = Vec::with_capacity(samples);
    for _ in 0..samples {
        let sent = Instant::now();
        enqueue_through
            .jobs_insert_many(&one)
            .await
            .map_err(|e| e.to_string())?;
        let committed = Instant::now();
        let ran = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| "pickup_latency: a job was not picked up within 10 s".to_string())?
            .ok_or("handler gone")?;
        latencies.push(ran.duration_since(sent));
        enqueue_calls.push(committed.duration_since(sent));
        after_commit.push(ran.saturating_duration_since(committed));
        // Idle queue: let the completer write the ack and the producer go back to waiting,
        // so each sample starts from an idle worker (at most 200 samples a second).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (p50, p99) = percentiles(&mut latencies);
    let (enqueue_p50, enqueue_p99) = percentiles(&mut enqueue_calls);
    let (commit_p50, commit_p99) = percentiles(&mut after_commit);
    // p50_ms/p99_ms: from the start of the enqueue call to the handler starting.
    // commit_to_start_*: from the enqueue's commit (the call returning) to the handler starting.
    Ok(json!({"jobs": samples, "p50_ms": p50, "p99_ms": p99,
              "enqueue_call_p50_ms": enqueue_p50, "enqueue_call_p99_ms": enqueue_p99,
              "commit_to_start_p50_ms": commit_p50, "commit_to_start_p99_ms": commit_p99}))
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        (samples[index].as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
    };
    (at(0.50), at(0.99))
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// A memory figure of this process (`VmHWM:`, `VmRSS:`…) from `/proc/self/status`, in MB.
fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}
