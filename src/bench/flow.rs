//! `rate_limit`: three `steward worker` processes (this binary, default settings) share one
//! rate limit of 100 `noop` starts a second (declared in a copy of `jobs/` whose `noop` kind
//! has `[rate_limit] limit = 100`), with more jobs waiting than the window can start. Over
//! `seconds` from the first start it reports the starts recorded (the attempts' start times,
//! by the database's clock), the most in any one-second window, and the attempts used.

use super::FreshStore;
use super::scale_out::{Workers, enqueue_copies, pool, wait_until};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const LIMIT: usize = 100;

/// Run the scenario on PostgreSQL (`url`) for `seconds`, with the kinds of `jobs_dir`.
pub(super) async fn rate_limit(
    fresh: &FreshStore,
    url: &str,
    jobs_dir: &Path,
    seconds: u64,
) -> Result<Value, String> {
    if url.starts_with("sqlite:") {
        return Ok(
            json!({"skipped": "several worker processes share PostgreSQL (the test command runs the short SQLite version)"}),
        );
    }
    let dir = super::tempdir::TempDir(std::env::temp_dir().join(format!(
        "steward-bench-jobs-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    )));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(jobs_dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.0.join(name)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(
        dir.0.join("noop.toml"),
        format!(
            "kind = \"noop\"\nqueue = \"default\"\n[rate_limit]\nlimit = {LIMIT}\nperiod_secs = 1\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let env = [("STEWARD_JOBS_DIR", dir.0.display().to_string())];
    let workers = Workers::start_with(fresh, url, 3, "rate-", &env).await?;
    // More than the window can start, so the limit, not the supply, sets the pace.
    let total = LIMIT * seconds as usize * 11 / 10 + LIMIT;
    enqueue_copies(fresh, super::job("noop", "default"), total).await?;
    let pool = pool(fresh)?;
    let started = |pool| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM steward_jobs_completed")
            .fetch_one(pool)
            .await?;
        Ok(n > 0)
    };
    wait_until(Duration::from_secs(60), || started(pool)).await?;
    tokio::time::sleep(Duration::from_secs(seconds + 2)).await;
    drop(workers);
    let starts: Vec<f64> = sqlx::query_scalar(
        "WITH s AS (SELECT attempted_at FROM steward_jobs_completed \
                    UNION ALL SELECT attempted_at FROM steward_jobs WHERE attempted_at IS NOT NULL), \
              first AS (SELECT min(attempted_at) AS t FROM s) \
         SELECT extract(epoch FROM s.attempted_at - first.t)::float8 FROM s, first \
         WHERE s.attempted_at < first.t + $1 * interval '1 second' ORDER BY 1",
    )
    .bind(seconds as f64)
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let most_in_one_second = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|&&t| t < starts[i] + 1.0)
                .count()
        })
        .max()
        .unwrap_or(0);
    let extra_attempts: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(attempt - 1), 0)::int8 FROM steward_jobs_completed",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let expected = LIMIT * seconds as usize;
    Ok(json!({
        "limit_per_s": LIMIT,
        "processes": 3,
        "seconds": seconds,
        "starts": starts.len(),
        "expected": expected,
        "starts_vs_expected": (starts.len() as f64 / expected as f64 * 1000.0).round() / 1000.0,
        "most_starts_in_any_1s_window": most_in_one_second,
        "attempts_beyond_the_first": extra_attempts,
    }))
}
