//! PostgreSQL implementation of [`RunStore`] and its step transaction.

use crate::store::domain::{MigrationReport, StatusChange, TenantModuleRecord};
use crate::store::postgres::{PgStore, insert_on, insert_on_quietly};
use crate::store::runs::{
    CompletionOutcome, DeadStep, NextStep, RunCancel, RunId, RunRecord, RunStart, RunState,
    RunStore, StepCompletion, StepRecord, StepState, StepTx,
};
use crate::store::{StoreError, StoreResult};
use crate::types::{JobId, Lease, NewJob};
use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashSet;
use std::str::FromStr;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Queue a step's job inside the transaction and point the step (and the run) at it. With
/// `done`, that earlier step is completed with its output in the same statement.
async fn queue_step(
    conn: &mut PgConnection,
    run_id: RunId,
    next: &NextStep,
    state: StepState,
    done: Option<(i32, &Value)>,
    woken: Option<&mut Vec<String>>,
) -> StoreResult<()> {
    let mut job = next.job.clone();
    job.payload["run_id"] = Value::from(run_id);
    let enqueued = match woken {
        // Inside a step transaction: no NOTIFY; the step's worker wakes its producers.
        Some(woken) => {
            let (enqueued, queues) = insert_on_quietly(conn, std::slice::from_ref(&job)).await?;
            woken.extend(queues);
            enqueued
        }
        None => insert_on(conn, std::slice::from_ref(&job)).await?,
    };
    let job_id = enqueued
        .first()
        .map(|e| e.id)
        .ok_or_else(|| corrupt("step job not inserted"))?;
    sqlx::query(
        "WITH done AS (UPDATE steward_run_steps SET state = 'completed', output = $6, finished_at = now() \
                       WHERE run_id = $1 AND idx = $5), \
              queued AS (UPDATE steward_run_steps SET state = $3, job_id = $4, error = NULL, \
                         started_at = CASE WHEN $3 = 'queued' THEN now() ELSE started_at END \
                         WHERE run_id = $1 AND idx = $2) \
         UPDATE steward_runs SET current_step = $2, updated_at = now() WHERE id = $1",
    )
    .bind(run_id)
    .bind(next.idx)
    .bind(state.as_str())
    .bind(job_id)
    .bind(done.map(|(idx, _)| idx))
    .bind(done.map(|(_, output)| output))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The outcome of each batched completion, from the jobs whose lease held (`fenced`) and the
/// steps still waiting for their job (`current`).
fn outcomes(
    items: &[StepCompletion],
    fenced: &HashSet<JobId>,
    current: &HashSet<JobId>,
) -> Vec<CompletionOutcome> {
    items
        .iter()
        .map(|i| {
            if !fenced.contains(&i.lease.id) {
                CompletionOutcome::LeaseLost
            } else if current.contains(&i.lease.id) {
                CompletionOutcome::Applied
            } else {
                CompletionOutcome::Stale
            }
        })
        .collect()
}

fn step_from_row(row: &PgRow) -> StoreResult<StepRecord> {
    let state: String = row.try_get("state")?;
    Ok(StepRecord {
        idx: row.try_get("idx")?,
        name: row.try_get("name")?,
        state: StepState::from_str(&state).map_err(corrupt)?,
        output: row.try_get("output")?,
        progress: row.try_get("progress")?,
        job_id: row.try_get("job_id")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

impl PgStore {
    /// One attempt of `run_start`: `queued` when forced or when the key is taken.
    async fn run_insert(&self, start: &RunStart, force_queued: bool) -> StoreResult<(RunId, bool)> {
        let mut tx = self.pool().begin().await?;
        let inserted: Option<(RunId, String)> = sqlx::query_as(
            "INSERT INTO steward_runs (workflow, params, state, idempotency_key, concurrency_key) \
             VALUES ($1, $2, CASE WHEN $5 OR ($4::text IS NOT NULL AND EXISTS ( \
                         SELECT 1 FROM steward_runs o WHERE o.workflow = $1 AND o.concurrency_key = $4 \
                         AND o.state IN ('queued', 'running', 'compensating'))) \
                     THEN 'queued' ELSE 'running' END, $3, $4) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, state",
        )
        .bind(&start.workflow)
        .bind(&start.params)
        .bind(&start.idempotency_key)
        .bind(&start.concurrency_key)
        .bind(force_queued)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((run_id, state)) = inserted else {
            tx.rollback().await?;
            let existing: RunId =
                sqlx::query_scalar("SELECT id FROM steward_runs WHERE idempotency_key = $1")
                    .bind(&start.idempotency_key)
                    .fetch_one(self.pool())
                    .await?;
            return Ok((existing, false));
        };
        sqlx::query(
            "INSERT INTO steward_run_steps (run_id, idx, name, state) \
             SELECT $1, (n.ord - 1)::int, n.name, 'pending' FROM unnest($2::text[]) WITH ORDINALITY AS n(name, ord)",
        )
        .bind(run_id)
        .bind(&start.step_names)
        .execute(&mut *tx)
        .await?;
        if state == "running" {
            let first = NextStep {
                idx: 0,
                job: start.first_job.clone(),
            };
            queue_step(&mut tx, run_id, &first, StepState::Queued, None, None).await?;
        }
        tx.commit().await?;
        Ok((run_id, true))
    }
    /// Attach their steps to run rows.
    async fn with_steps(&self, rows: Vec<PgRow>) -> StoreResult<Vec<RunRecord>> {
        let ids: Vec<RunId> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let step_rows = sqlx::query(
            "SELECT run_id, idx, name, state, output, progress, job_id, error, started_at, finished_at \
             FROM steward_run_steps WHERE run_id = ANY($1) ORDER BY run_id, idx",
        )
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: RunId = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let steps = step_rows
                .iter()
                .filter(|s| s.try_get::<RunId, _>("run_id").ok() == Some(id))
                .map(step_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            runs.push(RunRecord {
                id,
                workflow: row.try_get("workflow")?,
                params: row.try_get("params")?,
                state: RunState::from_str(&state).map_err(corrupt)?,
                current_step: row.try_get("current_step")?,
                idempotency_key: row.try_get("idempotency_key")?,
                error: row.try_get("error")?,
                created_at: row.try_get("created_at")?,
                finished_at: row.try_get("finished_at")?,
                steps,
            });
        }
        Ok(runs)
    }
}

const RUN_COLUMNS: &str =
    "id, workflow, params, state, current_step, idempotency_key, error, created_at, finished_at";

#[async_trait]
impl RunStore for PgStore {
    async fn run_start(&self, start: &RunStart) -> StoreResult<(RunId, bool)> {
        // Two starts racing for a free key both try `running`; the one-active index refuses the
        // second, which then queues.
        for force_queued in [false, true] {
            match self.run_insert(start, force_queued).await {
                Err(err) if err.is_unique_violation() && !force_queued => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict("could not start the run".into()))
    }

    async fn run_get(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(self.with_steps(rows).await?.pop())
    }

    async fn runs_get_many(&self, ids: &[RunId]) -> StoreResult<Vec<Option<RunRecord>>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE id = ANY($1)"
        ))
        .bind(ids)
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

    async fn steps_complete_many(
        &self,
        items: &[StepCompletion],
    ) -> StoreResult<Vec<CompletionOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Every statement names its rows with `= ANY($1)` as well as the join on `unnest`: the
        // planner then looks rows up by index whatever its statistics say, where a bare join
        // on `unnest` is planned as a hash join over a full scan once the tables outgrow
        // their last ANALYZE (90 ms instead of 2 for a batch of 200 at 20,000 runs).
        let mut tx = self.pool().begin().await?;
        // Fence: the attempts whose lease still holds, locked (in id order, as everywhere).
        let fenced: HashSet<JobId> = sqlx::query_scalar(
            "SELECT j.id FROM steward_jobs j \
             JOIN unnest($1::int8[], $2::int4[], $3::text[]) AS h(id, attempt, worker) \
               ON j.id = h.id AND j.attempt = h.attempt AND j.leased_by = h.worker \
             WHERE j.id = ANY($1) AND j.state = 'running' ORDER BY j.id FOR UPDATE OF j",
        )
        .bind(items.iter().map(|i| i.lease.id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.lease.attempt).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.worker.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        // Guard: the run is still at this step, and the step still waits for this job.
        let live: Vec<&StepCompletion> = items
            .iter()
            .filter(|i| fenced.contains(&i.lease.id))
            .collect();
        let current: HashSet<JobId> = sqlx::query_scalar(
            "SELECT s.job_id FROM steward_runs r \
             JOIN unnest($1::int8[], $2::int4[], $3::int8[]) AS g(run_id, idx, job_id) \
               ON r.id = g.run_id AND r.current_step = g.idx \
             JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = g.idx AND s.job_id = g.job_id \
             WHERE r.id = ANY($1) AND r.state = 'running' AND s.state = 'queued' \
             ORDER BY r.id FOR UPDATE OF r",
        )
        .bind(live.iter().map(|i| i.run_id).collect::<Vec<_>>())
        .bind(live.iter().map(|i| i.idx).collect::<Vec<_>>())
        .bind(live.iter().map(|i| i.lease.id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let applied: Vec<&StepCompletion> = live
            .into_iter()
            .filter(|i| current.contains(&i.lease.id))
            .collect();
        if applied.is_empty() {
            tx.rollback().await?;
            return Ok(outcomes(items, &fenced, &current));
        }
        // The next steps' jobs, then every step, next step and run in one statement.
        let next_jobs: Vec<NewJob> = applied
            .iter()
            .filter_map(|i| {
                i.next.as_ref().map(|next| {
                    let mut job = next.job.clone();
                    job.payload["run_id"] = Value::from(i.run_id);
                    job
                })
            })
            .collect();
        let (enqueued, woken) = if next_jobs.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            insert_on_quietly(&mut tx, &next_jobs).await?
        };
        let mut next_ids = enqueued.iter().map(|e| e.id);
        let next_job: Vec<Option<JobId>> = applied
            .iter()
            .map(|i| i.next.as_ref().and_then(|_| next_ids.next()))
            .collect();
        sqlx::query(
            "WITH u AS (SELECT * FROM unnest($1::int8[], $2::int4[], $3::jsonb[], $4::int4[], $5::int8[]) \
                        AS u(run_id, idx, output, next_idx, next_job)), \
                  done AS (UPDATE steward_run_steps s SET state = 'completed', output = u.output, \
                           finished_at = now() FROM u \
                           WHERE s.run_id = ANY($1) AND s.run_id = u.run_id AND s.idx = u.idx), \
                  queued AS (UPDATE steward_run_steps s SET state = 'queued', job_id = u.next_job, \
                             error = NULL, started_at = now() \
                             FROM u WHERE s.run_id = ANY($1) AND u.next_idx IS NOT NULL \
                               AND s.run_id = u.run_id AND s.idx = u.next_idx) \
             UPDATE steward_runs r SET updated_at = now(), \
                 current_step = coalesce(u.next_idx, r.current_step), \
                 state = CASE WHEN u.next_idx IS NULL THEN 'completed' ELSE r.state END, \
                 finished_at = CASE WHEN u.next_idx IS NULL THEN now() ELSE r.finished_at END \
             FROM u WHERE r.id = ANY($1) AND r.id = u.run_id",
        )
        .bind(applied.iter().map(|i| i.run_id).collect::<Vec<_>>())
        .bind(applied.iter().map(|i| i.idx).collect::<Vec<_>>())
        .bind(applied.iter().map(|i| &i.output).collect::<Vec<_>>())
        .bind(
            applied
                .iter()
                .map(|i| i.next.as_ref().map(|n| n.idx))
                .collect::<Vec<_>>(),
        )
        .bind(&next_job)
        .execute(&mut *tx)
        .await?;
        // The acknowledgements, fenced above (the rows are locked by this transaction).
        sqlx::query(
            "WITH done AS (DELETE FROM steward_jobs j WHERE j.id = ANY($1) RETURNING j.*) \
             INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt, \
                 max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
                 finished_at, errors) \
             SELECT id, kind, queue, tenant, payload, priority, attempt, max_attempts, timeout_ms, \
                    unique_key, run_at, created_at, attempted_at, leased_by, now(), errors FROM done",
        )
        .bind(applied.iter().map(|i| i.lease.id).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake_local(&woken);
        Ok(outcomes(items, &fenced, &current))
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
            "SELECT {RUN_COLUMNS} FROM steward_runs WHERE ($1::text IS NULL OR state = $1) \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(state.map(RunState::as_str))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?;
        self.with_steps(rows).await
    }

    async fn step_begin(&self, lease: Lease, worker: &str) -> StoreResult<Option<Box<dyn StepTx>>> {
        // No lease check here: `commit` acknowledges the job fenced on the lease in the same
        // transaction, so a stale attempt commits nothing. Saving the round trip matters: every
        // step transition pays it.
        let tx = self.pool().begin().await?;
        Ok(Some(Box::new(PgStepTx {
            store: self.clone(),
            spawned: 0,
            tx,
            lease,
            worker: worker.to_string(),
            woken: Vec::new(),
        })))
    }

    async fn runs_dead_steps(&self, limit: i64) -> StoreResult<Vec<DeadStep>> {
        let rows = sqlx::query(
            "SELECT r.id AS run_id, s.idx, s.state = 'compensating' AS compensating, \
                    coalesce(j.errors -> -1 ->> 'error', 'the step job died') AS error \
             FROM steward_jobs j \
             JOIN steward_run_steps s ON s.job_id = j.id AND s.state IN ('queued', 'compensating') \
             JOIN steward_runs r ON r.id = s.run_id AND r.current_step = s.idx \
             WHERE j.state IN ('dead', 'cancelled') AND r.state IN ('running', 'compensating') \
             ORDER BY r.id LIMIT $1",
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
        let mut tx = self.pool().begin().await?;
        let expected = if dead.compensating {
            StepState::Compensating
        } else {
            StepState::Queued
        };
        let current: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = $2 \
             JOIN steward_jobs j ON j.id = s.job_id AND j.state IN ('dead', 'cancelled') \
             WHERE r.id = $1 AND r.current_step = $2 AND s.state = $3 FOR UPDATE OF r, j",
        )
        .bind(dead.run_id)
        .bind(dead.idx)
        .bind(expected.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            return Ok(false);
        }
        // A dead compensation leaves its step completed (its effect was not undone).
        let step_state = if dead.compensating {
            StepState::Completed
        } else {
            StepState::Dead
        };
        let step_error = dead.error.clone();
        let run_error = if dead.compensating {
            format!("compensation of step {} died: {}", dead.idx, dead.error)
        } else {
            format!("step {} died: {}", dead.idx, dead.error)
        };
        sqlx::query(
            "UPDATE steward_run_steps SET state = $3, error = coalesce($4, error), finished_at = now() \
             WHERE run_id = $1 AND idx = $2",
        )
        .bind(dead.run_id)
        .bind(dead.idx)
        .bind(step_state.as_str())
        .bind(if dead.compensating { None } else { Some(&step_error) })
        .execute(&mut *tx)
        .await?;
        match compensation.filter(|_| !dead.compensating) {
            Some(next) => {
                sqlx::query(
                    "UPDATE steward_runs SET state = 'compensating', error = $2, updated_at = now() WHERE id = $1",
                )
                .bind(dead.run_id)
                .bind(&run_error)
                .execute(&mut *tx)
                .await?;
                queue_step(
                    &mut tx,
                    dead.run_id,
                    &next,
                    StepState::Compensating,
                    None,
                    None,
                )
                .await?;
            }
            None => {
                // Nothing (more) to compensate: the run fails, pointing at its dead step.
                sqlx::query(
                    "UPDATE steward_runs r SET state = 'failed', error = $2, updated_at = now(), \
                     finished_at = now(), current_step = coalesce((SELECT min(idx) FROM steward_run_steps s \
                     WHERE s.run_id = r.id AND s.state = 'dead'), r.current_step) WHERE id = $1",
                )
                .bind(dead.run_id)
                .bind(&run_error)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn run_retry(&self, id: RunId, failed_step: i32, job: NextStep) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE steward_runs SET state = 'running', error = NULL, finished_at = NULL, updated_at = now() \
             WHERE id = $1 AND state = 'failed' AND current_step = $2",
        )
        .bind(id)
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
             WHERE run_id = $1 AND idx >= $2 AND state IN ('dead', 'compensated')",
        )
        .bind(id)
        .bind(job.idx)
        .execute(&mut *tx)
        .await?;
        queue_step(&mut tx, id, &job, StepState::Queued, None, None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn step_progress(&self, run_id: RunId, idx: i32, progress: &Value) -> StoreResult<()> {
        self.set_step_progress(run_id, idx, progress).await
    }

    async fn runs_promotable(&self, limit: i64) -> StoreResult<Vec<RunId>> {
        Ok(sqlx::query_scalar(
            "SELECT q.id FROM steward_runs q WHERE q.state = 'queued' \
               AND NOT EXISTS (SELECT 1 FROM steward_runs a WHERE a.workflow = q.workflow \
                   AND a.concurrency_key = q.concurrency_key AND a.state IN ('running', 'compensating')) \
               AND q.id = (SELECT min(o.id) FROM steward_runs o WHERE o.workflow = q.workflow \
                   AND o.concurrency_key = q.concurrency_key AND o.state = 'queued') \
             ORDER BY q.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn run_promote(&self, id: RunId, first_job: NextStep) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let promoted = sqlx::query(
            "UPDATE steward_runs SET state = 'running', updated_at = now() WHERE id = $1 AND state = 'queued'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        match promoted {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return Ok(false),
            // Another scheduler promoted a run with this key first.
            Err(err) if err.is_unique_violation() => return Ok(false),
            Err(err) => return Err(err),
        }
        queue_step(&mut tx, id, &first_job, StepState::Queued, None, None).await?;
        tx.commit().await?;
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
             ORDER BY s.run_id LIMIT $1",
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
        let mut tx = self.pool().begin().await?;
        let waiting: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = $2 \
             WHERE r.id = $1 AND r.state = 'running' AND r.current_step = $2 AND s.state = 'waiting' \
               AND NOT EXISTS (SELECT 1 FROM steward_run_children c JOIN steward_jobs j ON j.id = c.job_id \
                               WHERE c.run_id = $1 AND c.idx = $2 AND j.state NOT IN ('dead', 'cancelled')) \
             FOR UPDATE OF r",
        )
        .bind(run_id)
        .bind(idx)
        .fetch_optional(&mut *tx)
        .await?;
        if waiting.is_none() {
            return Ok(false);
        }
        // A child that left the hot table completed (or was pruned after completing).
        sqlx::query(
            "WITH counts AS ( \
                 SELECT count(*) FILTER (WHERE j.id IS NULL) AS succeeded, \
                        count(*) FILTER (WHERE j.state = 'dead') AS dead, \
                        count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled \
                 FROM steward_run_children c LEFT JOIN steward_jobs j ON j.id = c.job_id \
                 WHERE c.run_id = $1 AND c.idx = $2) \
             UPDATE steward_run_steps SET state = 'completed', finished_at = now(), \
                 output = CASE WHEN jsonb_typeof(output) = 'object' THEN output ELSE '{}'::jsonb END \
                          || jsonb_build_object('children', (SELECT to_jsonb(counts) FROM counts)) \
             WHERE run_id = $1 AND idx = $2",
        )
        .bind(run_id)
        .bind(idx)
        .execute(&mut *tx)
        .await?;
        match next {
            Some(next) => queue_step(&mut tx, run_id, &next, StepState::Queued, None, None).await?,
            None => {
                sqlx::query(
                    "UPDATE steward_runs SET state = 'completed', updated_at = now(), finished_at = now() WHERE id = $1",
                )
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn run_cancel(&self, cancel: &RunCancel) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let reason = format!("cancelled by {}", cancel.by);
        // A run already compensating (a step died) finishes its compensations first.
        let compensating: Option<RunId> = sqlx::query_scalar(
            "UPDATE steward_runs SET cancelled_by = $2, updated_at = now() \
             WHERE id = $1 AND state = 'compensating' AND cancelled_by IS NULL RETURNING id",
        )
        .bind(cancel.id)
        .bind(&cancel.by)
        .fetch_optional(&mut *tx)
        .await?;
        if compensating.is_some() {
            tx.commit().await?;
            return Ok(true);
        }
        let job: Option<Option<JobId>> = sqlx::query_scalar(
            "UPDATE steward_runs r SET state = CASE WHEN $4 THEN 'compensating' ELSE 'cancelled' END, \
                 cancelled_by = $2, error = $3, updated_at = now(), \
                 finished_at = CASE WHEN $4 THEN NULL ELSE now() END \
             FROM steward_run_steps s WHERE r.id = $1 AND r.state IN ('queued', 'running') \
               AND r.current_step = $5 AND s.run_id = r.id AND s.idx = r.current_step RETURNING s.job_id",
        )
        .bind(cancel.id)
        .bind(&cancel.by)
        .bind(&reason)
        .bind(cancel.compensation.is_some())
        .bind(cancel.current_step)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(false);
        };
        // The current step's job and, for a fanned-out step, its live children.
        sqlx::query(
            "UPDATE steward_jobs SET state = 'cancelled', finished_at = now(), leased_by = NULL, \
             lease_expires_at = NULL \
             WHERE state IN ('scheduled', 'available', 'running', 'retryable') \
               AND (id = $2 OR id IN (SELECT c.job_id FROM steward_run_children c \
                                      JOIN steward_runs r ON r.id = c.run_id AND c.idx = r.current_step \
                                      WHERE c.run_id = $1))",
        )
        .bind(cancel.id)
        .bind(job)
        .execute(&mut *tx)
        .await?;
        if let Some(next) = &cancel.compensation {
            queue_step(
                &mut tx,
                cancel.id,
                next,
                StepState::Compensating,
                None,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl PgStore {
    async fn set_step_progress(
        &self,
        run_id: RunId,
        idx: i32,
        progress: &Value,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE steward_run_steps SET progress = $3 WHERE run_id = $1 AND idx = $2")
            .bind(run_id)
            .bind(idx)
            .bind(progress)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl PgStepTx {
    /// The step is still the run's current one, in `step_state`, run by this transaction's
    /// job, in a run in `run_state`; the run row stays locked until commit. Else `Stale`.
    async fn guard(
        &mut self,
        run_id: RunId,
        idx: i32,
        run_state: &str,
        step_state: &str,
    ) -> StoreResult<()> {
        let current: Option<RunId> = sqlx::query_scalar(
            "SELECT r.id FROM steward_runs r JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = $2 \
             WHERE r.id = $1 AND r.current_step = $2 AND r.state = $3 AND s.state = $4 AND s.job_id = $5 \
             FOR UPDATE OF r",
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

struct PgStepTx {
    store: PgStore,
    spawned: usize,
    tx: Transaction<'static, Postgres>,
    lease: Lease,
    worker: String,
    /// Queues that got a job in this transaction: woken (in this process) after commit.
    woken: Vec<String>,
}

#[async_trait]
impl StepTx for PgStepTx {
    async fn module_migrate(
        &mut self,
        module: &str,
        version_id: i64,
    ) -> StoreResult<MigrationReport> {
        crate::store::postgres::domain::migrate_module(&mut self.tx, module, version_id).await
    }

    async fn module_upgrade(
        &mut self,
        module: &str,
        version_id: i64,
        tenants: &[crate::store::domain::TenantId],
    ) -> StoreResult<MigrationReport> {
        crate::store::postgres::domain::upgrade_module(&mut self.tx, module, version_id, tenants)
            .await
    }

    async fn module_rows_delete(
        &mut self,
        table: &crate::domain::ident::ModuleTable,
        tenant: crate::store::domain::TenantId,
        expected: u64,
    ) -> StoreResult<()> {
        // The rows are in the archive's export: no row audit (see AUDIT_FUNCTION).
        sqlx::query("SELECT set_config('steward.purge', 'on', true)")
            .execute(&mut *self.tx)
            .await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM {} WHERE tenant_id = $1",
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
        sqlx::query("SELECT set_config('steward.purge', '', true)")
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn tenant_module_move(
        &mut self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        crate::store::postgres::domain::move_status(&mut self.tx, change).await
    }

    async fn ledger_append(&mut self, job_id: JobId, worker: &str, entry: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO steward_ledger (job_id, worker, entry) VALUES ($1, $2, $3)")
            .bind(job_id)
            .bind(worker)
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
        match next {
            Some(next) => {
                let done = Some((idx, output));
                queue_step(
                    &mut self.tx,
                    run_id,
                    &next,
                    StepState::Queued,
                    done,
                    Some(&mut self.woken),
                )
                .await
            }
            None => {
                sqlx::query(
                    "WITH done AS (UPDATE steward_run_steps SET state = 'completed', output = $3, \
                                   finished_at = now() WHERE run_id = $1 AND idx = $2) \
                     UPDATE steward_runs SET state = 'completed', updated_at = now(), finished_at = now() \
                     WHERE id = $1",
                )
                .bind(run_id)
                .bind(idx)
                .bind(output)
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
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'dead', output = $3, error = $4, finished_at = now() \
             WHERE run_id = $1 AND idx = $2",
        )
        .bind(run_id)
        .bind(idx)
        .bind(output)
        .bind(error)
        .execute(&mut *self.tx)
        .await?;
        let run_error = format!("step {idx} failed: {error}");
        sqlx::query(
            "UPDATE steward_runs SET state = CASE WHEN $3 THEN 'compensating' ELSE 'failed' END, \
                 error = $2, updated_at = now(), finished_at = CASE WHEN $3 THEN NULL ELSE now() END \
             WHERE id = $1",
        )
        .bind(run_id)
        .bind(&run_error)
        .bind(compensation.is_some())
        .execute(&mut *self.tx)
        .await?;
        if let Some(next) = compensation {
            queue_step(
                &mut self.tx,
                run_id,
                &next,
                StepState::Compensating,
                None,
                Some(&mut self.woken),
            )
            .await?;
            // `queue_step` points the run at the compensation; a retry resumes at the
            // failed step (the lowest dead or compensated one).
        }
        Ok(())
    }

    async fn spawn_children(
        &mut self,
        run_id: RunId,
        idx: i32,
        jobs: &[NewJob],
    ) -> StoreResult<usize> {
        let enqueued = insert_on(&mut self.tx, jobs).await?;
        let ids: Vec<JobId> = enqueued.iter().map(|e| e.id).collect();
        sqlx::query(
            "INSERT INTO steward_run_children (run_id, idx, job_id) SELECT $1, $2, unnest($3::int8[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(run_id)
        .bind(idx)
        .bind(&ids)
        .execute(&mut *self.tx)
        .await?;
        self.woken.extend(jobs.iter().map(|j| j.queue.clone()));
        self.spawned += ids.len();
        Ok(ids.len())
    }

    fn spawned(&self) -> usize {
        self.spawned
    }

    async fn step_waiting(&mut self, run_id: RunId, idx: i32, output: &Value) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        sqlx::query("UPDATE steward_run_steps SET state = 'waiting', output = $3 WHERE run_id = $1 AND idx = $2")
            .bind(run_id)
            .bind(idx)
            .bind(output)
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
        sqlx::query(
            "UPDATE steward_run_steps SET state = 'compensated', finished_at = now() WHERE run_id = $1 AND idx = $2",
        )
        .bind(run_id)
        .bind(idx)
        .execute(&mut *self.tx)
        .await?;
        match next {
            Some(next) => {
                queue_step(
                    &mut self.tx,
                    run_id,
                    &next,
                    StepState::Compensating,
                    None,
                    Some(&mut self.woken),
                )
                .await
            }
            None => {
                // Compensation is over: the run is failed, pointing at its dead step (or
                // cancelled, when an operator's cancel started the compensation).
                sqlx::query(
                    "UPDATE steward_runs r SET updated_at = now(), finished_at = now(), \
                     state = CASE WHEN cancelled_by IS NULL THEN 'failed' ELSE 'cancelled' END, \
                     current_step = coalesce((SELECT min(idx) FROM steward_run_steps s \
                                              WHERE s.run_id = r.id AND s.state = 'dead'), r.current_step) \
                     WHERE id = $1",
                )
                .bind(run_id)
                .execute(&mut *self.tx)
                .await?;
                Ok(())
            }
        }
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let mut this = *self;
        // The fence is checked here, in the same transaction: the job row is not locked while
        // the step runs (heartbeats must not wait on it), so the acknowledgement decides.
        let moved = sqlx::query(
            "WITH done AS (DELETE FROM steward_jobs WHERE id = $1 AND attempt = $2 AND leased_by = $3 \
                           AND state = 'running' RETURNING *) \
             INSERT INTO steward_jobs_completed (id, kind, queue, tenant, payload, priority, attempt, \
                 max_attempts, timeout_ms, unique_key, run_at, created_at, attempted_at, leased_by, \
                 finished_at, errors) \
             SELECT id, kind, queue, tenant, payload, priority, attempt, max_attempts, timeout_ms, \
                    unique_key, run_at, created_at, attempted_at, leased_by, now(), errors FROM done",
        )
        .bind(this.lease.id)
        .bind(this.lease.attempt)
        .bind(&this.worker)
        .execute(&mut *this.tx)
        .await?
        .rows_affected();
        if moved != 1 {
            // The lease was lost while the step ran: none of its effects may land.
            this.tx.rollback().await?;
            return Err(StoreError::Conflict(
                "lease lost before the step committed".into(),
            ));
        }
        this.tx.commit().await?;
        this.store.wake_local(&this.woken);
        Ok(())
    }
}
