//! The rescuer: running jobs whose worker stopped heartbeating (killed, machine gone, stuck
//! network) become available again within one interval of their lease expiring. The lost
//! attempt is recorded and counted; out of attempts, the job goes to the dead-letter queue.
//!
//! After a database outage every lease may have expired, though their workers are alive and
//! only could not heartbeat. So once the rescuer has seen the database fail, it rescues nothing
//! until `grace` (one lease) after the database answers again: every live worker has
//! heartbeated by then and extended its own leases, and only the dead ones' are rescued.
//!
//! A database that answers but whose writer was held for long does the same to heartbeats
//! (SQLite: a long step of another process holds the one writer lock; PostgreSQL: the
//! bookkeeping pool ran dry): a round that waited more than a quarter of `grace` for the
//! writer rescues nothing and holds off for `grace` as after an outage.
//!
//! The rescuer runs on the leader only, and a node that was not leading during an outage saw
//! nothing of it in its own rounds (its elector lost the leadership when the database went
//! away; the node that wins it when the database comes back may be another one). Its elector
//! did see it: so a rescuer that starts leading (its first round after a gap) holds off for
//! `grace` too when its elector failed to reach the database lately. A leader killed while the
//! database is up is replaced, and its jobs rescued, without waiting.

use super::Service;
use crate::store::{Rescue, SharedStore, StoreResult};
use async_trait::async_trait;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// See the module docs.
pub struct Rescuer {
    every: Duration,
    grace: Duration,
    state: Mutex<Health>,
    /// When the last round ended; `None` before the first one.
    last_round: Mutex<Option<Instant>>,
    /// What this process's elector saw of the database (none: it always leads).
    leadership: Option<super::elector::Leadership>,
}

/// What the rescuer last saw of the database.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Up,
    /// A round failed: the database is (or was) unreachable.
    Down,
    /// It answers again; rescue from this instant on.
    Recovering {
        until: Instant,
    },
}

impl Rescuer {
    /// A rescuer looking every `every`, holding off for `grace` after an outage.
    pub fn new(every: Duration, grace: Duration) -> Self {
        Self {
            every,
            grace,
            state: Mutex::new(Health::Up),
            last_round: Mutex::new(None),
            leadership: None,
        }
    }

    /// Record the end of a round; true when the one before ended long enough ago that this
    /// node was not running rounds in between (it did not lead, or just started).
    fn after_a_gap(&self) -> bool {
        let mut last = self
            .last_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let gap = last.is_none_or(|at| now.duration_since(at) > self.every * 3);
        *last = Some(now);
        gap
    }

    fn health(&self) -> Health {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, health: Health) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }
}

#[async_trait]
impl Service for Rescuer {
    fn name(&self) -> &'static str {
        "rescuer"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    fn led_by(&mut self, leadership: &super::elector::Leadership) {
        self.leadership = Some(leadership.clone());
    }
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64> {
        let rescued = self.round(store).await;
        self.after_a_gap();
        rescued
    }
}

impl Rescuer {
    async fn round(&self, store: &SharedStore) -> StoreResult<u64> {
        let outage_seen = self
            .leadership
            .as_ref()
            .is_some_and(|l| l.saw_outage_within(self.grace * 2));
        if self.after_a_gap() && outage_seen {
            // Leading from now on, just after an outage this node's elector saw: live workers
            // get one lease to extend their own leases first.
            tracing::info!(grace = ?self.grace, "rescuing nothing until live workers have \
                extended their leases (this node starts leading after an outage)");
            self.set(Health::Recovering {
                until: Instant::now() + self.grace,
            });
            return Ok(0);
        }
        match self.health() {
            Health::Down => {
                store.ping().await?;
                tracing::info!(
                    grace = ?self.grace,
                    "database reachable again: rescuing nothing until live workers have \
                     extended their leases"
                );
                self.set(Health::Recovering {
                    until: Instant::now() + self.grace,
                });
                return Ok(0);
            }
            Health::Recovering { until } if Instant::now() < until => return Ok(0),
            _ => self.set(Health::Up),
        }
        let mut total = 0;
        loop {
            let rescued = match store.jobs_rescue_expired(1000, self.grace / 4).await {
                Ok(Rescue::Rescued(queues)) => queues.len() as u64,
                Ok(Rescue::WriterStalled { waited }) => {
                    tracing::info!(
                        ?waited,
                        grace = ?self.grace,
                        "the database's writer was held for long: rescuing nothing until live \
                         workers have extended the leases they could not meanwhile"
                    );
                    self.set(Health::Recovering {
                        until: Instant::now() + self.grace,
                    });
                    return Ok(total);
                }
                Err(err) => {
                    if err.is_transient() {
                        self.set(Health::Down);
                    }
                    return Err(err);
                }
            };
            total += rescued;
            if rescued < 1000 {
                return Ok(total);
            }
        }
    }
}
