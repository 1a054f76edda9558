//! The cron scheduler: fires each triggered workflow once per tick, however many scheduler
//! processes run.
//!
//! There is no leader to elect. Every scheduler computes the same ticks and starts each with
//! the idempotency key `cron:<workflow>:<tick>`; the run table's unique key lets exactly one
//! start win. A scheduler remembers (in memory) up to where it has fired; at start-up the
//! trigger's `missed` policy decides what happened while nothing ran: `skip` fires only ticks
//! from now on, `run_once` also fires the most recent past tick (within a day), once.

use super::definition::MissedTicks;
use super::engine::Engine;
use crate::maintenance;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Most ticks fired per workflow and round (a guard against a clock jump).
const MAX_TICKS_PER_ROUND: usize = 1000;

/// The idempotency key of a workflow's tick (the engine keeps keys per workflow, so the
/// stored key reads `<workflow>:cron:<tick>`).
pub fn tick_key(tick: DateTime<Utc>) -> String {
    format!("cron:{}", tick.to_rfc3339())
}

/// See the module docs.
pub struct CronScheduler {
    engine: Arc<Engine>,
    every: Duration,
    /// Per workflow: ticks up to this instant have been fired by this process.
    fired_until: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl CronScheduler {
    /// A scheduler checking for due ticks every `every`.
    pub fn new(engine: Arc<Engine>, every: Duration) -> Self {
        Self {
            engine,
            every,
            fired_until: Mutex::new(HashMap::new()),
        }
    }

    /// Fire every tick due by `now`; returns how many runs this call started.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut started = 0;
        for workflow in self.engine.workflows().iter() {
            let Some(trigger) = &workflow.trigger else {
                continue;
            };
            let since = {
                let mut fired = self
                    .fired_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *fired
                    .entry(workflow.name.clone())
                    .or_insert_with(|| match trigger.missed {
                        MissedTicks::Skip => now,
                        MissedTicks::RunOnce => {
                            // The latest tick at or before now, if there was one in the last day.
                            let day_ago = now - chrono::Duration::days(1);
                            let last = trigger
                                .schedule
                                .after(&day_ago.with_timezone(&trigger.timezone))
                                .map(|t| t.with_timezone(&Utc))
                                .take_while(|t| *t <= now)
                                .take(100_000)
                                .last();
                            last.map(|t| t - chrono::Duration::milliseconds(1))
                                .unwrap_or(now)
                        }
                    })
            };
            let due: Vec<DateTime<Utc>> = trigger
                .schedule
                .after(&since.with_timezone(&trigger.timezone))
                .map(|t| t.with_timezone(&Utc))
                .take_while(|t| *t <= now)
                .take(MAX_TICKS_PER_ROUND)
                .collect();
            for tick in &due {
                match self
                    .engine
                    .start(&workflow.name, serde_json::json!({}), Some(tick_key(*tick)))
                    .await
                {
                    Ok((_, true)) => started += 1,
                    Ok((_, false)) => {}
                    Err(crate::workflow::EngineError::Store(err)) => return Err(err),
                    Err(err) => {
                        tracing::error!(workflow = %workflow.name, error = %err, "cron run not started")
                    }
                }
            }
            if let Some(last) = due.last() {
                self.fired_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(workflow.name.clone(), *last);
            }
        }
        Ok(started)
    }
}

#[async_trait]
impl maintenance::Service for CronScheduler {
    fn name(&self) -> &'static str {
        "cron_scheduler"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    async fn run_once(&self, _store: &SharedStore) -> StoreResult<u64> {
        self.fire_due(Utc::now()).await
    }
}
