//! The stager: scheduled jobs whose `run_at` came and retryable jobs whose backoff passed
//! become available, and their queues' producers are woken.

use super::Service;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use std::time::Duration;

/// See the module docs.
pub struct Stager {
    pub every: Duration,
}

#[async_trait]
impl Service for Stager {
    fn name(&self) -> &'static str {
        "stager"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let staged = store.jobs_stage_due(5000).await?.len() as u64;
            total += staged;
            if staged < 5000 {
                return Ok(total);
            }
        }
    }
}
