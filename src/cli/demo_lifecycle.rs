//! The module-lifecycle part of `steward demo`: the catalog is published, two tenants
//! provision `inventory`, an ALPHA module waits for approval, a module whose migration fails
//! ends in ERROR with nothing left behind, `inventory` is upgraded to 2.0.0 (a major: backed
//! up first) and rolled back. Every step is printed, and all of it is in `steward audit`.

use crate::domain::actor::Actor;
use crate::domain::catalog::Catalog;
use crate::domain::status::TenantModuleStatus;
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::store::domain::{NewTenant, TenantId};
use crate::store::{SharedStore, StoreError};
use std::time::Duration;

/// What can stop the lifecycle demo (it reports and carries on with the rest of the demo).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::domain::catalog::CatalogError),
    #[error("{0}")]
    Timeout(String),
}

pub(crate) struct LifecycleDemo {
    pub life: Lifecycle,
    pub store: SharedStore,
    pub catalog_dir: std::path::PathBuf,
    pub window: Duration,
}

/// The demo's Master Admin.
fn admin() -> Actor {
    Actor::master_admin("demo:admin")
}

/// The demo tenants' administrator.
fn tenant_admin() -> Actor {
    Actor::tenant_admin("demo:tenant")
}

impl LifecycleDemo {
    /// Run the scenario; `Ok(false)` when this database already went through it.
    pub async fn run(&self) -> Result<bool, DemoError> {
        // First the catalog as it was at each module's first release: tenants install those.
        let catalog = Catalog::load_dir(&self.catalog_dir)?;
        let (modules, versions) = self
            .life
            .load_catalog(&catalog.first_releases(), &admin())
            .await?;
        out!("  lifecycle: catalog loaded ({modules} modules, {versions} first releases)");
        let acme = match self.tenant("acme", true).await? {
            Some(id) => id,
            None => {
                out!(
                    "  lifecycle: already shown in this database ({} audit --tenant 1)",
                    super::demo::invocation()
                );
                return Ok(false);
            }
        };
        let globex = self.tenant("globex", false).await?.unwrap_or_default();

        for tenant in [acme, globex] {
            self.life
                .request(tenant, "inventory", &tenant_admin())
                .await?;
        }
        self.wait(&[acme, globex], "inventory", TenantModuleStatus::Enabled)
            .await?;
        out!("  lifecycle: inventory 1.0.0 provisioned for tenants {acme} and {globex}");

        let chatbot = self.life.request(acme, "chatbot", &tenant_admin()).await?;
        out!(
            "  lifecycle: chatbot (ALPHA) is {} for tenant {acme}",
            chatbot.module.status
        );
        self.life.approve(acme, "chatbot", &admin()).await?;
        self.wait(&[acme], "chatbot", TenantModuleStatus::Enabled)
            .await?;
        out!("  lifecycle: chatbot approved and provisioned");

        // alert_engine (it needs inventory) for globex, at its first release.
        self.life
            .request(globex, "alert_engine", &tenant_admin())
            .await?;
        self.wait(&[globex], "alert_engine", TenantModuleStatus::Enabled)
            .await?;
        out!("  lifecycle: alert_engine 1.0.0 provisioned for tenant {globex}");

        // Then the later releases arrive.
        let (_, versions) = self.life.load_catalog(&catalog, &admin()).await?;
        out!("  lifecycle: later releases published ({versions} versions in all)");

        let run = self.life.upgrade("inventory", "2.0.0", &admin()).await?;
        self.wait(&[acme, globex], "inventory", TenantModuleStatus::UpToDate)
            .await?;
        out!(
            "  lifecycle: inventory upgraded to 2.0.0 (run {run}; tables backed up to the \
             export storage under backups/inventory/)"
        );
        let back = self
            .life
            .rollback("inventory", self.window, &admin())
            .await?;
        out!(
            "  lifecycle: inventory rolled back to 1.0.0 for {} tenants",
            back.len()
        );
        // alert_engine 1.1.0 fails on purpose: the upgrade rolls itself back.
        let run = self.life.upgrade("alert_engine", "1.1.0", &admin()).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // The run ends `failed` with its error once the tenants are back where they were.
            if self
                .store
                .run_get(run)
                .await?
                .is_some_and(|r| matches!(r.state, crate::store::runs::RunState::Failed))
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::Timeout(
                    "the alert_engine upgrade did not end".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kept = self
            .wait(&[globex], "alert_engine", TenantModuleStatus::Enabled)
            .await?;
        let steward = super::demo::invocation();
        out!(
            "  lifecycle: alert_engine 1.1.0 failed and was rolled back (run {run} failed, \
             `{steward} runs list --state failed`): {}",
            kept.first()
                .and_then(|m| m.status_reason.clone())
                .unwrap_or_default()
        );
        out!("    {steward} tenant modules {acme}");
        out!("    {steward} audit --tenant {acme}");
        Ok(true)
    }

    /// Create a demo tenant; `None` if it exists already (the demo ran before).
    async fn tenant(&self, slug: &str, internal: bool) -> Result<Option<TenantId>, DemoError> {
        match self
            .store
            .tenant_create(&NewTenant {
                slug: format!("demo-{slug}"),
                name: slug.to_string(),
                internal_tester: internal,
                ..Default::default()
            })
            .await
        {
            Ok(tenant) => Ok(Some(tenant.id)),
            Err(err) if err.is_unique_violation() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn wait(
        &self,
        tenants: &[TenantId],
        module: &str,
        want: TenantModuleStatus,
    ) -> Result<Vec<crate::store::domain::TenantModuleRecord>, DemoError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut records = Vec::new();
            for tenant in tenants {
                if let Some(record) = self.store.tenant_module_get(*tenant, module).await? {
                    records.push(record);
                }
            }
            if records.len() == tenants.len() && records.iter().all(|r| r.status == want) {
                return Ok(records);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::Timeout(format!(
                    "{module} did not reach {want} in 60 s: {records:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
