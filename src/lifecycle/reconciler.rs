//! The provisioning reconciler, a maintenance service of `steward worker`: every few seconds
//! it repairs tenant modules stuck in PROVISIONING (see [`Lifecycle::reconcile`]).

use super::{Lifecycle, LifecycleError};
use crate::maintenance::Service;
use crate::store::{SharedStore, StoreError, StoreResult};
use async_trait::async_trait;
use std::time::Duration;

pub struct ProvisioningReconciler {
    pub lifecycle: Lifecycle,
    /// A module PROVISIONING for this long without moving is looked at.
    pub idle: Duration,
    pub every: Duration,
}

#[async_trait]
impl Service for ProvisioningReconciler {
    fn name(&self) -> &'static str {
        "provisioning_reconciler"
    }

    fn interval(&self) -> Duration {
        self.every
    }

    async fn run_once(&self, _store: &SharedStore) -> StoreResult<u64> {
        match self.lifecycle.reconcile(self.idle).await {
            Ok(repaired) => Ok(repaired),
            Err(LifecycleError::Store(err)) => Err(err),
            Err(other) => Err(StoreError::InvalidInput(other.to_string())),
        }
    }
}
