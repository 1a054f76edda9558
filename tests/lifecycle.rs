//! The module lifecycle on both backends: requests follow the availability rules, approvals
//! decide only pending requests, refused moves change nothing, and every accepted change of
//! status or maturity is in the audit log with its before and after.

mod common;

use common::lifecycle::*;
use common::{Backend, fresh};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use steward::domain::actor::Actor;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::*;
use steward::lifecycle::{Lifecycle, LifecycleError};
use steward::store::StoreError;
use steward::store::domain::{ModuleRequest, StatusChange};

per_backend!(
    an_alpha_request_waits_in_its_run_for_the_approval,
    a_ga_request_provisions_and_alpha_waits_for_approval,
    refused_moves_change_nothing_and_accepted_ones_are_audited,
    approval_decides_only_pending_requests,
    unavailable_modules_and_missing_dependencies_are_refused,
    maturity_moves_follow_the_catalog_and_are_audited,
    an_archived_module_can_be_requested_again_but_a_live_one_cannot,
    crafted_slugs_are_refused_before_any_sql,
    twenty_tenants_provision_one_module_its_tables_created_once,
    a_failing_migration_leaves_no_table_and_the_module_in_error,
    a_first_install_runs_every_version_and_later_tenants_join_the_installed_one,
    a_major_upgrade_backs_up_then_moves_every_tenant_and_rolls_back_within_the_window,
    a_failed_upgrade_restores_version_status_and_rows,
    a_backup_is_verified_then_restored_into_the_version_it_was_taken_of,
    a_disabled_modules_data_is_frozen_and_archiving_exports_before_it_removes,
    a_tenants_rows_are_writable_exactly_while_its_module_is_in_use,
    tables_of_an_older_deployment_get_the_delete_freeze_at_start_up,
    settings_changes_are_audited_and_crafted_keys_refused,
    stuck_provisioning_gets_its_run_and_a_failed_run_ends_in_error,
    an_upgrade_that_dies_after_it_began_puts_every_tenant_back,
    plan_sync_gives_active_subscribers_their_plan_modules_and_nothing_else,
);

/// The freeze and the audit hold against the application's role even when it sets the session
/// settings that once switched them off: only steward's own transactions (marked in a table
/// the role cannot write) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_cannot_switch_off_the_freeze_or_the_audit_on_postgres() {
    let t = fresh(Backend::Postgres).await;
    let (a, b) = stock_in_use(&t).await;
    life(&t)
        .disable(a, "stock", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap();
    let pool = t.pg.as_ref().unwrap().pool();
    let as_app = |tenant: i64, sql: &'static str| async move {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql(&format!(
            "SET LOCAL ROLE tenant_app_role; \
             SELECT set_config('app.current_tenant_id', '{tenant}', true), \
                    set_config('steward.purge', 'on', true), \
                    set_config('steward.migration', 'on', true)"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let result = sqlx::raw_sql(sql).execute(&mut *tx).await;
        match result {
            Ok(_) => tx.commit().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let err = as_app(a, "DELETE FROM tenant_stock_items")
        .await
        .unwrap_err();
    assert!(err.contains("frozen"), "{err}");
    let err = as_app(
        a,
        "INSERT INTO steward_privileged VALUES (txid_current(), 'purge')",
    )
    .await
    .unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a}")
        )
        .await,
        1,
        "tenant A's frozen row is still there"
    );
    // Tenant B's module is in use: the change goes through, and is audited, with the role it
    // came from: the application's claimed user (`app.actor`) never stands alone.
    let audited = "SELECT count(*) FROM audit_logs \
         WHERE action = 'row.update' AND entity = 'tenant_stock_items'";
    let before = count(&t, audited).await;
    as_app(
        b,
        "SELECT set_config('app.actor', 'admin:root', true); \
         UPDATE tenant_stock_items SET sku = 'plum'",
    )
    .await
    .unwrap();
    assert_eq!(
        count(&t, audited).await,
        before + 1,
        "the change is audited"
    );
    let who: String = sqlx::query_scalar(
        "SELECT actor FROM audit_logs WHERE action = 'row.update' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(who, "tenant_app_role for admin:root");
    // A delete with `steward.purge` set by the application is audited too (the setting
    // switches nothing off for it).
    let deletes = "SELECT count(*) FROM audit_logs \
         WHERE action = 'row.delete' AND entity = 'tenant_stock_items'";
    let before = count(&t, deletes).await;
    as_app(b, "DELETE FROM tenant_stock_items").await.unwrap();
    assert_eq!(
        count(&t, deletes).await,
        before + 1,
        "the delete is audited"
    );
    t.cleanup().await;
}

/// A module table's triggers already as this version writes them are left as they are when
/// steward starts (and when a migration makes the module's triggers): remaking them would
/// lock the table against its readers until the transaction ends (PostgreSQL's DROP TRIGGER
/// takes the table's strongest lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_already_current_are_left_alone_on_postgres() {
    let t = fresh(Backend::Postgres).await;
    stock_in_use(&t).await;
    let pool = t.pg.as_ref().unwrap().pool();
    let triggers = "SELECT tgname::text, oid::int8 FROM pg_trigger \
                    WHERE tgrelid = 'tenant_stock_items'::regclass AND NOT tgisinternal ORDER BY 1";
    let before: Vec<(String, i64)> = sqlx::query_as(triggers).fetch_all(pool).await.unwrap();
    assert_eq!(before.len(), 2, "the freeze and the audit: {before:?}");
    t.store.migrate().await.unwrap();
    let after: Vec<(String, i64)> = sqlx::query_as(triggers).fetch_all(pool).await.unwrap();
    assert_eq!(after, before, "not dropped and created again");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_keeps_tenants_apart_on_postgres() {
    let t = fresh(Backend::Postgres).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    let life = life(&t);
    life.request(a, "inventory", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap();
    life.request(b, "inventory", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    let running = workers(&t);
    assert_eq!(settled(&t, &[a, b], "inventory").await, [Enabled, Enabled]);
    running.stop().await;

    let pool = t.pg.as_ref().unwrap().pool();
    // As the owner (steward itself), one row per tenant.
    sqlx::query("INSERT INTO tenant_inventory_items (id, tenant_id) VALUES (1, $1), (2, $2)")
        .bind(a)
        .bind(b)
        .execute(pool)
        .await
        .unwrap();
    // As the application's role, scoped to tenant A.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE tenant_app_role")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: Vec<i64> = sqlx::query_scalar("SELECT tenant_id FROM tenant_inventory_items")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, [a], "tenant A sees only its own rows");
    sqlx::query("SAVEPOINT try_b")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO tenant_inventory_items (id, tenant_id) VALUES (3, $1)")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sqlx::query("ROLLBACK TO SAVEPOINT try_b")
        .execute(&mut *tx)
        .await
        .unwrap();
    // Without a tenant set, nothing at all.
    sqlx::query("SELECT set_config('app.current_tenant_id', '', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_inventory_items")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(none, 0);
    tx.rollback().await.unwrap();
    // The application's role cannot touch steward's own tables.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE tenant_app_role")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(
        sqlx::query("SELECT count(*) FROM tenants")
            .fetch_one(&mut *tx)
            .await
            .is_err()
    );
    tx.rollback().await.unwrap();
}

async fn twenty_tenants_provision_one_module_its_tables_created_once(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let mut tenants = Vec::new();
    for i in 0..20 {
        tenants.push(tenant(&t, &format!("t{i}"), false, false).await);
    }
    let life = life(&t);
    let actor = Actor::tenant_admin("tenant");
    let requests = tenants
        .iter()
        .map(|id| life.request(*id, "inventory", &actor));
    for requested in futures::future::join_all(requests).await {
        assert_eq!(requested.unwrap().module.status, Provisioning);
    }
    let running = workers(&t);
    let statuses = settled(&t, &tenants, "inventory").await;
    running.stop().await;
    assert!(statuses.iter().all(|s| *s == Enabled), "{statuses:?}");

    assert!(table_exists(&t, "tenant_inventory_items").await);
    assert!(table_exists(&t, "tenant_inventory_notes").await);
    let version = &t.store.versions_of("inventory").await.unwrap()[0];
    assert!(version.migrated_at.is_some());
    // Exactly one provisioning created the tables; the others found them.
    let mut created = 0;
    for id in &tenants {
        let audit = t.store.audit_list(Some(*id), 10).await.unwrap();
        let enabled = audit
            .iter()
            .find(|a| a.action == "module.enable")
            .expect("audited");
        assert_eq!(enabled.after.as_ref().unwrap()["status"], json!("ENABLED"));
        let record: serde_json::Value = match (&t.pg, &t.sqlite) {
            (Some(pg), _) => {
                sqlx::query_scalar("SELECT provisioning FROM tenant_modules WHERE tenant_id = $1")
                    .bind(id)
                    .fetch_one(pg.pool())
                    .await
                    .unwrap()
            }
            (_, Some(sqlite)) => serde_json::from_str(
                &sqlx::query_scalar::<_, String>(
                    "SELECT provisioning FROM tenant_modules WHERE tenant_id = ?1",
                )
                .bind(id)
                .fetch_one(sqlite.pool())
                .await
                .unwrap(),
            )
            .unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(
            record["tables"],
            json!(["tenant_inventory_items", "tenant_inventory_notes"])
        );
        assert_eq!(
            record["row_level_security"],
            json!(backend == Backend::Postgres)
        );
        if backend == Backend::Sqlite {
            assert!(
                record["note"]
                    .as_str()
                    .unwrap()
                    .contains("no row-level security")
            );
        }
        if record["created"] == json!(true) {
            created += 1;
        }
    }
    assert_eq!(created, 1);

    // The audit trigger records a row written to a module table, with its tenant.
    let insert = "INSERT INTO tenant_inventory_items (id, tenant_id, body) VALUES (7, ";
    let statement = format!("{insert}{}, 'hello')", tenants[3]);
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => {
            sqlx::query(&statement).execute(pg.pool()).await.unwrap();
        }
        (_, Some(sqlite)) => {
            sqlx::query(&statement)
                .execute(sqlite.pool())
                .await
                .unwrap();
        }
        _ => unreachable!(),
    }
    let last = &t.store.audit_list(Some(tenants[3]), 1).await.unwrap()[0];
    assert_eq!(last.action, "row.insert");
    assert_eq!(last.entity, "tenant_inventory_items");
    assert_eq!(last.module.as_deref(), Some("inventory"));
    // Its key and the columns written, never the values.
    let after = last.after.as_ref().unwrap();
    assert_eq!(after["id"], json!(7));
    assert!(
        after["changed"]
            .as_array()
            .unwrap()
            .contains(&json!("body")),
        "{after}"
    );
    assert!(!after.to_string().contains("hello"), "{after}");
}

async fn a_failing_migration_leaves_no_table_and_the_module_in_error(backend: Backend) {
    let t = fresh(backend).await;
    let tables = ["tenant_alerts_rules".to_string()];
    let up_sql = "CREATE TABLE tenant_alerts_rules (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
                  created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
                  CREATE INDEX tenant_alerts_rules_bad ON tenant_alerts_rules (no_such_column);";
    publish_version(
        &t,
        &module("alerts", Maturity::Ga, &[]),
        "1.0.0",
        &tables,
        up_sql,
    )
    .await;
    let acme = tenant(&t, "acme", false, false).await;
    life(&t)
        .request(acme, "alerts", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let running = workers(&t);
    assert_eq!(settled(&t, &[acme], "alerts").await, [Error]);
    running.stop().await;

    let failed = t
        .store
        .tenant_module_get(acme, "alerts")
        .await
        .unwrap()
        .unwrap();
    let reason = failed.status_reason.unwrap();
    assert!(
        reason.contains("provisioning failed") && reason.contains("no_such_column"),
        "{reason}"
    );
    assert!(
        !table_exists(&t, "tenant_alerts_rules").await,
        "no partial table"
    );
    assert!(
        t.store.versions_of("alerts").await.unwrap()[0]
            .migrated_at
            .is_none()
    );
    let last = &t.store.audit_list(Some(acme), 1).await.unwrap()[0];
    assert_eq!(last.action, "module.provision_failed");
}

async fn a_ga_request_provisions_and_alpha_waits_for_approval(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let acme = tenant(&t, "acme", true, false).await;
    let life = life(&t);

    let ga = life
        .request(acme, "inventory", &Actor::tenant_admin("user:ana"))
        .await
        .unwrap();
    assert_eq!(ga.module.status, Provisioning);
    assert!(ga.run.is_some(), "its provisioning run started");
    assert_eq!(ga.warning, None);
    let versions = t.store.versions_of("inventory").await.unwrap();
    assert_eq!(ga.module.version_id, Some(versions[0].id));

    let alpha = life
        .request(acme, "chatbot", &Actor::tenant_admin("user:ana"))
        .await
        .unwrap();
    assert_eq!(alpha.module.status, PendingApproval);
    assert!(alpha.run.is_some(), "its run waits for the approval");
    assert!(alpha.module.status_reason.unwrap().contains("approval"));

    // A request and its admission are one write (no crash leaves a module REQUESTED):
    // one audited row per request, newest first, straight to the admitted status.
    let audit = t.store.audit_list(Some(acme), 100).await.unwrap();
    let actions: Vec<(&str, Option<&str>)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.module.as_deref()))
        .collect();
    assert_eq!(
        actions[..2],
        [
            ("module.request", Some("chatbot")),
            ("module.request", Some("inventory")),
        ]
    );
    assert_eq!(audit[0].actor, "user:ana");
    assert_eq!(audit[0].before, None);
    assert_eq!(
        audit[0].after.as_ref().unwrap()["status"],
        json!("PENDING_APPROVAL")
    );
}

async fn refused_moves_change_nothing_and_accepted_ones_are_audited(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    life(&t)
        .request(acme, "inventory", &Actor::tenant_admin("user:ana"))
        .await
        .unwrap();
    let before = t.store.tenant_module_get(acme, "inventory").await.unwrap();
    let audited = t.store.audit_list(Some(acme), 1000).await.unwrap().len();

    let change = |to| StatusChange {
        tenant_id: acme,
        module: "inventory",
        to,
        from: None,
        reason: None,
        actor: "user:bob",
        action: "test.move",
        provisioning: None,
        set_version: None,
        unchanged_since: None,
        catch_up: &[],
        tenant_seen: None,
    };
    for refused in [Requested, UpToDate, Upgrading, Archived, Suspended] {
        let err = t
            .store
            .tenant_module_move(&change(refused))
            .await
            .unwrap_err();
        match err {
            StoreError::Domain(rule) => {
                assert_eq!(rule.code(), "invalid_transition");
                assert!(rule.to_string().contains("PROVISIONING"), "{rule}");
            }
            other => panic!("PROVISIONING → {refused}: {other:?}"),
        }
    }
    assert_eq!(
        t.store.tenant_module_get(acme, "inventory").await.unwrap(),
        before
    );
    assert_eq!(
        t.store.audit_list(Some(acme), 1000).await.unwrap().len(),
        audited
    );

    let enabled = t.store.tenant_module_move(&change(Enabled)).await.unwrap();
    assert_eq!(enabled.status, Enabled);
    let last = &t.store.audit_list(Some(acme), 1).await.unwrap()[0];
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("test.move", "user:bob")
    );
    assert_eq!(
        last.before.as_ref().unwrap()["status"],
        json!("PROVISIONING")
    );
    assert_eq!(last.after.as_ref().unwrap()["status"], json!("ENABLED"));
}

async fn approval_decides_only_pending_requests(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", true, false).await;
    let b = tenant(&t, "b", true, false).await;
    let life = life(&t);
    life.request(a, "chatbot", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap();
    life.request(b, "chatbot", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    life.request(a, "inventory", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap();

    let (approved, _run) = life
        .approve(a, "chatbot", &Actor::master_admin("admin:root"))
        .await
        .unwrap();
    assert_eq!(approved.status, Provisioning);
    let rejected = life
        .reject(
            b,
            "chatbot",
            &Actor::master_admin("admin:root"),
            "no SLA for you",
        )
        .await
        .unwrap();
    assert_eq!(rejected.status, Disabled);
    assert_eq!(rejected.status_reason.as_deref(), Some("no SLA for you"));

    // Deciding again, or deciding what was never pending, is refused and changes nothing.
    assert_eq!(
        rule_code(
            life.approve(a, "chatbot", &Actor::master_admin("admin:root"))
                .await
                .unwrap_err()
        ),
        "invalid_transition"
    );
    assert_eq!(
        rule_code(
            life.reject(b, "chatbot", &Actor::master_admin("admin:root"), "again")
                .await
                .unwrap_err()
        ),
        "invalid_transition"
    );
    assert_eq!(
        rule_code(
            life.reject(a, "inventory", &Actor::master_admin("admin:root"), "no")
                .await
                .unwrap_err()
        ),
        "invalid_transition"
    );
    assert_eq!(status(&t, a, "chatbot").await, Some(Provisioning));
    assert_eq!(status(&t, b, "chatbot").await, Some(Disabled));
    assert_eq!(status(&t, a, "inventory").await, Some(Provisioning));
    let last = &t.store.audit_list(Some(b), 1).await.unwrap()[0];
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("module.reject", "admin:root")
    );
}

async fn unavailable_modules_and_missing_dependencies_are_refused(backend: Backend) {
    let t = fresh(backend).await;
    for (slug, maturity) in [
        ("planned", Maturity::Planned),
        ("indev", Maturity::InDevelopment),
        ("alpha", Maturity::Alpha),
        ("beta", Maturity::Beta),
        ("legacy", Maturity::Maintenance),
        ("inventory", Maturity::Ga),
    ] {
        publish(&t, &module(slug, maturity, &[])).await;
    }
    publish(&t, &module("alerts", Maturity::Ga, &["inventory"])).await;
    let plain = tenant(&t, "plain", false, false).await;
    let life = life(&t);

    for slug in ["planned", "indev", "alpha", "beta"] {
        let err = life
            .request(plain, slug, &Actor::tenant_admin("tenant"))
            .await
            .unwrap_err();
        assert_eq!(rule_code(err), "module_not_available", "{slug}");
        assert_eq!(
            status(&t, plain, slug).await,
            None,
            "{slug}: nothing recorded"
        );
    }
    let err = life
        .request(plain, "alerts", &Actor::tenant_admin("tenant"))
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "missing_dependencies");
    assert_eq!(status(&t, plain, "alerts").await, None);

    let legacy = life
        .request(plain, "legacy", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    assert!(legacy.warning.unwrap().contains("MAINTENANCE"));

    // The dependency provisioning is not enough; enabled is.
    life.request(plain, "inventory", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    assert_eq!(
        rule_code(
            life.request(plain, "alerts", &Actor::tenant_admin("tenant"))
                .await
                .unwrap_err()
        ),
        "missing_dependencies"
    );
    t.store
        .tenant_module_move(&StatusChange {
            tenant_id: plain,
            module: "inventory",
            to: Enabled,
            from: Some(Provisioning),
            reason: None,
            actor: "system",
            action: "module.enable",
            provisioning: None,
            set_version: None,
            unchanged_since: None,
            catch_up: &[],
            tenant_seen: None,
        })
        .await
        .unwrap();
    assert_eq!(
        life.request(plain, "alerts", &Actor::tenant_admin("tenant"))
            .await
            .unwrap()
            .module
            .status,
        Provisioning
    );

    // Deprecated and retired modules are closed to new tenants.
    for (to, slug) in [
        (Maturity::Deprecated, "legacy"),
        (Maturity::Retired, "inventory"),
    ] {
        let other = tenant(&t, &format!("late-{slug}"), true, true).await;
        t.store
            .module_set_maturity(slug, to, "admin")
            .await
            .unwrap();
        let err = life
            .request(other, slug, &Actor::tenant_admin("tenant"))
            .await
            .unwrap_err();
        assert_eq!(rule_code(err), "module_not_available");
    }
    assert!(matches!(
        life.request(plain, "nosuch", &Actor::tenant_admin("tenant"))
            .await
            .unwrap_err(),
        LifecycleError::NoModule(_)
    ));
    assert!(matches!(
        life.request(9_999_999, "inventory", &Actor::tenant_admin("tenant"))
            .await
            .unwrap_err(),
        LifecycleError::NoTenant(_)
    ));
}

async fn maturity_moves_follow_the_catalog_and_are_audited(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Beta, &[])).await;
    let err = t
        .store
        .module_set_maturity("inventory", Maturity::Alpha, "admin")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Domain(ref r) if r.code() == "invalid_transition"),
        "{err:?}"
    );
    assert_eq!(
        t.store
            .module_get("inventory")
            .await
            .unwrap()
            .unwrap()
            .maturity,
        Maturity::Beta
    );

    let from = t
        .store
        .module_set_maturity("inventory", Maturity::Rc, "admin:root")
        .await
        .unwrap();
    assert_eq!(from, Maturity::Beta);
    let last = &t.store.audit_list(None, 1).await.unwrap()[0];
    assert_eq!(last.action, "module.maturity");
    assert_eq!(last.module.as_deref(), Some("inventory"));
    assert_eq!(last.before, Some(json!({"maturity": "BETA"})));
    assert_eq!(last.after, Some(json!({"maturity": "RC"})));

    // Re-publishing the catalog entry does not move the maturity back.
    t.store
        .module_put(&module("inventory", Maturity::Beta, &[]), "catalog")
        .await
        .unwrap();
    assert_eq!(
        t.store
            .module_get("inventory")
            .await
            .unwrap()
            .unwrap()
            .maturity,
        Maturity::Rc
    );
}

async fn an_archived_module_can_be_requested_again_but_a_live_one_cannot(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    let life = life(&t);
    life.request(acme, "inventory", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let err = life
        .request(acme, "inventory", &Actor::tenant_admin("tenant"))
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_transition");
    assert_eq!(status(&t, acme, "inventory").await, Some(Provisioning));

    for to in [Enabled, Disabled, Archived] {
        t.store
            .tenant_module_move(&StatusChange {
                tenant_id: acme,
                module: "inventory",
                to,
                from: None,
                reason: None,
                actor: "system",
                action: "test.move",
                provisioning: None,
                set_version: None,
                unchanged_since: None,
                catch_up: &[],
                tenant_seen: None,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        life.request(acme, "inventory", &Actor::tenant_admin("tenant"))
            .await
            .unwrap()
            .module
            .status,
        Provisioning
    );
}

async fn crafted_slugs_are_refused_before_any_sql(backend: Backend) {
    let t = fresh(backend).await;
    let acme = tenant(&t, "acme", true, true).await;
    let life = life(&t);
    for crafted in [
        "x\"; DROP TABLE tenants; --",
        "inventory' OR '1'='1",
        "Inventory",
        "",
    ] {
        let err = life
            .request(acme, crafted, &Actor::tenant_admin("tenant"))
            .await
            .unwrap_err();
        assert_eq!(rule_code(err), "invalid_identifier", "{crafted:?}");
    }
    assert!(
        t.store.tenant_get(acme).await.unwrap().is_some(),
        "tenants survived"
    );
}

async fn a_first_install_runs_every_version_and_later_tenants_join_the_installed_one(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let items = "CREATE TABLE tenant_stock_items (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);";
    let moves = "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT; \
                 CREATE TABLE tenant_stock_moves (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);";
    let stock = module("stock", Maturity::Ga, &[]);
    publish_version(&t, &stock, "1.0.0", &["tenant_stock_items".into()], items).await;
    // A second module published with both versions before anyone asks for it.
    let fresh_items = items.replace("stock", "depot");
    let fresh_moves = moves.replace("stock", "depot");
    let depot = module("depot", Maturity::Ga, &[]);
    publish_version(
        &t,
        &depot,
        "1.0.0",
        &["tenant_depot_items".into()],
        &fresh_items,
    )
    .await;
    publish_version(
        &t,
        &depot,
        "2.0.0",
        &["tenant_depot_moves".into()],
        &fresh_moves,
    )
    .await;

    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    let life = life(&t);
    life.request(a, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    life.request(a, "depot", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let running = workers(&t);
    assert_eq!(settled(&t, &[a], "stock").await, [Enabled]);
    assert_eq!(settled(&t, &[a], "depot").await, [Enabled]);

    // The first install of `depot` ran 1.0.0 then 2.0.0.
    assert!(column_exists(&t, "tenant_depot_items", "location").await);
    assert!(table_exists(&t, "tenant_depot_moves").await);
    let depot_versions = t.store.versions_of("depot").await.unwrap();
    assert!(depot_versions.iter().all(|v| v.migrated_at.is_some()));
    let enabled = t
        .store
        .tenant_module_get(a, "depot")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enabled.version_id, Some(depot_versions[1].id));

    // `stock` 2.0.0 is published after tenant A installed 1.0.0: tenant B joins 1.0.0 and
    // nothing of 2.0.0 runs (that is an upgrade's job).
    publish_version(&t, &stock, "2.0.0", &["tenant_stock_moves".into()], moves).await;
    life.request(b, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    assert_eq!(settled(&t, &[b], "stock").await, [Enabled]);
    running.stop().await;
    let stock_versions = t.store.versions_of("stock").await.unwrap();
    let joined = t
        .store
        .tenant_module_get(b, "stock")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.version_id, Some(stock_versions[0].id));
    assert!(stock_versions[1].migrated_at.is_none());
    assert!(!table_exists(&t, "tenant_stock_moves").await);
    assert!(!column_exists(&t, "tenant_stock_items", "location").await);
}

async fn a_major_upgrade_backs_up_then_moves_every_tenant_and_rolls_back_within_the_window(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    publish_upgrade(
        &t,
        "2.0.0",
        &["tenant_stock_moves"],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT; \
         CREATE TABLE tenant_stock_moves (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);",
        "DROP TABLE tenant_stock_moves; ALTER TABLE tenant_stock_items DROP COLUMN location;",
        Some("UPDATE tenant_stock_items SET location = 'main' WHERE location IS NULL;"),
    )
    .await;
    let life = life(&t);
    let run = life
        .upgrade("stock", "2.0.0", &Actor::master_admin("admin"))
        .await
        .unwrap();
    let running = workers(&t);
    let upgraded = wait_for(&t, &[a, b], "stock", UpToDate).await;
    running.stop().await;

    let versions = t.store.versions_of("stock").await.unwrap();
    for record in &upgraded {
        assert_eq!(record.version_id, Some(versions[1].id));
        assert_eq!(record.previous_version_id, Some(versions[0].id));
    }
    assert!(table_exists(&t, "tenant_stock_moves").await);
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM tenant_stock_items WHERE location = 'main'"
        )
        .await,
        2,
        "the post-upgrade step ran for every row"
    );
    // The backup of the major upgrade, in the export storage: every row of the 1.0.0 tables.
    let backup = t.exports_dir.path().join(format!(
        "backups/stock/1.0.0/run-{run}/tenant_stock_items.jsonl"
    ));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&backup)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["sku"], json!("apple"));
    let audit = t.store.audit_list(Some(a), 5).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "module.upgrade"),
        "{audit:?}"
    );

    // Rolled back within the window: 1.0.0 again, with its rows.
    let back = life
        .rollback(
            "stock",
            Duration::from_secs(48 * 3600),
            &Actor::master_admin("admin"),
        )
        .await
        .unwrap();
    assert_eq!(back, [a, b]);
    let restored = wait_for(&t, &[a, b], "stock", Enabled).await;
    assert!(
        restored
            .iter()
            .all(|r| r.version_id == Some(versions[0].id))
    );
    assert!(!table_exists(&t, "tenant_stock_moves").await);
    assert_eq!(
        count(&t, "SELECT count(*) FROM tenant_stock_items").await,
        2
    );
    assert!(
        t.store.versions_of("stock").await.unwrap()[1]
            .migrated_at
            .is_none()
    );

    // Upgraded again; a tenant joining now gets 2.0.0, so undoing 2.0.0 is refused.
    life.upgrade("stock", "2.0.0", &Actor::master_admin("admin"))
        .await
        .unwrap();
    let running = workers(&t);
    wait_for(&t, &[a, b], "stock", UpToDate).await;
    let c = tenant(&t, "c", false, false).await;
    life.request(c, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let joined = wait_for(&t, &[c], "stock", Enabled).await;
    running.stop().await;
    assert_eq!(joined[0].version_id, Some(versions[1].id));
    let err = life
        .rollback(
            "stock",
            Duration::from_secs(48 * 3600),
            &Actor::master_admin("admin"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::Store(StoreError::Conflict(ref why)) if why.contains(&format!("[{c}]"))),
        "{err:?}"
    );
    assert!(
        table_exists(&t, "tenant_stock_moves").await,
        "nothing was undone"
    );
    // Aged past the window: refused for that reason first.
    execute(
        &t,
        match backend {
            Backend::Postgres => {
                "UPDATE tenant_modules SET upgraded_at = now() - interval '49 hours'"
            }
            Backend::Sqlite => {
                "UPDATE tenant_modules SET upgraded_at = upgraded_at - 49 * 3600 * 1000"
            }
        },
    )
    .await;
    let err = life
        .rollback(
            "stock",
            Duration::from_secs(48 * 3600),
            &Actor::master_admin("admin"),
        )
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "rollback_window_closed");
    wait_for(&t, &[a, b], "stock", UpToDate).await;
    assert!(table_exists(&t, "tenant_stock_moves").await);
}

/// `restore-backup`: only a Master Admin, only into the version backed up, only rows that
/// are missing and not frozen, only from objects that are what the upgrade wrote; a restore
/// that puts nothing back says so.
async fn a_backup_is_verified_then_restored_into_the_version_it_was_taken_of(backend: Backend) {
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
    let life = life(&t);
    let admin = Actor::master_admin("admin");
    let run = life.upgrade("stock", "2.0.0", &admin).await.unwrap();
    let running = workers(&t);
    wait_for(&t, &[a, b], "stock", UpToDate).await;
    running.stop().await;
    let exports = steward::export::local::LocalStorage::new(t.exports_dir.path().to_path_buf());

    // The tables are at 2.0.0: the 1.0.0 rows are not forced into them.
    let err = life
        .restore_backup(&exports, "stock", run, &admin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::Store(StoreError::Conflict(ref why)) if why.contains("roll the module back to 1.0.0")),
        "{err:?}"
    );
    life.rollback("stock", Duration::from_secs(3600), &admin)
        .await
        .unwrap();
    let running = workers(&t);
    wait_for(&t, &[a, b], "stock", Enabled).await;
    running.stop().await;

    // Both rows lost; then tenant B turns the module off (its rows are frozen).
    execute(&t, "DELETE FROM tenant_stock_items").await;
    life.disable(b, "stock", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    let err = life
        .restore_backup(&exports, "stock", run, &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "not_permitted");
    let err = life
        .restore_backup(&exports, "stock", run + 1_000, &admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no run"), "{err}");

    // A backup object changed in the storage: refused before anything is written.
    let object = t.exports_dir.path().join(format!(
        "backups/stock/1.0.0/run-{run}/tenant_stock_items.jsonl"
    ));
    let original = std::fs::read(&object).unwrap();
    let forged = String::from_utf8(original.clone())
        .unwrap()
        .replace("apple", "bomb!");
    std::fs::write(&object, forged).unwrap();
    let err = life
        .restore_backup(&exports, "stock", run, &admin)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not what the upgrade wrote"),
        "{err}"
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM tenant_stock_items").await,
        0
    );
    std::fs::write(&object, &original).unwrap();

    let restored = life
        .restore_backup(&exports, "stock", run, &admin)
        .await
        .unwrap();
    assert_eq!(restored.version, "1.0.0");
    assert_eq!(restored.inserted(), 1, "{restored:?}");
    assert_eq!(restored.frozen_tenants, [b]);
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a} AND id = 1 AND sku = 'apple'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {b}")
        )
        .await,
        0,
        "a frozen tenant's rows are not written"
    );
    let audit = t.store.audit_list(None, 20).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "module.backup_restored"),
        "{audit:?}"
    );

    // Again: every row the restore may write is there, and it says so.
    let err = life
        .restore_backup(&exports, "stock", run, &admin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::NothingDone(ref why) if why.contains("nothing to restore")),
        "{err:?}"
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM tenant_stock_items").await,
        1
    );
}

async fn a_failed_upgrade_restores_version_status_and_rows(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    publish_upgrade(
        &t,
        "1.1.0",
        &[],
        "ALTER TABLE tenant_stock_items ADD COLUMN extra TEXT; \
         CREATE INDEX tenant_stock_items_bad ON tenant_stock_items (no_such_column);",
        "ALTER TABLE tenant_stock_items DROP COLUMN extra;",
        None,
    )
    .await;
    life(&t)
        .upgrade("stock", "1.1.0", &Actor::master_admin("admin"))
        .await
        .unwrap();
    let running = workers(&t);
    // Through UPGRADING and back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let audit = t.store.audit_list(Some(b), 1).await.unwrap();
        if audit[0].action == "module.upgrade_failed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{audit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let restored = wait_for(&t, &[a, b], "stock", Enabled).await;
    for record in &restored {
        assert_eq!(record.version_id, Some(versions[0].id));
        let reason = record.status_reason.as_deref().unwrap();
        assert!(
            reason.contains("rolled back") && reason.contains("no_such_column"),
            "{reason}"
        );
    }
    assert!(!column_exists(&t, "tenant_stock_items", "extra").await);
    assert_eq!(
        count(&t, "SELECT count(*) FROM tenant_stock_items").await,
        2
    );
    assert!(versions[1].migrated_at.is_none());
}

/// A deployment whose module tables were made by an older steward (a freeze trigger without
/// DELETE) gets today's triggers when it starts (`migrate`): a frozen row cannot be deleted.
async fn tables_of_an_older_deployment_get_the_delete_freeze_at_start_up(backend: Backend) {
    let t = fresh(backend).await;
    let (a, _) = stock_in_use(&t).await;
    execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (3, {a}, 'fig')"),
    )
    .await;
    // The triggers as an older version made them.
    execute(
        &t,
        match backend {
            Backend::Postgres => {
                "DROP TRIGGER tenant_stock_items_frozen ON tenant_stock_items; \
                 CREATE TRIGGER tenant_stock_items_frozen BEFORE INSERT OR UPDATE \
                 ON tenant_stock_items FOR EACH ROW EXECUTE FUNCTION steward_module_guard('stock')"
            }
            Backend::Sqlite => "DROP TRIGGER tenant_stock_items_frozen_delete",
        },
    )
    .await;
    life(&t)
        .disable(a, "stock", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap();
    // The gap: a frozen row deleted.
    try_execute(&t, "DELETE FROM tenant_stock_items WHERE id = 3")
        .await
        .unwrap();

    t.store.migrate().await.unwrap();
    let err = try_execute(&t, "DELETE FROM tenant_stock_items WHERE id = 1")
        .await
        .unwrap_err();
    assert!(err.contains("frozen"), "{err}");
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a}")
        )
        .await,
        1
    );
}

/// The freeze triggers of both backends let a tenant's module rows be written in exactly the
/// statuses `TenantModuleStatus::is_active` names, and in no other: they take the list from
/// that rule (each status set directly here, as a raw write from outside steward would meet).
async fn a_tenants_rows_are_writable_exactly_while_its_module_is_in_use(backend: Backend) {
    use steward::domain::status::TenantModuleStatus;
    let t = fresh(backend).await;
    let (a, _) = stock_in_use(&t).await;
    for (n, &status) in TenantModuleStatus::ALL.iter().enumerate() {
        execute(
            &t,
            &format!(
                "UPDATE tenant_modules SET status = '{}' WHERE tenant_id = {a} AND module = 'stock'",
                status.as_str()
            ),
        )
        .await;
        let write = try_execute(
            &t,
            &format!(
                "INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES ({}, {a}, 'probe')",
                1000 + n
            ),
        )
        .await;
        assert_eq!(write.is_ok(), status.is_active(), "{status}: {write:?}");
        if let Err(err) = write {
            assert!(err.contains("frozen"), "{status}: {err}");
        }
    }
    t.cleanup().await;
}

async fn a_disabled_modules_data_is_frozen_and_archiving_exports_before_it_removes(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (3, {a}, 'fig')"),
    )
    .await;
    let life = life(&t);

    // Only an unused module is archived.
    let err = life
        .archive(b, "stock", &Actor::master_admin("test"))
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_transition");

    assert_eq!(
        life.disable(a, "stock", &Actor::tenant_admin("tenant:a"))
            .await
            .unwrap()
            .status,
        Disabled
    );
    for frozen in [
        format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (4, {a}, 'kiwi')"),
        format!("UPDATE tenant_stock_items SET sku = 'plum' WHERE tenant_id = {a}"),
        format!("DELETE FROM tenant_stock_items WHERE tenant_id = {a}"),
    ] {
        let err = try_execute(&t, &frozen).await.unwrap_err();
        assert!(err.contains("frozen"), "{frozen}: {err}");
    }
    // Other tenants are not affected.
    try_execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (5, {b}, 'lime')"),
    )
    .await
    .unwrap();

    let run = life
        .archive(a, "stock", &Actor::master_admin("test"))
        .await
        .unwrap();
    let running = workers(&t);
    wait_for(&t, &[a], "stock", Archived).await;
    running.stop().await;

    let date = chrono::Utc::now().date_naive();
    let key = format!("tenant_exports/{a}/stock/tenant_stock_items/{date}-archive-run{run}.csv");
    let csv = t
        .exports
        .read(&key)
        .await
        .expect("the archive's export exists");
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let headers = reader.headers().unwrap().clone();
    let sku = headers
        .iter()
        .position(|h| h == "sku")
        .expect("a sku column");
    let mut skus: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[sku].to_string())
        .collect();
    skus.sort();
    assert_eq!(
        skus,
        ["apple", "fig"],
        "the export holds exactly tenant A's rows"
    );
    // Deleted means deleted: no audit row keeps a value of the archived rows.
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM audit_logs WHERE CAST(before AS TEXT) LIKE '%fig%' \
             OR CAST(after AS TEXT) LIKE '%fig%' OR CAST(before AS TEXT) LIKE '%apple%' \
             OR CAST(after AS TEXT) LIKE '%apple%'"
        )
        .await,
        0,
        "audit_logs keeps no value of the deleted rows"
    );
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a}")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {b}")
        )
        .await,
        2
    );
    let audit = t.store.audit_list(Some(a), 10).await.unwrap();
    // The final move names who asked (from the run's parameters: the request's own audit
    // row is a write of its own, which a crash could lose).
    let archived = audit
        .iter()
        .find(|e| e.action == "module.archive")
        .expect("the archive is audited");
    assert!(
        archived.after.as_ref().unwrap()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("asked by test")),
        "{archived:?}"
    );
    // Who asked for the archive is recorded with its run.
    let asked = audit
        .iter()
        .find(|e| e.action == "module.archive_requested")
        .expect("the archive request is audited");
    assert_eq!(asked.actor, "test");
    assert!(asked.after.as_ref().unwrap()["run"].is_i64());

    // A change made after a read is caught: the archive deletes only what its export saw.
    let seen = t
        .store
        .tenant_module_get(b, "stock")
        .await
        .unwrap()
        .unwrap();
    life.disable(b, "stock", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    life.reenable(b, "stock", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    let err = t
        .store
        .tenant_module_move(&StatusChange {
            tenant_id: b,
            module: "stock",
            to: Disabled,
            from: Some(Enabled),
            reason: None,
            actor: "test",
            action: "test.move",
            provisioning: None,
            set_version: None,
            unchanged_since: Some(seen.updated_at),
            catch_up: &[],
            tenant_seen: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Domain(ref r) if r.to_string().contains("changed since")),
        "{err:?}"
    );
    assert_eq!(status(&t, b, "stock").await, Some(Enabled));

    // Archived is final until the module is requested anew.
    let err = life
        .reenable(a, "stock", &Actor::tenant_admin("tenant:a"))
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_transition");
    // Disabling and enabling again thaws the data.
    life.disable(b, "stock", &Actor::tenant_admin("tenant:b"))
        .await
        .unwrap();
    assert_eq!(
        life.reenable(b, "stock", &Actor::tenant_admin("tenant:b"))
            .await
            .unwrap()
            .status,
        Enabled
    );
    try_execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (6, {b}, 'date')"),
    )
    .await
    .unwrap();
}

async fn settings_changes_are_audited_and_crafted_keys_refused(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    life(&t)
        .request(acme, "inventory", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    assert_eq!(
        t.store.settings_get(acme, "inventory").await.unwrap(),
        json!({})
    );

    let first = json!({"low_stock_threshold": 5});
    let before = t
        .store
        .settings_set(acme, "inventory", &first, "user:ana")
        .await
        .unwrap();
    assert_eq!(before, json!({}));
    let second = json!({"low_stock_threshold": 9});
    t.store
        .settings_set(acme, "inventory", &second, "user:bob")
        .await
        .unwrap();
    assert_eq!(
        t.store.settings_get(acme, "inventory").await.unwrap(),
        second
    );
    let last = &t.store.audit_list(Some(acme), 1).await.unwrap()[0];
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("module.settings", "user:bob")
    );
    assert_eq!(last.before, Some(first));
    assert_eq!(last.after, Some(second.clone()));

    let audited = t.store.audit_list(Some(acme), 100).await.unwrap().len();
    for crafted in [
        json!({"x\"; DROP TABLE tenants; --": 1}),
        json!({"Threshold": 1}),
        json!({"a b": 1}),
        json!(["not", "an", "object"]),
    ] {
        let err = t
            .store
            .settings_set(acme, "inventory", &crafted, "user:eve")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Domain(ref r) if r.code() == "invalid_identifier"),
            "{crafted}: {err:?}"
        );
    }
    assert_eq!(
        t.store.settings_get(acme, "inventory").await.unwrap(),
        second
    );
    assert_eq!(
        t.store.audit_list(Some(acme), 100).await.unwrap().len(),
        audited
    );
    assert!(t.store.tenant_get(acme).await.unwrap().is_some());
    let err = t
        .store
        .settings_set(acme, "nosuch", &json!({}), "user")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
}

async fn stuck_provisioning_gets_its_run_and_a_failed_run_ends_in_error(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    let life = life(&t);

    // Tenant A: PROVISIONING without a run, as a crash between the move and the start leaves it.
    let version = t.store.versions_of("inventory").await.unwrap()[0].id;
    t.store
        .tenant_module_request(&ModuleRequest {
            tenant_id: a,
            module: "inventory",
            version_id: version,
            status: Provisioning,
            reason: None,
            expected: None,
            actor: "tenant",
            tenant_seen: None,
        })
        .await
        .unwrap();
    // Tenant B: its run is cancelled before it did anything.
    let requested = life
        .request(b, "inventory", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let cancelled = requested.run.unwrap();
    engine(&t).cancel(cancelled, "admin").await.unwrap();

    assert_eq!(life.reconcile(Duration::ZERO).await.unwrap(), 1);
    let failed = t
        .store
        .tenant_module_get(b, "inventory")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Error);
    assert!(
        failed
            .status_reason
            .unwrap()
            .contains(&format!("run {cancelled} cancelled"))
    );

    // A's run was started by the reconciler, once: reconciling again finds the same run.
    let runs = t.store.runs_list(None, 100).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(life.reconcile(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(t.store.runs_list(None, 100).await.unwrap().len(), 2);
    let running = workers(&t);
    wait_for(&t, &[a], "inventory", Enabled).await;
    running.stop().await;
}

async fn an_upgrade_that_dies_after_it_began_puts_every_tenant_back(backend: Backend) {
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
    // A backup step that fails for good (the export directory is a file: a configuration
    // that never works), after `begin` moved every tenant to UPGRADING: the run dies and its
    // compensation puts them back.
    let scratch = tempfile::tempdir().unwrap();
    let not_a_dir = scratch.path().join("exports");
    std::fs::write(&not_a_dir, b"a file").unwrap();
    let broken: steward::export::SharedExports =
        Arc::new(steward::export::local::LocalStorage::new(not_a_dir));
    let upgrades = Lifecycle::new(common::repo_engine(&t, broken.clone())).unwrap();
    let run = upgrades
        .upgrade("stock", "2.0.0", &Actor::master_admin("admin"))
        .await
        .unwrap();
    let running = workers_with(&t, broken);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let record = engine(&t).run(run).await.unwrap();
        if record.state == steward::store::runs::RunState::Failed {
            break record;
        }
        assert!(std::time::Instant::now() < deadline, "{record:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.stop().await;
    assert_eq!(
        failed.steps[0].state,
        steward::store::runs::StepState::Compensated
    );
    let back = wait_for(&t, &[a, b], "stock", Enabled).await;
    let versions = t.store.versions_of("stock").await.unwrap();
    assert!(back.iter().all(|r| r.version_id == Some(versions[0].id)));
    assert!(
        back[0]
            .status_reason
            .as_deref()
            .unwrap()
            .contains("abandoned")
    );
    assert!(!column_exists(&t, "tenant_stock_items", "location").await);
    let audit = t.store.audit_list(Some(a), 5).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "module.upgrade_aborted"),
        "{audit:?}"
    );
}

async fn plan_sync_gives_active_subscribers_their_plan_modules_and_nothing_else(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish(&t, &module("reports", Maturity::Ga, &[])).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    publish(&t, &module("labs", Maturity::Beta, &[])).await;
    t.store.plan_create("pro", "Pro").await.unwrap();
    t.store.plan_create("free", "Free").await.unwrap();
    let mut by_status = Vec::new();
    for status in ["active", "inactive", "cancelled", "expired"] {
        let id = tenant(&t, status, false, false).await;
        t.store
            .subscription_create(id, "pro", status)
            .await
            .unwrap();
        by_status.push(id);
    }
    let beta = tenant(&t, "beta-fan", false, true).await;
    t.store
        .subscription_create(beta, "pro", "active")
        .await
        .unwrap();
    let free = tenant(&t, "free-rider", false, false).await;
    t.store
        .subscription_create(free, "free", "active")
        .await
        .unwrap();
    let life = life(&t);

    // Adding a module to a plan syncs it, and only it, to the plan's active subscribers.
    let (added, summary) = life
        .plan_add_module("pro", "inventory", &Actor::master_admin("admin"))
        .await
        .unwrap();
    assert!(added);
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (summary[0].plan.as_str(), summary[0].module.as_str()),
        ("pro", "inventory")
    );
    assert_eq!((summary[0].synced, summary[0].subscribed), (2, 2));
    let active = by_status[0];
    for id in [active, beta] {
        assert_eq!(status(&t, id, "inventory").await, Some(Provisioning));
    }
    for id in by_status[1..].iter().copied().chain([free]) {
        assert_eq!(
            status(&t, id, "inventory").await,
            None,
            "tenant {id} untouched"
        );
    }
    let audit = t.store.audit_list(Some(active), 5).await.unwrap();
    assert_eq!(audit[0].action, "plan.sync");

    // ALPHA modules are not synced; BETA only to opted-in tenants.
    for slug in ["chatbot", "labs", "reports"] {
        t.store.plan_add_module("pro", slug, "admin").await.unwrap();
    }
    let all = life
        .sync_plans(None, None, &Actor::master_admin("admin"))
        .await
        .unwrap();
    let line = |module: &str| all.iter().find(|l| l.module == module).cloned();
    assert_eq!(line("chatbot"), None);
    assert_eq!(line("labs").map(|l| (l.synced, l.subscribed)), Some((1, 1)));
    assert_eq!(
        line("reports").map(|l| (l.synced, l.subscribed)),
        Some((2, 2))
    );
    assert_eq!(
        line("inventory").map(|l| (l.synced, l.subscribed)),
        Some((0, 2))
    );
    assert_eq!(status(&t, beta, "labs").await, Some(Provisioning));
    assert_eq!(status(&t, active, "labs").await, None);

    // A second sync changes nothing.
    let audited = t.store.audit_list(Some(active), 1000).await.unwrap().len();
    let again = life
        .sync_plans(Some("pro"), None, &Actor::master_admin("admin"))
        .await
        .unwrap();
    assert!(again.iter().all(|l| l.synced == 0), "{again:?}");
    assert_eq!(
        t.store.audit_list(Some(active), 1000).await.unwrap().len(),
        audited
    );

    // A module taken out of the plan stays with the tenants that have it.
    assert!(
        t.store
            .plan_remove_module("pro", "reports", "admin")
            .await
            .unwrap()
    );
    life.sync_plans(None, None, &Actor::master_admin("admin"))
        .await
        .unwrap();
    assert_eq!(status(&t, active, "reports").await, Some(Provisioning));

    // Bad input: an unknown plan or module, a crafted slug.
    assert!(matches!(
        life.sync_plans(Some("nosuch"), None, &Actor::master_admin("admin"))
            .await
            .unwrap_err(),
        LifecycleError::Store(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        t.store
            .plan_add_module("pro", "nosuch", "admin")
            .await
            .unwrap_err(),
        StoreError::InvalidInput(_)
    ));
    assert_eq!(
        rule_code(
            life.sync_plans(Some("pro"), Some("x'; --"), &Actor::master_admin("admin"))
                .await
                .unwrap_err()
        ),
        "invalid_identifier"
    );
    assert!(matches!(
        t.store
            .subscription_create(active, "pro", "paused")
            .await
            .unwrap_err(),
        StoreError::InvalidInput(_)
    ));
}

/// The state of the job of a run's first step.
async fn first_step_job(t: &common::TestStore, run: i64) -> Option<steward::types::JobState> {
    let record = t.store.run_get(run).await.unwrap()?;
    let job = record.steps.first()?.job_id?;
    Some(t.store.job_get(job).await.unwrap()?.state)
}

/// Wait until a run's first step job is parked (scheduled: the run waits, holding no worker).
async fn parked(t: &common::TestStore, run: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first_step_job(t, run).await != Some(steward::types::JobState::Scheduled) {
        assert!(
            std::time::Instant::now() < deadline,
            "run {run} never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_state(t: &common::TestStore, run: i64) -> steward::store::runs::RunState {
    t.store.run_get(run).await.unwrap().unwrap().state
}

async fn an_alpha_request_waits_in_its_run_for_the_approval(backend: Backend) {
    use steward::store::runs::RunState;
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let (a, b, c) = (
        tenant(&t, "a", true, false).await,
        tenant(&t, "b", true, false).await,
        tenant(&t, "c", true, false).await,
    );
    let engine = engine(&t);
    let life = Lifecycle::new(engine.clone()).unwrap();
    let admin = Actor::master_admin("admin:root");
    let ask = |tenant| {
        let life = life.clone();
        async move {
            let asked = life
                .request(tenant, "chatbot", &Actor::tenant_admin("tenant"))
                .await
                .unwrap();
            assert_eq!(asked.module.status, PendingApproval);
            asked.run.expect("a run that waits")
        }
    };
    let (run_a, run_b, run_c) = (ask(a).await, ask(b).await, ask(c).await);
    let running = workers(&t);
    for run in [run_a, run_b, run_c] {
        parked(&t, run).await;
    }
    assert!(
        !table_exists(&t, "tenant_chatbot_items").await,
        "nothing before the approval"
    );
    // Nobody sends the approval but the operation: not even a Master Admin over the API.
    let refused = engine
        .signal(
            run_a,
            "approval",
            &json!({}),
            "admin:root",
            Some("master_admin"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, steward::workflow::EngineError::SignalRefused(_)),
        "{refused}"
    );
    // Approved: the same run goes on and enables it.
    let (_, approved_run) = life.approve(a, "chatbot", &admin).await.unwrap();
    assert_eq!(approved_run, run_a, "the run that waited");
    wait_for(&t, &[a], "chatbot", Enabled).await;
    // Rejected, or withdrawn by the tenant: the waiting run is cancelled, nothing created.
    life.reject(b, "chatbot", &admin, "no SLA").await.unwrap();
    life.disable(c, "chatbot", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    assert_eq!(run_state(&t, run_b).await, RunState::Cancelled);
    assert_eq!(run_state(&t, run_c).await, RunState::Cancelled);
    // Requested again, a new run waits (not queued behind the old one) and is approved.
    let again = ask(c).await;
    assert_ne!(again, run_c);
    parked(&t, again).await;
    life.approve(c, "chatbot", &admin).await.unwrap();
    wait_for(&t, &[c], "chatbot", Enabled).await;
    running.stop().await;
    let record = t.store.run_get(run_a).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Completed);
    assert_eq!(
        record.steps[0].output.as_ref().unwrap()["approved_by"],
        json!("admin:root")
    );
    assert_eq!(status(&t, b, "chatbot").await, Some(Disabled));
}
