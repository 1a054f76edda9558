//! The rescuer: running jobs whose worker stopped heartbeating (killed, machine gone, stuck
//! network) become available again within one interval of their lease expiring. The lost
//! attempt is recorded and counted; out of attempts, the job goes to the dead-letter queue.

use super::Service;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use std::time::Duration;

/// See the module docs.
pub struct Rescuer {
    pub every: Duration,
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
        let mut total = 0;
        loop {
            let rescued = store.jobs_rescue_expired(1000).await?.len() as u64;
            total += rescued;
            if rescued < 1000 {
                return Ok(total);
            }
        }
    }
}
