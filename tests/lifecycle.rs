//! The module lifecycle on both backends: requests follow the availability rules, approvals
//! decide only pending requests, refused moves change nothing, and every accepted change of
//! status or maturity is in the audit log with its before and after.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::json;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::{self, *};
use steward::lifecycle::{Lifecycle, LifecycleError};
use steward::store::StoreError;
use steward::store::domain::{ModuleRecord, NewTenant, NewVersion, StatusChange, TenantId};

per_backend!(
    a_ga_request_provisions_and_alpha_waits_for_approval,
    refused_moves_change_nothing_and_accepted_ones_are_audited,
    approval_decides_only_pending_requests,
    unavailable_modules_and_missing_dependencies_are_refused,
    maturity_moves_follow_the_catalog_and_are_audited,
    an_archived_module_can_be_requested_again_but_a_live_one_cannot,
    crafted_slugs_are_refused_before_any_sql,
);

fn module(slug: &str, maturity: Maturity, dependencies: &[&str]) -> ModuleRecord {
    ModuleRecord {
        slug: slug.into(),
        name: slug.to_uppercase(),
        description: String::new(),
        pricing_tier: "standard".into(),
        maturity,
        dependencies: dependencies.iter().map(|d| d.to_string()).collect(),
        data_retention_days: Some(30),
        successor: None,
        sunset_date: None,
    }
}

async fn publish(t: &TestStore, m: &ModuleRecord) {
    t.store.module_put(m, "catalog").await.unwrap();
    let table = format!("tenant_{}_items", m.slug);
    t.store
        .version_publish(
            &m.slug,
            &NewVersion {
                version: "1.0.0".into(),
                major: 1,
                minor: 0,
                patch: 0,
                build_hash: "abc".into(),
                changelog: "first".into(),
                up_sql: format!("CREATE TABLE {table} (tenant_id BIGINT NOT NULL)"),
                down_sql: format!("DROP TABLE {table}"),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: vec![table],
            },
        )
        .await
        .unwrap();
}

async fn tenant(t: &TestStore, slug: &str, internal: bool, beta: bool) -> TenantId {
    t.store
        .tenant_create(&NewTenant {
            slug: slug.into(),
            name: slug.into(),
            internal_tester: internal,
            beta_opt_in: beta,
            ..Default::default()
        })
        .await
        .unwrap()
        .id
}

async fn status(t: &TestStore, tenant: TenantId, slug: &str) -> Option<TenantModuleStatus> {
    t.store
        .tenant_module_get(tenant, slug)
        .await
        .unwrap()
        .map(|m| m.status)
}

fn rule_code(err: LifecycleError) -> &'static str {
    match err {
        LifecycleError::Domain(rule) => rule.code(),
        other => panic!("expected a lifecycle rule to refuse, got {other:?}"),
    }
}

async fn a_ga_request_provisions_and_alpha_waits_for_approval(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let acme = tenant(&t, "acme", true, false).await;
    let life = Lifecycle::new(t.store.clone());

    let ga = life.request(acme, "inventory", "user:ana").await.unwrap();
    assert_eq!(ga.module.status, Provisioning);
    assert_eq!(ga.warning, None);
    let versions = t.store.versions_of("inventory").await.unwrap();
    assert_eq!(ga.module.version_id, Some(versions[0].id));

    let alpha = life.request(acme, "chatbot", "user:ana").await.unwrap();
    assert_eq!(alpha.module.status, PendingApproval);
    assert!(alpha.module.status_reason.unwrap().contains("approval"));

    // Request, then admission: two audited steps per request, newest first.
    let audit = t.store.audit_list(Some(acme), 100).await.unwrap();
    let actions: Vec<(&str, Option<&str>)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.module.as_deref()))
        .collect();
    assert_eq!(
        actions[..4],
        [
            ("module.admit", Some("chatbot")),
            ("module.request", Some("chatbot")),
            ("module.admit", Some("inventory")),
            ("module.request", Some("inventory")),
        ]
    );
    assert_eq!(audit[0].actor, "user:ana");
    assert_eq!(
        audit[0].before.as_ref().unwrap()["status"],
        json!("REQUESTED")
    );
    assert_eq!(
        audit[0].after.as_ref().unwrap()["status"],
        json!("PENDING_APPROVAL")
    );
}

async fn refused_moves_change_nothing_and_accepted_ones_are_audited(backend: Backend) {
    let t = fresh(backend).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let acme = tenant(&t, "acme", false, false).await;
    Lifecycle::new(t.store.clone())
        .request(acme, "inventory", "user:ana")
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
    let life = Lifecycle::new(t.store.clone());
    life.request(a, "chatbot", "tenant:a").await.unwrap();
    life.request(b, "chatbot", "tenant:b").await.unwrap();
    life.request(a, "inventory", "tenant:a").await.unwrap();

    let approved = life.approve(a, "chatbot", "admin:root").await.unwrap();
    assert_eq!(approved.status, Provisioning);
    let rejected = life
        .reject(b, "chatbot", "admin:root", "no SLA for you")
        .await
        .unwrap();
    assert_eq!(rejected.status, Disabled);
    assert_eq!(rejected.status_reason.as_deref(), Some("no SLA for you"));

    // Deciding again, or deciding what was never pending, is refused and changes nothing.
    assert_eq!(
        rule_code(life.approve(a, "chatbot", "admin:root").await.unwrap_err()),
        "invalid_transition"
    );
    assert_eq!(
        rule_code(
            life.reject(b, "chatbot", "admin:root", "again")
                .await
                .unwrap_err()
        ),
        "invalid_transition"
    );
    assert_eq!(
        rule_code(
            life.reject(a, "inventory", "admin:root", "no")
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
    let life = Lifecycle::new(t.store.clone());

    for slug in ["planned", "indev", "alpha", "beta"] {
        let err = life.request(plain, slug, "tenant").await.unwrap_err();
        assert_eq!(rule_code(err), "module_not_available", "{slug}");
        assert_eq!(
            status(&t, plain, slug).await,
            None,
            "{slug}: nothing recorded"
        );
    }
    let err = life.request(plain, "alerts", "tenant").await.unwrap_err();
    assert_eq!(rule_code(err), "missing_dependencies");
    assert_eq!(status(&t, plain, "alerts").await, None);

    let legacy = life.request(plain, "legacy", "tenant").await.unwrap();
    assert!(legacy.warning.unwrap().contains("MAINTENANCE"));

    // The dependency provisioning is not enough; enabled is.
    life.request(plain, "inventory", "tenant").await.unwrap();
    assert_eq!(
        rule_code(life.request(plain, "alerts", "tenant").await.unwrap_err()),
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
        })
        .await
        .unwrap();
    assert_eq!(
        life.request(plain, "alerts", "tenant")
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
        let err = life.request(other, slug, "tenant").await.unwrap_err();
        assert_eq!(rule_code(err), "module_not_available");
    }
    assert!(matches!(
        life.request(plain, "nosuch", "tenant").await.unwrap_err(),
        LifecycleError::NoModule(_)
    ));
    assert!(matches!(
        life.request(9_999_999, "inventory", "tenant")
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
    let life = Lifecycle::new(t.store.clone());
    life.request(acme, "inventory", "tenant").await.unwrap();
    let err = life.request(acme, "inventory", "tenant").await.unwrap_err();
    assert!(
        matches!(err, LifecycleError::Store(StoreError::Conflict(_))),
        "{err:?}"
    );
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
            })
            .await
            .unwrap();
    }
    assert_eq!(
        life.request(acme, "inventory", "tenant")
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
    let life = Lifecycle::new(t.store.clone());
    for crafted in [
        "x\"; DROP TABLE tenants; --",
        "inventory' OR '1'='1",
        "Inventory",
        "",
    ] {
        let err = life.request(acme, crafted, "tenant").await.unwrap_err();
        assert_eq!(rule_code(err), "invalid_identifier", "{crafted:?}");
    }
    assert!(
        t.store.tenant_get(acme).await.unwrap().is_some(),
        "tenants survived"
    );
}
