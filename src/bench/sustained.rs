//! `sustained`: a steady offered load for `--seconds` (600 for the recorded run): jobs are
//! enqueued at `--rate` per second in small batches while one worker process executes them,
//! with the maintenance services (rescuer, stager, pruner) at their defaults except the
//! completed jobs' retention (`--retention-secs`, default 60 s: the steady state a day-long
//! run reaches with the default day, in minutes). Every `--interval-secs` it reports the
//! interval's execute rate, the pickup latency (enqueue call to handler start) p50/p99, the
//! backlog, table and index sizes, dead tuples (PostgreSQL) and the process's RSS, so that a
//! table or index that grows without bound shows.

use super::{FreshStore, noop_kinds};
use crate::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use crate::types::NewJob;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// What the scenario is asked to do.
pub(super) struct Load {
    pub seconds: u64,
    pub rate: u64,
    pub interval_secs: u64,
    pub retention_secs: u64,
    pub concurrency: usize,
}

/// A job's payload: when its enqueue call started (microseconds since the epoch).
#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// What the handlers saw since the last report.
#[derive(Default)]
struct Seen {
    pickups_us: Mutex<Vec<u64>>,
    executed: AtomicU64,
}

pub(super) async fn sustained(fresh: &FreshStore, load: Load) -> Result<Value, String> {
    let store = &fresh.store;
    let seen = Arc::new(Seen::default());
    let mut registry = Registry::new();
    {
        let seen = Arc::clone(&seen);
        registry.register("noop", move |stamp: Stamp, _| {
            let pickup = now_micros().saturating_sub(stamp.t);
            seen.executed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut pickups) = seen.pickups_us.lock() {
                pickups.push(pickup);
            }
            async { Ok(()) }
        });
    }
    let mut config = RuntimeConfig::new(
        "bench",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: load.concurrency,
        }],
    );
    config.batch_size = load.concurrency;
    config.maintenance.completed_retention = Duration::from_secs(load.retention_secs);
    let runtime = Runtime::new(Arc::clone(store), registry, noop_kinds(), config)
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    let enqueued = Arc::new(AtomicU64::new(0));
    let offering = tokio::spawn(offer(
        Arc::clone(store),
        load.rate,
        Arc::clone(&enqueued),
        shutdown.clone(),
    ));
    let started = Instant::now();
    let mut intervals = Vec::new();
    let interval = Duration::from_secs(load.interval_secs.max(1));
    let mut next = started + interval;
    let mut executed_total = 0;
    while started.elapsed() < Duration::from_secs(load.seconds) {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let executed = seen.executed.swap(0, Ordering::Relaxed);
        executed_total += executed;
        let offered = enqueued.load(Ordering::Relaxed);
        let pickups = seen
            .pickups_us
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let mut pickups: Vec<Duration> = pickups.into_iter().map(Duration::from_micros).collect();
        let (p50, p99) = super::percentiles(&mut pickups);
        let mut row = json!({
            "at_s": started.elapsed().as_secs(),
            "jobs_per_s": (executed as f64 / interval.as_secs_f64()).round(),
            "pickup_p50_ms": p50, "pickup_p99_ms": p99,
            "enqueued": offered, "backlog": offered.saturating_sub(executed_total),
            "rss_mb": rss_mb(),
        });
        if let (Value::Object(sizes), Some(row)) = (sizes(fresh).await?, row.as_object_mut()) {
            row.extend(sizes);
        }
        tracing::info!(%row, "sustained");
        intervals.push(row);
    }
    shutdown.cancel();
    offering.await.map_err(|e| e.to_string())??;
    running
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({"seconds": load.seconds, "offered_per_s": load.rate,
              "retention_secs": load.retention_secs, "intervals": intervals}))
}

/// Enqueue `rate` jobs per second, every 10 ms what is due, until `stop`.
async fn offer(
    store: crate::store::SharedStore,
    rate: u64,
    enqueued: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<(), String> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let n = (due - sent).min(1_000);
            let stamp = json!({"t": now_micros()});
            let batch: Vec<NewJob> = (0..n)
                .map(|_| {
                    let mut job = super::job("noop", "default");
                    job.payload = stamp.clone();
                    job
                })
                .collect();
            store
                .jobs_insert_many(&batch)
                .await
                .map_err(|e| e.to_string())?;
            sent += n;
            enqueued.store(sent, Ordering::Relaxed);
        }
    }
}

/// Table and index sizes (bytes) and dead tuples of the queue's tables (PostgreSQL), or the
/// database file's pages (SQLite).
async fn sizes(fresh: &FreshStore) -> Result<Value, String> {
    let err = |e: sqlx::Error| e.to_string();
    if let Some(pg) = &fresh.pg {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.relname::text, pg_relation_size(c.oid), pg_indexes_size(c.oid), \
                    coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0) \
             FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE c.relname IN ('steward_jobs', 'steward_jobs_completed') \
               AND c.relnamespace = to_regnamespace(current_schema())",
        )
        .fetch_all(pg.pool())
        .await
        .map_err(err)?;
        let mut out = serde_json::Map::new();
        for (table, heap, indexes, dead, live) in rows {
            let short = table.trim_start_matches("steward_");
            out.insert(format!("{short}_heap_mb"), json!(mb(heap)));
            out.insert(format!("{short}_indexes_mb"), json!(mb(indexes)));
            out.insert(format!("{short}_dead"), json!(dead));
            out.insert(format!("{short}_live"), json!(live));
        }
        return Ok(Value::Object(out));
    }
    if let Some(sqlite) = &fresh.sqlite {
        let (pages, free, page_size): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT page_count FROM pragma_page_count()), \
                    (SELECT freelist_count FROM pragma_freelist_count()), \
                    (SELECT page_size FROM pragma_page_size())",
        )
        .fetch_one(sqlite.pool())
        .await
        .map_err(err)?;
        return Ok(json!({"file_mb": mb(pages * page_size), "free_mb": mb(free * page_size)}));
    }
    Ok(json!({}))
}

fn mb(bytes: i64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0
}

/// The process's resident memory now, in MB.
fn rss_mb() -> Option<f64> {
    super::status_mb("VmRSS:")
}
