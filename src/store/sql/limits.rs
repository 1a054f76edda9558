//! [`LimitStore`] written once, for every [`SqlStore`].

use crate::store::StoreResult;
use crate::store::limits::{
    Admission, Admitted, BreakerOutcome, BreakerRecord, LimitAsk, LimitStore,
};
use crate::store::sql::{Conn, Row, SqlStore, sql};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A reservation whose job has not come back for this long is dropped (it was cancelled or
/// deleted meanwhile): its start went unused.
const STALE_RESERVATION: chrono::Duration = chrono::Duration::minutes(10);

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl<S: SqlStore> LimitStore for S {
    async fn limits_admit(&self, asks: &[LimitAsk], horizon: Duration) -> StoreResult<Admitted> {
        let horizon = chrono_of(horizon);
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
        let mut next_slot: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for key in &keys {
            tx.execute(sql!(
                "INSERT INTO steward_limits (key, next_slot) VALUES ($1, {now}) \
                 ON CONFLICT (key) DO NOTHING",
                *key
            ))
            .await?;
            let row = tx
                .fetch_one(sql!(
                    "SELECT next_slot FROM steward_limits WHERE key = $1 {for_update}",
                    *key
                ))
                .await?;
            next_slot.insert(key, row.time("next_slot")?);
        }
        // The clock once the keys are ours (PostgreSQL's `now()` is when the transaction
        // began, before it waited for them): starts are recorded after the holds they saw.
        let now = clock(&mut *tx).await?;
        for free in next_slot.values_mut() {
            *free = (*free).max(now);
        }
        // Places held under each concurrency key; holds whose attempt ended are dropped.
        let mut running: HashMap<&str, i64> = HashMap::new();
        for ask in asks {
            let Some((key, _)) = &ask.concurrency else {
                continue;
            };
            if running.contains_key(key.as_str()) {
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
            running.insert(key, n);
        }
        // Circuits that have failed, locked: open ones keep their jobs away.
        let breaker_keys: Vec<String> = asks
            .iter()
            .filter_map(|a| a.breaker.as_ref().map(|b| b.0.clone()))
            .collect();
        let mut breakers: BTreeMap<String, Breaker> = BTreeMap::new();
        if !breaker_keys.is_empty() {
            for row in tx
                .fetch_all(sql!(
                    "SELECT key, failures, opened_at, open_ms, probe_job, probe_until, changed_at \
                     FROM steward_breakers WHERE key = ANY($1) ORDER BY key {for_update}",
                    breaker_keys
                ))
                .await?
            {
                breakers.insert(row.text("key")?, Breaker::from_row(&*row)?);
            }
        }
        let mut probes: Vec<(String, i64, DateTime<Utc>)> = Vec::new();
        // Starts reserved earlier by these jobs.
        tx.execute(sql!(
            "DELETE FROM steward_limit_slots WHERE slot < $1",
            now - STALE_RESERVATION
        ))
        .await?;
        let ids: Vec<i64> = asks.iter().map(|a| a.lease.id).collect();
        let mut reserved: HashMap<(String, i64), DateTime<Utc>> = HashMap::new();
        for row in tx
            .fetch_all(sql!(
                "SELECT key, job_id, slot FROM steward_limit_slots WHERE job_id = ANY($1)",
                ids
            ))
            .await?
        {
            reserved.insert((row.text("key")?, row.int("job_id")?), row.time("slot")?);
        }
        let mut each = Vec::with_capacity(asks.len());
        for ask in asks {
            let id = ask.lease.id;
            if let Some((key, probe_for)) = &ask.breaker
                && let Some(breaker) = breakers.get_mut(key)
                && let Some(opened_at) = breaker.opened_at
            {
                let probe_at = opened_at + chrono::Duration::milliseconds(breaker.open_ms);
                if now < probe_at {
                    each.push(Admission::Open { until: probe_at });
                    continue;
                }
                match (breaker.probe_job, breaker.probe_until) {
                    (Some(job), Some(until)) if job != id && until > now => {
                        // Another job probes. Its deadline is its timeout, but a probe
                        // usually answers in a moment: look again soon, not at the deadline.
                        each.push(Admission::Open {
                            until: until.min(now + chrono_of(PROBE_RECHECK)),
                        });
                        continue;
                    }
                    _ if ask.last_attempt => {
                        // Another job probes; this one looks again in a moment.
                        each.push(Admission::Open {
                            until: now + chrono::Duration::seconds(1),
                        });
                        continue;
                    }
                    _ => {
                        // Half-open: this job is the probe.
                        let until = now + chrono_of(*probe_for);
                        breaker.probe_job = Some(id);
                        breaker.probe_until = Some(until);
                        probes.push((key.clone(), id, until));
                    }
                }
            }
            if let Some((key, limit)) = &ask.concurrency {
                let n = running.get(key.as_str()).copied().unwrap_or(0);
                if n >= *limit {
                    each.push(Admission::Full { running: n });
                    continue;
                }
            }
            let mut at = now;
            if let Some((key, every)) = &ask.rate {
                // A job back after its reserved start has passed takes the next free one:
                // starting it now could put two starts closer than `every`.
                let kept = reserved
                    .remove(&(key.clone(), id))
                    .filter(|slot| *slot >= now);
                let slot = match kept {
                    Some(slot) => slot,
                    None => {
                        let free = next_slot.entry(key.as_str()).or_insert(now);
                        let slot = *free;
                        *free = slot + chrono_of(*every);
                        slot
                    }
                };
                if slot - now > horizon {
                    if kept.is_none() {
                        tx.execute(sql!(
                            "INSERT INTO steward_limit_slots (key, job_id, slot) VALUES ($1, $2, $3) \
                             ON CONFLICT (key, job_id) DO UPDATE SET slot = excluded.slot",
                            key,
                            id,
                            slot
                        ))
                        .await?;
                    }
                    each.push(Admission::Later { slot });
                    continue;
                }
                tx.execute(sql!(
                    "DELETE FROM steward_limit_slots WHERE key = $1 AND job_id = $2",
                    key,
                    id
                ))
                .await?;
                at = slot.max(now);
            }
            if let Some((key, _)) = &ask.concurrency {
                tx.execute(sql!(
                    "INSERT INTO steward_limit_holds (key, job_id, attempt) VALUES ($1, $2, $3) \
                     ON CONFLICT (key, job_id) DO UPDATE SET attempt = excluded.attempt",
                    key,
                    id,
                    ask.lease.attempt
                ))
                .await?;
                *running.entry(key.as_str()).or_insert(0) += 1;
            }
            // The attempt starts when the limits let it, not when it was fetched.
            tx.execute(sql!(
                "UPDATE steward_jobs SET attempted_at = $3 WHERE id = $1 AND attempt = $2",
                id,
                ask.lease.attempt,
                at
            ))
            .await?;
            each.push(Admission::Start { at });
        }
        for (key, job, until) in probes {
            tx.execute(sql!(
                "UPDATE steward_breakers SET probe_job = $2, probe_until = $3 WHERE key = $1",
                key,
                job,
                until
            ))
            .await?;
        }
        for (key, free) in next_slot {
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

/// A circuit breaker's row.
struct Breaker {
    failures: i64,
    opened_at: Option<DateTime<Utc>>,
    open_ms: i64,
    probe_job: Option<i64>,
    probe_until: Option<DateTime<Utc>>,
    changed_at: DateTime<Utc>,
}

impl Breaker {
    fn from_row(row: &dyn Row) -> StoreResult<Self> {
        Ok(Self {
            failures: row.int32("failures").map(i64::from)?,
            opened_at: row.opt_time("opened_at")?,
            open_ms: row.int("open_ms")?,
            probe_job: row.opt_int("probe_job")?,
            probe_until: row.opt_time("probe_until")?,
            changed_at: row.time("changed_at")?,
        })
    }

    fn record(&self, key: String, now: DateTime<Utc>) -> BreakerRecord {
        let probe_at = self
            .opened_at
            .map(|at| at + chrono::Duration::milliseconds(self.open_ms));
        let state = match probe_at {
            None => "closed",
            Some(at) if at > now => "open",
            Some(_) => "half_open",
        };
        BreakerRecord {
            key,
            state: state.into(),
            failures: self.failures,
            opened_at: self.opened_at,
            probe_at,
            changed_at: self.changed_at,
        }
    }
}

/// How long a job waits, while another job probes its circuit, before it asks again.
const PROBE_RECHECK: Duration = Duration::from_secs(5);

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
    let row = tx
        .fetch_optional(sql!(
            format!("SELECT {BREAKER_COLUMNS} FROM steward_breakers WHERE key = $1 {{for_update}}"),
            outcome.key
        ))
        .await?;
    let now = clock(&mut *tx).await?;
    let current = row.as_deref().map(Breaker::from_row).transpose()?;
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
    let open_ms = i64::try_from(outcome.open_for.as_millis()).unwrap_or(i64::MAX);
    let failures = current.as_ref().map_or(0, |b| b.failures) + 1;
    let was_probe = current.as_ref().and_then(|b| b.probe_job) == Some(outcome.job_id);
    let opened_at = match current.as_ref().and_then(|b| b.opened_at) {
        // A failed probe opens it again, for another period.
        Some(_) if was_probe => Some(now),
        Some(at) => Some(at),
        None if failures >= i64::from(outcome.failures_to_open) => Some(now),
        None => None,
    };
    tx.execute(sql!(
        "INSERT INTO steward_breakers (key, failures, opened_at, open_ms, probe_job, probe_until, \
             changed_at) VALUES ($1, $2, $3, $4, NULL, NULL, $5) \
         ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, \
             opened_at = excluded.opened_at, open_ms = excluded.open_ms, \
             probe_job = CASE WHEN $6 THEN NULL ELSE steward_breakers.probe_job END, \
             probe_until = CASE WHEN $6 THEN NULL ELSE steward_breakers.probe_until END, \
             changed_at = excluded.changed_at",
        outcome.key,
        i32::try_from(failures).unwrap_or(i32::MAX),
        opened_at,
        open_ms,
        now,
        was_probe
    ))
    .await?;
    tx.commit().await?;
    Ok(opened_at.map(|at| at + chrono::Duration::milliseconds(open_ms)))
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
        .map(|row| Ok(Breaker::from_row(&**row)?.record(row.text("key")?, now)))
        .collect()
}
