//! A subscription that becomes active: PostgreSQL's trigger on `subscriptions` (migration 0012)
//! enqueues a `plan_subscribed` job; its handler syncs the plan (the set-based sync, with its
//! dependency and availability rules) and starts the tenant's provisioning runs at once,
//! instead of waiting for the reconciler's next round.

use super::{Lifecycle, LifecycleError};
use crate::domain::actor::Actor;
use crate::domain::status::TenantModuleStatus;
use crate::queue::{JobContext, JobError, Registry};
use crate::store::domain::TenantId;
use serde::Deserialize;

/// The payload of `plan_subscribed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSubscribed {
    tenant_id: TenantId,
    plan: String,
}

impl Lifecycle {
    /// `tenant` is now subscribed to `plan`: sync the plan, then start the provisioning runs of
    /// the tenant's modules that wait for one. Returns how many runs it started.
    pub async fn subscription_activated(
        &self,
        tenant: TenantId,
        plan: &str,
    ) -> Result<usize, LifecycleError> {
        let actor = Actor::system("steward:subscription");
        self.sync_plans(Some(plan), None, &actor).await?;
        let mut started = 0;
        for module in self.store.tenant_modules(tenant).await? {
            if module.status == TenantModuleStatus::Provisioning {
                self.start_provisioning(&module).await?;
                started += 1;
            }
        }
        Ok(started)
    }
}

/// Register the `plan_subscribed` handler.
pub fn register_jobs(registry: &mut Registry, lifecycle: Lifecycle) {
    registry.register(
        "plan_subscribed",
        move |args: PlanSubscribed, _ctx: JobContext| {
            let lifecycle = lifecycle.clone();
            async move {
                lifecycle
                    .subscription_activated(args.tenant_id, &args.plan)
                    .await
                    .map(drop)
                    .map_err(|e| JobError::Retryable(e.to_string()))
            }
        },
    );
}
