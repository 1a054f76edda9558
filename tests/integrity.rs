//! The lifecycle's rules hold on every path, and the state tells the truth (issue #12), on
//! both backends: a tenant cannot skip approval, undo a rejection, turn an ERROR module on or
//! lift a suspension; a refused change writes nothing; dependencies are enabled first
//! everywhere; a request and its admission are one write; cancel compensates; a rolled-back
//! upgrade is a failed run; a dead step job is retried through its run; a tenant that missed
//! an upgrade catches up when it is turned back on; an inconsistent record is repaired.

mod common;
// The upgrade whose backup waits for its storage to come up (not every helper is used here).
#[path = "common/s3.rs"]
#[allow(dead_code)]
mod s3;

use common::lifecycle::*;
use common::{Backend, TestStore, fresh};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use steward::domain::actor::Actor;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::*;
use steward::lifecycle::LifecycleError;
use steward::lifecycle::operator::Operator;
use steward::lifecycle::switch::ModuleChange;
use steward::store::domain::{ModuleRequest, StatusChange, TenantId};
use steward::store::runs::{RunId, RunRecord, RunState, StepState};
use steward::types::{JobFilter, JobState};

per_backend!(
    a_tenant_cannot_skip_approval_undo_a_rejection_enable_error_or_lift_a_suspension,
    a_refused_change_writes_nothing_and_settings_follow_the_schema,
    dependencies_come_first_on_every_path,
    a_request_and_its_admission_are_one_write_and_a_stranded_request_is_admitted,
    a_cancelled_upgrade_compensates_and_leaves_no_tenant_upgrading,
    a_cancelled_provisioning_leaves_the_module_in_error_to_be_requested_again,
    a_tenant_cannot_cancel_the_runs_of_operations_it_does_not_own,
    a_decision_whose_second_write_was_lost_still_takes_effect,
    a_rolled_back_upgrade_and_a_failed_migration_are_failed_runs,
    a_dead_step_job_is_retried_through_its_run,
    lifecycle_workflows_are_started_and_retried_only_through_their_operations,
    a_tenant_off_during_an_upgrade_catches_up_when_turned_back_on,
    a_tenant_turned_back_on_while_an_upgrade_runs_lands_at_the_new_version,
    a_tenant_comes_into_use_only_at_the_version_its_tables_are_at,
    an_inconsistent_record_is_repaired_and_a_consistent_one_is_left_alone,
);

fn tenant_admin() -> Actor {
    Actor::tenant_admin("tenant:admin")
}

fn master() -> Actor {
    Actor::master_admin("admin:root")
}

/// `tenant` requests `slug` and the workers run until it is enabled.
async fn enabled(t: &TestStore, tenant: TenantId, slug: &str) {
    life(t)
        .request(tenant, slug, &tenant_admin())
        .await
        .unwrap();
    let running = workers(t);
    wait_for(t, &[tenant], slug, Enabled).await;
    running.stop().await;
}

/// The workers run until `run` has failed; its record.
async fn run_fails(t: &TestStore, run: RunId) -> RunRecord {
    let running = workers(t);
    let failed = wait_run(t, run, RunState::Failed).await;
    running.stop().await;
    failed
}

async fn wait_run(t: &TestStore, run: RunId, want: RunState) -> RunRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let record = t.store.run_get(run).await.unwrap().unwrap();
        if record.state == want {
            return record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {run} is not {want}: {record:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A module whose migration fails.
async fn publish_broken(t: &TestStore) {
    let broken = module("broken", Maturity::Ga, &[]);
    publish_version(
        t,
        &broken,
        "1.0.0",
        &["tenant_broken_items".into()],
        "CREATE TABLE tenant_broken_items (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO no_such_table VALUES (1);",
    )
    .await;
}

async fn a_tenant_cannot_skip_approval_undo_a_rejection_enable_error_or_lift_a_suspension(
    backend: Backend,
) {
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish_broken(&t).await;
    let a = tenant(&t, "a", true, false).await;
    let b = tenant(&t, "b", true, false).await;
    let life = life(&t);

    // Skipping approval: withdraw the pending ALPHA request, then turn it "back" on.
    life.request(a, "chatbot", &tenant_admin()).await.unwrap();
    life.disable(a, "chatbot", &tenant_admin()).await.unwrap();
    let err = life
        .reenable(a, "chatbot", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "request_again");
    assert_eq!(status(&t, a, "chatbot").await, Some(Disabled));
    assert!(
        !table_exists(&t, "tenant_chatbot_items").await,
        "never created"
    );
    // Requested again, it waits for approval again.
    let again = life.request(a, "chatbot", &tenant_admin()).await.unwrap();
    assert_eq!(again.module.status, PendingApproval);

    // Nor can a module still provisioning (no worker runs: its tables do not exist yet) be
    // turned "back" on: its provisioning run would see it ENABLED and skip the tables.
    life.request(a, "inventory", &tenant_admin()).await.unwrap();
    for who in [tenant_admin(), master()] {
        let err = life.reenable(a, "inventory", &who).await.unwrap_err();
        assert_eq!(rule_code(err), "invalid_transition");
    }
    assert_eq!(status(&t, a, "inventory").await, Some(Provisioning));

    // Undoing a rejection: a tenant cannot approve, and a rejected module is not re-enabled.
    life.request(b, "chatbot", &tenant_admin()).await.unwrap();
    let err = life
        .approve(b, "chatbot", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    life.reject(b, "chatbot", &master(), "no SLA for this tenant")
        .await
        .unwrap();
    for who in [tenant_admin(), master()] {
        let err = life.reenable(b, "chatbot", &who).await.unwrap_err();
        assert_eq!(rule_code(err), "request_again");
    }
    assert_eq!(status(&t, b, "chatbot").await, Some(Disabled));

    // ERROR is requested again, not enabled (directly or through DISABLED).
    life.request(a, "broken", &tenant_admin()).await.unwrap();
    let running = workers(&t);
    assert_eq!(settled(&t, &[a], "broken").await, [Error]);
    wait_for(&t, &[a], "inventory", Enabled).await;
    running.stop().await;
    let err = life
        .reenable(a, "broken", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "request_again");
    life.disable(a, "broken", &tenant_admin()).await.unwrap();
    let err = life
        .reenable(a, "broken", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "request_again");
    assert_eq!(status(&t, a, "broken").await, Some(Disabled));

    // A suspension is a Master Admin's to make and to lift, even through DISABLED.
    let err = life
        .suspend(a, "inventory", &tenant_admin(), "unpaid")
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    life.suspend(a, "inventory", &master(), "unpaid")
        .await
        .unwrap();
    let err = life
        .reenable(a, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    let err = life
        .resume(a, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    // Nor archived by the tenant, to be requested again without the suspension.
    let err = life
        .archive(a, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    life.disable(a, "inventory", &tenant_admin()).await.unwrap();
    let err = life
        .reenable(a, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    let err = life
        .archive(a, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    assert_eq!(status(&t, a, "inventory").await, Some(Disabled));
    let resumed = life.resume(a, "inventory", &master()).await.unwrap();
    assert_eq!(resumed.status, Enabled);
    // Turned off from use, the tenant turns it back on itself.
    life.disable(a, "inventory", &tenant_admin()).await.unwrap();
    let back = life
        .reenable(a, "inventory", &tenant_admin())
        .await
        .unwrap();
    assert_eq!(back.status, Enabled);
    let audit = t.store.audit_list(Some(a), 3).await.unwrap();
    assert_eq!(audit[0].action, "module.reenable");
    assert_eq!(audit[0].actor, "tenant:admin");
    t.cleanup().await;
}

async fn a_refused_change_writes_nothing_and_settings_follow_the_schema(backend: Backend) {
    let t = fresh(backend).await;
    let inventory = module("inventory", Maturity::Ga, &[]);
    publish(&t, &inventory).await;
    // A second version with a settings schema, installed for the tenant.
    let schema = json!({"type": "object", "properties": {"threshold": {"type": "integer", "minimum": 0}},
                        "additionalProperties": false});
    t.store
        .version_publish(
            "inventory",
            &steward::store::domain::NewVersion {
                version: "1.1.0".into(),
                major: 1,
                minor: 1,
                patch: 0,
                build_hash: "h".into(),
                changelog: String::new(),
                up_sql: String::new(),
                down_sql: String::new(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: Some(schema),
                tables_created: vec![],
            },
        )
        .await
        .unwrap();
    let a = tenant(&t, "a", false, false).await;
    let life = life(&t);
    life.request(a, "inventory", &tenant_admin()).await.unwrap();
    let running = workers(&t);
    wait_for(&t, &[a], "inventory", Enabled).await;
    running.stop().await;
    let valid = json!({"threshold": 3});
    life.set_settings(a, "inventory", &valid, &tenant_admin())
        .await
        .unwrap();

    // A state the module cannot take with new settings: refused, and the settings stay.
    let change = ModuleChange {
        state: Some(Enabled),
        settings: Some(json!({"threshold": 9})),
    };
    let err = life
        .change(a, "inventory", &change, &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_transition");
    assert_eq!(t.store.settings_get(a, "inventory").await.unwrap(), valid);
    // Invalid settings with a valid state change: neither is written.
    let change = ModuleChange {
        state: Some(Disabled),
        settings: Some(json!({"threshold": -1, "extra": true})),
    };
    let err = life
        .change(a, "inventory", &change, &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_settings");
    assert_eq!(status(&t, a, "inventory").await, Some(Enabled));
    assert_eq!(t.store.settings_get(a, "inventory").await.unwrap(), valid);
    // The operation every entry point uses checks the schema too.
    let err = life
        .set_settings(a, "inventory", &json!({"threshold": "many"}), &master())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_settings");
    assert_eq!(t.store.settings_get(a, "inventory").await.unwrap(), valid);
    t.cleanup().await;
}

async fn dependencies_come_first_on_every_path(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish(&t, &module("alerts", Maturity::Ga, &["inventory"])).await;
    let with = tenant(&t, "with", false, false).await;
    let without = tenant(&t, "without", false, false).await;
    let life = life(&t);

    // Plan sync: only the tenant with inventory enabled gets alerts; the other is counted
    // as skipped, with the reason.
    t.store.plan_create("pro", "Pro").await.unwrap();
    for tenant in [with, without] {
        t.store
            .subscription_create(tenant, "pro", "active")
            .await
            .unwrap();
    }
    life.request(with, "inventory", &tenant_admin())
        .await
        .unwrap();
    let running = workers(&t);
    wait_for(&t, &[with], "inventory", Enabled).await;
    let (added, summary) = life
        .plan_add_module("pro", "alerts", &master())
        .await
        .unwrap();
    assert!(added);
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (
            summary[0].synced,
            summary[0].subscribed,
            summary[0].skipped_missing_dependencies
        ),
        (1, 2, 1)
    );
    assert!(summary[0].skipped_reason.is_some());
    assert_eq!(status(&t, without, "alerts").await, None);
    assert_eq!(status(&t, with, "alerts").await, Some(Provisioning));
    // A module on its way in holds its dependencies as one in use does: turning inventory
    // off now would let provisioning enable alerts without it.
    let err = life
        .disable(with, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "has_dependants");
    life.start_provisioning(
        &t.store
            .tenant_module_get(with, "alerts")
            .await
            .unwrap()
            .unwrap(),
    )
    .await
    .unwrap();
    wait_for(&t, &[with], "alerts", Enabled).await;
    running.stop().await;

    // Disabling a module another enabled module depends on: refused, naming it.
    let err = life
        .disable(with, "inventory", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "has_dependants");
    assert_eq!(status(&t, with, "inventory").await, Some(Enabled));
    // Nor archived (its data exported and removed) while suspended under it, even by a
    // Master Admin (a tenant admin may not archive a suspended module at all).
    life.suspend(with, "inventory", &master(), "payment")
        .await
        .unwrap();
    let err = life
        .archive(with, "inventory", &master())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "has_dependants");
    life.resume(with, "inventory", &master()).await.unwrap();
    assert_eq!(status(&t, with, "inventory").await, Some(Enabled));
    // Dependants off first, then the dependency; turning the dependant back on before its
    // dependency is refused.
    life.disable(with, "alerts", &tenant_admin()).await.unwrap();
    life.disable(with, "inventory", &tenant_admin())
        .await
        .unwrap();
    let err = life
        .reenable(with, "alerts", &tenant_admin())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "missing_dependencies");
    life.reenable(with, "inventory", &tenant_admin())
        .await
        .unwrap();
    life.reenable(with, "alerts", &tenant_admin())
        .await
        .unwrap();
    // A later sync gives the skipped tenant alerts once inventory is enabled for it.
    enabled(&t, without, "inventory").await;
    let summary = life
        .sync_plans(Some("pro"), None, &Actor::service("platform"))
        .await
        .unwrap();
    let alerts = summary.iter().find(|s| s.module == "alerts").unwrap();
    assert_eq!((alerts.synced, alerts.skipped_missing_dependencies), (1, 0));
    assert_eq!(status(&t, without, "alerts").await, Some(Provisioning));

    // An approval turns a module on: refused while a dependency is off (a Master Admin
    // suspended it after the request), given once it is back.
    publish(&t, &module("lab", Maturity::Alpha, &["inventory"])).await;
    let tester = tenant(&t, "tester", true, false).await;
    enabled(&t, tester, "inventory").await;
    life.request(tester, "lab", &tenant_admin()).await.unwrap();
    assert_eq!(status(&t, tester, "lab").await, Some(PendingApproval));
    life.suspend(tester, "inventory", &master(), "payment")
        .await
        .unwrap();
    let err = life.approve(tester, "lab", &master()).await.unwrap_err();
    assert_eq!(rule_code(err), "missing_dependencies");
    assert_eq!(status(&t, tester, "lab").await, Some(PendingApproval));
    life.resume(tester, "inventory", &master()).await.unwrap();
    life.approve(tester, "lab", &master()).await.unwrap();
    assert_eq!(status(&t, tester, "lab").await, Some(Provisioning));

    // An archive is asked for while nothing needs inventory (alerts is off); before its run
    // removes the data, alerts is back on (inventory resumed, then suspended again): the
    // run's last step refuses, the run fails, and nothing is removed.
    let archived = tenant(&t, "archived", false, false).await;
    for slug in ["inventory", "alerts"] {
        enabled(&t, archived, slug).await;
    }
    life.disable(archived, "alerts", &tenant_admin())
        .await
        .unwrap();
    life.suspend(archived, "inventory", &master(), "payment")
        .await
        .unwrap();
    let run = life
        .archive(archived, "inventory", &master())
        .await
        .unwrap();
    life.resume(archived, "inventory", &master()).await.unwrap();
    life.reenable(archived, "alerts", &tenant_admin())
        .await
        .unwrap();
    life.suspend(archived, "inventory", &master(), "payment")
        .await
        .unwrap();
    let failed = run_fails(&t, run).await;
    assert!(
        failed.error.as_deref().unwrap_or("").contains("alerts"),
        "{failed:#?}"
    );
    assert_eq!(status(&t, archived, "inventory").await, Some(Suspended));
    assert_eq!(status(&t, archived, "alerts").await, Some(Enabled));

    // A dependency suspended while its dependant provisions: the dependant is not turned on
    // (ERROR with the reason, its run failed); it is requested again once inventory is back.
    let late = tenant(&t, "late", false, false).await;
    enabled(&t, late, "inventory").await;
    let run = life
        .request(late, "alerts", &tenant_admin())
        .await
        .unwrap()
        .run
        .unwrap();
    life.suspend(late, "inventory", &master(), "payment")
        .await
        .unwrap();
    let failed = run_fails(&t, run).await;
    assert!(
        failed.error.as_deref().unwrap_or("").contains("inventory"),
        "{failed:#?}"
    );
    assert_eq!(status(&t, late, "alerts").await, Some(Error));
    t.cleanup().await;
}

async fn a_request_and_its_admission_are_one_write_and_a_stranded_request_is_admitted(
    backend: Backend,
) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let a = tenant(&t, "a", true, false).await;
    let life = life(&t);
    // One write: the only audit row goes straight to the admitted status.
    life.request(a, "chatbot", &tenant_admin()).await.unwrap();
    let audit: Vec<_> = t
        .store
        .audit_list(Some(a), 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.module.as_deref() == Some("chatbot"))
        .collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].before, None);
    assert_eq!(
        audit[0].after.as_ref().unwrap()["status"],
        "PENDING_APPROVAL"
    );

    // A module left REQUESTED (as a crash between two writes left it before): the
    // reconciler admits it and starts its provisioning.
    let version = t.store.versions_of("inventory").await.unwrap()[0].id;
    t.store
        .tenant_module_request(&ModuleRequest {
            tenant_id: a,
            module: "inventory",
            version_id: version,
            status: Requested,
            reason: None,
            expected: None,
            actor: "steward-0.1",
            tenant_seen: None,
        })
        .await
        .unwrap();
    // One the rules refuse now (the module was retired meanwhile): ERROR with the reason,
    // and it does not keep the others from being admitted.
    publish(&t, &module("gone", Maturity::Retired, &[])).await;
    let gone = t.store.versions_of("gone").await.unwrap()[0].id;
    t.store
        .tenant_module_request(&ModuleRequest {
            tenant_id: a,
            module: "gone",
            version_id: gone,
            status: Requested,
            reason: None,
            expected: None,
            actor: "steward-0.1",
            tenant_seen: None,
        })
        .await
        .unwrap();
    assert_eq!(life.reconcile(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(status(&t, a, "inventory").await, Some(Provisioning));
    let refused = t.store.tenant_module_get(a, "gone").await.unwrap().unwrap();
    assert_eq!(refused.status, Error);
    assert!(
        refused
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("retired")),
        "{refused:?}"
    );
    let running = workers(&t);
    wait_for(&t, &[a], "inventory", Enabled).await;
    running.stop().await;
    t.cleanup().await;
}

/// An export storage that cannot be reached: S3 on a closed loopback port.
fn unreachable_storage() -> steward::export::SharedExports {
    Arc::new(steward::export::s3::S3Storage::new(
        "exports",
        Some("http://127.0.0.1:9"),
        "us-east-1",
        true,
        Some(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        )),
    ))
}

async fn a_cancelled_upgrade_compensates_and_leaves_no_tenant_upgrading(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    publish_upgrade(
        &t,
        "2.0.0",
        &[],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT;",
        "ALTER TABLE tenant_stock_items DROP COLUMN location;",
        None,
    )
    .await;
    // The major upgrade's backup cannot reach its storage: the run waits at `backup`,
    // retrying, with every tenant UPGRADING, when the operator cancels it.
    let storage = unreachable_storage();
    let life =
        steward::lifecycle::Lifecycle::new(common::repo_engine(&t, storage.clone())).unwrap();
    let run = life.upgrade("stock", "2.0.0", &master()).await.unwrap();
    let running = workers_with(&t, storage);
    wait_for(&t, &[a, b], "stock", Upgrading).await;
    Operator::new(life.engine().clone())
        .cancel_run(run, &Actor::master_admin("ops:ana"))
        .await
        .unwrap();
    let cancelled = wait_run(&t, run, RunState::Cancelled).await;
    running.stop().await;
    assert_eq!(cancelled.steps[0].state, StepState::Compensated);
    assert!(
        cancelled
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cancelled by ops:ana")),
        "{cancelled:?}"
    );
    let versions = t.store.versions_of("stock").await.unwrap();
    for record in wait_for(&t, &[a, b], "stock", Enabled).await {
        assert_eq!(record.version_id, Some(versions[0].id));
    }
    assert!(!column_exists(&t, "tenant_stock_items", "location").await);
    // A run that has ended cannot be cancelled (and says so).
    let err = Operator::new(life.engine().clone())
        .cancel_run(run, &master())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be cancelled"), "{err}");
    t.cleanup().await;
}

async fn a_cancelled_provisioning_leaves_the_module_in_error_to_be_requested_again(
    backend: Backend,
) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let life = life(&t);
    // No worker runs: the provisioning run waits at its first step.
    let requested = life.request(a, "inventory", &tenant_admin()).await.unwrap();
    let run = requested.run.unwrap();
    Operator::new(engine(&t))
        .cancel_run(run, &Actor::tenant_admin("api:ana"))
        .await
        .unwrap();
    assert_eq!(
        t.store.run_get(run).await.unwrap().unwrap().state,
        RunState::Cancelled
    );
    let record = t
        .store
        .tenant_module_get(a, "inventory")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Error);
    assert!(
        record
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("cancelled by api:ana")),
        "{record:?}"
    );
    // Re-requestable, and provisioned this time.
    let again = life.request(a, "inventory", &tenant_admin()).await.unwrap();
    assert_eq!(again.module.status, Provisioning);
    let running = workers(&t);
    wait_for(&t, &[a], "inventory", Enabled).await;
    running.stop().await;

    // The run of a request waiting for approval, cancelled: the request is withdrawn with it
    // (an approval would otherwise "start" the cancelled run and report success).
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let tester = tenant(&t, "tester", true, false).await;
    let pending = life
        .request(tester, "chatbot", &tenant_admin())
        .await
        .unwrap();
    assert_eq!(pending.module.status, PendingApproval);
    Operator::new(engine(&t))
        .cancel_run(pending.run.unwrap(), &Actor::tenant_admin("api:ana"))
        .await
        .unwrap();
    let record = t
        .store
        .tenant_module_get(tester, "chatbot")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.status, record.disabled_from),
        (Disabled, Some(PendingApproval))
    );
    assert!(
        record
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("cancelled by api:ana")),
        "{record:?}"
    );
    let err = life
        .approve(tester, "chatbot", &master())
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_transition");
    // Requested again, it waits for approval with a run of its own.
    let again = life
        .request(tester, "chatbot", &tenant_admin())
        .await
        .unwrap();
    assert_eq!(again.module.status, PendingApproval);
    assert_ne!(again.run, pending.run);
    let (_, run) = life.approve(tester, "chatbot", &master()).await.unwrap();
    assert_eq!(Some(run), again.run);
    t.cleanup().await;
}

/// An approval, a rejection or an operator's cancel is two writes: the request's status,
/// then its run (the approval's signal, the run cancelled) or the other way round. A crash
/// between them (simulated by the first write alone) must not leave a tenant module stuck.
async fn a_decision_whose_second_write_was_lost_still_takes_effect(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    publish(&t, &module("labs", Maturity::Alpha, &[])).await;
    publish(&t, &module("notes", Maturity::Alpha, &[])).await;
    let a = tenant(&t, "a", true, false).await;
    let life = life(&t);
    let moved = |slug: &'static str, from, to| {
        let store = t.store.clone();
        async move {
            store
                .tenant_module_move(&StatusChange::new(
                    a,
                    slug,
                    Some(from),
                    to,
                    "admin:root",
                    "test",
                ))
                .await
                .unwrap();
        }
    };

    // Approved, the signal lost: the run finds its request PROVISIONING and goes on.
    let approved = life.request(a, "chatbot", &tenant_admin()).await.unwrap();
    moved("chatbot", PendingApproval, Provisioning).await;

    // Withdrawn, the run not cancelled: requested again, its new run waits behind the old
    // one (one run of a tenant module at a time) until the old one sees it serves nothing.
    let first = life.request(a, "labs", &tenant_admin()).await.unwrap();
    moved("labs", PendingApproval, Disabled).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = life.request(a, "labs", &tenant_admin()).await.unwrap();
    assert_ne!(again.run, first.run);
    life.approve(a, "labs", &master()).await.unwrap();

    // Cancelled by an operator, the withdrawal lost: an approval finds the run ended, and
    // withdraws the request instead of reporting a provisioning that will never run.
    let cancelled = life.request(a, "notes", &tenant_admin()).await.unwrap();
    engine(&t)
        .cancel(cancelled.run.unwrap(), "admin:root")
        .await
        .unwrap();
    let err = life.approve(a, "notes", &master()).await.unwrap_err();
    assert_eq!(rule_code(err), "request_again");
    assert_eq!(status(&t, a, "notes").await, Some(Disabled));

    let running = workers(&t);
    wait_for(&t, &[a], "chatbot", Enabled).await;
    wait_for(&t, &[a], "labs", Enabled).await;
    running.stop().await;
    let old = t.store.run_get(first.run.unwrap()).await.unwrap().unwrap();
    assert_eq!(old.state, RunState::Failed);
    assert!(
        old.error
            .as_deref()
            .is_some_and(|e| e.contains("rejected or withdrawn")),
        "{old:?}"
    );
    let provisioned = t
        .store
        .run_get(approved.run.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(provisioned.state, RunState::Completed);
    t.cleanup().await;
}

/// A tenant's administrator cancels its own operations' runs (its provisioning, its
/// archive), not the runs operations start for it: cancelling its nightly purge every night
/// would keep expired data for ever. Cancelling the purge's step job is the same refusal: a
/// step job is cancelled through its run.
async fn a_tenant_cannot_cancel_the_runs_of_operations_it_does_not_own(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    enabled(&t, a, "inventory").await;
    let engine = engine(&t);
    let before = (chrono::Utc::now() - chrono::Duration::days(30)).to_rfc3339();
    let (purge, _) = engine
        .start(
            "module_purge",
            json!({"tenant_id": a, "module": "inventory", "before": before, "date": "2026-12-06"}),
            Some(format!("purge:{a}:inventory:2026-12-06")),
        )
        .await
        .unwrap();
    let operator = Operator::new(engine.clone());
    let tenant_admin = Actor::tenant_admin("api:ana");
    let err = operator.cancel_run(purge, &tenant_admin).await.unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    let step_job = t.store.run_get(purge).await.unwrap().unwrap().steps[0]
        .job_id
        .unwrap();
    let err = operator
        .cancel_jobs(&[step_job], &tenant_admin)
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    assert_eq!(
        t.store.job_get(step_job).await.unwrap().unwrap().state,
        JobState::Available
    );
    assert_eq!(
        t.store.run_get(purge).await.unwrap().unwrap().state,
        RunState::Running
    );
    // A Master Admin cancels it, through its step job too: the run is cancelled, not failed.
    assert_eq!(
        operator.cancel_jobs(&[step_job], &master()).await.unwrap(),
        1
    );
    assert_eq!(
        t.store.run_get(purge).await.unwrap().unwrap().state,
        RunState::Cancelled
    );
    t.cleanup().await;
}

async fn a_rolled_back_upgrade_and_a_failed_migration_are_failed_runs(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    publish_upgrade(
        &t,
        "1.1.0",
        &[],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT; SELECT * FROM no_such_table;",
        "",
        None,
    )
    .await;
    let life = life(&t);
    let run = life.upgrade("stock", "1.1.0", &master()).await.unwrap();
    let running = workers(&t);
    let failed = wait_run(&t, run, RunState::Failed).await;
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("rolled back")),
        "{failed:?}"
    );
    // The tenants are where they were, and the failure is found where operators look.
    wait_for(&t, &[a, b], "stock", Enabled).await;
    let listed = t.store.runs_list(Some(RunState::Failed), 50).await.unwrap();
    assert!(listed.iter().any(|r| r.id == run), "{listed:?}");

    // A provisioning whose migration fails: ERROR, and a failed run with the reason.
    publish_broken(&t).await;
    let requested = life.request(a, "broken", &tenant_admin()).await.unwrap();
    let failed = wait_run(&t, requested.run.unwrap(), RunState::Failed).await;
    running.stop().await;
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("provisioning failed")),
        "{failed:?}"
    );
    assert_eq!(status(&t, a, "broken").await, Some(Error));
    t.cleanup().await;
}

async fn a_dead_step_job_is_retried_through_its_run(backend: Backend) {
    let t = fresh(backend).await;
    let (a, _) = stock_in_use(&t).await;
    // An archive started while the module is still in use: its export step dies (only a
    // DISABLED or SUSPENDED module is archived) and the run fails.
    let engine = engine(&t);
    let (run, _) = engine
        .start(
            "module_archive",
            json!({"tenant_id": a, "module": "stock"}),
            None,
        )
        .await
        .unwrap();
    let running = workers(&t);
    let failed = wait_run(&t, run, RunState::Failed).await;
    running.stop().await;
    let dead_job = failed.steps[0].job_id.unwrap();
    assert_eq!(
        t.store.job_get(dead_job).await.unwrap().unwrap().state,
        JobState::Dead
    );
    let operator = Operator::new(engine);
    let only_it = JobFilter {
        ids: vec![dead_job],
        ..Default::default()
    };
    // A tenant admin may not retry an operation's run through its job: nothing is retried,
    // and that is an error, not a success.
    let err = operator
        .retry_jobs(&only_it, &tenant_admin())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::NothingDone(ref why) if why.contains("not permitted")),
        "{err:?}"
    );
    assert_eq!(
        t.store.run_get(run).await.unwrap().unwrap().state,
        RunState::Failed
    );
    // Once the module is off, the operator's retry of the dead job resumes the run.
    life(&t).disable(a, "stock", &tenant_admin()).await.unwrap();
    let retried = operator.retry_jobs(&only_it, &master()).await.unwrap();
    assert_eq!((retried.jobs, retried.runs.clone()), (0, vec![run]));
    let running = workers(&t);
    let done = wait_run(&t, run, RunState::Completed).await;
    running.stop().await;
    assert_ne!(done.steps[0].job_id, Some(dead_job), "the step ran again");
    assert_eq!(status(&t, a, "stock").await, Some(Archived));
    // The dead job left the dead-letter queue; retrying it again does nothing, and says so.
    assert_ne!(
        t.store.job_get(dead_job).await.unwrap().unwrap().state,
        JobState::Dead
    );
    let err = operator
        .retry_jobs(
            &JobFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            },
            &master(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NothingDone(_)), "{err:?}");
    t.cleanup().await;
}

async fn lifecycle_workflows_are_started_and_retried_only_through_their_operations(
    backend: Backend,
) {
    let t = fresh(backend).await;
    publish_broken(&t).await;
    let a = tenant(&t, "a", false, false).await;
    let operator = Operator::new(engine(&t));
    for (workflow, params) in [
        (
            "module_upgrade",
            json!({"module": "broken", "version": "1.0.0"}),
        ),
        (
            "module_purge",
            json!({"tenant_id": a, "module": "broken", "before": "2100-01-01"}),
        ),
        (
            "module_deprecation",
            json!({"module": "broken", "maturity": "RETIRED", "force": true}),
        ),
        (
            "module_provision",
            json!({"tenant_id": a, "module": "broken"}),
        ),
        (
            "module_archive",
            json!({"tenant_id": a, "module": "broken"}),
        ),
    ] {
        let err = operator
            .start_run(workflow, params, None, &master())
            .await
            .unwrap_err();
        assert_eq!(rule_code(err), "not_permitted", "{workflow}");
    }
    assert!(t.store.runs_list(None, 10).await.unwrap().is_empty());
    // A failed provisioning is not retried: the ERROR module is requested again.
    let life = life(&t);
    let requested = life.request(a, "broken", &tenant_admin()).await.unwrap();
    let running = workers(&t);
    let run = requested.run.unwrap();
    wait_run(&t, run, RunState::Failed).await;
    running.stop().await;
    for who in [tenant_admin(), master()] {
        let err = operator.retry_run(run, &who).await.unwrap_err();
        assert_eq!(rule_code(err), "not_permitted");
    }
    assert_eq!(
        t.store.run_get(run).await.unwrap().unwrap().state,
        RunState::Failed
    );
    t.cleanup().await;
}

async fn a_tenant_off_during_an_upgrade_catches_up_when_turned_back_on(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    let life = life(&t);
    life.disable(b, "stock", &tenant_admin()).await.unwrap();
    // The post-upgrade step fills a new column, written as a catalog author would, for every
    // row: steward confines it to the tenants it runs for, and the disabled (frozen) tenant's
    // rows are left alone until it is enabled again.
    let post = "UPDATE tenant_stock_items SET location = 'main' WHERE location IS NULL;";
    publish_upgrade(
        &t,
        "2.0.0",
        &[],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT;",
        "ALTER TABLE tenant_stock_items DROP COLUMN location;",
        Some(post),
    )
    .await;
    let run = life.upgrade("stock", "2.0.0", &master()).await.unwrap();
    let running = workers(&t);
    wait_run(&t, run, RunState::Completed).await;
    running.stop().await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let off = t
        .store
        .tenant_module_get(b, "stock")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (off.status, off.version_id),
        (Disabled, Some(versions[0].id))
    );
    assert_eq!(
        count(
            &t,
            &format!(
                "SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {b} AND location IS NULL"
            )
        )
        .await,
        1,
        "the upgrade left the disabled tenant's rows alone"
    );
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a} AND location = 'main'")
        )
        .await,
        1,
        "the enabled tenant got the post-upgrade step"
    );
    // Turned back on: the post-upgrade step runs for it, and it is at the upgraded version.
    let back = life.reenable(b, "stock", &tenant_admin()).await.unwrap();
    assert_eq!(
        (back.status, back.version_id),
        (UpToDate, Some(versions[1].id))
    );
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {b} AND location = 'main'")
        )
        .await,
        1
    );
    let upgraded = t
        .store
        .tenant_module_get(a, "stock")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        upgraded.version_id, back.version_id,
        "tenants agree with the tables"
    );
    t.cleanup().await;
}

/// A tenant turned back on while an upgrade runs (after its first step listed the tenants in
/// use, before the tables moved) lands at the upgraded version, its rows given the upgrade's
/// post-upgrade step: a module's tenants never disagree with its tables.
async fn a_tenant_turned_back_on_while_an_upgrade_runs_lands_at_the_new_version(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    life(&t).disable(b, "stock", &tenant_admin()).await.unwrap();
    let post = "UPDATE tenant_stock_items SET location = 'main' WHERE location IS NULL;";
    publish_upgrade(
        &t,
        "2.0.0",
        &[],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT;",
        "ALTER TABLE tenant_stock_items DROP COLUMN location;",
        Some(post),
    )
    .await;
    // The major upgrade's backup waits for its storage, where nothing listens yet, with A
    // UPGRADING: B is turned back on then, at 1.0.0, the version the tables are still at.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let storage = s3::storage_at(([127, 0, 0, 1], port).into());
    let life =
        steward::lifecycle::Lifecycle::new(common::repo_engine(&t, storage.clone())).unwrap();
    let run = life.upgrade("stock", "2.0.0", &master()).await.unwrap();
    let running = workers_with(&t, storage);
    wait_for(&t, &[a], "stock", Upgrading).await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let back = life.reenable(b, "stock", &tenant_admin()).await.unwrap();
    assert_eq!(
        (back.status, back.version_id),
        (Enabled, Some(versions[0].id))
    );
    let root = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(root.path(), port).await;
    wait_run(&t, run, RunState::Completed).await;
    running.stop().await;
    for tenant in [a, b] {
        let record = t
            .store
            .tenant_module_get(tenant, "stock")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.status, record.version_id),
            (UpToDate, Some(versions[1].id)),
            "tenant {tenant}"
        );
        assert_eq!(
            count(
                &t,
                &format!(
                    "SELECT count(*) FROM tenant_stock_items \
                     WHERE tenant_id = {tenant} AND location = 'main'"
                )
            )
            .await,
            1,
            "tenant {tenant}'s rows got the post-upgrade step"
        );
    }
    server.stop().await;
    t.cleanup().await;
}

/// A move into use decided before an upgrade landed (it read the old version) is refused
/// with a conflict, rather than leaving the tenant at a version its module's tables are no
/// longer at; decided again, it catches up.
async fn a_tenant_comes_into_use_only_at_the_version_its_tables_are_at(backend: Backend) {
    let t = fresh(backend).await;
    let (_, b) = stock_in_use(&t).await;
    let life = life(&t);
    life.disable(b, "stock", &tenant_admin()).await.unwrap();
    publish_upgrade(&t, "1.1.0", &[], "SELECT 1;", "SELECT 1;", None).await;
    let run = life.upgrade("stock", "1.1.0", &master()).await.unwrap();
    let running = workers(&t);
    wait_run(&t, run, RunState::Completed).await;
    running.stop().await;
    // What a re-enable decided before the upgrade would write: back on, at its own version.
    let stale = StatusChange::new(
        b,
        "stock",
        Some(Disabled),
        Enabled,
        "test",
        "module.reenable",
    );
    let err = t.store.tenant_module_move(&stale).await.unwrap_err();
    assert!(
        matches!(&err, steward::store::StoreError::Conflict(why) if why.contains("1.1.0")),
        "{err:?}"
    );
    let versions = t.store.versions_of("stock").await.unwrap();
    let back = life.reenable(b, "stock", &tenant_admin()).await.unwrap();
    assert_eq!(
        (back.status, back.version_id),
        (UpToDate, Some(versions[1].id))
    );
    t.cleanup().await;
}

async fn an_inconsistent_record_is_repaired_and_a_consistent_one_is_left_alone(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    let life = life(&t);
    // Consistent: nothing to repair, and that is an error, not a success.
    let err = life.repair(a, "stock", &master()).await.unwrap_err();
    assert!(matches!(err, LifecycleError::NothingDone(_)), "{err:?}");
    let err = life.repair(a, "stock", &tenant_admin()).await.unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    // A left UPGRADING with no upgrade running (as a crash of an older steward left it).
    t.store
        .tenant_module_move(&StatusChange::new(
            a,
            "stock",
            Some(Enabled),
            Upgrading,
            "steward-0.1",
            "module.upgrade_begin",
        ))
        .await
        .unwrap();
    let (repaired, done) = life.repair(a, "stock", &master()).await.unwrap();
    assert_eq!(repaired.status, Enabled, "{done:?}");
    // B in use at a version older than the tables (the tables were upgraded without it).
    publish_upgrade(&t, "1.1.0", &[], "SELECT 1;", "SELECT 1;", None).await;
    let run = life.upgrade("stock", "1.1.0", &master()).await.unwrap();
    let running = workers(&t);
    wait_run(&t, run, RunState::Completed).await;
    running.stop().await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let mut behind = StatusChange::new(
        b,
        "stock",
        Some(UpToDate),
        Enabled,
        "steward-0.1",
        "module.rollback",
    );
    behind.set_version = Some(versions[0].id);
    t.store.tenant_module_move(&behind).await.unwrap();
    let (repaired, done) = life.repair(b, "stock", &master()).await.unwrap();
    assert_eq!(
        (repaired.status, repaired.version_id),
        (UpToDate, Some(versions[1].id)),
        "{done:?}"
    );
    let audit = t.store.audit_list(Some(b), 1).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].actor.as_str()),
        ("module.repair", "admin:root")
    );
    t.cleanup().await;
}
