//! SQLite implementation of [`RunStore`] and its step transaction, mirroring
//! `postgres/runs.rs`. A step transaction holds the store's writer lock: SQLite has one
//! writer, and the step's own writes, its completion and the next job commit together.

use crate::store::domain::{MigrationReport, StatusChange, TenantModuleRecord};
use crate::store::runs::{
    CompletionOutcome, DeadStep, NextStep, RunCancel, RunId, RunRecord, RunStart, RunState,
    RunStore, StepCompletion, StepRecord, StepState, StepTx,
};
use crate::store::sqlite::{SqliteStore, from_ms, from_opt_ms, insert_on_with_queues, now_ms};
use crate::store::{StoreError, StoreResult};
use crate::types::{JobId, Lease, NewJob};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, Sqlite, Transaction};
use std::str::FromStr;
use tokio::sync::OwnedMutexGuard;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json_column(row: &SqliteRow, name: &str) -> StoreResult<Option<Value>> {
    let text: Option<String> = row.try_get(name)?;
    text.map(|t| serde_json::from_str(&t).map_err(corrupt))
        .transpose()
}

async fn queue_step(
    conn: &mut SqliteConnection,
    run_id: RunId,
    next: &NextStep,
    state: StepState,
    woken: &mut Vec<String>,
) -> StoreResult<()> {
    let mut job = next.job.clone();
    job.payload["run_id"] = Value::from(run_id);
    let (enqueued, queues) = insert_on_with_queues(conn, std::slice::from_ref(&job)).await?;
    woken.extend(queues);
    let job_id = enqueued
        .first()
        .map(|e| e.id)
        .ok_or_else(|| corrupt("step job not inserted"))?;
    let now = now_ms();
    sqlx::query(
        "UPDATE steward_run_steps SET state = ?3, job_id = ?4, error = NULL, \
         started_at = CASE WHEN ?3 = 'queued' THEN ?5 ELSE started_at END \
         WHERE run_id = ?1 AND idx = ?2",
    )
    .bind(run_id)
    .bind(next.idx)
    .bind(state.as_str())
    .bind(job_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE steward_runs SET current_step = ?2, updated_at = ?3 WHERE id = ?1")
        .bind(run_id)
        .bind(next.idx)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn step_from_row(row: &SqliteRow) -> StoreResult<StepRecord> {
    let state: String = row.try_get("state")?;
    Ok(StepRecord {
        idx: row.try_get("idx")?,
        name: row.try_get("name")?,
        state: StepState::from_str(&state).map_err(corrupt)?,
        output: json_column(row, "output")?,
        progress: json_column(row, "progress")?,
        job_id: row.try_get("job_id")?,
        error: row.try_get("error")?,
        started_at: from_opt_ms(row.try_get("started_at")?)?,
        finished_at: from_opt_ms(row.try_get("finished_at")?)?,
    })
}

const RUN_COLUMNS: &str =
    "id, workflow, params, state, current_step, idempotency_key, error, created_at, finished_at";

impl SqliteStore {
    async fn with_steps(&self, rows: Vec<SqliteRow>) -> StoreResult<Vec<RunRecord>> {
        let ids: Vec<RunId> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let step_rows = sqlx::query(
            "SELECT run_id, idx, name, state, output, progress, job_id, error, started_at, finished_at \
             FROM steward_run_steps WHERE run_id IN (SELECT value FROM json_each(?1)) ORDER BY run_id, idx",
        )
        .bind(json!(ids).to_string())
        .fetch_all(self.pool())
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: RunId = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let mut steps = step_rows
                .iter()
                .filter(|s| s.try_get::<RunId, _>("run_id").ok() == Some(id))
                .map(step_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            let progress = self
                .progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for step in &mut steps {
                if let Some(value) = progress.get(&(id, step.idx)) {
                    step.progress = Some(value.clone());
                }
            }
            drop(progress);
            runs.push(RunRecord {
                id,
                workflow: row.try_get("workflow")?,
                params: json_column(row, "params")?.unwrap_or(Value::Null),
                state: RunState::from_str(&state).map_err(corrupt)?,
                current_step: row.try_get("current_step")?,
                idempotency_key: row.try_get("idempotency_key")?,
                error: row.try_get("error")?,
                created_at: from_ms(row.try_get("created_at")?)?,
                finished_at: from_opt_ms(row.try_get("finished_at")?)?,
                steps,
            });
        }
        Ok(runs)
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn run_start(&self, start: &RunStart) -> StoreResult<(RunId, bool)> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let now = now_ms();
        let inserted: Option<(RunId, String)> = sqlx::query_as(
            "INSERT INTO steward_runs (workflow, params, state, idempotency_key, concurrency_key, created_at, updated_at) \
             VALUES (?1, ?2, CASE WHEN ?5 IS NOT NULL AND EXISTS ( \
                         SELECT 1 FROM steward_runs o WHERE o.workflow = ?1 AND o.concurrency_key = ?5 \
                         AND o.state IN ('queued', 'running', 'compensating')) THEN 'queued' ELSE 'running' END, \
                     ?3, ?5, ?4, ?4) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, state",
        )
        .bind(&start.workflow)
        .bind(start.params.to_string())
        .bind(&start.idempotency_key)
        .bind(now)
        .bind(&start.concurrency_key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((run_id, state)) = inserted else {
            tx.rollback().await?;
            let existing: RunId =
                sqlx::query_scalar("SELECT id FROM steward_runs WHERE idempotency_key = ?1")
                    .bind(&start.idempotency_key)
                    .fetch_one(self.pool())
                    .await?;
            return Ok((existing, false));
        };
        sqlx::query(
            "INSERT INTO steward_run_steps (run_id, idx, name, state) \
             SELECT ?1, key, value, 'pending' FROM json_each(?2)",
        )
        .bind(run_id)
        .bind(json!(start.step_names).to_string())
        .execute(&mut *tx)
        .await?;
        let first = NextStep {
            idx: 0,
            job: start.first_job.clone(),
        };
        let mut woken = Vec::new();
        if state == "running" {
            queue_step(&mut tx, run_id, &first, StepState::Queued, &mut woken).await?;
        }
        tx.commit().await?;
        self.wake(woken);
        Ok((run_id, true))
    }

    async fn run_get(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE id = ?1"
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(self.with_steps(rows).await?.pop())
    }

    async fn runs_get_many(&self, ids: &[RunId]) -> StoreResult<Vec<Option<RunRecord>>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json!(ids).to_string())
        .fetch_all(self.pool())
        .await?;
        let mut found = self.with_steps(rows).await?;
        Ok(ids
            .iter()
            .map(|id| {
                found
                    .iter()
                    .position(|run| run.id == *id)
                    .map(|at| found.swap_remove(at))
            })
            .collect())
    }

    async fn runs_count_by_state(&self) -> StoreResult<Vec<(String, RunState, i64)>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT workflow, state, count(*) FROM steward_runs GROUP BY workflow, state ORDER BY 1, 2",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(workflow, state, n)| {
                let state = RunState::from_str(&state).map_err(StoreError::Corrupt)?;
                Ok((workflow, state, n))
            })
            .collect()
    }

    async fn runs_list(&self, state: Option<RunState>, limit: i64) -> StoreResult<Vec<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
        ))
        .bind(state.map(RunState::as_str))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        self.with_steps(rows).await
    }

    async fn step_begin(&self, lease: Lease, worker: &str) -> StoreResult<Option<Box<dyn StepTx>>> {
        // As on PostgreSQL, `commit` checks the lease (fenced acknowledgement) in the same
        // transaction; no check is needed up front.
        Ok(Some(Box::new(self.begin_step(lease, worker).await?)))
    }

    async fn steps_complete_many(
        &self,
        items: &[StepCompletion],
    ) -> StoreResult<Vec<CompletionOutcome>> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        // One transaction (one write lock, one fsync) for the batch; each completion in a
        // savepoint, so a stale or fenced-out one leaves no trace.
        let mut step = self.begin_step(first.lease, &first.worker).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            step.lease = item.lease;
            step.worker.clone_from(&item.worker);
            sqlx::query("SAVEPOINT completion")
                .execute(&mut *step.tx)
                .await?;
            let outcome = match step
                .step_completed(item.run_id, item.idx, &item.output, item.next.clone())
                .await
            {
                Ok(()) if step.acknowledge().await? => CompletionOutcome::Applied,
                Ok(()) => CompletionOutcome::LeaseLost,
                Err(StoreError::Stale(_)) => CompletionOutcome::Stale,
                Err(err) => return Err(err),
            };
            if outcome != CompletionOutcome::Applied {
                sqlx::query("ROLLBACK TO SAVEPOINT completion")
                    .execute(&mut *step.tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT completion")
                .execute(&mut *step.tx)
                .await?;
            outcomes.push(outcome);
        }
        step.tx.commit().await?;
        drop(step._guard);
        self.wake(step.woken);
        Ok(outcomes)
    }

    async fn runs_dead_steps(&self, limit: i64) -> StoreResult<Vec<DeadStep>> {
        let rows = sqlx::query(
            "SELECT r.id AS run_id, s.idx, s.state = 'compensating' AS compensating, \
                    coalesce(j.errors ->> '$[#-1].error', 'the step job died') AS error \
             FROM steward_jobs j \
             JOIN steward_run_steps s ON s.job_id = j.id AND s.state IN ('queued', 'compensating') \
             JOIN steward_runs r ON r.id = s.run_id AND r.current_step = s.idx \
             WHERE j.state IN ('dead', 'cancelled') AND r.state IN ('running', 'compensating') \
             ORDER BY r.id LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadStep {
                    run_id: row.try_get("run_id")?,
                    idx: row.try_get("idx")?,
                    compensating: row.try_get("compensating")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn run_step_died(
        &self,
        dead: &DeadStep,
        compensation: Option<NextStep>,
    ) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let expected = if dead.compensating {
            StepState::Compensating
        } else {
            StepState::Queued
        };
        let current: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = ?2 \
             JOIN steward_jobs j ON j.id = s.job_id AND j.state IN ('dead', 'cancelled') \
             WHERE r.id = ?1 AND r.current_step = ?2 AND s.state = ?3",
        )
        .bind(dead.run_id)
        .bind(dead.idx)
        .bind(expected.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            return Ok(false);
        }
        let now = now_ms();
        let mut woken = Vec::new();
        let run_error = if dead.compensating {
            format!("compensation of step {} died: {}", dead.idx, dead.error)
        } else {
            format!("step {} died: {}", dead.idx, dead.error)
        };
        // A dead compensation leaves its step completed (its effect was not undone).
        let step_state = if dead.compensating {
            StepState::Completed
        } else {
            StepState::Dead
        };
        sqlx::query(
            "UPDATE steward_run_steps SET state = ?3, error = coalesce(?4, error), finished_at = ?5 \
             WHERE run_id = ?1 AND idx = ?2",
        )
        .bind(dead.run_id)
        .bind(dead.idx)
        .bind(step_state.as_str())
        .bind(if dead.compensating { None } else { Some(&dead.error) })
        .bind(now)
        .execute(&mut *tx)
        .await?;
        match compensation.filter(|_| !dead.compensating) {
            Some(next) => {
                sqlx::query("UPDATE steward_runs SET state = 'compensating', error = ?2, updated_at = ?3 WHERE id = ?1")
                    .bind(dead.run_id)
                    .bind(&run_error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                queue_step(
                    &mut tx,
                    dead.run_id,
                    &next,
                    StepState::Compensating,
                    &mut woken,
                )
                .await?;
            }
            None => {
                sqlx::query(
                    "UPDATE steward_runs SET state = 'failed', error = ?2, updated_at = ?3, finished_at = ?3, \
                     current_step = coalesce((SELECT min(idx) FROM steward_run_steps s \
                     WHERE s.run_id = steward_runs.id AND s.state = 'dead'), current_step) WHERE id = ?1",
                )
                .bind(dead.run_id)
                .bind(&run_error)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.wake(woken);
        Ok(true)
    }

    async fn run_retry(&self, id: RunId, failed_step: i32, job: NextStep) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE steward_runs SET state = 'running', error = NULL, finished_at = NULL, updated_at = ?2 \
             WHERE id = ?1 AND state = 'failed' AND current_step = ?3",
        )
        .bind(id)
        .bind(now_ms())
        .bind(failed_step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'pending', output = NULL, error = NULL, \
             job_id = NULL, started_at = NULL, finished_at = NULL \
             WHERE run_id = ?1 AND idx >= ?2 AND state IN ('dead', 'compensated')",
        )
        .bind(id)
        .bind(job.idx)
        .execute(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        queue_step(&mut tx, id, &job, StepState::Queued, &mut woken).await?;
        tx.commit().await?;
        self.wake(woken);
        Ok(true)
    }

    async fn runs_fanned_in(&self, limit: i64) -> StoreResult<Vec<(RunId, i32)>> {
        let rows = sqlx::query(
            "SELECT s.run_id, s.idx FROM steward_run_steps s \
             JOIN steward_runs r ON r.id = s.run_id AND r.current_step = s.idx \
             WHERE s.state = 'waiting' AND r.state = 'running' \
               AND NOT EXISTS (SELECT 1 FROM steward_run_children c JOIN steward_jobs j ON j.id = c.job_id \
                               WHERE c.run_id = s.run_id AND c.idx = s.idx \
                                 AND j.state NOT IN ('dead', 'cancelled')) \
             ORDER BY s.run_id LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("run_id")?, row.try_get("idx")?)))
            .collect()
    }

    async fn run_fan_in(
        &self,
        run_id: RunId,
        idx: i32,
        next: Option<NextStep>,
    ) -> StoreResult<bool> {
        let guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let waiting: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = ?2 \
             WHERE r.id = ?1 AND r.state = 'running' AND r.current_step = ?2 AND s.state = 'waiting' \
               AND NOT EXISTS (SELECT 1 FROM steward_run_children c JOIN steward_jobs j ON j.id = c.job_id \
                               WHERE c.run_id = ?1 AND c.idx = ?2 AND j.state NOT IN ('dead', 'cancelled'))",
        )
        .bind(run_id)
        .bind(idx)
        .fetch_optional(&mut *tx)
        .await?;
        if waiting.is_none() {
            return Ok(false);
        }
        let now = now_ms();
        // A child that left the hot table completed (or was pruned after completing).
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'completed', finished_at = ?3, \
                 output = json_set(CASE WHEN json_type(output) = 'object' THEN output ELSE '{}' END, \
                     '$.children', (SELECT json_object( \
                         'succeeded', sum(j.id IS NULL), \
                         'dead', coalesce(sum(j.state = 'dead'), 0), \
                         'cancelled', coalesce(sum(j.state = 'cancelled'), 0)) \
                      FROM steward_run_children c LEFT JOIN steward_jobs j ON j.id = c.job_id \
                      WHERE c.run_id = ?1 AND c.idx = ?2)) \
             WHERE run_id = ?1 AND idx = ?2",
        )
        .bind(run_id)
        .bind(idx)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        match next {
            Some(next) => queue_step(&mut tx, run_id, &next, StepState::Queued, &mut woken).await?,
            None => {
                sqlx::query("UPDATE steward_runs SET state = 'completed', updated_at = ?2, finished_at = ?2 WHERE id = ?1")
                    .bind(run_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        drop(guard);
        self.wake(woken);
        Ok(true)
    }

    async fn runs_promotable(&self, limit: i64) -> StoreResult<Vec<RunId>> {
        Ok(sqlx::query_scalar(
            "SELECT q.id FROM steward_runs q WHERE q.state = 'queued' \
               AND NOT EXISTS (SELECT 1 FROM steward_runs a WHERE a.workflow = q.workflow \
                   AND a.concurrency_key = q.concurrency_key AND a.state IN ('running', 'compensating')) \
               AND q.id = (SELECT min(o.id) FROM steward_runs o WHERE o.workflow = q.workflow \
                   AND o.concurrency_key = q.concurrency_key AND o.state = 'queued') \
             ORDER BY q.id LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn run_promote(&self, id: RunId, first_job: NextStep) -> StoreResult<bool> {
        let guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let promoted = sqlx::query(
            "UPDATE steward_runs SET state = 'running', updated_at = ?2 WHERE id = ?1 AND state = 'queued'",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        match promoted {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return Ok(false),
            Err(err) if err.is_unique_violation() => return Ok(false),
            Err(err) => return Err(err),
        }
        let mut woken = Vec::new();
        queue_step(&mut tx, id, &first_job, StepState::Queued, &mut woken).await?;
        tx.commit().await?;
        drop(guard);
        self.wake(woken);
        Ok(true)
    }

    async fn step_progress(&self, run_id: RunId, idx: i32, progress: &Value) -> StoreResult<()> {
        // The step's own transaction holds SQLite's single writer: keep progress in memory.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((run_id, idx), progress.clone());
        Ok(())
    }

    async fn run_cancel(&self, cancel: &RunCancel) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool().begin().await?;
        let now = now_ms();
        let reason = format!("cancelled by {}", cancel.by);
        // A run already compensating (a step died) finishes its compensations first.
        let compensating = sqlx::query(
            "UPDATE steward_runs SET cancelled_by = ?2, updated_at = ?3 \
             WHERE id = ?1 AND state = 'compensating' AND cancelled_by IS NULL",
        )
        .bind(cancel.id)
        .bind(&cancel.by)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if compensating > 0 {
            tx.commit().await?;
            return Ok(true);
        }
        let job: Option<Option<JobId>> = sqlx::query_scalar(
            "SELECT s.job_id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = r.current_step \
             WHERE r.id = ?1 AND r.state IN ('queued', 'running') AND r.current_step = ?2",
        )
        .bind(cancel.id)
        .bind(cancel.current_step)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(false);
        };
        let compensate = cancel.compensation.is_some();
        sqlx::query(
            "UPDATE steward_runs SET state = CASE WHEN ?5 THEN 'compensating' ELSE 'cancelled' END, \
                 cancelled_by = ?3, error = ?4, updated_at = ?2, \
                 finished_at = CASE WHEN ?5 THEN NULL ELSE ?2 END WHERE id = ?1",
        )
        .bind(cancel.id)
        .bind(now)
        .bind(&cancel.by)
        .bind(&reason)
        .bind(compensate)
        .execute(&mut *tx)
        .await?;
        // The current step's job and, for a fanned-out step, its live children.
        sqlx::query(
            "UPDATE steward_jobs SET state = 'cancelled', finished_at = ?3, leased_by = NULL, \
             lease_expires_at = NULL \
             WHERE state IN ('scheduled', 'available', 'running', 'retryable') \
               AND (id = ?2 OR id IN (SELECT c.job_id FROM steward_run_children c \
                                      JOIN steward_runs r ON r.id = c.run_id AND c.idx = r.current_step \
                                      WHERE c.run_id = ?1))",
        )
        .bind(cancel.id)
        .bind(job)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        if let Some(next) = &cancel.compensation {
            queue_step(
                &mut tx,
                cancel.id,
                next,
                StepState::Compensating,
                &mut woken,
            )
            .await?;
        }
        tx.commit().await?;
        self.wake(woken);
        Ok(true)
    }
}

impl SqliteStore {
    /// A step transaction holding the write lock.
    async fn begin_step(&self, lease: Lease, worker: &str) -> StoreResult<SqliteStepTx> {
        let guard = self.write_lock.clone().lock_owned().await;
        let tx = self.pool().begin().await?;
        Ok(SqliteStepTx {
            store: self.clone(),
            spawned: 0,
            woken: Vec::new(),
            tx,
            lease,
            worker: worker.to_string(),
            _guard: guard,
        })
    }
}

impl SqliteStepTx {
    /// The step is still the run's current one, in `step_state`, run by this transaction's
    /// job, in a run in `run_state`; the writer lock is held until commit. Else `Stale`.
    async fn guard(
        &mut self,
        run_id: RunId,
        idx: i32,
        run_state: &str,
        step_state: &str,
    ) -> StoreResult<()> {
        let current: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = ?2 \
             WHERE r.id = ?1 AND r.current_step = ?2 AND r.state = ?3 AND s.state = ?4 AND s.job_id = ?5 \
",
        )
        .bind(run_id)
        .bind(idx)
        .bind(run_state)
        .bind(step_state)
        .bind(self.lease.id)
        .fetch_optional(&mut *self.tx)
        .await?;
        match current {
            Some(_) => Ok(()),
            None => Err(StoreError::Stale(format!(
                "run {run_id} moved on from step {idx}"
            ))),
        }
    }
}

struct SqliteStepTx {
    store: SqliteStore,
    spawned: usize,
    woken: Vec<String>,
    tx: Transaction<'static, Sqlite>,
    lease: Lease,
    worker: String,
    _guard: OwnedMutexGuard<()>,
}

#[async_trait]
impl StepTx for SqliteStepTx {
    async fn module_migrate(
        &mut self,
        module: &str,
        version_id: i64,
    ) -> StoreResult<MigrationReport> {
        crate::store::sqlite::domain::migrate_module(&mut self.tx, module, version_id).await
    }

    async fn module_upgrade(
        &mut self,
        module: &str,
        version_id: i64,
        tenants: &[crate::store::domain::TenantId],
    ) -> StoreResult<MigrationReport> {
        crate::store::sqlite::domain::upgrade_module(&mut self.tx, module, version_id, tenants)
            .await
    }

    async fn module_rows_delete(
        &mut self,
        table: &crate::domain::ident::ModuleTable,
        tenant: crate::store::domain::TenantId,
        expected: u64,
    ) -> StoreResult<()> {
        // The rows are in the archive's export: no row audit (see `steward_purging`).
        sqlx::query("INSERT INTO steward_purging (marker) VALUES (1)")
            .execute(&mut *self.tx)
            .await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM {} WHERE tenant_id = ?1",
            table.quoted()
        ))
        .bind(tenant)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if deleted != expected {
            return Err(StoreError::Conflict(format!(
                "{table} holds {deleted} rows of tenant {tenant}, its export {expected}: nothing deleted"
            )));
        }
        sqlx::query("DELETE FROM steward_purging")
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn tenant_module_move(
        &mut self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        crate::store::sqlite::domain::move_status(&mut self.tx, change).await
    }

    async fn ledger_append(&mut self, job_id: JobId, worker: &str, entry: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO steward_ledger (job_id, worker, at, entry) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now_ms())
        .bind(entry)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn step_completed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        next: Option<NextStep>,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'completed', output = ?3, finished_at = ?4 WHERE run_id = ?1 AND idx = ?2",
        )
        .bind(run_id)
        .bind(idx)
        .bind(output.to_string())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        match next {
            Some(next) => {
                queue_step(
                    &mut self.tx,
                    run_id,
                    &next,
                    StepState::Queued,
                    &mut self.woken,
                )
                .await
            }
            None => {
                sqlx::query("UPDATE steward_runs SET state = 'completed', updated_at = ?2, finished_at = ?2 WHERE id = ?1")
                    .bind(run_id)
                    .bind(now)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }
        }
    }

    async fn step_failed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        error: &str,
        compensation: Option<NextStep>,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'dead', output = ?3, error = ?4, finished_at = ?5 \
             WHERE run_id = ?1 AND idx = ?2",
        )
        .bind(run_id)
        .bind(idx)
        .bind(output.to_string())
        .bind(error)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        let compensate = compensation.is_some();
        sqlx::query(
            "UPDATE steward_runs SET state = CASE WHEN ?3 THEN 'compensating' ELSE 'failed' END, \
                 error = ?2, updated_at = ?4, finished_at = CASE WHEN ?3 THEN NULL ELSE ?4 END \
             WHERE id = ?1",
        )
        .bind(run_id)
        .bind(format!("step {idx} failed: {error}"))
        .bind(compensate)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        if let Some(next) = compensation {
            queue_step(
                &mut self.tx,
                run_id,
                &next,
                StepState::Compensating,
                &mut self.woken,
            )
            .await?;
        }
        Ok(())
    }

    async fn spawn_children(
        &mut self,
        run_id: RunId,
        idx: i32,
        jobs: &[NewJob],
    ) -> StoreResult<usize> {
        let mut count = 0;
        for chunk in jobs.chunks(5000) {
            let (enqueued, queues) = insert_on_with_queues(&mut self.tx, chunk).await?;
            let ids: Vec<JobId> = enqueued.iter().map(|e| e.id).collect();
            sqlx::query(
                "INSERT OR IGNORE INTO steward_run_children (run_id, idx, job_id) \
                 SELECT ?1, ?2, value FROM json_each(?3)",
            )
            .bind(run_id)
            .bind(idx)
            .bind(json!(ids).to_string())
            .execute(&mut *self.tx)
            .await?;
            self.woken.extend(queues);
            count += ids.len();
        }
        self.spawned += count;
        Ok(count)
    }

    fn spawned(&self) -> usize {
        self.spawned
    }

    async fn step_waiting(&mut self, run_id: RunId, idx: i32, output: &Value) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        sqlx::query("UPDATE steward_run_steps SET state = 'waiting', output = ?3 WHERE run_id = ?1 AND idx = ?2")
            .bind(run_id)
            .bind(idx)
            .bind(output.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn step_compensated(
        &mut self,
        run_id: RunId,
        idx: i32,
        next: Option<NextStep>,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "compensating", "compensating")
            .await?;
        let now = now_ms();
        sqlx::query("UPDATE steward_run_steps SET state = 'compensated', finished_at = ?3 WHERE run_id = ?1 AND idx = ?2")
            .bind(run_id)
            .bind(idx)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        match next {
            Some(next) => {
                queue_step(
                    &mut self.tx,
                    run_id,
                    &next,
                    StepState::Compensating,
                    &mut self.woken,
                )
                .await
            }
            None => {
                // Compensation is over: the run is failed, pointing at its dead step (or
                // cancelled, when an operator's cancel started the compensation).
                sqlx::query(
                    "UPDATE steward_runs SET updated_at = ?2, finished_at = ?2, \
                     state = CASE WHEN cancelled_by IS NULL THEN 'failed' ELSE 'cancelled' END, \
                     current_step = coalesce((SELECT min(idx) FROM steward_run_steps s \
                     WHERE s.run_id = steward_runs.id AND s.state = 'dead'), current_step) WHERE id = ?1",
                )
                .bind(run_id)
                .bind(now)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }
        }
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let mut this = *self;
        if !this.acknowledge().await? {
            this.tx.rollback().await?;
            return Err(StoreError::Conflict(
                "lease lost before the step committed".into(),
            ));
        }
        this.tx.commit().await?;
        drop(this._guard);
        this.store.wake(this.woken);
        Ok(())
    }
}

impl SqliteStepTx {
    /// Acknowledge the step's job, fenced on its lease; `false` when the lease was lost.
    async fn acknowledge(&mut self) -> StoreResult<bool> {
        let now = now_ms();
        let moved = sqlx::query(
            "INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt, \
                 max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
                 finished_at, errors) \
             SELECT id, kind, queue, tenant, payload, priority, attempt, max_attempts, timeout_ms, \
                    unique_key, run_at, created_at, attempted_at, leased_by, ?4, errors \
             FROM steward_jobs WHERE id = ?1 AND attempt = ?2 AND leased_by = ?3 AND state = 'running'",
        )
        .bind(self.lease.id)
        .bind(self.lease.attempt)
        .bind(&self.worker)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM steward_jobs WHERE id = ?1")
            .bind(self.lease.id)
            .execute(&mut *self.tx)
            .await?;
        Ok(true)
    }
}
