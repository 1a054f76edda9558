//! The pruner: deletes completed jobs after their retention, and dead or cancelled jobs after
//! theirs (longer, so operators can still inspect them), in batches.

use super::Service;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use chrono::Utc;
use std::time::Duration;

/// See the module docs.
pub struct Pruner {
    pub every: Duration,
    pub completed_retention: Duration,
    pub dead_retention: Duration,
}

#[async_trait]
impl Service for Pruner {
    fn name(&self) -> &'static str {
        "pruner"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64> {
        let now = Utc::now();
        let completed_before =
            now - chrono::Duration::from_std(self.completed_retention).unwrap_or_default();
        let dead_before = now - chrono::Duration::from_std(self.dead_retention).unwrap_or_default();
        let mut total = 0;
        loop {
            let pruned = store.jobs_prune(completed_before, dead_before).await?;
            total += pruned;
            if pruned == 0 {
                return Ok(total);
            }
        }
    }
}
