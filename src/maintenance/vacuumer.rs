//! The vacuumer: reclaims the space of the row versions the queue leaves behind, once a table
//! carries more of them than [`Vacuumer::min_dead`] (see `store/postgres/vacuum.rs` for why
//! steward does not leave it to autovacuum). Without it, under a sustained load, the hot table
//! and its indexes grow for as long as the load lasts.

use super::Service;
use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use std::time::Duration;

/// See the module docs.
pub struct Vacuumer {
    pub every: Duration,
    /// Dead row versions a table must carry before it is vacuumed (also at least a tenth of its
    /// live rows, as autovacuum's scale factor).
    pub min_dead: u64,
}

impl Vacuumer {
    /// Default threshold: half a second of dead versions at full speed, a few MB of heap.
    pub const MIN_DEAD: u64 = 20_000;
}

#[async_trait]
impl Service for Vacuumer {
    fn name(&self) -> &'static str {
        "vacuumer"
    }
    fn interval(&self) -> Duration {
        self.every
    }
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64> {
        store.tables_vacuum(self.min_dead).await
    }
}
