//! `plan_sync`: `--subscribers N` tenants with an active subscription to a plan get a module
//! added to it; timed is the set-based sync (one statement on PostgreSQL), then a second sync
//! that finds nothing to do, and, before them, the tenants' subscriptions made in one statement
//! (`subscribe_seconds`).

use super::FreshStore;
use crate::domain::maturity::Maturity;
use crate::store::domain::{ModuleRecord, NewVersion};
use serde_json::{Value, json};
use std::time::Instant;

const MODULE: &str = "bench_reports";

pub(super) async fn plan_sync(fresh: &FreshStore, subscribers: usize) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let store = &fresh.store;
    store
        .module_put(
            &ModuleRecord {
                slug: MODULE.into(),
                name: "Bench reports".into(),
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
                up_sql: "SELECT 1".into(),
                down_sql: String::new(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: Vec::new(),
            },
        )
        .await
        .map_err(|e| err(&e))?;
    store
        .plan_create("bench", "Bench")
        .await
        .map_err(|e| err(&e))?;
    let count = i64::try_from(subscribers).map_err(|e| err(&e))?;
    // The subscriptions arrive in one statement, as an import would bring them: on PostgreSQL
    // their trigger (migration 0012) enqueues a `plan_subscribed` job per tenant in it.
    let seeding = Instant::now();
    store
        .tenants_seed("bench", count, "bench")
        .await
        .map_err(|e| err(&e))?;
    let subscribe_seconds = seeding.elapsed().as_secs_f64();
    store
        .plan_add_module("bench", MODULE, "bench")
        .await
        .map_err(|e| err(&e))?;

    let started = Instant::now();
    let summary = store
        .plan_sync(Some("bench"), Some(MODULE), "bench")
        .await
        .map_err(|e| err(&e))?;
    let seconds = started.elapsed().as_secs_f64();
    let synced: u64 = summary.iter().map(|l| l.synced).sum();
    if synced != subscribers as u64 {
        return Err(format!("synced {synced} of {subscribers} subscribers"));
    }
    let again = Instant::now();
    let second = store
        .plan_sync(Some("bench"), Some(MODULE), "bench")
        .await
        .map_err(|e| err(&e))?;
    let second_seconds = again.elapsed().as_secs_f64();
    if second.iter().any(|l| l.synced > 0) {
        return Err("the second sync changed something".into());
    }
    Ok(json!({
        "subscribers": subscribers,
        "synced": synced,
        "seconds": seconds,
        "second_sync_seconds": second_seconds,
        "subscribe_seconds": subscribe_seconds,
    }))
}
