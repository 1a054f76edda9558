//! [`LimitStore`] written once, for every [`SqlStore`].

use crate::limits::admission::{self, Breaker, LimitState};
use crate::store::StoreResult;
use crate::store::limits::{Admitted, BreakerOutcome, BreakerRecord, LimitAsk, LimitStore};
use crate::store::sql::{Conn, Row, SqlStore, sql};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A reservation whose job has not come back for this long is dropped (it was cancelled or
/// deleted meanwhile): its start went unused.
const STALE_RESERVATION: chrono::Duration = chrono::Duration::minutes(10);

#[async_trait]
impl<S: SqlStore> LimitStore for S {
    async fn limits_admit(&self, asks: &[LimitAsk], horizon: Duration) -> StoreResult<Admitted> {
        let mut tx = self.write().await?;
        // Every key's row, locked in key order.
        let mut keys: Vec<&str> = asks
            .iter()
            .flat_map(|a| {
                [
                    a.rate.as_ref().map(|r| &r.0),
                    a.concurrency.as_ref().map(|c| &c.0),
                ]
            })
            .flatten()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut next_slot = BTreeMap::new();
        for key in keys {
            tx.execute(sql!(
                "INSERT INTO steward_limits (key, next_slot) VALUES ($1, {now}) \
                 ON CONFLICT (key) DO NOTHING",
                key
            ))
            .await?;
            let row = tx
                .fetch_one(sql!(
                    "SELECT next_slot FROM steward_limits WHERE key = $1 {for_update}",
                    key
                ))
                .await?;
            next_slot.insert(key.to_string(), row.time("next_slot")?);
        }
        // The clock once the keys are ours (PostgreSQL's `now()` is when the transaction
        // began, before it waited for them): starts are recorded after the holds they saw.
        let now = clock(&mut *tx).await?;
        for free in next_slot.values_mut() {
            *free = (*free).max(now);
        }
        // Places held under each concurrency key; holds whose attempt ended are dropped.
        let mut running = HashMap::new();
        for (key, _) in asks.iter().filter_map(|a| a.concurrency.as_ref()) {
            if running.contains_key(key) {
                continue;
            }
            tx.execute(sql!(
                "DELETE FROM steward_limit_holds WHERE key = $1 AND NOT EXISTS ( \
                     SELECT 1 FROM steward_jobs j WHERE j.id = steward_limit_holds.job_id \
                     AND j.attempt = steward_limit_holds.attempt AND j.state = 'running')",
                key
            ))
            .await?;
            let n = tx
                .fetch_one(sql!(
                    "SELECT count(*) AS n FROM steward_limit_holds WHERE key = $1",
                    key
                ))
                .await?
                .int("n")?;
            running.insert(key.clone(), n);
        }
        // Circuits that have failed, locked: open ones keep their jobs away.
        let breaker_keys: Vec<String> = asks
            .iter()
            .filter_map(|a| a.breaker.as_ref().map(|b| b.0.clone()))
            .collect();
        let mut breakers = BTreeMap::new();
        if !breaker_keys.is_empty() {
            for row in tx
                .fetch_all(sql!(
                    format!(
                        "SELECT {BREAKER_COLUMNS} FROM steward_breakers WHERE key = ANY($1) \
                         ORDER BY key {{for_update}}"
                    ),
                    breaker_keys
                ))
                .await?
            {
                breakers.insert(row.text("key")?, breaker_from(&*row)?);
            }
        }
        // Starts reserved earlier by these jobs.
        tx.execute(sql!(
            "DELETE FROM steward_limit_slots WHERE slot < $1",
            now - STALE_RESERVATION
        ))
        .await?;
        let ids: Vec<i64> = asks.iter().map(|a| a.lease.id).collect();
        let mut reserved = HashMap::new();
        for row in tx
            .fetch_all(sql!(
                "SELECT key, job_id, slot FROM steward_limit_slots WHERE job_id = ANY($1)",
                ids
            ))
            .await?
        {
            reserved.insert((row.text("key")?, row.int("job_id")?), row.time("slot")?);
        }
        let state = LimitState {
            now,
            next_slot,
            running,
            breakers,
            reserved,
        };
        let (each, writes) = admission::admit(asks, state, horizon);
        for (key, job, slot) in writes.reserve {
            tx.execute(sql!(
                "INSERT INTO steward_limit_slots (key, job_id, slot) VALUES ($1, $2, $3) \
                 ON CONFLICT (key, job_id) DO UPDATE SET slot = excluded.slot",
                key,
                job,
                slot
            ))
            .await?;
        }
        for (key, job) in writes.unreserve {
            tx.execute(sql!(
                "DELETE FROM steward_limit_slots WHERE key = $1 AND job_id = $2",
                key,
                job
            ))
            .await?;
        }
        for (key, job, attempt) in writes.hold {
            tx.execute(sql!(
                "INSERT INTO steward_limit_holds (key, job_id, attempt) VALUES ($1, $2, $3) \
                 ON CONFLICT (key, job_id) DO UPDATE SET attempt = excluded.attempt",
                key,
                job,
                attempt
            ))
            .await?;
        }
        for (job, attempt, at) in writes.started {
            tx.execute(sql!(
                "UPDATE steward_jobs SET attempted_at = $3 WHERE id = $1 AND attempt = $2",
                job,
                attempt,
                at
            ))
            .await?;
        }
        for (key, job, until) in writes.probes {
            tx.execute(sql!(
                "UPDATE steward_breakers SET probe_job = $2, probe_until = $3 WHERE key = $1",
                key,
                job,
                until
            ))
            .await?;
        }
        for (key, free) in writes.next_slot {
            tx.execute(sql!(
                "UPDATE steward_limits SET next_slot = $2 WHERE key = $1",
                key,
                free
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(Admitted { now, each })
    }

    async fn breaker_record(
        &self,
        outcome: &BreakerOutcome<'_>,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        breaker_record(self, outcome).await
    }

    async fn breakers_list(&self) -> StoreResult<Vec<BreakerRecord>> {
        breakers_list(self).await
    }
}

fn breaker_from(row: &dyn Row) -> StoreResult<Breaker> {
    Ok(Breaker {
        failures: row.int32("failures").map(i64::from)?,
        opened_at: row.opt_time("opened_at")?,
        open_ms: row.int("open_ms")?,
        probe_job: row.opt_int("probe_job")?,
        probe_until: row.opt_time("probe_until")?,
        changed_at: row.time("changed_at")?,
    })
}

const BREAKER_COLUMNS: &str =
    "key, failures, opened_at, open_ms, probe_job, probe_until, changed_at";

async fn clock(conn: &mut dyn Conn) -> StoreResult<DateTime<Utc>> {
    let clock = conn
        .dialect()
        .pick("SELECT clock_timestamp() AS now", "SELECT {now} AS now");
    conn.fetch_one(sql!(clock)).await?.time("now")
}

/// [`LimitStore::breaker_record`] and [`LimitStore::breakers_list`].
pub(crate) async fn breaker_record<S: SqlStore>(
    store: &S,
    outcome: &BreakerOutcome<'_>,
) -> StoreResult<Option<DateTime<Utc>>> {
    let mut tx = store.write().await?;
    if !outcome.ok {
        // A failure of a circuit without a row makes it first, closed, so that the lock below
        // holds it: failures recorded at once would otherwise each read "no row", and every
        // one but the last would be lost.
        tx.execute(sql!(
            "INSERT INTO steward_breakers (key, failures, open_ms, changed_at) \
             VALUES ($1, 0, $2, {now}) ON CONFLICT (key) DO NOTHING",
            outcome.key,
            i64::try_from(outcome.open_for.as_millis()).unwrap_or(i64::MAX)
        ))
        .await?;
    }
    let row = tx
        .fetch_optional(sql!(
            format!("SELECT {BREAKER_COLUMNS} FROM steward_breakers WHERE key = $1 {{for_update}}"),
            outcome.key
        ))
        .await?;
    let now = clock(&mut *tx).await?;
    let current = row.as_deref().map(breaker_from).transpose()?;
    if outcome.ok {
        // The dependency answered: closed (a closed circuit without a row stays without one).
        if current.is_some() {
            tx.execute(sql!(
                "UPDATE steward_breakers SET failures = 0, opened_at = NULL, probe_job = NULL, \
                     probe_until = NULL, changed_at = $2 WHERE key = $1",
                outcome.key,
                now
            ))
            .await?;
        }
        tx.commit().await?;
        return Ok(None);
    }
    let (after, _) = Breaker::after_failure(current.as_ref(), outcome, now);
    tx.execute(sql!(
        "UPDATE steward_breakers SET failures = $2, opened_at = $3, open_ms = $4, \
             probe_job = $5, probe_until = $6, changed_at = $7 WHERE key = $1",
        outcome.key,
        i32::try_from(after.failures).unwrap_or(i32::MAX),
        after.opened_at,
        after.open_ms,
        after.probe_job,
        after.probe_until,
        now
    ))
    .await?;
    tx.commit().await?;
    Ok(after
        .opened_at
        .map(|at| at + chrono::Duration::milliseconds(after.open_ms)))
}

pub(crate) async fn breakers_list<S: SqlStore>(store: &S) -> StoreResult<Vec<BreakerRecord>> {
    let mut conn = store.read().await?;
    let now = conn
        .fetch_one(sql!("SELECT {now} AS now"))
        .await?
        .time("now")?;
    let rows = conn
        .fetch_all(sql!(format!(
            "SELECT {BREAKER_COLUMNS} FROM steward_breakers ORDER BY key"
        )))
        .await?;
    rows.iter()
        .map(|row| Ok(breaker_from(&**row)?.record(row.text("key")?, now)))
        .collect()
}
