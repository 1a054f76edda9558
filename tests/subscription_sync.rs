//! A subscription that becomes active gets its plan's modules at once (PostgreSQL): the
//! platform only updates its `subscriptions` row, with no call to steward; a trigger enqueues
//! `plan_subscribed` in that transaction, and the worker syncs the plan and provisions the
//! modules. Cancelling the subscription removes nothing.

mod common;

use common::lifecycle::{execute, module, publish, tenant, wait_for, workers};
use common::{Backend, fresh};
use std::time::Duration;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::Enabled;
use steward::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activated_subscription_provisions_its_plan_at_once() {
    let t = fresh(Backend::Postgres).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    t.store.plan_create("pro", "Pro").await.unwrap();
    t.store
        .plan_add_module("pro", "inventory", "test")
        .await
        .unwrap();
    t.store
        .subscription_create(acme, "pro", "inactive")
        .await
        .unwrap();
    assert!(t.store.tenant_modules(acme).await.unwrap().is_empty());

    // The provisioning workers, and the `lifecycle` queue's handler (as `steward worker` runs).
    let steps = workers(&t);
    let mut registry = Registry::new();
    steward::lifecycle::subscriptions::register_jobs(&mut registry, common::lifecycle::life(&t));
    let kind = common::repo_kinds().get("plan_subscribed").unwrap().clone();
    let runtime = Runtime::new(
        t.store.clone(),
        registry,
        common::kinds_of(&[kind]),
        // (A runtime names each queue it works with a width; 4 is plenty for these syncs.)
        RuntimeConfig::new(
            "subscriptions",
            vec![QueueConfig {
                name: "lifecycle".into(),
                concurrency: 4,
            }],
        ),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(stop.clone()));

    // The platform activates the subscription: one UPDATE, nothing else.
    execute(
        &t,
        &format!("UPDATE subscriptions SET status = 'active' WHERE tenant_id = {acme}"),
    )
    .await;
    let started = std::time::Instant::now();
    // Granted by the job (it does not exist before), then provisioned.
    while t
        .store
        .tenant_module_get(acme, "inventory")
        .await
        .unwrap()
        .is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(20), "never granted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(&t, &[acme], "inventory", Enabled).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "provisioned in {:?}, not at the reconciler's next round",
        started.elapsed()
    );

    // Cancelled: nothing is removed, nothing is enqueued.
    execute(
        &t,
        &format!("UPDATE subscriptions SET status = 'cancelled' WHERE tenant_id = {acme}"),
    )
    .await;
    let modules = t.store.tenant_modules(acme).await.unwrap();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0].status, Enabled);
    stop.cancel();
    handle.await.unwrap().unwrap();
    steps.stop().await;
    let plan_jobs = common::lifecycle::count(
        &t,
        "SELECT count(*) FROM steward_jobs_completed WHERE kind = 'plan_subscribed'",
    )
    .await;
    assert_eq!(
        plan_jobs, 1,
        "one job for the activation, none for the cancellation"
    );
    t.cleanup().await;
}
