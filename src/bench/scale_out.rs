//! `scale_out`: 1, 2 and 3 `steward worker` processes (this binary, default settings, queue
//! `default` at the default concurrency of 100) share one PostgreSQL schema.
//!
//! For each count it reports the rate at which they drain a backlog of no-op jobs (bound by
//! the database) and of 20 ms `sleep` jobs (bound by the handlers' concurrency), timed by the
//! database's own clock (first fetch to last acknowledgement, so process start-up is left
//! out). With two or three processes it then SIGKILLs the one holding the most running jobs and
//! reports how long until the survivors run every one of them again: the rescue time, bound by
//! the lease (`STEWARD_LEASE_MS`, 10 s by default) and, when the victim led, by the election.

use super::{FreshStore, job};
use crate::types::NewJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Jobs each process holds when one is killed (well under its concurrency, so the survivors
/// have room for the victim's jobs).
const HELD_PER_PROCESS: usize = 50;

/// Run the scenario on PostgreSQL (`url`), `jobs` no-op jobs per count.
pub(super) async fn scale_out(url: &str, jobs: usize) -> Result<Value, String> {
    if url.starts_with("sqlite:") {
        return Ok(
            json!({"skipped": "several worker processes share PostgreSQL; SQLite is for one machine"}),
        );
    }
    let mut results = Vec::new();
    for processes in 1..=3 {
        let fresh = FreshStore::open(url).await?;
        let noop = drain(&fresh, url, processes, jobs, "noop", json!({})).await;
        let sleep = drain(&fresh, url, processes, jobs / 5, "sleep", json!({"ms": 20})).await;
        fresh.close().await;
        let rescue = if processes > 1 {
            let fresh = FreshStore::open(url).await?;
            let rescue = rescue_after_kill(&fresh, url, processes).await;
            fresh.close().await;
            rescue?
        } else {
            Value::Null
        };
        results.push(json!({
            "processes": processes,
            "noop_jobs_per_s": noop?,
            "sleep_20ms_jobs_per_s": sleep?,
            "rescue": rescue,
        }));
    }
    Ok(json!({"jobs": jobs, "concurrency_per_process": 100, "runs": results}))
}

/// `processes` workers drain `count` jobs of `kind`: jobs per second by the database's clock.
async fn drain(
    fresh: &FreshStore,
    url: &str,
    processes: usize,
    count: usize,
    kind: &str,
    payload: Value,
) -> Result<f64, String> {
    let pool = pool(fresh)?;
    let workers = Workers::start(fresh, url, processes, &format!("{kind}-")).await?;
    let template = NewJob {
        payload,
        ..job(kind, "default")
    };
    enqueue_copies(fresh, template, count).await?;
    wait_until(Duration::from_secs(600), || async move {
        let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM steward_jobs_completed")
            .fetch_one(pool)
            .await?;
        Ok(completed as usize >= count)
    })
    .await
    .map_err(|e| format!("scale_out {kind} with {processes} process(es): {e}"))?;
    drop(workers);
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(attempted_at))::float8 \
         FROM steward_jobs_completed",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("TRUNCATE steward_jobs_completed")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok((count as f64 / secs.max(1e-6)).round())
}

/// Enqueue `count` copies of `template`, 1,000 a statement.
pub(super) async fn enqueue_copies(
    fresh: &FreshStore,
    template: NewJob,
    count: usize,
) -> Result<(), String> {
    let batch = vec![template; 1000];
    let mut enqueued = 0;
    while enqueued < count {
        let n = (count - enqueued).min(batch.len());
        fresh
            .store
            .jobs_insert_many(&batch[..n])
            .await
            .map_err(|e| e.to_string())?;
        enqueued += n;
    }
    Ok(())
}

/// Kill the process holding the most running jobs; time until the others run all of them.
async fn rescue_after_kill(
    fresh: &FreshStore,
    url: &str,
    processes: usize,
) -> Result<Value, String> {
    let pool = pool(fresh)?;
    let mut workers = Workers::start(fresh, url, processes, "rescue-").await?;
    let held = HELD_PER_PROCESS * processes;
    let long = NewJob {
        payload: json!({"ms": 120_000}),
        timeout_ms: 300_000,
        ..job("sleep", "default")
    };
    fresh
        .store
        .jobs_insert_many(&vec![long; held])
        .await
        .map_err(|e| e.to_string())?;
    wait_until(Duration::from_secs(60), || async move {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM steward_jobs WHERE state = 'running'")
                .fetch_one(pool)
                .await?;
        Ok(running as usize == held)
    })
    .await?;
    let (victim, victim_jobs): (String, i64) = sqlx::query_as(
        "SELECT leased_by, count(*) FROM steward_jobs WHERE state = 'running' \
         GROUP BY leased_by ORDER BY count(*) DESC, leased_by LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let leader: Option<String> = sqlx::query_scalar("SELECT holder FROM steward_leaders")
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
    workers.kill(&victim)?;
    let killed_at = Instant::now();
    let victim_id = victim.as_str();
    wait_until(Duration::from_secs(120), || async move {
        let rescued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM steward_jobs WHERE state = 'running' AND leased_by <> $1",
        )
        .bind(victim_id)
        .fetch_one(pool)
        .await?;
        Ok(rescued as usize == held)
    })
    .await
    .map_err(|e| format!("the killed node's jobs were not rescued: {e}"))?;
    Ok(json!({
        "victim_jobs": victim_jobs,
        "victim_was_leader": leader.as_deref() == Some(victim.as_str()),
        "seconds": killed_at.elapsed().as_secs_f64(),
    }))
}

pub(super) fn pool(fresh: &FreshStore) -> Result<&PgPool, String> {
    fresh
        .pg
        .as_ref()
        .map(|pg| pg.pool())
        .ok_or_else(|| "scale_out needs PostgreSQL".to_string())
}

/// Poll `done` every 50 ms until it holds, or fail after `limit`.
pub(super) async fn wait_until<F, Fut>(limit: Duration, done: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not done within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Worker processes, SIGKILLed when dropped.
pub(super) struct Workers {
    children: Vec<(String, Child)>,
}

impl Workers {
    /// Start `count` `steward worker` processes on the bench's schema and wait until each
    /// has connected (its `application_name` shows in `pg_stat_activity`).
    pub(super) async fn start(
        fresh: &FreshStore,
        url: &str,
        count: usize,
        prefix: &str,
    ) -> Result<Self, String> {
        Self::start_with(fresh, url, count, prefix, &[]).await
    }

    /// [`Workers::start`] with more environment (e.g. another `STEWARD_JOBS_DIR`).
    pub(super) async fn start_with(
        fresh: &FreshStore,
        url: &str,
        count: usize,
        prefix: &str,
        env: &[(&str, String)],
    ) -> Result<Self, String> {
        let schema = fresh
            .schema
            .as_deref()
            .ok_or("scale_out needs PostgreSQL")?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let separator = if url.contains('?') { '&' } else { '?' };
        let mut workers = Self {
            children: Vec::new(),
        };
        for i in 0..count {
            let name = format!("{schema}-{prefix}{i}");
            let child = Command::new(&exe)
                .args(["worker", "--queue", "default=100"])
                .env(
                    "DATABASE_URL",
                    format!(
                        "{url}{separator}options=-c%20search_path%3D{schema}&application_name={name}"
                    ),
                )
                .env("STEWARD_WORKER_ID", &name)
                .envs(env.iter().map(|(k, v)| (*k, v)))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
            workers.children.push((name, child));
        }
        let names: Vec<String> = workers.children.iter().map(|(n, _)| n.clone()).collect();
        let pool = pool(fresh)?;
        let names = &names;
        wait_until(Duration::from_secs(60), || async move {
            let connected: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
                 WHERE application_name = ANY($1)",
            )
            .bind(names)
            .fetch_one(pool)
            .await?;
            Ok(connected as usize == names.len())
        })
        .await
        .map_err(|e| format!("worker processes did not connect: {e}"))?;
        Ok(workers)
    }

    fn kill(&mut self, name: &str) -> Result<(), String> {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no worker process named {name}"))?;
        child.kill().map_err(|e| e.to_string())?;
        child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
