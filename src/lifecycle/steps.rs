//! The step handlers of the lifecycle workflows (`workflows/module_provision.toml`):
//!
//! - `module.migrate`: creates the tenant's module version's tables in the database, once for
//!   all tenants of the module (see [`StepTx::module_migrate`](crate::store::StepTx)). A
//!   migration that fails leaves nothing behind and moves the tenant module to ERROR with the
//!   database's reason, in the same transaction; the run then ends without enabling it.
//! - `module.enable`: PROVISIONING → ENABLED, with what provisioning did as the record.
//!
//! Both act only on a tenant module that is PROVISIONING (a duplicate or stale run finds it
//! elsewhere and does nothing), and both write in the step's transaction, so a crash
//! between them repeats nothing and loses nothing.

use crate::domain::status::TenantModuleStatus;
use crate::queue::JobError;
use crate::store::StoreError;
use crate::store::domain::{StatusChange, TenantId};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use serde_json::{Value, json};

const ACTOR: &str = "workflow:module_provision";

fn params(ctx: &StepContext<'_>) -> Result<(TenantId, String), JobError> {
    let tenant_id = ctx
        .params
        .get("tenant_id")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| JobError::Fatal("parameter tenant_id must be a tenant id".into()))?;
    let module = ctx
        .params
        .get("module")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::Fatal("parameter module must be a module slug".into()))?;
    Ok((tenant_id, module.to_string()))
}

fn migrate(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let (tenant_id, module) = params(&ctx)?;
        let current = ctx
            .store()
            .tenant_module_get(tenant_id, &module)
            .await?
            .ok_or_else(|| {
                JobError::Fatal(format!("tenant {tenant_id} has not requested `{module}`"))
            })?;
        if current.status != TenantModuleStatus::Provisioning {
            return Ok(json!({"skipped": format!("the module is {}", current.status)}));
        }
        let version_id = current
            .version_id
            .ok_or_else(|| JobError::Fatal(format!("`{module}` has no version to provision")))?;
        let tx = ctx.tx().await?;
        match tx.module_migrate(&module, version_id).await {
            Ok(report) => serde_json::to_value(report).map_err(|e| JobError::Fatal(e.to_string())),
            Err(StoreError::Migration(reason)) => {
                let reason = format!("provisioning failed: {reason}");
                tx.tenant_module_move(&StatusChange {
                    tenant_id,
                    module: &module,
                    to: TenantModuleStatus::Error,
                    from: Some(TenantModuleStatus::Provisioning),
                    reason: Some(&reason),
                    actor: ACTOR,
                    action: "module.provision_failed",
                    provisioning: None,
                })
                .await?;
                Ok(json!({"failed": reason}))
            }
            Err(StoreError::Domain(rule)) => Err(JobError::Fatal(rule.to_string())),
            Err(other) => Err(other.into()),
        }
    })
}

fn enable(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let input = ctx.input.clone();
        if input.get("failed").is_some() || input.get("skipped").is_some() {
            return Ok(input);
        }
        let (tenant_id, module) = params(&ctx)?;
        ctx.tx()
            .await?
            .tenant_module_move(&StatusChange {
                tenant_id,
                module: &module,
                to: TenantModuleStatus::Enabled,
                from: Some(TenantModuleStatus::Provisioning),
                reason: None,
                actor: ACTOR,
                action: "module.enable",
                provisioning: Some(&input),
            })
            .await?;
        Ok(input)
    })
}

/// Register the lifecycle step handlers.
pub fn register(steps: &mut StepRegistry) {
    steps.register("module.migrate", migrate);
    steps.register("module.enable", enable);
}
