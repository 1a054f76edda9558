//! The rescuer: running jobs whose worker stopped heartbeating (killed, machine gone, stuck
//! network) become available again within one interval of their lease expiring. The lost
//! attempt is recorded and counted; out of attempts, the job goes to the dead-letter queue.
//!
//! After a database outage every lease may have expired, though their workers are alive and
//! only could not heartbeat. So once the rescuer has seen the database fail, it rescues nothing
//! until `grace` (one lease) after the database answers again: every live worker has
//! heartbeated by then and extended its own leases, and only the dead ones' are rescued.

use super::Service;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// See the module docs.
pub struct Rescuer {
    every: Duration,
    grace: Duration,
    state: Mutex<Health>,
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
        }
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
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64> {
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
            let rescued = match store.jobs_rescue_expired(1000).await {
                Ok(queues) => queues.len() as u64,
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
