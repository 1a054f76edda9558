//! [`JobAdmin`] written once, for every [`SqlStore`]: listing jobs (live and completed),
//! the operators' bulk actions, pruning and counts. The queue's hot path (insert, fetch,
//! outcomes, heartbeats, rescue, staging) stays per backend in `store/*/mod.rs`.

use crate::store::sql::{Arg, Row, Sql, SqlStore, corrupt, parse, sql};
use crate::store::{Affected, JobAdmin, KindDefaults, StoreError, StoreResult};
use crate::types::{AttemptRecord, JobFilter, JobId, JobRecord, JobState, StateCount};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

const JOB_COLUMNS: &str = "id, kind, queue, tenant, payload, state, \
     CAST(priority AS INTEGER) AS priority, attempt, \
     max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
     finished_at, errors";

fn job_from(row: &dyn Row) -> StoreResult<JobRecord> {
    let state: JobState = parse(row, "state")?;
    let mut attempts: Vec<AttemptRecord> =
        serde_json::from_value(row.json("errors")?).map_err(corrupt)?;
    let attempt = row.int32("attempt")?;
    let attempted_at = row.opt_time("attempted_at")?;
    let leased_by = row.opt_text("leased_by")?;
    let finished_at = row.opt_time("finished_at")?;
    if state == JobState::Completed {
        attempts.push(AttemptRecord {
            attempt,
            worker: leased_by.clone(),
            started_at: attempted_at,
            finished_at,
            error: None,
        });
    }
    Ok(JobRecord {
        id: row.int("id")?,
        kind: row.text("kind")?,
        queue: row.text("queue")?,
        tenant: row.text("tenant")?,
        payload: row.json("payload")?,
        state,
        priority: i16::try_from(row.int32("priority")?).map_err(corrupt)?,
        attempt,
        max_attempts: row.int32("max_attempts")?,
        timeout_ms: row.int("timeout_ms")?,
        unique_key: row.opt_text("unique_key")?,
        run_at: row.time("run_at")?,
        created_at: row.time("created_at")?,
        attempted_at,
        leased_by,
        finished_at,
        attempts,
    })
}

/// `AND …` conditions for a filter, binding its values after `args` (the hot table and the
/// completed table share columns, so one text serves both).
fn filter_conditions(filter: &JobFilter, args: &mut Vec<Arg>) -> String {
    let mut text = String::new();
    let mut push = |condition: &str, arg: Arg| {
        args.push(arg);
        text.push_str(&condition.replace('?', &format!("${}", args.len())));
    };
    if !filter.ids.is_empty() {
        push(" AND id = ANY(?)", Arg::from(&filter.ids));
    }
    if let Some(queue) = &filter.queue {
        push(" AND queue = ?", Arg::from(queue));
    }
    if let Some(kind) = &filter.kind {
        push(" AND kind = ?", Arg::from(kind));
    }
    if let Some(tenant) = &filter.tenant {
        push(" AND tenant = ?", Arg::from(tenant));
    }
    if let Some(after) = filter.after_id {
        push(" AND id > ?", Arg::from(after));
    }
    if let Some(before) = filter.before_id {
        push(" AND id < ?", Arg::from(before));
    }
    if let Some(since) = filter.since {
        push(" AND created_at >= ?", Arg::from(since));
    }
    if let Some(until) = filter.until {
        push(" AND created_at < ?", Arg::from(until));
    }
    if let Some(needle) = filter.text.as_deref().filter(|t| !t.is_empty()) {
        // A literal substring: LIKE's wildcards in it are escaped.
        let pattern = format!(
            "%{}%",
            needle
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        push(
            " AND (lower(CAST(payload AS TEXT)) LIKE ? ESCAPE '\\' \
             OR lower(CAST(errors AS TEXT)) LIKE ? ESCAPE '\\')",
            Arg::from(pattern),
        );
    }
    text
}

/// The SELECTs (of `live` columns from the live table, of `completed` ones from the completed
/// table) that a filter's state reads, each with the filter's conditions, their values bound
/// into `args`.
fn table_selects(
    filter: &JobFilter,
    live: &str,
    completed: &str,
    args: &mut Vec<Arg>,
) -> Vec<String> {
    let mut parts = Vec::new();
    if filter.state != Some(JobState::Completed) {
        let mut part = format!("SELECT {live} FROM steward_jobs WHERE true");
        if let Some(state) = filter.state {
            args.push(Arg::from(state.as_str()));
            part.push_str(" AND state = $1");
        }
        parts.push(part);
    }
    let conditions = filter_conditions(filter, args);
    if matches!(filter.state, None | Some(JobState::Completed)) {
        parts.push(format!(
            "SELECT {completed} FROM steward_jobs_completed WHERE true"
        ));
    }
    parts
        .into_iter()
        .map(|part| format!("{part}{conditions}"))
        .collect()
}

/// A bulk action on the live jobs a filter (and the action's own condition) selects.
fn bulk(action: impl Into<String>, filter: &JobFilter, with_state: bool) -> Sql {
    let mut args = Vec::new();
    let mut text = action.into();
    if let (true, Some(state)) = (with_state, filter.state) {
        args.push(Arg::from(state.as_str()));
        text.push_str(" AND state = $1");
    }
    text.push_str(&filter_conditions(filter, &mut args));
    Sql {
        text: text.into(),
        args,
    }
}

#[async_trait]
impl<S: SqlStore> JobAdmin for S {
    async fn schema_version(&self) -> StoreResult<i64> {
        let mut conn = self.read().await?;
        // (A database never migrated has no table of migrations.)
        if super::data::table_columns(&mut *conn, "_sqlx_migrations")
            .await?
            .is_empty()
        {
            return Ok(0);
        }
        let applied = "SELECT CAST(coalesce(max(version), 0) AS BIGINT) AS version \
                       FROM _sqlx_migrations WHERE success";
        conn.fetch_one(sql!(applied)).await?.int("version")
    }

    async fn tables_vacuum(&self, min_dead: u64) -> StoreResult<u64> {
        SqlStore::tables_vacuum(self, min_dead).await
    }

    async fn jobs_prune(
        &self,
        completed_before: DateTime<Utc>,
        dead_before: DateTime<Utc>,
    ) -> StoreResult<u64> {
        // Maintenance: on the bookkeeping connections, never behind handlers' work.
        let mut tx = self.write_service().await?;
        let completed = tx
            .execute(sql!(
                "DELETE FROM steward_jobs_completed WHERE id {in_keys}\
                 (SELECT id FROM steward_jobs_completed WHERE finished_at < $1 LIMIT 10000 \
                  {skip_locked}){end_keys}",
                completed_before
            ))
            .await?;
        let dead = tx
            .execute(sql!(
                "DELETE FROM steward_jobs WHERE id {in_keys}(SELECT id FROM steward_jobs \
                 WHERE state IN ('dead', 'cancelled') AND finished_at < $1 LIMIT 10000 \
                 {skip_locked}){end_keys}",
                dead_before
            ))
            .await?;
        tx.commit().await?;
        Ok(completed + dead)
    }

    async fn kinds_publish(&self, kinds: &[KindDefaults]) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let mut changed = 0;
        for kind in kinds {
            changed += tx
                .execute(sql!(
                    "INSERT INTO steward_kinds (kind, queue, priority, max_attempts, timeout_ms, \
                         updated_at) VALUES ($1, $2, $3, $4, $5, {now}) \
                     ON CONFLICT (kind) DO UPDATE SET queue = excluded.queue, \
                         priority = excluded.priority, max_attempts = excluded.max_attempts, \
                         timeout_ms = excluded.timeout_ms, updated_at = excluded.updated_at \
                     WHERE steward_kinds.queue <> excluded.queue \
                        OR steward_kinds.priority <> excluded.priority \
                        OR steward_kinds.max_attempts <> excluded.max_attempts \
                        OR steward_kinds.timeout_ms <> excluded.timeout_ms",
                    &kind.kind,
                    &kind.queue,
                    i32::from(kind.priority),
                    kind.max_attempts,
                    kind.timeout_ms
                ))
                .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn job_get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let filter = JobFilter {
            ids: vec![id],
            ..JobFilter::default()
        };
        Ok(self.jobs_list(&filter).await?.into_iter().next())
    }

    async fn jobs_list(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        let mut args = Vec::new();
        let parts = table_selects(
            filter,
            JOB_COLUMNS,
            "id, kind, queue, tenant, payload, 'completed' AS state, \
                 CAST(priority AS INTEGER) AS priority, attempt, max_attempts, timeout_ms, \
                 unique_key, run_at, created_at, attempted_at, leased_by, finished_at, errors",
            &mut args,
        );
        args.push(Arg::from(filter.limit.unwrap_or(100).clamp(1, 10_000)));
        // Newest first reads downwards from `before_id`; a page towards newer jobs
        // (`after_id`) reads upwards and is turned round. Each table is read in id order up
        // to the page's size on its own (its primary key walked, stopping early), then the
        // two are merged: a page of a million jobs reads a page of rows, not the table.
        let upwards = !filter.newest_first || filter.after_id.is_some();
        let order = if upwards { "ASC" } else { "DESC" };
        let limit = args.len();
        let union = parts
            .iter()
            .map(|part| {
                format!("SELECT * FROM ({part} ORDER BY id {order} LIMIT ${limit}) AS part")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let text = format!("SELECT * FROM ({union}) AS jobs ORDER BY id {order} LIMIT ${limit}");
        let mut jobs = self
            .read()
            .await?
            .fetch_all(Sql {
                text: text.into(),
                args,
            })
            .await?
            .iter()
            .map(|row| job_from(&**row))
            .collect::<StoreResult<Vec<_>>>()?;
        if filter.newest_first && upwards {
            jobs.reverse();
        }
        Ok(jobs)
    }

    async fn jobs_count(&self, filter: &JobFilter, cap: i64) -> StoreResult<i64> {
        let filter = &JobFilter {
            after_id: None,
            before_id: None,
            ..filter.clone()
        };
        let mut args = Vec::new();
        let union = table_selects(filter, "id", "id", &mut args).join(" UNION ALL ");
        args.push(Arg::from(cap.max(0)));
        let text = format!(
            "SELECT count(*) AS n FROM (SELECT id FROM ({union}) AS jobs LIMIT ${}) AS capped",
            args.len()
        );
        self.read()
            .await?
            .fetch_one(Sql {
                text: text.into(),
                args,
            })
            .await?
            .int("n")
    }

    async fn jobs_retry(&self, filter: &JobFilter) -> StoreResult<Affected> {
        let mut tx = self.write().await?;
        let greatest = tx.dialect().pick("greatest", "max");
        let mut sql = bulk(
            format!(
                "UPDATE steward_jobs SET state = 'available', run_at = {{now}}, finished_at = NULL, \
                     max_attempts = {greatest}(max_attempts, attempt + 1) \
                 WHERE state IN ('dead', 'cancelled', 'retryable', 'scheduled')"
            ),
            filter,
            true,
        );
        sql.text.to_mut().push_str(" RETURNING queue");
        let rows = match tx.fetch_all(sql).await {
            Ok(rows) => rows,
            Err(err) if err.is_unique_violation() => {
                return Err(StoreError::Conflict(
                    "a live job already holds this job's unique key".into(),
                ));
            }
            Err(err) => return Err(err),
        };
        let queues = rows
            .iter()
            .map(|row| row.text("queue"))
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await?;
        let count = queues.len() as u64;
        self.queues_woken(queues).await?;
        Ok(Affected { count })
    }

    async fn jobs_cancel(&self, filter: &JobFilter) -> StoreResult<Affected> {
        let mut tx = self.write().await?;
        let attempt = tx.dialect().pick(
            "errors || jsonb_build_array(jsonb_build_object('attempt', attempt, \
                 'worker', leased_by, 'started_at', attempted_at, 'finished_at', now(), \
                 'error', 'cancelled by an operator while running'))",
            "json_insert(errors, '$[#]', json_object('attempt', attempt, 'worker', leased_by, \
                 'started_at', strftime('%Y-%m-%dT%H:%M:%fZ', attempted_at / 1000.0, 'unixepoch'), \
                 'finished_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 'error', 'cancelled by an operator while running'))",
        );
        let sql = bulk(
            format!(
                "UPDATE steward_jobs SET state = 'cancelled', finished_at = {{now}}, \
                     errors = CASE WHEN state = 'running' THEN {attempt} ELSE errors END, \
                     leased_by = NULL, lease_expires_at = NULL \
                 WHERE state IN ('scheduled', 'available', 'running', 'retryable')"
            ),
            filter,
            true,
        );
        let count = tx.execute(sql).await?;
        tx.commit().await?;
        Ok(Affected { count })
    }

    async fn jobs_discard(&self, filter: &JobFilter) -> StoreResult<Affected> {
        let mut tx = self.write().await?;
        let sql = bulk(
            "UPDATE steward_jobs SET state = 'cancelled', finished_at = {now} WHERE state = 'dead'",
            filter,
            false,
        );
        let count = tx.execute(sql).await?;
        tx.commit().await?;
        Ok(Affected { count })
    }

    async fn jobs_count_by_state(&self) -> StoreResult<Vec<StateCount>> {
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT queue, state, count(*) AS n FROM steward_jobs GROUP BY queue, state \
                 UNION ALL SELECT queue, 'completed', count(*) FROM steward_jobs_completed \
                 GROUP BY queue ORDER BY 1, 2"
            ))
            .await?
            .iter()
            .map(|row| {
                Ok(StateCount {
                    queue: row.text("queue")?,
                    state: parse(&**row, "state")?,
                    count: row.int("n")?,
                })
            })
            .collect()
    }

    async fn runtime_gauges(&self) -> StoreResult<crate::types::RuntimeGauges> {
        let mut conn = self.read().await?;
        let age = conn.dialect().pick(
            "CAST(EXTRACT(EPOCH FROM now() - min(run_at)) * 1000 AS BIGINT)",
            "CAST(unixepoch('subsec') * 1000 AS INTEGER) - min(run_at)",
        );
        let pairs = |rows: Vec<crate::store::sql::AnyRow>, key: &str, value: &str| {
            rows.iter()
                .map(|r| Ok((r.text(key)?, r.int(value)?.max(0))))
                .collect::<StoreResult<Vec<_>>>()
        };
        let oldest = conn
            .fetch_all(sql!(format!(
                "SELECT queue, {age} AS ms FROM steward_jobs WHERE state = 'available' \
                 GROUP BY queue ORDER BY queue"
            )))
            .await?;
        let running = conn
            .fetch_all(sql!(
                "SELECT leased_by, count(*) AS n FROM steward_jobs \
                 WHERE state = 'running' AND leased_by IS NOT NULL \
                 GROUP BY leased_by ORDER BY leased_by"
            ))
            .await?;
        let leaders = conn
            .fetch_all(sql!(
                "SELECT name, holder FROM steward_leaders WHERE expires_at > {now} ORDER BY name"
            ))
            .await?
            .iter()
            .map(|r| Ok((r.text("name")?, r.text("holder")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(crate::types::RuntimeGauges {
            oldest_available_ms: pairs(oldest, "queue", "ms")?,
            running_by_worker: pairs(running, "leased_by", "n")?,
            leaders,
        })
    }

    async fn jobs_per_minute(
        &self,
        queue: Option<&str>,
        minutes: i64,
    ) -> StoreResult<Vec<crate::types::MinuteCount>> {
        let mut conn = self.read().await?;
        let minute_of = conn
            .dialect()
            .pick("date_trunc('minute', {t})", "{t} / 60000 * 60000");
        let since = "{now} - $1";
        let of_queue = if queue.is_some() {
            " AND queue = $2"
        } else {
            ""
        };
        let failed_at = "coalesce(finished_at, attempted_at)";
        let text = format!(
            "SELECT minute, CAST(sum(c) AS BIGINT) AS completed, CAST(sum(f) AS BIGINT) AS failed \
             FROM (SELECT {done} AS minute, count(*) AS c, 0 AS f FROM steward_jobs_completed \
                   WHERE finished_at > {since}{of_queue} GROUP BY 1 \
                   UNION ALL \
                   SELECT {fail} AS minute, 0 AS c, count(*) AS f FROM steward_jobs \
                   WHERE state IN ('retryable', 'dead') AND {failed_at} > {since}{of_queue} \
                   GROUP BY 1) per_minute \
             GROUP BY minute ORDER BY minute",
            done = minute_of.replace("{t}", "finished_at"),
            fail = minute_of.replace("{t}", failed_at),
        );
        let minutes = minutes.clamp(1, 24 * 60).unsigned_abs();
        let mut statement = sql!(text, std::time::Duration::from_secs(minutes * 60));
        if let Some(queue) = queue {
            statement = statement.arg(queue);
        }
        conn.fetch_all(statement)
            .await?
            .iter()
            .map(|row| {
                Ok(crate::types::MinuteCount {
                    minute: row.time("minute")?,
                    completed: row.int("completed")?,
                    failed: row.int("failed")?,
                })
            })
            .collect()
    }

    async fn ledger_append(
        &self,
        job_id: JobId,
        worker: &str,
        started_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        tx.execute(sql!(
            "INSERT INTO steward_ledger (job_id, worker, at) VALUES ($1, $2, $3)",
            job_id,
            worker,
            started_at
        ))
        .await?;
        tx.commit().await
    }

    async fn ledger_entries(&self) -> StoreResult<Vec<(JobId, String)>> {
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT job_id, worker FROM steward_ledger ORDER BY seq"
            ))
            .await?
            .iter()
            .map(|row| Ok((row.int("job_id")?, row.text("worker")?)))
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read().await?.execute(sql!("SELECT 1")).await?;
        Ok(())
    }

    async fn leader_elect(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<bool> {
        let mut tx = self.write_service().await?;
        let led = tx
            .fetch_optional(sql!(
                "INSERT INTO steward_leaders (name, holder, expires_at) VALUES ($1, $2, {now} + $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                     expires_at = EXCLUDED.expires_at \
                 WHERE steward_leaders.holder = EXCLUDED.holder \
                    OR steward_leaders.expires_at < {now} \
                 RETURNING holder",
                name,
                holder,
                ttl
            ))
            .await?
            .is_some();
        tx.commit().await?;
        Ok(led)
    }

    async fn leader_resign(&self, name: &str, holder: &str) -> StoreResult<()> {
        let mut tx = self.write_service().await?;
        tx.execute(sql!(
            "DELETE FROM steward_leaders WHERE name = $1 AND holder = $2",
            name,
            holder
        ))
        .await?;
        tx.commit().await
    }
}
