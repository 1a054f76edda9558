//! The storage conformance suite of the module lifecycle and of tenant data work: every method
//! of `DomainStore` (tenants, the catalog, tenant modules, settings, plans, rollbacks, the
//! audit log) and of `DataStore` (retention, module table rows, usage costs, webhooks), run
//! against both backends (`postgres::*` and `sqlite::*`) and checked for the same answers.

mod common;

use common::lifecycle::*;
use common::{Backend, TestStore, fresh};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;
use steward::domain::actor::Actor;
use steward::domain::ident::{ModuleTable, Slug};
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::{self, *};
use steward::store::StoreError;
use steward::store::data::{
    CostFilter, EXPORT_BATCH_ROWS, RetentionTarget, RowBatch, UsageEntry, WebhookTarget,
    parse_month,
};
use steward::store::domain::{
    ModuleRequest, NewTenant, NewVersion, StatusChange, TenantId, TenantModuleRecord,
};

per_backend!(
    tenants_round_trip_and_their_creation_is_audited_without_the_secret,
    catalog_modules_round_trip_and_only_real_changes_are_audited,
    maturity_moves_return_the_previous_maturity_and_refused_ones_change_nothing,
    versions_publish_once_and_list_in_version_order,
    a_request_is_written_only_if_the_row_is_as_expected,
    status_moves_are_checked_against_the_rules_the_expected_status_and_the_last_change,
    a_write_decided_on_the_tenants_modules_is_refused_once_one_of_them_changed,
    listings_sort_a_tenants_modules_by_slug_and_a_modules_tenants_by_id,
    settings_replace_the_previous_ones_of_one_tenant_module_only,
    stuck_modules_are_the_idle_ones_in_a_status_oldest_first,
    table_dumps_write_one_json_line_per_row_of_one_tenant_or_of_all,
    purges_count_export_and_delete_only_expired_rows_in_batches,
    a_purge_hold_freezes_the_expired_rows_until_it_is_released,
    retention_targets_are_the_modules_holding_data_with_a_retention,
    usage_costs_aggregate_exactly_per_month_and_a_rerun_gives_the_same_rows,
    usage_out_of_bounds_is_refused_and_the_largest_entries_still_aggregate,
    webhooks_are_read_only_when_complete_and_can_be_replaced_or_cleared,
    audit_rows_are_appended_and_listed_newest_first_per_tenant,
    plan_sync_grants_once_and_skips_tenants_without_dependencies,
    first_requests_made_at_once_write_one_row_and_refuse_the_rest,
    a_module_put_by_callers_at_once_is_audited_as_created_once,
    plan_sync_grants_what_the_availability_and_dependency_rules_grant,
    seeded_tenants_each_get_an_active_subscription_in_one_write,
    the_rollback_undoes_the_last_upgrade_within_its_window,
);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The code of the lifecycle rule that refused a store call.
fn rule(err: StoreError) -> &'static str {
    match err {
        StoreError::Domain(rule) => rule.code(),
        other => panic!("expected a lifecycle rule to refuse, got {other:?}"),
    }
}

fn table(slug: &str, name: &str) -> ModuleTable {
    ModuleTable::parse(&Slug::parse(slug).unwrap(), name).unwrap()
}

fn version(number: &str, tables: &[&str]) -> NewVersion {
    let numbers: Vec<i32> = number.split('.').map(|n| n.parse().unwrap()).collect();
    NewVersion {
        version: number.into(),
        major: numbers[0],
        minor: numbers[1],
        patch: numbers[2],
        build_hash: format!("build-{number}"),
        changelog: format!("version {number}"),
        up_sql: "SELECT 1;".into(),
        down_sql: "SELECT 1;".into(),
        pre_upgrade_sql: None,
        post_upgrade_sql: None,
        settings_schema: Some(json!({"type": "object", "version": number})),
        tables_created: tables.iter().map(|t| t.to_string()).collect(),
    }
}

/// `tenant`'s `slug` recorded (at the module's latest version) in `first`, then moved along
/// `path`.
async fn tenant_module_at(
    t: &TestStore,
    tenant: TenantId,
    slug: &str,
    first: TenantModuleStatus,
    path: &[TenantModuleStatus],
) -> TenantModuleRecord {
    let version_id = t.store.versions_of(slug).await.unwrap().last().unwrap().id;
    let mut record = t
        .store
        .tenant_module_request(&ModuleRequest {
            tenant_id: tenant,
            module: slug,
            version_id,
            status: first,
            reason: None,
            expected: None,
            actor: "test",
            tenant_seen: None,
        })
        .await
        .unwrap();
    for to in path {
        record = t
            .store
            .tenant_module_move(&StatusChange::new(
                tenant,
                slug,
                Some(record.status),
                *to,
                "test",
                "test.move",
            ))
            .await
            .unwrap();
    }
    record
}

/// Set `column` of the tenant modules `filter` selects to `hours` hours ago.
async fn backdate(t: &TestStore, column: &str, hours: i64, filter: &str) {
    let sql = match t.pg {
        Some(_) => format!(
            "UPDATE tenant_modules SET {column} = now() - interval '{hours} hours' WHERE {filter}"
        ),
        None => format!(
            "UPDATE tenant_modules SET {column} = \
             CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - {hours} * 3600000 \
             WHERE {filter}"
        ),
    };
    execute(t, &sql).await;
}

/// Insert `stock` rows with ids `first..=last` for `tenant`, created `days` days ago.
async fn old_stock_rows(t: &TestStore, tenant: TenantId, first: i64, last: i64, days: i64) {
    let sql = match t.pg {
        Some(_) => format!(
            "INSERT INTO tenant_stock_items (id, tenant_id, sku, created_at) \
             SELECT i, {tenant}, 'old-' || i, (now() at time zone 'utc') - interval '{days} days' \
             FROM generate_series({first}, {last}) AS i"
        ),
        None => format!(
            "WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO tenant_stock_items (id, tenant_id, sku, created_at) \
             SELECT i, {tenant}, 'old-' || i, datetime('now', '-{days} days') FROM n"
        ),
    };
    execute(t, &sql).await;
}

fn usage(tenant: TenantId, module: &str, at: &str, tokens: i64, cost: &str) -> UsageEntry {
    UsageEntry {
        tenant_id: tenant,
        module: module.into(),
        route: "/api/items".into(),
        tokens,
        row_count: 1,
        estimated_cost: Decimal::from_str(cost).unwrap(),
        latency_ms: 8,
        at: chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&chrono::Utc),
    }
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tenants and the catalog.

async fn tenants_round_trip_and_their_creation_is_audited_without_the_secret(backend: Backend) {
    let t = fresh(backend).await;
    let acme = t
        .store
        .tenant_create(&NewTenant {
            slug: "acme".into(),
            name: "Acme Inc.".into(),
            internal_tester: true,
            beta_opt_in: false,
            webhook_url: Some("https://acme.example/hooks".into()),
            webhook_secret: Some("s3cret-value".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        (
            acme.slug.as_str(),
            acme.name.as_str(),
            acme.internal_tester,
            acme.beta_opt_in,
            acme.webhook_url.as_deref()
        ),
        (
            "acme",
            "Acme Inc.",
            true,
            false,
            Some("https://acme.example/hooks")
        )
    );
    assert_eq!(
        t.store.tenant_get(acme.id).await.unwrap(),
        Some(acme.clone())
    );

    let other = tenant(&t, "globex", false, true).await;
    assert_ne!(other, acme.id);
    let globex = t.store.tenant_get(other).await.unwrap().unwrap();
    assert_eq!((globex.internal_tester, globex.beta_opt_in), (false, true));
    assert_eq!(globex.webhook_url, None);
    assert_eq!(t.store.tenant_get(other + 1000).await.unwrap(), None);
    let both = t
        .store
        .tenants_get(&[other + 1000, other, acme.id])
        .await
        .unwrap();
    assert_eq!(
        both,
        vec![acme.clone(), globex.clone()],
        "those that exist, by id"
    );

    // A taken slug is refused and nothing is written.
    let err = t
        .store
        .tenant_create(&NewTenant {
            slug: "acme".into(),
            name: "Another Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.is_unique_violation(), "{err:?}");
    assert_eq!(count(&t, "SELECT count(*) FROM tenants").await, 2);

    // The creation is audited, once, with the tenant as stored (never its secret).
    let audit = t.store.audit_list(Some(acme.id), 10).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let created = &audit[0];
    assert_eq!(
        (
            created.actor.as_str(),
            created.action.as_str(),
            created.entity.as_str()
        ),
        ("system", "tenant.create", "tenant")
    );
    assert_eq!(
        (created.tenant_id, created.module.as_deref()),
        (Some(acme.id), None)
    );
    assert_eq!(created.before, None);
    let after = created.after.as_ref().unwrap();
    assert_eq!(after["slug"], json!("acme"));
    assert_eq!(after["webhook_url"], json!("https://acme.example/hooks"));
    assert!(!after.to_string().contains("s3cret-value"), "{after}");
    t.cleanup().await;
}

async fn catalog_modules_round_trip_and_only_real_changes_are_audited(backend: Backend) {
    let t = fresh(backend).await;
    let mut inventory = module("inventory", Maturity::Ga, &[]);
    inventory.description = "Stock levels".into();
    inventory.successor = Some("warehouse".into());
    inventory.sunset_date = Some("2027-06-30".into());
    let mut alerts = module("alerts", Maturity::Beta, &["inventory"]);
    alerts.data_retention_days = None;
    t.store.module_put(&inventory, "catalog").await.unwrap();
    t.store.module_put(&alerts, "catalog").await.unwrap();

    assert_eq!(
        t.store.module_get("inventory").await.unwrap(),
        Some(inventory.clone())
    );
    assert_eq!(t.store.module_get("nosuch").await.unwrap(), None);
    assert_eq!(
        t.store.modules_list().await.unwrap(),
        [alerts.clone(), inventory.clone()],
        "by slug"
    );
    let audit = t.store.audit_list(None, 10).await.unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(
        (audit[0].action.as_str(), audit[0].module.as_deref()),
        ("module.put", Some("alerts"))
    );
    assert_eq!(audit[1].before, None);
    assert_eq!(
        audit[1].after.as_ref().unwrap()["sunset_date"],
        json!("2027-06-30")
    );

    // The same entry again changes nothing, and is not audited.
    t.store.module_put(&inventory, "catalog").await.unwrap();
    assert_eq!(t.store.audit_list(None, 10).await.unwrap().len(), 2);

    // An update changes everything but the maturity, and is audited before and after.
    let mut changed = inventory.clone();
    changed.description = "Stock levels and moves".into();
    changed.dependencies = vec!["alerts".into()];
    changed.data_retention_days = Some(90);
    changed.maturity = Maturity::Planned;
    t.store.module_put(&changed, "catalog:v2").await.unwrap();
    let stored = t.store.module_get("inventory").await.unwrap().unwrap();
    assert_eq!(stored.description, "Stock levels and moves");
    assert_eq!(stored.dependencies, ["alerts"]);
    assert_eq!(stored.data_retention_days, Some(90));
    assert_eq!(
        stored.maturity,
        Maturity::Ga,
        "maturity is set only on creation"
    );
    let last = &t.store.audit_list(None, 1).await.unwrap()[0];
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.entity.as_str()
        ),
        ("catalog:v2", "module.put", "core_module")
    );
    assert_eq!(
        last.before.as_ref().unwrap()["description"],
        json!("Stock levels")
    );
    assert_eq!(
        last.after.as_ref().unwrap()["description"],
        json!("Stock levels and moves")
    );
    assert_eq!(last.after.as_ref().unwrap()["maturity"], json!("GA"));

    // A crafted slug is refused before any SQL.
    let err = t
        .store
        .module_put(
            &module("x'; DROP TABLE core_modules; --", Maturity::Ga, &[]),
            "eve",
        )
        .await
        .unwrap_err();
    assert_eq!(rule(err), "invalid_identifier");
    assert_eq!(t.store.modules_list().await.unwrap().len(), 2);
    t.cleanup().await;
}

async fn maturity_moves_return_the_previous_maturity_and_refused_ones_change_nothing(
    backend: Backend,
) {
    let t = fresh(backend).await;
    t.store
        .module_put(&module("labs", Maturity::Planned, &[]), "catalog")
        .await
        .unwrap();
    let path = [
        Maturity::Planned,
        Maturity::InDevelopment,
        Maturity::Alpha,
        Maturity::Beta,
        Maturity::Rc,
        Maturity::Ga,
    ];
    for step in path.windows(2) {
        let from = t
            .store
            .module_set_maturity("labs", step[1], "admin:root")
            .await
            .unwrap();
        assert_eq!(from, step[0]);
    }
    let audited = t.store.audit_list(None, 100).await.unwrap().len();

    for refused in [Maturity::Beta, Maturity::Ga, Maturity::Planned] {
        let err = t
            .store
            .module_set_maturity("labs", refused, "admin:root")
            .await
            .unwrap_err();
        assert_eq!(rule(err), "invalid_transition", "GA → {refused}");
    }
    let err = t
        .store
        .module_set_maturity("nosuch", Maturity::Ga, "admin:root")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(
        t.store.module_get("labs").await.unwrap().unwrap().maturity,
        Maturity::Ga
    );
    assert_eq!(t.store.audit_list(None, 100).await.unwrap().len(), audited);

    let moves: Vec<_> = t
        .store
        .audit_list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "module.maturity")
        .collect();
    assert_eq!(moves.len(), 5);
    assert_eq!(moves[0].actor, "admin:root");
    assert_eq!(moves[0].module.as_deref(), Some("labs"));
    assert_eq!(moves[0].before, Some(json!({"maturity": "RC"})));
    assert_eq!(moves[0].after, Some(json!({"maturity": "GA"})));
    assert_eq!(moves[4].before, Some(json!({"maturity": "PLANNED"})));
    t.cleanup().await;
}

async fn versions_publish_once_and_list_in_version_order(backend: Backend) {
    let t = fresh(backend).await;
    t.store
        .module_put(&module("stock", Maturity::Ga, &[]), "catalog")
        .await
        .unwrap();
    // A table that is not the module's own (`tenant_stock_…`) is refused before anything.
    let err = t
        .store
        .version_publish(
            "stock",
            &NewVersion {
                version: "0.1.0".into(),
                major: 0,
                minor: 1,
                patch: 0,
                build_hash: "x".into(),
                changelog: String::new(),
                up_sql: String::new(),
                down_sql: String::new(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: vec!["users".into()],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(rule(err), "invalid_identifier");
    assert!(t.store.versions_of("stock").await.unwrap().is_empty());
    // Published out of order; 1.10.0 is after 1.2.0 (numbers, not text).
    let v1_10 = t
        .store
        .version_publish("stock", &version("1.10.0", &["tenant_stock_moves"]))
        .await
        .unwrap();
    let v2 = t
        .store
        .version_publish("stock", &version("2.0.0", &[]))
        .await
        .unwrap();
    let v1_2 = t
        .store
        .version_publish("stock", &version("1.2.0", &["tenant_stock_items"]))
        .await
        .unwrap();
    assert_eq!(
        (
            v1_2.module.as_str(),
            v1_2.version.as_str(),
            v1_2.major,
            v1_2.migrated_at
        ),
        ("stock", "1.2.0", 1, None)
    );
    assert_eq!(v1_2.tables_created, ["tenant_stock_items"]);
    assert_eq!(
        v1_2.settings_schema,
        Some(json!({"type": "object", "version": "1.2.0"}))
    );
    assert_eq!(v2.major, 2);
    let listed = t.store.versions_of("stock").await.unwrap();
    assert_eq!(listed, [v1_2.clone(), v1_10.clone(), v2.clone()]);

    // Publishing a version again returns the stored one and changes nothing.
    let mut again = version("1.2.0", &["tenant_stock_other"]);
    again.settings_schema = None;
    let republished = t.store.version_publish("stock", &again).await.unwrap();
    assert_eq!(republished, v1_2);
    assert_eq!(t.store.versions_of("stock").await.unwrap(), listed);

    assert!(t.store.versions_of("nosuch").await.unwrap().is_empty());
    let err = t
        .store
        .version_publish("nosuch", &version("1.0.0", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(t.store.versions_of("nosuch").await.unwrap().is_empty());
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Tenant modules.

async fn a_request_is_written_only_if_the_row_is_as_expected(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let acme = tenant(&t, "acme", true, false).await;
    let other = tenant(&t, "other", true, false).await;
    let version_id = t.store.versions_of("chatbot").await.unwrap()[0].id;
    let request = |tenant_id, status, expected| ModuleRequest {
        tenant_id,
        module: "chatbot",
        version_id,
        status,
        reason: Some("waiting for approval"),
        expected,
        actor: "user:ana",
        tenant_seen: None,
    };
    // A tenant that does not exist, or a version of another module: refused, nothing written.
    publish(&t, &module("other_mod", Maturity::Ga, &[])).await;
    let foreign = t.store.versions_of("other_mod").await.unwrap()[0].id;
    for orphan in [
        ModuleRequest {
            tenant_id: 999_999,
            ..request(acme, PendingApproval, None)
        },
        ModuleRequest {
            version_id: foreign,
            ..request(acme, PendingApproval, None)
        },
    ] {
        let err = t.store.tenant_module_request(&orphan).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    assert!(t.store.tenant_modules(999_999).await.unwrap().is_empty());
    assert!(t.store.tenant_modules(acme).await.unwrap().is_empty());

    let pending = t
        .store
        .tenant_module_request(&request(acme, PendingApproval, None))
        .await
        .unwrap();
    assert_eq!(
        (pending.tenant_id, pending.module.as_str(), pending.status),
        (acme, "chatbot", PendingApproval)
    );
    assert_eq!(pending.version_id, Some(version_id));
    assert_eq!(pending.previous_version_id, None);
    assert_eq!(
        pending.status_reason.as_deref(),
        Some("waiting for approval")
    );
    assert_eq!(pending.disabled_from, None);
    assert_eq!(
        t.store.tenant_module_get(acme, "chatbot").await.unwrap(),
        Some(pending.clone())
    );
    let audit = t.store.audit_list(Some(acme), 10).await.unwrap();
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].actor.as_str(),
            audit[0].entity.as_str()
        ),
        ("module.request", "user:ana", "tenant_module")
    );
    assert_eq!(audit[0].before, None);
    assert_eq!(
        audit[0].after.as_ref().unwrap()["status"],
        json!("PENDING_APPROVAL")
    );
    let audited = audit.len();

    // Not as the operation saw it: a conflict, and nothing written.
    for expected in [None, Some(Enabled), Some(Disabled)] {
        let err = t
            .store
            .tenant_module_request(&request(acme, Provisioning, expected))
            .await
            .unwrap_err();
        match err {
            StoreError::Conflict(why) => assert!(why.contains("PENDING_APPROVAL"), "{why}"),
            other => panic!("expected {expected:?}: {other:?}"),
        }
    }
    let err = t
        .store
        .tenant_module_request(&request(other, Provisioning, Some(Archived)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref why) if why.contains("removed")),
        "{err:?}"
    );
    assert_eq!(
        t.store.tenant_module_get(other, "chatbot").await.unwrap(),
        None
    );
    assert_eq!(
        t.store.tenant_module_get(acme, "chatbot").await.unwrap(),
        Some(pending.clone())
    );
    assert_eq!(
        t.store.audit_list(Some(acme), 10).await.unwrap().len(),
        audited
    );

    // Rejected, then requested anew as the operation saw it: the row starts over.
    let rejected = t
        .store
        .tenant_module_move(
            &StatusChange::new(
                acme,
                "chatbot",
                Some(PendingApproval),
                Disabled,
                "admin:root",
                "module.reject",
            )
            .because("no"),
        )
        .await
        .unwrap();
    assert_eq!(rejected.disabled_from, Some(PendingApproval));
    let mut again = request(acme, Provisioning, Some(Disabled));
    again.reason = None;
    let renewed = t.store.tenant_module_request(&again).await.unwrap();
    assert_eq!(renewed.status, Provisioning);
    assert_eq!(renewed.status_reason, None);
    assert_eq!(renewed.disabled_from, None);
    assert!(renewed.requested_at >= pending.requested_at);
    let last = &t.store.audit_list(Some(acme), 1).await.unwrap()[0];
    assert_eq!(last.action, "module.request");
    assert_eq!(last.before.as_ref().unwrap()["status"], json!("DISABLED"));
    assert_eq!(
        last.after.as_ref().unwrap()["status"],
        json!("PROVISIONING")
    );
    t.cleanup().await;
}

async fn status_moves_are_checked_against_the_rules_the_expected_status_and_the_last_change(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let stock = module("stock", Maturity::Ga, &[]);
    publish(&t, &stock).await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let v1 = versions[0].id;
    let acme = tenant(&t, "acme", false, false).await;
    let provisioning = tenant_module_at(&t, acme, "stock", Provisioning, &[]).await;
    let audited = t.store.audit_list(Some(acme), 100).await.unwrap().len();
    let mv = |from, to| StatusChange::new(acme, "stock", from, to, "user:bob", "test.move");

    // Against the rules, or not from the expected status: refused, nothing written.
    let err = t
        .store
        .tenant_module_move(&mv(None, UpToDate))
        .await
        .unwrap_err();
    assert_eq!(rule(err), "invalid_transition");
    let err = t
        .store
        .tenant_module_move(&mv(Some(PendingApproval), Enabled))
        .await
        .unwrap_err();
    match err {
        StoreError::Domain(rule) => assert!(rule.to_string().contains("moved meanwhile"), "{rule}"),
        other => panic!("{other:?}"),
    }
    let err = t
        .store
        .tenant_module_move(&StatusChange::new(
            acme,
            "nosuch",
            None,
            Enabled,
            "bob",
            "test.move",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(
        t.store.tenant_module_get(acme, "stock").await.unwrap(),
        Some(provisioning.clone())
    );
    assert_eq!(
        t.store.audit_list(Some(acme), 100).await.unwrap().len(),
        audited
    );

    // Accepted: moved, with its reason, and audited before and after.
    let provisioned = json!({"tables": ["tenant_stock_items"]});
    let mut enable = mv(Some(Provisioning), Enabled).because("provisioned");
    enable.provisioning = Some(&provisioned);
    let enabled = t.store.tenant_module_move(&enable).await.unwrap();
    assert_eq!(enabled.status, Enabled);
    assert_eq!(enabled.status_reason.as_deref(), Some("provisioned"));
    assert_eq!(enabled.version_id, Some(v1));
    let last = &t.store.audit_list(Some(acme), 1).await.unwrap()[0];
    assert_eq!(
        (
            last.action.as_str(),
            last.actor.as_str(),
            last.module.as_deref()
        ),
        ("test.move", "user:bob", Some("stock"))
    );
    assert_eq!(
        last.before,
        Some(json!({"status": "PROVISIONING", "version_id": v1, "reason": null}))
    );
    assert_eq!(
        last.after,
        Some(json!({"status": "ENABLED", "version_id": v1, "reason": "provisioned"}))
    );

    // Only if unchanged since it was read: a move in between makes the read stale.
    backdate(&t, "updated_at", 1, &format!("tenant_id = {acme}")).await;
    let read = t
        .store
        .tenant_module_get(acme, "stock")
        .await
        .unwrap()
        .unwrap();
    let mut suspend = mv(Some(Enabled), Suspended);
    suspend.unchanged_since = Some(read.updated_at);
    let suspended = t.store.tenant_module_move(&suspend).await.unwrap();
    assert_eq!(suspended.status, Suspended);
    assert!(suspended.updated_at > read.updated_at);
    let mut stale = mv(Some(Suspended), Enabled);
    stale.unchanged_since = Some(read.updated_at);
    let err = t.store.tenant_module_move(&stale).await.unwrap_err();
    match err {
        StoreError::Domain(rule) => assert!(rule.to_string().contains("changed since"), "{rule}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.store.tenant_module_get(acme, "stock").await.unwrap(),
        Some(suspended.clone())
    );
    stale.unchanged_since = Some(suspended.updated_at);
    assert_eq!(
        t.store.tenant_module_move(&stale).await.unwrap().status,
        Enabled
    );

    // A version change keeps the one it was at as the previous version.
    publish_version(&t, &stock, "1.1.0", &[], "SELECT 1;").await;
    let v2 = t.store.versions_of("stock").await.unwrap()[1].id;
    let mut upgraded = mv(Some(Enabled), UpToDate);
    upgraded.set_version = Some(v2);
    let upgraded = t.store.tenant_module_move(&upgraded).await.unwrap();
    assert_eq!(
        (upgraded.version_id, upgraded.previous_version_id),
        (Some(v2), Some(v1))
    );

    // Turned off: where from is kept; turned back on: forgotten.
    let disabled = t
        .store
        .tenant_module_move(&mv(Some(UpToDate), Disabled))
        .await
        .unwrap();
    assert_eq!(
        (disabled.status, disabled.disabled_from),
        (Disabled, Some(UpToDate))
    );
    assert_eq!(
        disabled.version_id,
        Some(v2),
        "a plain move keeps the version"
    );
    let back = t
        .store
        .tenant_module_move(&mv(Some(Disabled), UpToDate))
        .await
        .unwrap();
    assert_eq!((back.status, back.disabled_from), (UpToDate, None));
    assert_eq!(
        t.store.audit_list(Some(acme), 100).await.unwrap().len(),
        audited + 6,
        "one audit row per accepted move"
    );
    t.cleanup().await;
}

async fn listings_sort_a_tenants_modules_by_slug_and_a_modules_tenants_by_id(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("reports", Maturity::Ga, &[])).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    let c = tenant(&t, "c", false, false).await;
    // Recorded in another order than they are listed in.
    let b_inventory = tenant_module_at(&t, b, "inventory", Provisioning, &[Enabled]).await;
    let a_reports = tenant_module_at(&t, a, "reports", Provisioning, &[]).await;
    let a_inventory = tenant_module_at(&t, a, "inventory", Provisioning, &[Error]).await;

    assert_eq!(
        t.store.tenant_modules(a).await.unwrap(),
        [a_inventory.clone(), a_reports.clone()]
    );
    assert_eq!(
        t.store.tenant_modules(b).await.unwrap(),
        std::slice::from_ref(&b_inventory)
    );
    assert!(t.store.tenant_modules(c).await.unwrap().is_empty());
    assert_eq!(
        t.store.module_tenants("inventory").await.unwrap(),
        [a_inventory.clone(), b_inventory]
    );
    assert_eq!(
        t.store.module_tenants("reports").await.unwrap(),
        [a_reports]
    );
    assert!(t.store.module_tenants("nosuch").await.unwrap().is_empty());
    assert_eq!(
        t.store.tenant_module_get(a, "inventory").await.unwrap(),
        Some(a_inventory)
    );
    assert_eq!(
        t.store.tenant_module_get(c, "inventory").await.unwrap(),
        None
    );
    t.cleanup().await;
}

async fn settings_replace_the_previous_ones_of_one_tenant_module_only(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    tenant_module_at(&t, a, "inventory", Provisioning, &[Enabled]).await;
    tenant_module_at(&t, b, "inventory", Provisioning, &[Enabled]).await;
    assert_eq!(
        t.store.settings_get(a, "inventory").await.unwrap(),
        json!({})
    );

    let first = json!({"low_stock_threshold": 5});
    let second = json!({"low_stock_threshold": 9, "unit": "kg", "nested": {"Any Key": [1, 2]}});
    assert_eq!(
        t.store
            .settings_set(a, "inventory", &first, "user:ana")
            .await
            .unwrap(),
        json!({})
    );
    assert_eq!(
        t.store
            .settings_set(a, "inventory", &second, "user:bob")
            .await
            .unwrap(),
        first
    );
    assert_eq!(t.store.settings_get(a, "inventory").await.unwrap(), second);
    assert_eq!(
        t.store.settings_get(b, "inventory").await.unwrap(),
        json!({}),
        "another tenant's settings are its own"
    );
    assert_eq!(t.store.settings_get(a, "nosuch").await.unwrap(), json!({}));
    let last = &t.store.audit_list(Some(a), 1).await.unwrap()[0];
    assert_eq!(
        (
            last.action.as_str(),
            last.actor.as_str(),
            last.entity.as_str()
        ),
        ("module.settings", "user:bob", "tenant_module_settings")
    );
    assert_eq!(
        (last.before.clone(), last.after.clone()),
        (Some(first), Some(second.clone()))
    );

    // Refused: a crafted key, or a module the tenant does not have; nothing changes.
    let audited = t.store.audit_list(Some(a), 100).await.unwrap().len();
    let err = t
        .store
        .settings_set(a, "inventory", &json!({"x\" = 1; --": 1}), "user:eve")
        .await
        .unwrap_err();
    assert_eq!(rule(err), "invalid_identifier");
    let err = t
        .store
        .settings_set(a, "nosuch", &json!({"a": 1}), "user:eve")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(t.store.settings_get(a, "inventory").await.unwrap(), second);
    assert_eq!(
        t.store.audit_list(Some(a), 100).await.unwrap().len(),
        audited
    );
    t.cleanup().await;
}

async fn stuck_modules_are_the_idle_ones_in_a_status_oldest_first(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    let c = tenant(&t, "c", false, false).await;
    let d = tenant(&t, "d", false, false).await;
    for id in [a, b, c] {
        tenant_module_at(&t, id, "inventory", Provisioning, &[]).await;
    }
    tenant_module_at(&t, d, "inventory", Provisioning, &[Enabled]).await;
    // b has waited 2 hours, a 3 (the oldest though created first: order is by idle time).
    backdate(&t, "updated_at", 2, &format!("tenant_id = {b}")).await;
    backdate(&t, "updated_at", 3, &format!("tenant_id = {a}")).await;
    backdate(&t, "updated_at", 5, &format!("tenant_id = {d}")).await;
    let stuck = |status, idle_hours: u64, limit| {
        let store = t.store.clone();
        async move {
            store
                .tenant_modules_stuck(status, Duration::from_secs(idle_hours * 3600), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.tenant_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(stuck(Provisioning, 1, 10).await, [a, b]);
    assert_eq!(stuck(Provisioning, 1, 1).await, [a]);
    assert_eq!(stuck(Provisioning, 0, 10).await, [a, b, c]);
    assert_eq!(stuck(Provisioning, 4, 10).await, Vec::<TenantId>::new());
    assert_eq!(stuck(Enabled, 4, 10).await, [d]);
    assert_eq!(stuck(Enabled, 6, 10).await, Vec::<TenantId>::new());
    assert_eq!(stuck(Requested, 0, 10).await, Vec::<TenantId>::new());
    let record = &t
        .store
        .tenant_modules_stuck(Enabled, Duration::ZERO, 10)
        .await
        .unwrap()[0];
    assert_eq!(
        Some(record),
        t.store
            .tenant_module_get(d, "inventory")
            .await
            .unwrap()
            .as_ref()
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Module tables.

async fn table_dumps_write_one_json_line_per_row_of_one_tenant_or_of_all(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (3, {a}, 'fig')"),
    )
    .await;
    let items = table("stock", "tenant_stock_items");
    let lines = |bytes: &[u8]| -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let mut only_a = Vec::new();
    let dumped = t
        .store
        .module_table_dump(&items, Some(a), &mut only_a)
        .await
        .unwrap();
    assert_eq!(dumped, 2);
    let rows = lines(&only_a);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["tenant_id"] == json!(a)), "{rows:?}");
    let skus: BTreeSet<&str> = rows.iter().map(|r| r["sku"].as_str().unwrap()).collect();
    assert_eq!(skus, BTreeSet::from(["apple", "fig"]));
    for row in &rows {
        let keys: BTreeSet<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["created_at", "id", "sku", "tenant_id"])
        );
    }

    let mut all = Vec::new();
    assert_eq!(
        t.store
            .module_table_dump(&items, None, &mut all)
            .await
            .unwrap(),
        3
    );
    let tenants: Vec<i64> = lines(&all)
        .iter()
        .map(|r| r["tenant_id"].as_i64().unwrap())
        .collect();
    assert_eq!(tenants, [a, a, b], "by tenant");

    let mut none = Vec::new();
    assert_eq!(
        t.store
            .module_table_dump(&items, Some(b + 1000), &mut none)
            .await
            .unwrap(),
        0
    );
    assert!(none.is_empty());
    let mut missing = Vec::new();
    assert!(
        t.store
            .module_table_dump(&table("stock", "tenant_stock_nosuch"), None, &mut missing)
            .await
            .is_err()
    );
    t.cleanup().await;
}

async fn purges_count_export_and_delete_only_expired_rows_in_batches(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    let expired = 2_500;
    old_stock_rows(&t, a, 100, 100 + expired - 1, 40).await;
    old_stock_rows(&t, b, 100, 102, 40).await;
    let items = table("stock", "tenant_stock_items");
    let before = Some(chrono::Utc::now() - chrono::Duration::days(30));

    assert_eq!(
        t.store.module_table_columns(&items).await.unwrap(),
        ["id", "tenant_id", "sku", "created_at"]
    );
    let err = t
        .store
        .module_table_columns(&table("stock", "tenant_stock_nosuch"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

    assert_eq!(
        t.store.module_rows_count(&items, a, None).await.unwrap(),
        2_501
    );
    assert_eq!(
        t.store.module_rows_count(&items, a, before).await.unwrap(),
        expired as u64
    );
    assert_eq!(
        t.store.module_rows_count(&items, b, before).await.unwrap(),
        3
    );
    assert_eq!(
        t.store
            .module_rows_count(&items, b + 1000, None)
            .await
            .unwrap(),
        0
    );

    // The export streams exactly the expired rows, as text in column order, in full batches.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<RowBatch>(1);
    let collect = tokio::spawn(async move {
        let mut batches = Vec::new();
        while let Some(batch) = receiver.recv().await {
            batches.push(batch);
        }
        batches
    });
    let sent = t
        .store
        .module_rows_export(&items, a, before, sender)
        .await
        .unwrap();
    let batches = collect.await.unwrap();
    assert_eq!(sent, expired as u64);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        [EXPORT_BATCH_ROWS, expired as usize - EXPORT_BATCH_ROWS]
    );
    let mut ids = BTreeSet::new();
    for row in batches.iter().flatten() {
        assert_eq!(row.len(), 4);
        let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
        assert_eq!(row[1].as_deref(), Some(a.to_string().as_str()));
        assert_eq!(row[2].as_deref(), Some(format!("old-{id}").as_str()));
        assert!(row[3].is_some());
        ids.insert(id);
    }
    assert_eq!(ids, (100..100 + expired).collect::<BTreeSet<i64>>());

    // A writer that went away stops the export with an error.
    let (sender, receiver) = tokio::sync::mpsc::channel::<RowBatch>(1);
    drop(receiver);
    let err = t
        .store
        .module_rows_export(&items, a, before, sender)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

    // Deleted in batches of at most `limit`, then nothing: only the tenant's expired rows.
    let mut deleted = Vec::new();
    loop {
        let n = t
            .store
            .module_rows_purge(&items, "stock", a, before, None, 1_000)
            .await
            .unwrap();
        deleted.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(deleted, [1_000, 1_000, 500, 0]);
    assert_eq!(t.store.module_rows_count(&items, a, None).await.unwrap(), 1);
    assert_eq!(t.store.module_rows_count(&items, b, None).await.unwrap(), 4);
    // Without a cutoff, every row of the tenant goes.
    assert_eq!(
        t.store
            .module_rows_purge(&items, "stock", b, None, None, 100)
            .await
            .unwrap(),
        4
    );
    assert_eq!(t.store.module_rows_count(&items, b, None).await.unwrap(), 0);
    assert_eq!(t.store.module_rows_count(&items, a, None).await.unwrap(), 1);
    // Restored: the rows the table lacks, matched by (tenant_id, id); rows that are there stay.
    let rows = [
        json!({"id": 1, "tenant_id": b, "sku": "back", "created_at": "2026-01-02 03:04:05"}),
        json!({"id": 2, "tenant_id": b, "sku": "back", "created_at": "2026-01-02 03:04:05"}),
    ];
    assert_eq!(t.store.module_rows_restore(&items, &rows).await.unwrap(), 2);
    assert_eq!(
        t.store.module_rows_restore(&items, &rows).await.unwrap(),
        0,
        "already there"
    );
    assert_eq!(t.store.module_rows_count(&items, b, None).await.unwrap(), 2);
    assert_eq!(t.store.module_rows_count(&items, a, None).await.unwrap(), 1);
    // No row-by-row audit of the purged rows (the export is their record).
    for id in [a, b] {
        let audit = t.store.audit_list(Some(id), 100).await.unwrap();
        assert!(!audit.iter().any(|e| e.action == "row.delete"), "{audit:?}");
    }
    t.cleanup().await;
}

async fn a_purge_hold_freezes_the_expired_rows_until_it_is_released(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    old_stock_rows(&t, a, 100, 104, 40).await;
    old_stock_rows(&t, b, 100, 104, 40).await;
    let items = table("stock", "tenant_stock_items");
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    // Not held: nothing to release.
    assert!(!t.store.purge_release(a, "stock", 7).await.unwrap());

    assert!(t.store.purge_hold(a, "stock", before, 7).await.unwrap());
    let old = match backend {
        Backend::Postgres => "(now() at time zone 'utc') - interval '40 days'",
        Backend::Sqlite => "datetime('now', '-40 days')",
    };
    let refused = [
        format!("UPDATE tenant_stock_items SET sku = 'edited' WHERE tenant_id = {a} AND id = 100"),
        format!("DELETE FROM tenant_stock_items WHERE tenant_id = {a} AND id = 101"),
        format!(
            "INSERT INTO tenant_stock_items (id, tenant_id, sku, created_at) \
             VALUES (200, {a}, 'backdated', {old})"
        ),
        // Moving a recent row into the held past, or a held row out of it.
        format!(
            "UPDATE tenant_stock_items SET created_at = {old} WHERE tenant_id = {a} AND id = 1"
        ),
        format!(
            "UPDATE tenant_stock_items SET created_at = CURRENT_TIMESTAMP \
             WHERE tenant_id = {a} AND id = 102"
        ),
    ];
    for sql in &refused {
        let err = try_execute(&t, sql).await.unwrap_err();
        assert!(err.contains("being exported and deleted"), "{sql}: {err}");
    }
    // The tenant's recent rows, and the other tenant's rows, are written as ever.
    for sql in [
        format!("UPDATE tenant_stock_items SET sku = 'fresh' WHERE tenant_id = {a} AND id = 1"),
        format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (300, {a}, 'new')"),
        format!("UPDATE tenant_stock_items SET sku = 'edited' WHERE tenant_id = {b} AND id = 100"),
    ] {
        try_execute(&t, &sql).await.unwrap();
    }
    assert_eq!(
        count(
            &t,
            &format!(
                "SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a} AND sku LIKE 'old-%'"
            )
        )
        .await,
        5,
        "no held row changed"
    );

    // Another run's hold replaces this one's; a run lifts only its own.
    assert!(t.store.purge_hold(a, "stock", before, 8).await.unwrap());
    assert!(!t.store.purge_release(a, "stock", 7).await.unwrap());
    assert!(t.store.purge_release(a, "stock", 8).await.unwrap());
    assert!(!t.store.purge_release(a, "stock", 8).await.unwrap());
    // A run whose hold is gone (replaced, or lifted when the run was cancelled) deletes
    // nothing: a row written since would go unexported. Nothing left to delete is no error.
    for run in [7, 8] {
        let err = t
            .store
            .module_rows_purge(&items, "stock", a, Some(before), Some(run), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Stale(_)), "{err:?}");
    }
    let long_ago = before - chrono::Duration::days(365);
    assert_eq!(
        t.store
            .module_rows_purge(&items, "stock", a, Some(long_ago), Some(8), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        count(
            &t,
            &format!(
                "SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a} AND sku LIKE 'old-%'"
            )
        )
        .await,
        5
    );
    try_execute(&t, &refused[0]).await.unwrap();

    if backend == Backend::Postgres {
        let pool = t.pg.as_ref().unwrap().pool();
        // While a transaction that wrote the tenant's rows runs, no hold is placed: what it
        // commits must be in the export.
        let mut writer = pool.begin().await.unwrap();
        sqlx::query(&format!(
            "UPDATE tenant_stock_items SET sku = 'in flight' WHERE tenant_id = {a} AND id = 1"
        ))
        .execute(&mut *writer)
        .await
        .unwrap();
        // A reader whose snapshot predates the hold does not see it, and may still write.
        let mut unaware = pool.begin().await.unwrap();
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *unaware)
            .await
            .unwrap();
        sqlx::query("SELECT count(*) FROM tenant_stock_items")
            .execute(&mut *unaware)
            .await
            .unwrap();
        assert!(!t.store.purge_hold(a, "stock", before, 9).await.unwrap());
        // The other tenant's writers do not hold this tenant back.
        assert!(t.store.purge_hold(b, "stock", before, 10).await.unwrap());
        writer.commit().await.unwrap();
        assert!(t.store.purge_hold(a, "stock", before, 9).await.unwrap());
        sqlx::query(&format!(
            "UPDATE tenant_stock_items SET sku = 'late edit' WHERE tenant_id = {a} AND id = 103"
        ))
        .execute(&mut *unaware)
        .await
        .unwrap();
        unaware.commit().await.unwrap();
        // The purge's deletions leave the row version written after the hold.
        assert_eq!(
            t.store
                .module_rows_purge(&items, "stock", a, Some(before), Some(9), 100)
                .await
                .unwrap(),
            4
        );
        assert_eq!(
            count(
                &t,
                &format!("SELECT count(*) FROM tenant_stock_items WHERE tenant_id = {a} AND sku = 'late edit'")
            )
            .await,
            1
        );
        assert!(t.store.purge_release(a, "stock", 9).await.unwrap());
    }
    t.cleanup().await;
}

async fn retention_targets_are_the_modules_holding_data_with_a_retention(backend: Backend) {
    let t = fresh(backend).await;
    let journal = module("journal", Maturity::Ga, &[]);
    publish(&t, &journal).await;
    let mut notes = module("notes", Maturity::Ga, &[]);
    notes.data_retention_days = None;
    publish(&t, &notes).await;
    let journal_version = t.store.versions_of("journal").await.unwrap()[0].id;

    let paths: [(&str, TenantModuleStatus, &[TenantModuleStatus], bool); 10] = [
        ("enabled", Provisioning, &[Enabled], true),
        ("up-to-date", Provisioning, &[Enabled, UpToDate], true),
        ("suspended", Provisioning, &[Enabled, Suspended], true),
        ("disabled", Provisioning, &[Enabled, Disabled], true),
        ("failed", Provisioning, &[Error], true),
        ("provisioning", Provisioning, &[], false),
        ("pending", PendingApproval, &[], false),
        ("requested", Requested, &[], false),
        ("upgrading", Provisioning, &[Enabled, Upgrading], false),
        (
            "archived",
            Provisioning,
            &[Enabled, Disabled, Archived],
            false,
        ),
    ];
    let mut holding = Vec::new();
    for (slug, first, path, kept) in paths {
        let id = tenant(&t, slug, false, false).await;
        tenant_module_at(&t, id, "journal", first, path).await;
        // A module without a retention is never a target.
        tenant_module_at(&t, id, "notes", Provisioning, &[Enabled]).await;
        if kept {
            holding.push(id);
        }
    }
    let expected = |days| -> Vec<RetentionTarget> {
        holding
            .iter()
            .map(|id| RetentionTarget {
                tenant_id: *id,
                module: "journal".into(),
                retention_days: days,
                version_id: journal_version,
            })
            .collect()
    };
    assert_eq!(t.store.retention_targets().await.unwrap(), expected(30));

    // The catalog's retention is read as it is now.
    let mut shorter = journal.clone();
    shorter.data_retention_days = Some(7);
    t.store.module_put(&shorter, "catalog").await.unwrap();
    assert_eq!(t.store.retention_targets().await.unwrap(), expected(7));
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Usage, costs, webhooks and the audit log.

/// Usage feeds billing, and one entry must not stop a month's aggregation for every tenant:
/// entries beyond the bounds are refused, and a month of entries at the bounds (or of the
/// widest costs the log holds, written before the bounds) still sums exactly.
async fn usage_out_of_bounds_is_refused_and_the_largest_entries_still_aggregate(backend: Backend) {
    use steward::store::data::{USAGE_COST_MAX, USAGE_COUNT_MAX};
    let t = fresh(backend).await;
    let at = "2028-04-02T00:00:00Z";
    let largest = || {
        let mut entry = usage(1, "inventory", at, USAGE_COUNT_MAX, "0");
        entry.estimated_cost = Decimal::from(USAGE_COST_MAX);
        entry.row_count = USAGE_COUNT_MAX;
        entry
    };
    let mut refused = vec![
        UsageEntry {
            tokens: USAGE_COUNT_MAX + 1,
            ..largest()
        },
        UsageEntry {
            row_count: -1,
            ..largest()
        },
        UsageEntry {
            estimated_cost: Decimal::from(USAGE_COST_MAX) + dec("0.000001"),
            ..largest()
        },
        UsageEntry {
            route: String::new(),
            ..largest()
        },
    ];
    for entry in refused.drain(..) {
        let err = t.store.usage_record(&[entry]).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    assert_eq!(
        t.store
            .usage_record(&[largest(), largest(), largest()])
            .await
            .unwrap(),
        3
    );
    if backend == Backend::Postgres {
        // The widest costs the log's column holds, twice: their sum needs a 13-digit column.
        try_execute(
            &t,
            &format!(
                "INSERT INTO module_usage_logs (tenant_id, module, route, estimated_cost, created_at) \
                 VALUES (2, 'inventory', '/x', 999999999999.999999, '{at}'), \
                        (2, 'inventory', '/x', 999999999999.999999, '{at}')"
            ),
        )
        .await
        .unwrap();
    }
    let april = parse_month("2028-04").unwrap();
    t.store.cost_aggregate(april).await.unwrap();
    let costs = t
        .store
        .monthly_costs(&CostFilter::month(Some(april)))
        .await
        .unwrap();
    let one = costs.iter().find(|c| c.tenant_id == 1).unwrap();
    assert_eq!(
        (one.calls, one.tokens, one.row_count, one.cost),
        (
            3,
            3 * USAGE_COUNT_MAX,
            3 * USAGE_COUNT_MAX,
            Decimal::from(3 * USAGE_COST_MAX)
        )
    );
    if backend == Backend::Postgres {
        let two = costs.iter().find(|c| c.tenant_id == 2).unwrap();
        assert_eq!(two.cost, dec("1999999999999.999998"));
    }
    t.cleanup().await;
}

async fn usage_costs_aggregate_exactly_per_month_and_a_rerun_gives_the_same_rows(backend: Backend) {
    let t = fresh(backend).await;
    let recorded = t
        .store
        .usage_record(&[
            usage(1, "inventory", "2028-01-31T23:59:59.999Z", 1, "0.000001"),
            usage(1, "inventory", "2028-02-01T00:00:00Z", 10, "0.1"),
            usage(1, "inventory", "2028-02-29T23:59:59.999Z", 20, "0.2"),
            usage(1, "inventory", "2028-03-01T00:00:00Z", 30, "5"),
            usage(2, "inventory", "2028-02-10T00:00:00Z", 5, "0.333333"),
            usage(2, "inventory", "2028-02-11T00:00:00Z", 5, "0.666667"),
            usage(1, "chatbot", "2028-02-15T12:00:00Z", 7, "2.5"),
        ])
        .await
        .unwrap();
    assert_eq!(recorded, 7);
    assert_eq!(t.store.usage_record(&[]).await.unwrap(), 0);

    let feb = parse_month("2028-02").unwrap();
    let done = t.store.cost_aggregate(feb).await.unwrap();
    assert_eq!((done.usage_rows, done.cost_rows), (5, 3));
    let february = t
        .store
        .monthly_costs(&CostFilter::month(Some(feb)))
        .await
        .unwrap();
    let rows: Vec<(TenantId, &str, i64, i64, i64, Decimal)> = february
        .iter()
        .map(|r| {
            assert_eq!(r.month, feb);
            (
                r.tenant_id,
                r.module.as_str(),
                r.calls,
                r.tokens,
                r.row_count,
                r.cost,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (1, "chatbot", 1, 7, 1, dec("2.5")),
            (1, "inventory", 2, 30, 2, dec("0.3")),
            (2, "inventory", 2, 10, 2, dec("1")),
        ]
    );

    // Filters by tenant and by module.
    let of = |tenant: Option<TenantId>, module: Option<&str>| CostFilter {
        month: Some(feb),
        tenant,
        module: module.map(str::to_string),
    };
    let tenant_one = t.store.monthly_costs(&of(Some(1), None)).await.unwrap();
    assert_eq!(tenant_one, february[..2]);
    let inventory = t
        .store
        .monthly_costs(&of(None, Some("inventory")))
        .await
        .unwrap();
    assert_eq!(inventory, february[1..]);
    assert!(
        t.store
            .monthly_costs(&of(Some(2), Some("chatbot")))
            .await
            .unwrap()
            .is_empty()
    );

    // Neighbouring months hold their own rows; every month is listed in order.
    for month in ["2028-01", "2028-03"] {
        let done = t
            .store
            .cost_aggregate(parse_month(month).unwrap())
            .await
            .unwrap();
        assert_eq!((done.usage_rows, done.cost_rows), (1, 1), "{month}");
    }
    let every = t.store.monthly_costs(&CostFilter::default()).await.unwrap();
    let months: Vec<String> = every
        .iter()
        .map(|r| r.month.format("%Y-%m").to_string())
        .collect();
    assert_eq!(
        months,
        ["2028-01", "2028-02", "2028-02", "2028-02", "2028-03"]
    );
    assert_eq!(every[0].cost, dec("0.000001"));
    assert_eq!(every[4].cost, dec("5"));

    // A rerun gives the same rows.
    let again = t.store.cost_aggregate(feb).await.unwrap();
    assert_eq!((again.usage_rows, again.cost_rows), (5, 3));
    assert_eq!(
        t.store
            .monthly_costs(&CostFilter::month(Some(feb)))
            .await
            .unwrap(),
        february
    );

    // Bad entries are refused, and a batch with one of them records nothing.
    let good = usage(1, "inventory", "2028-02-20T00:00:00Z", 1, "1");
    let mut negative_tokens = good.clone();
    negative_tokens.tokens = -1;
    for bad in [
        usage(1, "inventory", "2028-02-20T00:00:00Z", 1, "-0.5"),
        usage(1, "inventory", "2028-02-20T00:00:00Z", 1, "0.0000001"),
        negative_tokens,
    ] {
        let err = t
            .store
            .usage_record(&[good.clone(), bad])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    let err = t
        .store
        .usage_record(&[usage(1, "Bad Slug", "2028-02-20T00:00:00Z", 1, "1")])
        .await
        .unwrap_err();
    assert_eq!(rule(err), "invalid_identifier");
    t.store.cost_aggregate(feb).await.unwrap();
    assert_eq!(
        t.store
            .monthly_costs(&CostFilter::month(Some(feb)))
            .await
            .unwrap(),
        february
    );

    // A (tenant, module) whose logs are gone loses its row on the next run.
    execute(&t, "DELETE FROM module_usage_logs WHERE tenant_id = 2").await;
    let done = t.store.cost_aggregate(feb).await.unwrap();
    assert_eq!((done.usage_rows, done.cost_rows), (3, 2));
    assert_eq!(
        t.store
            .monthly_costs(&CostFilter::month(Some(feb)))
            .await
            .unwrap(),
        february[..2]
    );
    // A month without logs has no rows.
    let empty = parse_month("2027-06").unwrap();
    let done = t.store.cost_aggregate(empty).await.unwrap();
    assert_eq!((done.usage_rows, done.cost_rows), (0, 0));
    assert!(
        t.store
            .monthly_costs(&CostFilter::month(Some(empty)))
            .await
            .unwrap()
            .is_empty()
    );
    t.cleanup().await;
}

async fn webhooks_are_read_only_when_complete_and_can_be_replaced_or_cleared(backend: Backend) {
    let t = fresh(backend).await;
    let plain = tenant(&t, "plain", false, false).await;
    let half = t
        .store
        .tenant_create(&NewTenant {
            slug: "half".into(),
            name: "Half".into(),
            webhook_url: Some("https://half.example/hooks".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let whole = t
        .store
        .tenant_create(&NewTenant {
            slug: "whole".into(),
            name: "Whole".into(),
            webhook_url: Some("https://whole.example/hooks".into()),
            webhook_secret: Some("whole-secret".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let target = |url: &str, secret: &str| WebhookTarget {
        url: url.into(),
        secret: secret.into(),
    };
    assert_eq!(t.store.tenant_webhook(plain).await.unwrap(), None);
    assert_eq!(
        t.store.tenant_webhook(half).await.unwrap(),
        None,
        "no secret"
    );
    assert_eq!(
        t.store.tenant_webhook(whole).await.unwrap(),
        Some(target("https://whole.example/hooks", "whole-secret"))
    );
    assert_eq!(t.store.tenant_webhook(whole + 1000).await.unwrap(), None);

    let first = target("https://plain.example/a", "one");
    t.store
        .tenant_set_webhook(plain, Some(&first))
        .await
        .unwrap();
    assert_eq!(t.store.tenant_webhook(plain).await.unwrap(), Some(first));
    let second = target("https://plain.example/b", "two");
    t.store
        .tenant_set_webhook(plain, Some(&second))
        .await
        .unwrap();
    assert_eq!(
        t.store.tenant_webhook(plain).await.unwrap(),
        Some(second.clone())
    );
    // A secret sealed in place only while it is the one read: a delivery resealing the
    // secret it read never brings back an endpoint replaced meanwhile.
    assert!(
        !t.store
            .tenant_webhook_reseal(plain, "one", "sealed-one")
            .await
            .unwrap()
    );
    assert_eq!(t.store.tenant_webhook(plain).await.unwrap(), Some(second));
    assert!(
        t.store
            .tenant_webhook_reseal(plain, "two", "sealed-two")
            .await
            .unwrap()
    );
    assert_eq!(
        t.store.tenant_webhook(plain).await.unwrap(),
        Some(target("https://plain.example/b", "sealed-two"))
    );
    assert_eq!(
        t.store
            .tenant_get(plain)
            .await
            .unwrap()
            .unwrap()
            .webhook_url
            .as_deref(),
        Some("https://plain.example/b")
    );
    t.store.tenant_set_webhook(plain, None).await.unwrap();
    assert_eq!(t.store.tenant_webhook(plain).await.unwrap(), None);
    assert_eq!(
        t.store
            .tenant_get(plain)
            .await
            .unwrap()
            .unwrap()
            .webhook_url,
        None
    );
    // Other tenants keep theirs.
    assert!(t.store.tenant_webhook(whole).await.unwrap().is_some());

    let err = t
        .store
        .tenant_set_webhook(whole + 1000, Some(&target("https://x.example", "x")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    t.cleanup().await;
}

async fn audit_rows_are_appended_and_listed_newest_first_per_tenant(backend: Backend) {
    let t = fresh(backend).await;
    let a = tenant(&t, "a", false, false).await;
    let b = tenant(&t, "b", false, false).await;
    for n in 1..=3 {
        t.store
            .audit_append(
                "ops:purge",
                "data.purge",
                Some(a),
                Some("stock"),
                "tenant_stock_items",
                &json!({"deleted": n}),
            )
            .await
            .unwrap();
    }
    t.store
        .audit_append(
            "ops",
            "data.purge",
            Some(b),
            Some("stock"),
            "tenant_stock_items",
            &json!({"deleted": 9}),
        )
        .await
        .unwrap();
    t.store
        .audit_append(
            "ops",
            "catalog.note",
            None,
            None,
            "catalog",
            &json!({"note": "hello"}),
        )
        .await
        .unwrap();

    let of_a = t.store.audit_list(Some(a), 10).await.unwrap();
    let actions: Vec<(&str, Option<i64>)> = of_a
        .iter()
        .map(|r| {
            (
                r.action.as_str(),
                r.after.as_ref().and_then(|v| v["deleted"].as_i64()),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("data.purge", Some(3)),
            ("data.purge", Some(2)),
            ("data.purge", Some(1)),
            ("tenant.create", None),
        ]
    );
    assert!(of_a.iter().all(|r| r.tenant_id == Some(a)));
    assert!(
        of_a.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    let newest = &of_a[0];
    assert_eq!(
        (
            newest.actor.as_str(),
            newest.module.as_deref(),
            newest.entity.as_str(),
            &newest.before
        ),
        ("ops:purge", Some("stock"), "tenant_stock_items", &None)
    );
    assert_eq!(t.store.audit_list(Some(a), 2).await.unwrap(), of_a[..2]);

    let of_b = t.store.audit_list(Some(b), 10).await.unwrap();
    assert_eq!(of_b.len(), 2);
    assert_eq!(of_b[0].after, Some(json!({"deleted": 9})));
    let catalog = t.store.audit_list(None, 10).await.unwrap();
    assert_eq!(catalog.len(), 1, "{catalog:?}");
    assert_eq!(
        (
            catalog[0].action.as_str(),
            catalog[0].tenant_id,
            catalog[0].module.as_deref()
        ),
        ("catalog.note", None, None)
    );
    assert_eq!(catalog[0].after, Some(json!({"note": "hello"})));
    assert!(
        t.store
            .audit_list(Some(b + 1000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Searching: every row, by module, by action prefix (its `_` and `%` literal), by
    // actor, and older than a row.
    use steward::store::domain::{AuditAbout, AuditFilter};
    let search = |filter: AuditFilter| {
        let store = t.store.clone();
        async move { store.audit_search(&filter).await.unwrap() }
    };
    let every = search(AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(every.len(), of_a.len() + of_b.len() + catalog.len());
    let purges = search(AuditFilter {
        action: Some("data.".into()),
        limit: 100,
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(purges.len(), 4, "{purges:?}");
    assert!(
        search(AuditFilter {
            action: Some("data%".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .is_empty()
    );
    let of_a_stock = search(AuditFilter {
        about: AuditAbout::Tenant(a),
        module: Some("stock".into()),
        actor: Some("ops:purge".into()),
        limit: 100,
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(of_a_stock.len(), 3);
    let older = search(AuditFilter {
        about: AuditAbout::Tenant(a),
        before_id: Some(of_a[1].id),
        limit: 100,
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(older, of_a[2..]);
    // And back: the page just newer than a row, newest first; the one right above the oldest.
    let of_tenant_a = |after_id, limit| AuditFilter {
        about: AuditAbout::Tenant(a),
        after_id,
        limit,
        ..AuditFilter::default()
    };
    assert_eq!(search(of_tenant_a(Some(of_a[2].id), 100)).await, of_a[..2]);
    let last = of_a.len() - 1;
    assert_eq!(
        search(of_tenant_a(Some(of_a[last].id), 1)).await,
        of_a[last - 1..last]
    );
    // Totals, capped; paging does not change them.
    assert_eq!(
        t.store
            .audit_count(&of_tenant_a(Some(of_a[2].id), 1), 1000)
            .await
            .unwrap(),
        of_a.len() as i64
    );
    assert_eq!(
        t.store
            .audit_count(&AuditFilter::default(), 2)
            .await
            .unwrap(),
        2
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Plans.

async fn plan_sync_grants_once_and_skips_tenants_without_dependencies(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let alerts = module("alerts", Maturity::Ga, &["inventory"]);
    publish(&t, &alerts).await;
    // Nothing installed yet: a sync gives the latest version.
    publish_version(&t, &alerts, "1.1.0", &[], "SELECT 1;").await;
    let alerts_latest = t.store.versions_of("alerts").await.unwrap()[1].id;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;

    let pro = t.store.plan_create("pro", "Pro").await.unwrap();
    let free = t.store.plan_create("free", "Free").await.unwrap();
    assert_ne!(pro, free);
    assert!(
        t.store
            .plan_create("pro", "Pro again")
            .await
            .unwrap_err()
            .is_unique_violation()
    );

    assert!(
        t.store
            .plan_add_module("pro", "alerts", "admin")
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .plan_add_module("pro", "alerts", "admin")
            .await
            .unwrap(),
        "there already"
    );
    assert!(
        t.store
            .plan_add_module("pro", "chatbot", "admin")
            .await
            .unwrap()
    );
    for (plan, module) in [("nosuch", "alerts"), ("pro", "nosuch")] {
        let err = t
            .store
            .plan_add_module(plan, module, "admin")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{plan} {module}: {err:?}"
        );
    }
    let added: Vec<_> = t
        .store
        .audit_list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "plan.add_module")
        .collect();
    assert_eq!(added.len(), 2, "audited once per module added");
    assert_eq!(
        (added[1].module.as_deref(), added[1].entity.as_str()),
        (Some("alerts"), "plan_module")
    );
    assert_eq!(added[1].after, Some(json!({"plan": "pro"})));

    // `ready` has the dependency, `bare` has not, `lapsed` is not subscribed any more.
    let ready = tenant(&t, "ready", false, false).await;
    let bare = tenant(&t, "bare", false, false).await;
    let lapsed = tenant(&t, "lapsed", false, false).await;
    for id in [ready, lapsed] {
        tenant_module_at(&t, id, "inventory", Provisioning, &[Enabled]).await;
    }
    let s1 = t
        .store
        .subscription_create(ready, "pro", "active")
        .await
        .unwrap();
    let s2 = t
        .store
        .subscription_create(bare, "pro", "active")
        .await
        .unwrap();
    t.store
        .subscription_create(lapsed, "pro", "cancelled")
        .await
        .unwrap();
    assert_ne!(s1, s2);
    for (plan, subscription_status) in [("nosuch", "active"), ("pro", "paused")] {
        let err = t
            .store
            .subscription_create(ready, plan, subscription_status)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }

    let line = |synced: Vec<steward::store::domain::PlanSynced>| {
        synced
            .into_iter()
            .map(|l| {
                assert_eq!(
                    l.skipped_reason.is_some(),
                    l.skipped_missing_dependencies > 0
                );
                (
                    l.plan,
                    l.module,
                    l.synced,
                    l.subscribed,
                    l.skipped_missing_dependencies,
                )
            })
            .collect::<Vec<_>>()
    };
    let first = t
        .store
        .plan_sync(Some("pro"), None, "ops:sync")
        .await
        .unwrap();
    assert_eq!(
        line(first),
        [("pro".to_string(), "alerts".to_string(), 1, 2, 1)]
    );
    let granted = t
        .store
        .tenant_module_get(ready, "alerts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(granted.status, Provisioning);
    assert_eq!(granted.version_id, Some(alerts_latest));
    assert_eq!(granted.status_reason.as_deref(), Some("added by plan pro"));
    assert_eq!(status(&t, bare, "alerts").await, None);
    assert_eq!(status(&t, lapsed, "alerts").await, None);
    assert_eq!(
        status(&t, ready, "chatbot").await,
        None,
        "ALPHA is not synced"
    );
    let audit = t.store.audit_list(Some(ready), 1).await.unwrap();
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].actor.as_str(),
            audit[0].module.as_deref()
        ),
        ("plan.sync", "ops:sync", Some("alerts"))
    );
    assert_eq!(audit[0].after, Some(json!({"status": "PROVISIONING"})));

    // Again: nothing new, nothing audited.
    let audited = t.store.audit_list(Some(ready), 100).await.unwrap().len();
    let again = t.store.plan_sync(None, None, "ops:sync").await.unwrap();
    assert_eq!(
        line(again),
        [("pro".to_string(), "alerts".to_string(), 0, 2, 1)]
    );
    assert_eq!(
        t.store.audit_list(Some(ready), 100).await.unwrap().len(),
        audited
    );

    // Once the dependency is enabled, a later sync gives the skipped tenant the module.
    tenant_module_at(&t, bare, "inventory", Provisioning, &[Enabled]).await;
    assert!(
        t.store
            .plan_sync(Some("free"), None, "ops:sync")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        t.store
            .plan_sync(Some("pro"), Some("inventory"), "ops:sync")
            .await
            .unwrap()
            .is_empty()
    );
    let later = t
        .store
        .plan_sync(Some("pro"), Some("alerts"), "ops:sync")
        .await
        .unwrap();
    assert_eq!(
        line(later),
        [("pro".to_string(), "alerts".to_string(), 1, 2, 0)]
    );
    assert_eq!(status(&t, bare, "alerts").await, Some(Provisioning));

    // Out of the plan: audited, the tenants keep it, and nothing is synced any more.
    assert!(
        t.store
            .plan_remove_module("pro", "alerts", "admin")
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .plan_remove_module("pro", "alerts", "admin")
            .await
            .unwrap()
    );
    let err = t
        .store
        .plan_remove_module("nosuch", "alerts", "admin")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let removed = &t.store.audit_list(None, 1).await.unwrap()[0];
    assert_eq!(
        (removed.action.as_str(), removed.module.as_deref()),
        ("plan.remove_module", Some("alerts"))
    );
    assert_eq!(
        (removed.before.clone(), removed.after.clone()),
        (Some(json!({"plan": "pro"})), None)
    );
    assert_eq!(status(&t, ready, "alerts").await, Some(Provisioning));
    assert!(
        t.store
            .plan_sync(None, None, "ops:sync")
            .await
            .unwrap()
            .is_empty()
    );
    let err = t
        .store
        .plan_sync(Some("nosuch"), None, "ops")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    t.cleanup().await;
}

/// Plan sync grants a module exactly where a tenant's own request would be provisioned at once
/// (`availability::admit`: every maturity, with and without the beta opt-in) and exactly where
/// the dependency's status satisfies it (`satisfies_dependency`: every status): its SQL takes
/// both from those rules.
async fn plan_sync_grants_what_the_availability_and_dependency_rules_grant(backend: Backend) {
    use std::collections::HashMap;
    use steward::domain::availability::{Admission, ModuleFacts, TenantFacts, admit};
    let t = fresh(backend).await;
    t.store.plan_create("all", "All").await.unwrap();
    let slug = |m: Maturity| format!("m_{}", m.as_str().to_lowercase());
    for &maturity in Maturity::ALL {
        publish(&t, &module(&slug(maturity), maturity, &[])).await;
        t.store
            .plan_add_module("all", &slug(maturity), "admin")
            .await
            .unwrap();
    }
    publish(&t, &module("base", Maturity::Ga, &[])).await;
    publish(&t, &module("needy", Maturity::Ga, &["base"])).await;
    t.store
        .plan_add_module("all", "needy", "admin")
        .await
        .unwrap();
    let mut tenants = Vec::new();
    for beta in [false, true] {
        let id = tenant(&t, &format!("beta-{beta}"), false, beta).await;
        t.store
            .subscription_create(id, "all", "active")
            .await
            .unwrap();
        tenants.push((id, beta, None));
    }
    // One tenant per status `base` can be in, set directly: the sync reads the row as it is.
    for &base in TenantModuleStatus::ALL {
        let id = tenant(
            &t,
            &format!("base-{}", base.as_str().to_lowercase()),
            false,
            false,
        )
        .await;
        tenant_module_at(&t, id, "base", Provisioning, &[]).await;
        execute(
            &t,
            &format!(
                "UPDATE tenant_modules SET status = '{}' WHERE tenant_id = {id} AND module = 'base'",
                base.as_str()
            ),
        )
        .await;
        t.store
            .subscription_create(id, "all", "active")
            .await
            .unwrap();
        tenants.push((id, false, Some(base)));
    }

    t.store.plan_sync(None, None, "ops:sync").await.unwrap();

    let none = HashMap::new();
    for (id, beta, base) in tenants {
        for &maturity in Maturity::ALL {
            let facts = ModuleFacts {
                slug: "m",
                maturity,
                dependencies: &[],
            };
            let asker = TenantFacts {
                internal_tester: false,
                beta_opt_in: beta,
                modules: &none,
            };
            let granted = matches!(admit(&facts, &asker), Ok(Admission::Provision { .. }));
            assert_eq!(
                status(&t, id, &slug(maturity)).await.is_some(),
                granted,
                "{maturity} for a tenant with beta opt-in {beta}"
            );
        }
        let needy = status(&t, id, "needy").await;
        let enabled_base = base.is_some_and(TenantModuleStatus::satisfies_dependency);
        assert_eq!(needy.is_some(), enabled_base, "needy with base {base:?}");
    }
    t.cleanup().await;
}

/// Requests for a module the tenant never had, made at the same moment (a double submit, a
/// client's retry), write one row: the others find it there and are refused, rather than
/// each overwriting it as if it were theirs (each would then start a provisioning run).
async fn first_requests_made_at_once_write_one_row_and_refuse_the_rest(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("solo", Maturity::Ga, &[])).await;
    let version_id = t.store.versions_of("solo").await.unwrap()[0].id;
    let id = tenant(&t, "twice", false, false).await;
    let requests = (0..8).map(|_| {
        let store = t.store.clone();
        tokio::spawn(async move {
            store
                .tenant_module_request(&ModuleRequest {
                    tenant_id: id,
                    module: "solo",
                    version_id,
                    status: Provisioning,
                    reason: None,
                    expected: None,
                    actor: "test",
                    tenant_seen: Some(&[]),
                })
                .await
        })
    });
    let mut written = 0;
    for request in requests.collect::<Vec<_>>() {
        match request.await.unwrap() {
            Ok(_) => written += 1,
            Err(err) => assert!(matches!(err, StoreError::Conflict(_)), "{err:?}"),
        }
    }
    assert_eq!(written, 1, "one request wrote the row");
    let audited = t
        .store
        .audit_list(Some(id), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "module.request")
        .count();
    assert_eq!(audited, 1);
    t.cleanup().await;
}

async fn a_module_put_by_callers_at_once_is_audited_as_created_once(backend: Backend) {
    let t = fresh(backend).await;
    let puts = (0..8).map(|i| {
        let store = t.store.clone();
        let mut twin = module("twin", Maturity::Ga, &[]);
        twin.name = format!("Twin {i}");
        tokio::spawn(async move { store.module_put(&twin, "test").await })
    });
    for put in puts.collect::<Vec<_>>() {
        put.await.unwrap().unwrap();
    }
    let puts: Vec<_> = t
        .store
        .audit_list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "module.put" && r.module.as_deref() == Some("twin"))
        .collect();
    assert_eq!(puts.len(), 8, "each caller's change is audited");
    let created = puts.iter().filter(|r| r.before.is_none()).count();
    assert_eq!(created, 1, "one creation, seven changes: {puts:?}");
    t.cleanup().await;
}

async fn seeded_tenants_each_get_an_active_subscription_in_one_write(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    t.store.plan_create("bench", "Bench").await.unwrap();
    t.store
        .plan_add_module("bench", "inventory", "admin")
        .await
        .unwrap();
    let outsider = tenant(&t, "outsider", false, false).await;
    for none in [0, -3] {
        let err = t
            .store
            .tenants_seed("none", none, "bench")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }

    assert_eq!(t.store.tenants_seed("load", 25, "bench").await.unwrap(), 25);
    // Their subscriptions are active: a sync gives each of them the plan's module.
    let synced = t
        .store
        .plan_sync(Some("bench"), None, "admin")
        .await
        .unwrap();
    assert_eq!((synced[0].synced, synced[0].subscribed), (25, 25));
    let mut seeded = BTreeSet::new();
    for record in t.store.module_tenants("inventory").await.unwrap() {
        let seeded_tenant = t.store.tenant_get(record.tenant_id).await.unwrap().unwrap();
        let n = seeded_tenant
            .slug
            .strip_prefix("load-")
            .unwrap()
            .to_string();
        assert_eq!(seeded_tenant.name, format!("load {n}"));
        seeded.insert(n.parse::<u32>().unwrap());
    }
    assert_eq!(seeded, (1..=25).collect::<BTreeSet<u32>>());
    assert_eq!(status(&t, outsider, "inventory").await, None);

    // An unknown plan, or slugs already taken: nothing is created.
    let err = t.store.tenants_seed("more", 5, "nosuch").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert!(t.store.tenants_seed("load", 30, "bench").await.is_err());
    assert_eq!(count(&t, "SELECT count(*) FROM tenants").await, 26);
    assert_eq!(count(&t, "SELECT count(*) FROM subscriptions").await, 25);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Rollback.

async fn the_rollback_undoes_the_last_upgrade_within_its_window(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = stock_in_use(&t).await;
    let window = Duration::from_secs(48 * 3600);
    let admin = Actor::master_admin("admin:root");
    // The operation decides (window, tenants, versions); the store applies its plan.
    let err = life(&t)
        .rollback("stock", window, &admin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, steward::lifecycle::LifecycleError::NothingDone(_)),
        "nothing upgraded: {err:?}"
    );
    let err = life(&t)
        .rollback("stock'; --", window, &admin)
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "invalid_identifier");

    publish_upgrade(
        &t,
        "2.0.0",
        &["tenant_stock_moves"],
        "ALTER TABLE tenant_stock_items ADD COLUMN location TEXT; \
         CREATE TABLE tenant_stock_moves (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);",
        "DROP TABLE tenant_stock_moves; ALTER TABLE tenant_stock_items DROP COLUMN location;",
        None,
    )
    .await;
    life(&t)
        .upgrade("stock", "2.0.0", &Actor::master_admin("admin"))
        .await
        .unwrap();
    let running = workers(&t);
    wait_for(&t, &[a, b], "stock", UpToDate).await;
    running.stop().await;
    let versions = t.store.versions_of("stock").await.unwrap();
    let (v1, v2) = (versions[0].id, versions[1].id);
    assert!(versions[1].migrated_at.is_some());

    // Older than the window: refused, nothing undone.
    backdate(&t, "upgraded_at", 49, "module = 'stock'").await;
    let err = life(&t)
        .rollback("stock", window, &admin)
        .await
        .unwrap_err();
    assert_eq!(rule_code(err), "rollback_window_closed");
    assert!(table_exists(&t, "tenant_stock_moves").await);
    assert!(column_exists(&t, "tenant_stock_items", "location").await);
    for id in [a, b] {
        assert_eq!(status(&t, id, "stock").await, Some(UpToDate));
    }

    // Within it: the down SQL runs and every upgraded tenant is back at the previous version.
    backdate(&t, "upgraded_at", 0, "module = 'stock'").await;
    // The store applies a plan only to the rows it was decided on: a stale one (a tenant
    // seen in another status) is a conflict, and nothing is undone.
    let stale = [(a, Enabled, Some(v2)), (b, UpToDate, Some(v2))];
    let err = t
        .store
        .module_rollback(&steward::store::domain::RollbackPlan {
            module: "stock",
            undo: &[v2],
            previous: v1,
            tenants: &[a, b],
            seen: &stale,
            reason: "test",
            actor: "admin:root",
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(table_exists(&t, "tenant_stock_moves").await);
    let rolled_back = life(&t).rollback("stock", window, &admin).await.unwrap();
    assert_eq!(rolled_back, [a, b]);
    for record in t.store.module_tenants("stock").await.unwrap() {
        assert_eq!(record.status, Enabled);
        assert_eq!(
            (record.version_id, record.previous_version_id),
            (Some(v1), Some(v2))
        );
        assert_eq!(
            record.status_reason,
            Some("rolled back from 2.0.0 to 1.0.0".to_string())
        );
    }
    assert!(!table_exists(&t, "tenant_stock_moves").await);
    assert!(!column_exists(&t, "tenant_stock_items", "location").await);
    assert_eq!(
        count(&t, "SELECT count(*) FROM tenant_stock_items").await,
        2,
        "rows kept"
    );
    let versions = t.store.versions_of("stock").await.unwrap();
    assert!(versions[0].migrated_at.is_some());
    assert!(
        versions[1].migrated_at.is_none(),
        "2.0.0 is to be migrated again"
    );
    let last = &t.store.audit_list(Some(b), 1).await.unwrap()[0];
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("module.rollback", "admin:root")
    );
    assert_eq!(last.before.as_ref().unwrap()["status"], json!("UP_TO_DATE"));
    assert_eq!(last.after.as_ref().unwrap()["version_id"], json!(v1));

    // The tables still audit their rows, and there is nothing left to roll back.
    execute(
        &t,
        &format!("INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (9, {a}, 'kiwi')"),
    )
    .await;
    let inserted = &t.store.audit_list(Some(a), 1).await.unwrap()[0];
    assert_eq!(
        (inserted.action.as_str(), inserted.entity.as_str()),
        ("row.insert", "tenant_stock_items")
    );
    let err = life(&t)
        .rollback("stock", window, &admin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, steward::lifecycle::LifecycleError::NothingDone(_)),
        "{err:?}"
    );
    t.cleanup().await;
}

/// A rule that read some of the tenant's other modules (the dependencies a module needs, the
/// modules that may need it) holds against a concurrent change of one of them: a move or a
/// request that carries them as its operation read them is written only if they are still so.
/// A change of a module the rule did not read is no conflict.
async fn a_write_decided_on_the_tenants_modules_is_refused_once_one_of_them_changed(
    backend: Backend,
) {
    let t = fresh(backend).await;
    publish(&t, &module("stock", Maturity::Ga, &[])).await;
    publish(&t, &module("alerts", Maturity::Ga, &["stock"])).await;
    publish(&t, &module("misc", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    tenant_module_at(&t, acme, "stock", Provisioning, &[Enabled]).await;
    tenant_module_at(&t, acme, "alerts", Provisioning, &[Enabled, Disabled]).await;
    // Decided together: turning alerts back on (it read stock: enabled) and stock off (it read
    // alerts: off). The first to write wins; the other finds what it read changed.
    let needs = [("stock".to_string(), Some(Enabled))];
    let needed_by = [("alerts".to_string(), Some(Disabled))];
    let mut reenable = StatusChange::new(acme, "alerts", Some(Disabled), Enabled, "u", "test");
    reenable.tenant_seen = Some(&needs);
    let mut disable = StatusChange::new(acme, "stock", Some(Enabled), Disabled, "u", "test");
    disable.tenant_seen = Some(&needed_by);
    // An unrelated module of the tenant changing meanwhile is no conflict.
    tenant_module_at(&t, acme, "misc", Provisioning, &[]).await;
    t.store.tenant_module_move(&disable).await.unwrap();
    let audited = t.store.audit_list(Some(acme), 100).await.unwrap().len();
    let err = t.store.tenant_module_move(&reenable).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        status(&t, acme, "alerts").await,
        Some(Disabled),
        "nothing written"
    );
    assert_eq!(
        t.store.audit_list(Some(acme), 100).await.unwrap().len(),
        audited
    );
    // A request that read stock enabled: refused too. One that read alerts absent while it
    // appeared meanwhile: refused.
    publish(&t, &module("reports", Maturity::Ga, &["stock"])).await;
    let version_id = t.store.versions_of("reports").await.unwrap()[0].id;
    let request = ModuleRequest {
        tenant_id: acme,
        module: "reports",
        version_id,
        status: Provisioning,
        reason: None,
        expected: None,
        actor: "u",
        tenant_seen: Some(&needs),
    };
    let err = t.store.tenant_module_request(&request).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(status(&t, acme, "reports").await, None);
    let absent = [("alerts".to_string(), None)];
    let mut enable = StatusChange::new(acme, "stock", Some(Disabled), Enabled, "u", "test");
    enable.tenant_seen = Some(&absent);
    let err = t.store.tenant_module_move(&enable).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Read again, the same writes go through (the rules decide on what is there now).
    let now_needed_by = [("alerts".to_string(), Some(Disabled))];
    enable.tenant_seen = Some(&now_needed_by);
    t.store.tenant_module_move(&enable).await.unwrap();
    let now_needs = [("stock".to_string(), Some(Enabled))];
    let request = ModuleRequest {
        tenant_seen: Some(&now_needs),
        ..request
    };
    t.store.tenant_module_request(&request).await.unwrap();
    assert_eq!(status(&t, acme, "reports").await, Some(Provisioning));
    // A move the rule answers alike (ENABLED → UP_TO_DATE: still enabled for its
    // dependants) is no conflict.
    let up_to_date = StatusChange::new(acme, "stock", Some(Enabled), UpToDate, "u", "test");
    t.store.tenant_module_move(&up_to_date).await.unwrap();
    reenable.tenant_seen = Some(&needs);
    t.store.tenant_module_move(&reenable).await.unwrap();
    assert_eq!(status(&t, acme, "alerts").await, Some(Enabled));
    t.cleanup().await;
}

/// A disable decided while the tenant had no `alerts` must still see the `alerts` a concurrent
/// writer inserted while the disable waited: a request (holding `stock`'s row; PostgreSQL reads,
/// in a statement that waited for a row lock, the rows it locked as they are now but not a row
/// inserted meanwhile) or plan sync (holding the table in SHARE ROW EXCLUSIVE mode, which row
/// locks do not wait for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_inserted_while_a_change_waited_for_its_locks_is_seen_on_postgres() {
    let t = fresh(Backend::Postgres).await;
    publish(&t, &module("stock", Maturity::Ga, &[])).await;
    publish(&t, &module("alerts", Maturity::Ga, &["stock"])).await;
    let alerts = t.store.versions_of("alerts").await.unwrap()[0].id;
    let pool = t.pg.as_ref().unwrap().pool().clone();
    for (name, hold) in [
        (
            "request",
            "SELECT 1 FROM tenant_modules WHERE tenant_id = $1 AND module = 'stock' FOR UPDATE",
        ),
        (
            "plan sync",
            "LOCK TABLE tenant_modules IN SHARE ROW EXCLUSIVE MODE",
        ),
    ] {
        let acme = tenant(&t, name, false, false).await;
        tenant_module_at(&t, acme, "stock", Provisioning, &[Enabled]).await;
        let mut writer = pool.begin().await.unwrap();
        let writer_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *writer)
            .await
            .unwrap();
        let mut held = sqlx::query(hold);
        if hold.contains("$1") {
            held = held.bind(acme);
        }
        held.execute(&mut *writer).await.unwrap();
        sqlx::query(
            "INSERT INTO tenant_modules (tenant_id, module, status, version_id) \
             VALUES ($1, 'alerts', 'PROVISIONING', $2)",
        )
        .bind(acme)
        .bind(alerts)
        .execute(&mut *writer)
        .await
        .unwrap();
        // The disable, decided when the tenant had no alerts, waits for the writer.
        let store = t.store.clone();
        let disable = tokio::spawn(async move {
            let read = [("alerts".to_string(), None)];
            let mut change = StatusChange::new(acme, "stock", Some(Enabled), Disabled, "u", "test");
            change.tenant_seen = Some(&read);
            store.tenant_module_move(&change).await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(writer_pid)
            .fetch_one(&pool)
            .await
            .unwrap();
            if blocked > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: the disable never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.commit().await.unwrap();
        let err = disable.await.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err:?}");
        assert_eq!(status(&t, acme, "stock").await, Some(Enabled), "{name}");
    }
    t.cleanup().await;
}
