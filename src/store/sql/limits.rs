//! [`LimitStore`] written once, for every [`SqlStore`].

use crate::store::StoreResult;
use crate::store::limits::{Admission, Admitted, LimitAsk, LimitStore};
use crate::store::sql::{SqlStore, sql};
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
            .flat_map(|a| [a.rate.as_ref().map(|r| &r.0), a.concurrency.as_ref().map(|c| &c.0)])
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
        let clock = tx.dialect().pick("SELECT clock_timestamp() AS now", "SELECT {now} AS now");
        let now = tx.fetch_one(sql!(clock)).await?.time("now")?;
        for free in next_slot.values_mut() {
            *free = (*free).max(now);
        }
        // Places held under each concurrency key; holds whose attempt ended are dropped.
        let mut running: HashMap<&str, i64> = HashMap::new();
        for ask in asks {
            let Some((key, _)) = &ask.concurrency else { continue };
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
            if let Some((key, limit)) = &ask.concurrency {
                let n = running.get(key.as_str()).copied().unwrap_or(0);
                if n >= *limit {
                    each.push(Admission::Full { running: n });
                    continue;
                }
            }
            let mut at = now;
            if let Some((key, every)) = &ask.rate {
                let kept = reserved
                    .remove(&(key.clone(), id))
                    .filter(|slot| *slot >= now - horizon);
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
}
