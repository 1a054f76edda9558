//! Deprecation webhooks (SPEC §4.2.5). A module moved to DEPRECATED or RETIRED
//! ([`Lifecycle::set_maturity`](super::Lifecycle::set_maturity)) starts a `module_deprecation`
//! run (`workflows/module_deprecation.toml`):
//!
//! - `deprecation.notify` fans out one `webhook_deliver` job per impacted tenant (every tenant
//!   holding the module, but ARCHIVED ones). The body is fixed in the job, so each retry
//!   sends the same bytes with the same delivery id: a receiver deduplicates by that id.
//! - `deprecation.apply` runs once every delivery ended (delivered or dead-lettered): on
//!   RETIRED, a tenant that had already turned the module off (SUSPENDED, PENDING_APPROVAL,
//!   ERROR) becomes DISABLED, and, when the retirement is forced by policy, a tenant still
//!   using it (ENABLED, UP_TO_DATE) becomes SUSPENDED. DEPRECATED only notifies.
//! - `await_sunset` (the built-in `wait.until`) then waits, holding no worker, until a
//!   DEPRECATED module's sunset date (nothing to wait for without one, or for RETIRED).
//! - `deprecation.retire_at_sunset` re-reads the module when it wakes: still DEPRECATED with
//!   the same sunset date, it is retired through the maturity operation (forced or not, as
//!   the deprecation said), which starts the RETIRED run; if either changed, nothing happens.
//!
//! A delivery is a `webhook_deliver` job ([`super::webhook`]): signed, sent only to public
//! addresses, retried with the kind's backoff and dead-lettered after its last attempt.

use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::queue::JobError;
use crate::store::domain::{StatusChange, TenantId};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use serde_json::json;

const ACTOR: &str = "workflow:module_deprecation";

fn fatal(e: impl std::fmt::Display) -> JobError {
    JobError::Fatal(e.to_string())
}

fn maturity_param(ctx: &StepContext<'_>) -> Result<Maturity, JobError> {
    ctx.params["maturity"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| fatal("parameter maturity must be DEPRECATED or RETIRED"))
}

fn module_param<'a>(ctx: &'a StepContext<'_>) -> Result<&'a str, JobError> {
    ctx.params["module"]
        .as_str()
        .ok_or_else(|| fatal("parameter module must be a module slug"))
}

fn forced(ctx: &StepContext<'_>) -> bool {
    ctx.params["force"] == json!(true) || ctx.params["force"] == json!("true")
}

/// What RETIRED does to a tenant module in `status` (`None`: nothing).
pub fn retirement_effect(status: TenantModuleStatus, force: bool) -> Option<TenantModuleStatus> {
    use TenantModuleStatus::*;
    match status {
        Suspended | PendingApproval | Error => Some(Disabled),
        Enabled | UpToDate if force => Some(Suspended),
        _ => None,
    }
}

/// `deprecation.notify`: one delivery job per impacted tenant.
fn notify(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let module = module_param(&ctx)?.to_string();
        let maturity = maturity_param(&ctx)?;
        let force = forced(&ctx);
        let record = ctx
            .store()
            .module_get(&module)
            .await?
            .ok_or_else(|| fatal(format!("no module `{module}`")))?;
        let event = match maturity {
            Maturity::Retired => "module.retired",
            _ => "module.deprecated",
        };
        let occurred_at = chrono::Utc::now().to_rfc3339();
        let mut deliveries = Vec::new();
        let tenants = ctx.store().module_tenants(&module).await?;
        let ids: Vec<_> = tenants.iter().map(|tm| tm.tenant_id).collect();
        // Each delivery carries its endpoint's host: deliveries are limited per host.
        let hosts: std::collections::HashMap<_, _> = ctx
            .store()
            .tenants_get(&ids)
            .await?
            .into_iter()
            .filter_map(|t| {
                let url = reqwest::Url::parse(t.webhook_url.as_deref()?).ok()?;
                Some((t.id, url.host_str()?.to_string()))
            })
            .collect();
        for tm in tenants {
            if tm.status == TenantModuleStatus::Archived {
                continue;
            }
            let delivery_id = format!("run{}-tenant{}", ctx.run_id, tm.tenant_id);
            let effect = match maturity {
                Maturity::Retired => retirement_effect(tm.status, force),
                _ => None,
            };
            let body = json!({
                "event": event,
                "delivery_id": delivery_id,
                "tenant_id": tm.tenant_id,
                "module": module,
                "maturity": maturity.to_string(),
                "successor": record.successor,
                "sunset_date": record.sunset_date,
                "tenant_status": tm.status.to_string(),
                "new_status": effect.map(|s| s.to_string()),
                "occurred_at": occurred_at,
            });
            deliveries.push((
                tm.tenant_id.to_string(),
                json!({"delivery_id": delivery_id, "tenant_id": tm.tenant_id,
                       "event": event, "body": body.to_string(),
                       "host": hosts.get(&tm.tenant_id)}),
            ));
        }
        let count = ctx.fan_out("webhook_deliver", deliveries).await?;
        // What `await_sunset` waits for: a DEPRECATED module's sunset date.
        let sunset = match maturity {
            Maturity::Deprecated => record.sunset_date.clone(),
            _ => None,
        };
        Ok(
            json!({"module": module, "maturity": maturity.to_string(), "deliveries": count,
                  "sunset_date": sunset}),
        )
    })
}

/// `deprecation.apply`: RETIRED's effect on every tenant of the module.
fn apply(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let mut output = ctx.input.clone();
        if maturity_param(&ctx)? != Maturity::Retired {
            output["changed"] = json!(0);
            return Ok(output);
        }
        let module = module_param(&ctx)?.to_string();
        let force = forced(&ctx);
        let tenants: Vec<(TenantId, TenantModuleStatus, TenantModuleStatus)> = ctx
            .store()
            .module_tenants(&module)
            .await?
            .into_iter()
            .filter_map(|tm| {
                retirement_effect(tm.status, force).map(|to| (tm.tenant_id, tm.status, to))
            })
            .collect();
        let reason = if force {
            "the module was retired by policy"
        } else {
            "the module was retired"
        };
        let tx = ctx.tx().await?;
        for (tenant_id, from, to) in &tenants {
            tx.tenant_module_move(
                &StatusChange::new(
                    *tenant_id,
                    &module,
                    Some(*from),
                    *to,
                    ACTOR,
                    "module.retire",
                )
                .because(reason),
            )
            .await?;
        }
        output["changed"] = json!(tenants.len());
        Ok(output)
    })
}

/// `deprecation.retire_at_sunset`: once the sunset date has passed (`await_sunset`), retire a
/// module still DEPRECATED with that same date; otherwise change nothing and say why.
fn retire_at_sunset(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let Some(awaited) = ctx.input["sunset_date"].as_str().map(str::to_string) else {
            return Ok(json!({"retired": false, "reason": "no sunset date to wait for"}));
        };
        let module = module_param(&ctx)?.to_string();
        let record = ctx
            .store()
            .module_get(&module)
            .await?
            .ok_or_else(|| fatal(format!("no module `{module}`")))?;
        let unchanged = |reason: String| Ok(json!({"retired": false, "reason": reason}));
        if record.maturity != Maturity::Deprecated {
            return unchanged(format!("the module is {} now", record.maturity));
        }
        if record.sunset_date.as_deref() != Some(awaited.as_str()) {
            return unchanged(format!(
                "its sunset date moved from {awaited} to {}",
                record.sunset_date.as_deref().unwrap_or("none")
            ));
        }
        let engine = ctx
            .engine()
            .ok_or_else(|| JobError::Interrupted("the engine is shutting down".into()))?;
        let lifecycle = super::Lifecycle::new(engine).map_err(fatal)?;
        let actor = crate::domain::actor::Actor::master_admin(format!(
            "sunset of `{module}` (run {})",
            ctx.run_id
        ));
        let (_, run) = lifecycle
            .set_maturity(&module, Maturity::Retired, forced(&ctx), &actor)
            .await
            .map_err(|e| match e {
                super::LifecycleError::Store(err) => err.into(),
                other => fatal(other),
            })?;
        Ok(json!({"retired": true, "sunset_date": awaited, "retire_run": run}))
    })
}

/// Register the deprecation steps.
pub fn register(steps: &mut StepRegistry) {
    steps.register("deprecation.retire_at_sunset", retire_at_sunset);
    steps.register("deprecation.notify", notify);
    steps.register("deprecation.apply", apply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retirement_disables_unused_and_suspends_used_only_when_forced() {
        use TenantModuleStatus::*;
        assert_eq!(retirement_effect(Suspended, false), Some(Disabled));
        assert_eq!(retirement_effect(Enabled, false), None);
        assert_eq!(retirement_effect(Enabled, true), Some(Suspended));
        assert_eq!(retirement_effect(UpToDate, true), Some(Suspended));
        assert_eq!(retirement_effect(Disabled, true), None);
        assert_eq!(retirement_effect(Archived, true), None);
        for status in [Suspended, PendingApproval, Error, Enabled, UpToDate] {
            if let Some(to) = retirement_effect(status, true) {
                assert!(
                    status.check_move(to).is_ok(),
                    "{status} → {to} must be allowed"
                );
            }
        }
    }
}
