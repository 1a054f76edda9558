//! [`RunStore`] and its step transaction written once, for every [`SqlStore`]. A step
//! transaction is a write transaction of the backend ([`SqlStore::write_step`]) in which the
//! step's own effects, its completion, the next step's job and the acknowledgement of its job
//! commit together; the guard re-reads the run under a row lock (SQLite: the write lock), so a
//! step whose run moved on writes nothing.

use crate::store::domain::{MigrationReport, StatusChange, TenantId, TenantModuleRecord};
use crate::store::runs::{
    Compensations, CompletionOutcome, DeadStep, NextStep, RunCancel, RunId, RunPage, RunRecord,
    RunStart, RunState, RunStore, SignalRecord, StepCompensation, StepCompletion, StepRecord,
    StepState, StepTx,
};
use crate::store::sql::{Conn, Row, Sql, SqlStore, Tx, corrupt, parse, sql};
use crate::store::{StoreError, StoreResult};
use crate::types::{JobId, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

const RUN_COLUMNS: &str = "id, workflow, params, state, current_step, idempotency_key, error, \
     created_at, finished_at, version";

/// Queue a step's job inside the transaction and point the step (and the run) at it.
async fn queue_step(
    conn: &mut dyn Conn,
    run_id: RunId,
    next: &NextStep,
    state: StepState,
) -> StoreResult<()> {
    let mut job = next.job.clone();
    job.payload["run_id"] = Value::from(run_id);
    let job_id = conn
        .jobs_insert(std::slice::from_ref(&job), false)
        .await?
        .first()
        .map(|e| e.id)
        .ok_or_else(|| corrupt("step job not inserted"))?;
    // A compensation keeps the forward job and timing, and records its own beside them.
    let update = match state {
        StepState::Compensating => sql!(
            "UPDATE steward_run_steps SET state = $3, compensation_job_id = $4, \
                 compensation_started_at = {now}, compensation_finished_at = NULL \
             WHERE run_id = $1 AND idx = $2",
            run_id,
            next.idx,
            state.as_str(),
            job_id
        ),
        _ => sql!(
            "UPDATE steward_run_steps SET state = $3, job_id = $4, error = NULL, \
                 started_at = CASE WHEN $3 = 'queued' THEN {now} ELSE started_at END \
             WHERE run_id = $1 AND idx = $2",
            run_id,
            next.idx,
            state.as_str(),
            job_id
        ),
    };
    conn.execute(update).await?;
    conn.execute(sql!(
        "UPDATE steward_runs SET current_step = $2, updated_at = {now} WHERE id = $1",
        run_id,
        next.idx
    ))
    .await?;
    Ok(())
}

/// After a step completed: queue each of `next` that can start (still pending, with every
/// step it needs completed; one needing only the step that just completed starts at once).
/// With none queued, the run is `completed` once all its steps are (parallel branches still
/// live keep it running). The run is locked by the caller, so two parallel steps completing
/// at once start their join once.
async fn advance(conn: &mut dyn Conn, run_id: RunId, next: &[NextStep]) -> StoreResult<()> {
    let mut queued = 0;
    for step in next {
        if step.needs.len() > 1 {
            let needs: Vec<i64> = step.needs.iter().map(|&n| i64::from(n)).collect();
            let ready = conn
                .fetch_optional(sql!(
                    "SELECT t.idx FROM steward_run_steps t \
                     WHERE t.run_id = $1 AND t.idx = $2 AND t.state = 'pending' \
                       AND NOT EXISTS (SELECT 1 FROM steward_run_steps p WHERE p.run_id = $1 \
                                       AND p.idx = ANY($3) AND p.state <> 'completed')",
                    run_id,
                    step.idx,
                    needs
                ))
                .await?;
            if ready.is_none() {
                continue;
            }
        }
        queue_step(conn, run_id, step, StepState::Queued).await?;
        queued += 1;
    }
    if queued == 0 {
        conn.execute(sql!(
            "UPDATE steward_runs SET state = 'completed', updated_at = {now}, finished_at = {now} \
             WHERE id = $1 AND state = 'running' AND NOT EXISTS (SELECT 1 FROM steward_run_steps \
                 WHERE run_id = $1 AND state <> 'completed')",
            run_id
        ))
        .await?;
    }
    Ok(())
}

/// The first of `compensations` (latest step first) whose step is completed: what a run
/// undoes next.
async fn next_compensation<'a>(
    conn: &mut dyn Conn,
    run_id: RunId,
    compensations: &'a [NextStep],
) -> StoreResult<Option<&'a NextStep>> {
    if compensations.is_empty() {
        return Ok(None);
    }
    let candidates: Vec<i64> = compensations.iter().map(|c| i64::from(c.idx)).collect();
    let latest = conn
        .fetch_optional(sql!(
            "SELECT idx FROM steward_run_steps \
             WHERE run_id = $1 AND state = 'completed' AND idx = ANY($2) \
             ORDER BY idx DESC LIMIT 1",
            run_id,
            candidates
        ))
        .await?;
    let Some(latest) = latest else {
        return Ok(None);
    };
    let idx = latest.int32("idx")?;
    Ok(compensations.iter().find(|c| c.idx == idx))
}

/// The steps of running runs that wait for their children (fan-out) and whose children have
/// all ended (a child that left the hot table completed): the one statement of that rule.
const FANNED_IN: &str = "SELECT s.run_id, s.idx FROM steward_run_steps s \
     JOIN steward_runs r ON r.id = s.run_id \
     WHERE s.state = 'waiting' AND r.state = 'running' \
       AND NOT EXISTS (SELECT 1 FROM steward_run_children c JOIN steward_jobs j ON j.id = c.job_id \
                       WHERE c.run_id = s.run_id AND c.idx = s.idx \
                         AND j.state NOT IN ('dead', 'cancelled'))";

/// The jobs of a run's live steps (`$1`): its queued and waiting steps' jobs, and the
/// children of its waiting fan-outs.
const LIVE_STEP_JOBS: &str = "state IN ('scheduled', 'available', 'running', 'retryable') \
     AND (id IN (SELECT s.job_id FROM steward_run_steps s \
                 WHERE s.run_id = $1 AND s.state IN ('queued', 'waiting')) \
          OR id IN (SELECT c.job_id FROM steward_run_children c \
                    JOIN steward_run_steps s ON s.run_id = c.run_id AND s.idx = c.idx \
                    WHERE c.run_id = $1 AND s.state = 'waiting'))";

/// Stop a run's live steps: their jobs and a fanned-out step's live children are cancelled
/// (a running handler is stopped at its next heartbeat, and its commit is fenced out), and
/// the steps are pending again (a retry runs them). Returns when the last of those attempts
/// that were running has stopped, as the rescuer reckons it: when its lease ends (its worker
/// stops it at its next heartbeat, which comes well before).
async fn stop_live_steps(conn: &mut dyn Conn, run_id: RunId) -> StoreResult<Option<DateTime<Utc>>> {
    // Locked as read (a fetch passes locked jobs over), so no job is leased between this read
    // and the cancel below without its lease being counted.
    let mut running_until = None;
    for job in conn
        .fetch_all(sql!(
            format!(
                "SELECT state, lease_expires_at FROM steward_jobs WHERE {LIVE_STEP_JOBS} \
                 {{for_update}}"
            ),
            run_id
        ))
        .await?
    {
        if job.text("state")? == "running" {
            running_until = running_until.max(job.opt_time("lease_expires_at")?);
        }
    }
    conn.execute(sql!(
        format!(
            "UPDATE steward_jobs SET state = 'cancelled', finished_at = {{now}}, \
                 leased_by = NULL, lease_expires_at = NULL \
             WHERE {LIVE_STEP_JOBS}"
        ),
        run_id
    ))
    .await?;
    conn.execute(sql!(
        "UPDATE steward_run_steps SET state = 'pending' \
         WHERE run_id = $1 AND state IN ('queued', 'waiting')",
        run_id
    ))
    .await?;
    Ok(running_until)
}

/// How a run that cannot go on ends, the one home of that rule (a step failed or died, an
/// operator cancelled, a compensation finished or died): with a completed step among
/// `compensations` to undo, the run is `compensating` and the latest such step's compensation
/// is queued; without one it ends, pointing at its lowest dead step (else where it was):
/// `cancelled` when an operator cancelled it and `failed` is false (the end of an undoing
/// that went well), else `failed`. `error`, when given, becomes the run's error. The
/// compensation starts no sooner than `not_before`: when the attempts of the steps just
/// stopped have surely ended, so that an undoing never runs beside what it undoes.
async fn wind_down(
    conn: &mut dyn Conn,
    run_id: RunId,
    compensations: &[NextStep],
    error: Option<&str>,
    failed: bool,
    not_before: Option<DateTime<Utc>>,
) -> StoreResult<()> {
    if let Some(next) = next_compensation(conn, run_id, compensations).await? {
        conn.execute(sql!(
            "UPDATE steward_runs SET state = 'compensating', error = coalesce($2, error), \
                 updated_at = {now}, finished_at = NULL WHERE id = $1",
            run_id,
            error
        ))
        .await?;
        // This points the run at the compensation; a retry resumes at the failed step (the
        // lowest dead or compensated one).
        let mut next = next.clone();
        next.job.run_at = not_before.filter(|at| *at > Utc::now());
        return queue_step(conn, run_id, &next, StepState::Compensating).await;
    }
    conn.execute(sql!(
        "UPDATE steward_runs SET error = coalesce($2, error), updated_at = {now}, \
             finished_at = {now}, \
             state = CASE WHEN cancelled_by IS NULL OR $3 THEN 'failed' ELSE 'cancelled' END, \
             current_step = coalesce((SELECT min(idx) FROM steward_run_steps s \
                 WHERE s.run_id = steward_runs.id AND s.state = 'dead'), current_step) \
         WHERE id = $1",
        run_id,
        error,
        failed
    ))
    .await?;
    Ok(())
}

fn step_from(row: &dyn Row) -> StoreResult<StepRecord> {
    Ok(StepRecord {
        idx: row.int32("idx")?,
        name: row.text("name")?,
        state: parse(row, "state")?,
        output: row.opt_json("output")?,
        progress: row.opt_json("progress")?,
        job_id: row.opt_int("job_id")?,
        error: row.opt_text("error")?,
        started_at: row.opt_time("started_at")?,
        finished_at: row.opt_time("finished_at")?,
        compensation: match row.opt_int("compensation_job_id")? {
            None => None,
            Some(job_id) => Some(StepCompensation {
                job_id,
                started_at: row.opt_time("compensation_started_at")?,
                finished_at: row.opt_time("compensation_finished_at")?,
            }),
        },
    })
}

/// Runs with their steps.
async fn runs_with_steps<S: SqlStore>(store: &S, sql: Sql) -> StoreResult<Vec<RunRecord>> {
    let mut conn = store.read().await?;
    let rows = conn.fetch_all(sql).await?;
    let ids = rows
        .iter()
        .map(|r| r.int("id"))
        .collect::<StoreResult<Vec<_>>>()?;
    let steps = conn
        .fetch_all(sql!(
            "SELECT run_id, idx, name, state, output, progress, job_id, error, started_at, \
                 finished_at, compensation_job_id, compensation_started_at, \
                 compensation_finished_at \
             FROM steward_run_steps WHERE run_id = ANY($1) ORDER BY run_id, idx",
            ids
        ))
        .await?;
    let mut steps_of: std::collections::HashMap<RunId, Vec<StepRecord>> =
        std::collections::HashMap::with_capacity(rows.len());
    for step in &steps {
        let run_id = step.int("run_id")?;
        let mut step = step_from(&**step)?;
        if let Some(progress) = store.progress_overlay(run_id, step.idx) {
            step.progress = Some(progress);
        }
        steps_of.entry(run_id).or_default().push(step);
    }
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = row.int("id")?;
        let run_steps = steps_of.remove(&id).unwrap_or_default();
        runs.push(RunRecord {
            id,
            workflow: row.text("workflow")?,
            params: row.json("params")?,
            state: parse(&**row, "state")?,
            current_step: row.int32("current_step")?,
            idempotency_key: row.opt_text("idempotency_key")?,
            error: row.opt_text("error")?,
            created_at: row.time("created_at")?,
            finished_at: row.opt_time("finished_at")?,
            steps: run_steps,
            version: row.opt_text("version")?,
        });
    }
    Ok(runs)
}

/// One attempt of `run_start`: `queued` when forced or when the key is taken.
async fn run_insert<S: SqlStore>(
    store: &S,
    start: &RunStart,
    force_queued: bool,
) -> StoreResult<(RunId, bool)> {
    let mut tx = store.write().await?;
    let inserted = tx
        .fetch_optional(sql!(
            "INSERT INTO steward_runs (workflow, params, state, idempotency_key, concurrency_key, \
                 created_at, updated_at, version) \
             VALUES ($1, $2, CASE WHEN $5 OR (CAST($4 AS TEXT) IS NOT NULL AND EXISTS ( \
                         SELECT 1 FROM steward_runs o WHERE o.workflow = $1 \
                         AND o.concurrency_key = $4 \
                         AND o.state IN ('queued', 'running', 'compensating'))) \
                     THEN 'queued' ELSE 'running' END, $3, $4, {now}, {now}, $6) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, state",
            &start.workflow,
            &start.params,
            &start.idempotency_key,
            &start.concurrency_key,
            force_queued,
            &start.version
        ))
        .await?;
    let Some(row) = inserted else {
        drop(tx);
        let existing = store
            .read()
            .await?
            .fetch_one(sql!(
                "SELECT id FROM steward_runs WHERE idempotency_key = $1",
                &start.idempotency_key
            ))
            .await?
            .int("id")?;
        return Ok((existing, false));
    };
    let run_id = row.int("id")?;
    let steps = tx.dialect().pick(
        "INSERT INTO steward_run_steps (run_id, idx, name, state) \
         SELECT $1, (n.ord - 1)::int, n.name, 'pending' \
         FROM unnest($2::text[]) WITH ORDINALITY AS n(name, ord)",
        "INSERT INTO steward_run_steps (run_id, idx, name, state) \
         SELECT $1, key, value, 'pending' FROM json_each($2)",
    );
    tx.execute(sql!(steps, run_id, start.step_names.clone()))
        .await?;
    if row.text("state")? == "running" {
        for first in &start.first_jobs {
            queue_step(&mut *tx, run_id, first, StepState::Queued).await?;
        }
    }
    tx.commit().await?;
    Ok((run_id, true))
}

#[async_trait]
impl<S: SqlStore> RunStore for S {
    async fn run_start(&self, start: &RunStart) -> StoreResult<(RunId, bool)> {
        // Two starts racing for a free key both try `running`; the one-active index refuses the
        // second, which then queues.
        for force_queued in [false, true] {
            match run_insert(self, start, force_queued).await {
                Err(err) if err.is_unique_violation() && !force_queued => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict("could not start the run".into()))
    }

    async fn run_get(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        let sql = sql!(
            format!("SELECT {RUN_COLUMNS} FROM steward_runs WHERE id = $1"),
            id
        );
        Ok(runs_with_steps(self, sql).await?.pop())
    }

    async fn runs_get_many(&self, ids: &[RunId]) -> StoreResult<Vec<Option<RunRecord>>> {
        let sql = sql!(
            format!("SELECT {RUN_COLUMNS} FROM steward_runs WHERE id = ANY($1)"),
            ids
        );
        let found: std::collections::HashMap<RunId, RunRecord> = runs_with_steps(self, sql)
            .await?
            .into_iter()
            .map(|run| (run.id, run))
            .collect();
        // (An id may be asked for twice: parallel steps of one run read it together.)
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    async fn steps_complete_many(
        &self,
        items: &[StepCompletion],
    ) -> StoreResult<Vec<CompletionOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(outcomes) = self.steps_complete_batched(items).await? {
            return Ok(outcomes);
        }
        // One transaction for the batch; each completion in a savepoint, so a stale or
        // fenced-out one leaves no trace.
        let mut step = SqlStepTx {
            tx: self.write_step().await?,
            lease: items[0].lease,
            worker: items[0].worker.clone(),
            spawned: 0,
        };
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            step.lease = item.lease;
            step.worker.clone_from(&item.worker);
            step.tx.execute(sql!("SAVEPOINT completion")).await?;
            let outcome = match step
                .step_completed(item.run_id, item.idx, &item.output, item.next.clone())
                .await
            {
                Ok(()) if step.tx.job_acknowledge(item.lease, &item.worker).await? => {
                    CompletionOutcome::Applied
                }
                Ok(()) => CompletionOutcome::LeaseLost,
                Err(StoreError::Stale(_)) => CompletionOutcome::Stale,
                Err(err) => return Err(err),
            };
            if outcome != CompletionOutcome::Applied {
                step.tx
                    .execute(sql!("ROLLBACK TO SAVEPOINT completion"))
                    .await?;
            }
            step.tx
                .execute(sql!("RELEASE SAVEPOINT completion"))
                .await?;
            outcomes.push(outcome);
        }
        step.tx.commit().await?;
        Ok(outcomes)
    }

    async fn runs_page(&self, page: &RunPage) -> StoreResult<Vec<RunRecord>> {
        // The page just newer than `after_id` reads upwards and is turned round.
        let upwards = page.after_id.is_some();
        // A run's tenant is its `tenant_id` parameter.
        let of_tenant = self.sql_dialect().pick(
            "params -> 'tenant_id' = to_jsonb(CAST($5 AS BIGINT))",
            "json_extract(params, '$.tenant_id') = $5",
        );
        let sql = sql!(
            format!(
                "SELECT {RUN_COLUMNS} FROM steward_runs \
                 WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) AND id < $2 AND id > $3 \
                   AND (CAST($5 AS BIGINT) IS NULL OR {of_tenant}) \
                 ORDER BY id {} LIMIT $4",
                if upwards { "ASC" } else { "DESC" }
            ),
            page.state.map(RunState::as_str),
            page.before_id.unwrap_or(i64::MAX),
            page.after_id.unwrap_or(0),
            page.limit.clamp(1, 10_000),
            page.tenant
        );
        let mut runs = runs_with_steps(self, sql).await?;
        if upwards {
            runs.reverse();
        }
        Ok(runs)
    }

    async fn runs_count_by_state(&self) -> StoreResult<Vec<(String, RunState, i64)>> {
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT workflow, state, count(*) AS n FROM steward_runs \
                 GROUP BY workflow, state ORDER BY 1, 2"
            ))
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.text("workflow")?,
                    parse(&**row, "state")?,
                    row.int("n")?,
                ))
            })
            .collect()
    }

    async fn step_begin(&self, lease: Lease, worker: &str) -> StoreResult<Option<Box<dyn StepTx>>> {
        // No lease check here: `commit` acknowledges the job fenced on the lease in the same
        // transaction, so a stale attempt commits nothing. Saving the round trip matters: every
        // step transition pays it.
        Ok(Some(Box::new(SqlStepTx {
            tx: self.write_step().await?,
            lease,
            worker: worker.to_string(),
            spawned: 0,
        })))
    }

    async fn runs_dead_steps(&self, limit: i64) -> StoreResult<Vec<DeadStep>> {
        let mut conn = self.read().await?;
        let last_error = conn
            .dialect()
            .pick("j.errors -> -1 ->> 'error'", "j.errors ->> '$[#-1].error'");
        conn.fetch_all(sql!(
            format!(
                "SELECT r.id AS run_id, s.idx, s.state = 'compensating' AS compensating, \
                     coalesce({last_error}, 'the step job died') AS error \
                 FROM steward_jobs j \
                 JOIN steward_run_steps s \
                   ON (s.state = 'queued' AND s.job_id = j.id) \
                   OR (s.state = 'compensating' AND s.compensation_job_id = j.id) \
                 JOIN steward_runs r ON r.id = s.run_id \
                 WHERE j.state IN ('dead', 'cancelled') \
                   AND ((s.state = 'queued' AND r.state = 'running') \
                        OR (s.state = 'compensating' AND r.state = 'compensating')) \
                 ORDER BY r.id LIMIT $1"
            ),
            limit
        ))
        .await?
        .iter()
        .map(|row| {
            Ok(DeadStep {
                run_id: row.int("run_id")?,
                idx: row.int32("idx")?,
                compensating: row.flag("compensating")?,
                error: row.text("error")?,
            })
        })
        .collect()
    }

    async fn run_step_died(
        &self,
        dead: &DeadStep,
        compensations: Compensations,
    ) -> StoreResult<bool> {
        // The run sweeper's write: on the bookkeeping connections, never behind handlers' work.
        let mut tx = self.write_service().await?;
        let expected = if dead.compensating {
            StepState::Compensating
        } else {
            StepState::Queued
        };
        let current = tx
            .fetch_optional(sql!(
                "SELECT r.id FROM steward_runs r \
                 JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = $2 \
                 JOIN steward_jobs j ON j.state IN ('dead', 'cancelled') \
                   AND j.id = CASE WHEN s.state = 'compensating' THEN s.compensation_job_id \
                                   ELSE s.job_id END \
                 WHERE r.id = $1 AND s.state = $3 \
                   AND r.state = CASE WHEN $3 = 'queued' THEN 'running' ELSE 'compensating' END \
                 {for_update}",
                dead.run_id,
                dead.idx,
                expected.as_str()
            ))
            .await?;
        if current.is_none() {
            return Ok(false);
        }
        // A dead compensation leaves its step completed (its effect was not undone).
        let (step_state, step_error, run_error) = if dead.compensating {
            let error = format!("compensation of step {} died: {}", dead.idx, dead.error);
            (StepState::Completed, None, error)
        } else {
            let error = format!("step {} died: {}", dead.idx, dead.error);
            (StepState::Dead, Some(dead.error.clone()), error)
        };
        let finished = match dead.compensating {
            true => "compensation_finished_at",
            false => "finished_at",
        };
        tx.execute(sql!(
            format!(
                "UPDATE steward_run_steps SET state = $3, error = coalesce($4, error), \
                     {finished} = {{now}} \
                 WHERE run_id = $1 AND idx = $2"
            ),
            dead.run_id,
            dead.idx,
            step_state.as_str(),
            step_error
        ))
        .await?;
        let (compensations, not_before) = match dead.compensating {
            // A dead compensation stops the undoing: the run fails.
            true => (&[][..], None),
            false => (
                &compensations[..],
                stop_live_steps(&mut *tx, dead.run_id).await?,
            ),
        };
        wind_down(
            &mut *tx,
            dead.run_id,
            compensations,
            Some(&run_error),
            true,
            not_before,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn run_retry(
        &self,
        id: RunId,
        failed_step: i32,
        redo: &[i32],
        jobs: Vec<NextStep>,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let updated = tx
            .execute(sql!(
                "UPDATE steward_runs SET state = 'running', error = NULL, finished_at = NULL, \
                     updated_at = {now} \
                 WHERE id = $1 AND state = 'failed' AND current_step = $2",
                id,
                failed_step
            ))
            .await?;
        if updated == 0 {
            return Ok(false);
        }
        let redo: Vec<i64> = redo.iter().map(|&i| i64::from(i)).collect();
        // The run's dead jobs leave the dead-letter queue: those of the steps run again
        // (theirs, their children's: each step gets a new job), and every dead compensation
        // (a compensation that died left its step completed, which the retry resumes past).
        tx.execute(sql!(
            "UPDATE steward_jobs SET state = 'cancelled', finished_at = {now} \
             WHERE state = 'dead' AND id IN ( \
                 SELECT job_id FROM steward_run_steps WHERE run_id = $1 AND idx = ANY($2) \
                 UNION SELECT compensation_job_id FROM steward_run_steps WHERE run_id = $1 \
                 UNION SELECT job_id FROM steward_run_children WHERE run_id = $1 AND idx = ANY($2))",
            id,
            &redo
        ))
        .await?;
        tx.execute(sql!(
            "UPDATE steward_run_steps SET state = 'pending', output = NULL, error = NULL, \
                 job_id = NULL, started_at = NULL, finished_at = NULL, compensation_job_id = NULL, \
                 compensation_started_at = NULL, compensation_finished_at = NULL \
             WHERE run_id = $1 AND idx = ANY($2)",
            id,
            redo
        ))
        .await?;
        for job in &jobs {
            queue_step(&mut *tx, id, job, StepState::Queued).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn run_signal_send(
        &self,
        run_id: RunId,
        name: &str,
        payload: &Value,
        sent_by: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let sent = tx
            .execute(sql!(
                "INSERT INTO steward_run_signals (run_id, name, payload, sent_by, sent_at) \
                 VALUES ($1, $2, $3, $4, {now}) ON CONFLICT (run_id, name) DO NOTHING",
                run_id,
                name,
                payload,
                sent_by
            ))
            .await?;
        if sent == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        self.run_wake(run_id).await?;
        Ok(true)
    }

    async fn run_wake(&self, run_id: RunId) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let woken = tx
            .fetch_all(sql!(
                "UPDATE steward_jobs SET state = 'available', run_at = {now} \
                 WHERE state = 'scheduled' AND id IN (SELECT s.job_id FROM steward_run_steps s \
                     WHERE s.run_id = $1 AND s.state = 'queued') \
                 RETURNING queue",
                run_id
            ))
            .await?;
        tx.commit().await?;
        let queues = woken
            .iter()
            .map(|row| row.text("queue"))
            .collect::<StoreResult<Vec<_>>>()?;
        let woke = !queues.is_empty();
        if woke {
            self.queues_woken(queues).await?;
        }
        Ok(woke)
    }

    async fn workflow_version_put(
        &self,
        workflow: &str,
        version: &str,
        steps: &Value,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        tx.execute(sql!(
            "INSERT INTO steward_workflow_versions (workflow, version, steps, first_seen) \
             VALUES ($1, $2, $3, {now}) ON CONFLICT (workflow, version) DO NOTHING",
            workflow,
            version,
            steps
        ))
        .await?;
        tx.commit().await
    }

    async fn workflow_version_get(
        &self,
        workflow: &str,
        version: &str,
    ) -> StoreResult<Option<Value>> {
        self.read()
            .await?
            .fetch_optional(sql!(
                "SELECT steps FROM steward_workflow_versions WHERE workflow = $1 AND version = $2",
                workflow,
                version
            ))
            .await?
            .map(|row| row.json("steps"))
            .transpose()
    }

    async fn run_signal_get(&self, run_id: RunId, name: &str) -> StoreResult<Option<SignalRecord>> {
        let row = self
            .read()
            .await?
            .fetch_optional(sql!(
                "SELECT name, payload, sent_by, sent_at FROM steward_run_signals \
                 WHERE run_id = $1 AND name = $2",
                run_id,
                name
            ))
            .await?;
        row.map(|row| {
            Ok(SignalRecord {
                name: row.text("name")?,
                payload: row.json("payload")?,
                sent_by: row.text("sent_by")?,
                sent_at: row.time("sent_at")?,
            })
        })
        .transpose()
    }

    async fn run_cancel(&self, cancel: &RunCancel) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        // A run already compensating (a step died) finishes its compensations first.
        let compensating = tx
            .execute(sql!(
                "UPDATE steward_runs SET cancelled_by = $2, updated_at = {now} \
                 WHERE id = $1 AND state = 'compensating' AND cancelled_by IS NULL",
                cancel.id,
                &cancel.by
            ))
            .await?;
        if compensating > 0 {
            tx.commit().await?;
            return Ok(true);
        }
        let locked = tx
            .fetch_optional(sql!(
                "SELECT r.id FROM steward_runs r \
                 WHERE r.id = $1 AND r.state IN ('queued', 'running') AND r.current_step = $2 \
                 {for_update}",
                cancel.id,
                cancel.current_step
            ))
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let not_before = stop_live_steps(&mut *tx, cancel.id).await?;
        tx.execute(sql!(
            "UPDATE steward_runs SET cancelled_by = $2 WHERE id = $1",
            cancel.id,
            &cancel.by
        ))
        .await?;
        let error = format!("cancelled by {}", cancel.by);
        wind_down(
            &mut *tx,
            cancel.id,
            &cancel.compensations,
            Some(&error),
            false,
            not_before,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn runs_promotable(&self, limit: i64) -> StoreResult<Vec<RunId>> {
        self.read()
            .await?
            .fetch_all(sql!(
                "SELECT q.id FROM steward_runs q WHERE q.state = 'queued' \
                   AND NOT EXISTS (SELECT 1 FROM steward_runs a WHERE a.workflow = q.workflow \
                       AND a.concurrency_key = q.concurrency_key \
                       AND a.state IN ('running', 'compensating')) \
                   AND q.id = (SELECT min(o.id) FROM steward_runs o WHERE o.workflow = q.workflow \
                       AND o.concurrency_key = q.concurrency_key AND o.state = 'queued') \
                 ORDER BY q.id LIMIT $1",
                limit
            ))
            .await?
            .iter()
            .map(|row| row.int("id"))
            .collect()
    }

    async fn run_promote(&self, id: RunId, first_jobs: Vec<NextStep>) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let promoted = tx
            .execute(sql!(
                "UPDATE steward_runs SET state = 'running', updated_at = {now} \
                 WHERE id = $1 AND state = 'queued'",
                id
            ))
            .await;
        match promoted {
            Ok(1) => {}
            Ok(_) => return Ok(false),
            // Another scheduler promoted a run with this key first.
            Err(err) if err.is_unique_violation() => return Ok(false),
            Err(err) => return Err(err),
        }
        for first in &first_jobs {
            queue_step(&mut *tx, id, first, StepState::Queued).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn runs_fanned_in(&self, limit: i64) -> StoreResult<Vec<(RunId, i32)>> {
        self.read()
            .await?
            .fetch_all(sql!(
                format!("{FANNED_IN} ORDER BY s.run_id LIMIT $1"),
                limit
            ))
            .await?
            .iter()
            .map(|row| Ok((row.int("run_id")?, row.int32("idx")?)))
            .collect()
    }

    async fn run_fan_in(&self, run_id: RunId, idx: i32, next: Vec<NextStep>) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let waiting = tx
            .fetch_optional(sql!(
                format!("{FANNED_IN} AND s.run_id = $1 AND s.idx = $2 {{for_update}}"),
                run_id,
                idx
            ))
            .await?;
        if waiting.is_none() {
            return Ok(false);
        }
        // A child that left the hot table completed (or was pruned after completing).
        let counted = tx.dialect().pick(
            "CASE WHEN jsonb_typeof(output) = 'object' THEN output ELSE '{}'::jsonb END \
             || jsonb_build_object('children', (SELECT jsonb_build_object( \
                 'succeeded', count(*) FILTER (WHERE j.id IS NULL), \
                 'dead', count(*) FILTER (WHERE j.state = 'dead'), \
                 'cancelled', count(*) FILTER (WHERE j.state = 'cancelled')) \
               FROM steward_run_children c LEFT JOIN steward_jobs j ON j.id = c.job_id \
               WHERE c.run_id = $1 AND c.idx = $2))",
            "json_set(CASE WHEN json_type(output) = 'object' THEN output ELSE '{}' END, \
                 '$.children', (SELECT json_object( \
                     'succeeded', sum(j.id IS NULL), \
                     'dead', coalesce(sum(j.state = 'dead'), 0), \
                     'cancelled', coalesce(sum(j.state = 'cancelled'), 0)) \
                  FROM steward_run_children c LEFT JOIN steward_jobs j ON j.id = c.job_id \
                  WHERE c.run_id = $1 AND c.idx = $2))",
        );
        tx.execute(sql!(
            format!(
                "UPDATE steward_run_steps SET state = 'completed', finished_at = {{now}}, \
                     output = {counted} \
                 WHERE run_id = $1 AND idx = $2"
            ),
            run_id,
            idx
        ))
        .await?;
        advance(&mut *tx, run_id, &next).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn step_progress(&self, run_id: RunId, idx: i32, progress: &Value) -> StoreResult<()> {
        self.progress_set(run_id, idx, progress).await
    }
}

/// The transaction of one step attempt.
struct SqlStepTx {
    tx: Box<dyn Tx>,
    lease: Lease,
    worker: String,
    spawned: usize,
}

impl SqlStepTx {
    /// The step is still in `step_state`, run by this transaction's job, in a run in
    /// `run_state`; the run stays locked until commit (so parallel steps of one run record
    /// their ends one after the other). Else `Stale`.
    async fn guard(
        &mut self,
        run_id: RunId,
        idx: i32,
        run_state: &str,
        step_state: &str,
    ) -> StoreResult<()> {
        let lock = self.tx.dialect().pick("FOR UPDATE OF r", "");
        let current = self
            .tx
            .fetch_optional(sql!(
                format!(
                    "SELECT r.id FROM steward_runs r \
                     JOIN steward_run_steps s ON s.run_id = r.id AND s.idx = $2 \
                     WHERE r.id = $1 AND r.state = $3 AND s.state = $4 \
                       AND $5 = CASE WHEN s.state = 'compensating' THEN s.compensation_job_id \
                                     ELSE s.job_id END {lock}"
                ),
                run_id,
                idx,
                run_state,
                step_state,
                self.lease.id
            ))
            .await?;
        match current {
            Some(_) => Ok(()),
            None => Err(StoreError::Stale(format!(
                "run {run_id} moved on from step {idx}"
            ))),
        }
    }

    /// Mark step `idx` with `state`, its output and error, finished now.
    async fn step_finished(
        &mut self,
        run_id: RunId,
        idx: i32,
        state: StepState,
        output: Option<&Value>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        self.tx
            .execute(sql!(
                "UPDATE steward_run_steps SET state = $3, output = coalesce($4, output), \
                     error = coalesce($5, error), finished_at = {now} \
                 WHERE run_id = $1 AND idx = $2",
                run_id,
                idx,
                state.as_str(),
                output,
                error
            ))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl StepTx for SqlStepTx {
    async fn module_migrate(
        &mut self,
        module: &str,
        version_id: i64,
    ) -> StoreResult<MigrationReport> {
        super::modules::migrate(&mut *self.tx, module, version_id).await
    }

    async fn module_upgrade(
        &mut self,
        module: &str,
        version_id: i64,
        tenants: &[TenantId],
    ) -> StoreResult<MigrationReport> {
        super::modules::upgrade(&mut *self.tx, module, version_id, tenants).await
    }

    async fn module_rows_delete(
        &mut self,
        table: &crate::domain::ident::ModuleTable,
        tenant: TenantId,
        expected: u64,
    ) -> StoreResult<()> {
        self.tx.privilege("purge", true).await?;
        let deleted = self
            .tx
            .execute(sql!(
                format!("DELETE FROM {} WHERE tenant_id = $1", table.quoted()),
                tenant
            ))
            .await?;
        if deleted != expected {
            return Err(StoreError::Conflict(format!(
                "{table} holds {deleted} rows of tenant {tenant}, its export {expected}: \
                 nothing deleted"
            )));
        }
        self.tx.privilege("purge", false).await
    }

    async fn tenant_module_move(
        &mut self,
        change: &StatusChange<'_>,
    ) -> StoreResult<TenantModuleRecord> {
        crate::store::sql::domain::move_status(&mut *self.tx, change).await
    }

    async fn ledger_append(&mut self, job_id: JobId, worker: &str, entry: &str) -> StoreResult<()> {
        self.tx
            .execute(sql!(
                "INSERT INTO steward_ledger (job_id, worker, at, entry) VALUES ($1, $2, {now}, $3)",
                job_id,
                worker,
                entry
            ))
            .await?;
        Ok(())
    }

    async fn step_completed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        next: Vec<NextStep>,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        self.step_finished(run_id, idx, StepState::Completed, Some(output), None)
            .await?;
        advance(&mut *self.tx, run_id, &next).await
    }

    async fn step_failed(
        &mut self,
        run_id: RunId,
        idx: i32,
        output: &Value,
        error: &str,
        compensations: Compensations,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "running", "queued").await?;
        self.step_finished(run_id, idx, StepState::Dead, Some(output), Some(error))
            .await?;
        let not_before = stop_live_steps(&mut *self.tx, run_id).await?;
        let run_error = format!("step {idx} failed: {error}");
        wind_down(
            &mut *self.tx,
            run_id,
            &compensations,
            Some(&run_error),
            true,
            not_before,
        )
        .await
    }

    async fn spawn_children(
        &mut self,
        run_id: RunId,
        idx: i32,
        jobs: &[NewJob],
    ) -> StoreResult<usize> {
        let mut count = 0;
        for chunk in jobs.chunks(5000) {
            let ids: Vec<JobId> = self
                .tx
                .jobs_insert(chunk, true)
                .await?
                .iter()
                .map(|e| e.id)
                .collect();
            self.tx
                .execute(sql!(
                    "INSERT INTO steward_run_children (run_id, idx, job_id) \
                     SELECT $1, $2, id FROM steward_jobs WHERE id = ANY($3) \
                     ON CONFLICT DO NOTHING",
                    run_id,
                    idx,
                    &ids
                ))
                .await?;
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
        self.tx
            .execute(sql!(
                "UPDATE steward_run_steps SET state = 'waiting', output = $3 \
                 WHERE run_id = $1 AND idx = $2",
                run_id,
                idx,
                output
            ))
            .await?;
        Ok(())
    }

    async fn step_compensated(
        &mut self,
        run_id: RunId,
        idx: i32,
        compensations: Compensations,
    ) -> StoreResult<()> {
        self.guard(run_id, idx, "compensating", "compensating")
            .await?;
        self.tx
            .execute(sql!(
                "UPDATE steward_run_steps SET state = 'compensated', \
                     compensation_finished_at = {now} \
                 WHERE run_id = $1 AND idx = $2",
                run_id,
                idx
            ))
            .await?;
        // The next compensation, or the end: failed, or cancelled when an operator's cancel
        // started the compensation.
        wind_down(&mut *self.tx, run_id, &compensations, None, false, None).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let mut this = *self;
        if !this.tx.job_acknowledge(this.lease, &this.worker).await? {
            // The lease was lost while the step ran: none of its effects may land (dropping
            // the transaction rolls it back).
            return Err(StoreError::Conflict(
                "lease lost before the step committed".into(),
            ));
        }
        this.tx.commit().await
    }
}
