//! `provision_tenants`: N tenants request a two-table GA module; the `module_provision`
//! workflow (from `workflows/`) creates the tables once and enables every tenant. Timed from
//! the first request to the last tenant ENABLED, with the workers already running.

use super::FreshStore;
use crate::config::Settings;
use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::kinds::KindCatalog;
use crate::lifecycle::Lifecycle;
use crate::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use crate::store::domain::{ModuleRecord, NewTenant, NewVersion};
use crate::workflow::{Engine, RunSweeper, WorkflowCatalog};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const MODULE: &str = "bench_inventory";

pub(super) async fn provision_tenants(
    fresh: &FreshStore,
    settings: &Settings,
    tenants: usize,
) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let store = &fresh.store;
    let kinds = KindCatalog::load_dir(&settings.jobs_dir).map_err(|e| err(&e))?;
    let steps = crate::lifecycle::step_registry(settings.exports());
    let workflows =
        WorkflowCatalog::load_dir(&settings.workflows_dir, &kinds, &|h| steps.contains(h))
            .map_err(|e| err(&e))?;
    let engine = Engine::new(Arc::clone(store), workflows, kinds.clone(), steps);
    let life = Lifecycle::new(Arc::clone(&engine)).map_err(|e| err(&e))?;

    // Set-up, not timed: the module and the tenants.
    store
        .module_put(
            &ModuleRecord {
                slug: MODULE.into(),
                name: "Bench inventory".into(),
                description: String::new(),
                pricing_tier: String::new(),
                maturity: Maturity::Ga,
                dependencies: Vec::new(),
                data_retention_days: None,
                successor: None,
                sunset_date: None,
            },
            "bench",
        )
        .await
        .map_err(|e| err(&e))?;
    let tables = [
        "tenant_bench_inventory_items",
        "tenant_bench_inventory_moves",
    ];
    let up_sql: String = tables
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE {t} (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, body TEXT, \
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (tenant_id, id));"
            )
        })
        .collect();
    store
        .version_publish(
            MODULE,
            &NewVersion {
                version: "1.0.0".into(),
                major: 1,
                minor: 0,
                patch: 0,
                build_hash: "bench".into(),
                changelog: String::new(),
                up_sql,
                down_sql: String::new(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: tables.iter().map(|t| t.to_string()).collect(),
            },
        )
        .await
        .map_err(|e| err(&e))?;
    let mut ids = Vec::with_capacity(tenants);
    for i in 0..tenants {
        let tenant = store
            .tenant_create(&NewTenant {
                slug: format!("bench-{i}"),
                name: format!("Bench {i}"),
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        ids.push(tenant.id);
    }

    let mut registry = Registry::new();
    engine.register_jobs(&mut registry);
    let step_kind = kinds
        .get("workflow_step")
        .ok_or("jobs/workflow_step.toml is missing")?
        .clone();
    let mut step_kinds = KindCatalog::default();
    step_kinds.add(step_kind).map_err(|e| err(&e))?;
    let config = RuntimeConfig::new(
        "bench-provision",
        vec![QueueConfig {
            name: "workflows".into(),
            concurrency: 64,
        }],
    );
    let runtime = Runtime::new(Arc::clone(store), registry, step_kinds, config)
        .map_err(|e| err(&e))?
        .with_service(Box::new(RunSweeper {
            engine: Arc::clone(&engine),
            every: Duration::from_millis(200),
        }));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));

    let bench_actor = crate::domain::actor::Actor::tenant_admin("bench");
    let started = Instant::now();
    let requests: Vec<_> = futures::stream::iter(ids.iter().copied())
        .map(|id| life.request(id, MODULE, &bench_actor))
        .buffer_unordered(16)
        .collect()
        .await;
    for request in requests {
        request.map_err(|e| err(&e))?;
    }
    let requested = started.elapsed().as_secs_f64();
    loop {
        let records = store.module_tenants(MODULE).await.map_err(|e| err(&e))?;
        let pending = records
            .iter()
            .filter(|r| r.status == TenantModuleStatus::Provisioning)
            .count();
        if pending == 0 {
            let failed: Vec<_> = records
                .iter()
                .filter(|r| r.status != TenantModuleStatus::Enabled)
                .collect();
            if !failed.is_empty() {
                return Err(format!("provisioning failed: {failed:?}"));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await.map_err(|e| err(&e))?.map_err(|e| err(&e))?;
    Ok(json!({
        "tenants": tenants,
        "tables_per_module": tables.len(),
        "seconds": secs,
        "requests_seconds": requested,
        "provisionings_per_s": (tenants as f64 / secs).round(),
    }))
}
