//! Benchmarks of tenant data work:
//!
//! - `purge_export`: `--rows` expired rows of one tenant streamed as CSV to the local export
//!   storage, read back and verified, then deleted in batches: the path `module_purge` runs.
//!   Run it alone to read its peak memory (`peak_rss_mb` is the process's high-water mark).
//! - `cost_aggregate`: `--usage-rows` usage logs in one month (inserted set-based, untimed),
//!   then the month's aggregation (timed), then a re-run.
//! - `webhooks`: `--deliveries` `webhook_deliver` jobs, signed and POSTed to a receiver on
//!   loopback that checks every signature; timed from the workers' start to the last
//!   acknowledgement.

use super::FreshStore;
use crate::domain::ident::{ModuleTable, Slug};
use crate::export::csv_stream::export_rows;
use crate::export::local::LocalStorage;
use crate::kinds::{JobKind, KindCatalog};
use crate::lifecycle::purge::PURGE_BATCH;
use crate::lifecycle::webhook::{self, EndpointPolicy, WebhookSender};
use crate::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use crate::store::data::WebhookTarget;
use crate::store::domain::NewTenant;
use crate::types::NewJob;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn current_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

pub(super) async fn purge_export(fresh: &FreshStore, rows: usize) -> Result<Value, String> {
    let table = "tenant_benchdata_rows";
    let create = format!(
        "CREATE TABLE {table} (tenant_id BIGINT NOT NULL, id BIGINT NOT NULL, note TEXT, \
         qty INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, PRIMARY KEY (tenant_id, id)); \
         CREATE INDEX {table}_by_time ON {table} (tenant_id, created_at);"
    );
    fresh.raw(&create).await?;
    let fill = if fresh.pg.is_some() {
        format!(
            "INSERT INTO {table} SELECT 1, i, 'a note of some length for row ' || i, i % 1000, \
             (now() at time zone 'utc') - interval '400 days' FROM generate_series(1, {rows}) i; \
             ANALYZE {table};"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO {table} SELECT 1, i, 'a note of some length for row ' || i, i % 1000, \
             datetime('now', '-400 days') FROM n;"
        )
    };
    fresh.raw(&fill).await?;
    let slug = Slug::parse("benchdata").map_err(err)?;
    let table = ModuleTable::parse(&slug, table).map_err(err)?;
    let dir = std::env::temp_dir().join(format!("steward-bench-purge-{}", std::process::id()));
    let storage = LocalStorage::new(dir.clone());
    let before = chrono::Utc::now() - chrono::Duration::days(365);
    let rss_before = current_rss_mb();

    let started = Instant::now();
    let report = export_rows(
        fresh.store.as_ref(),
        &storage,
        &table,
        1,
        Some(before),
        "tenant_exports/1/benchdata/tenant_benchdata_rows/bench.csv",
        &|_| {},
    )
    .await
    .map_err(err)?;
    let exported = started.elapsed().as_secs_f64();
    let mut deleted = 0;
    loop {
        let batch = fresh
            .store
            .module_rows_purge(&table, "benchdata", 1, Some(before), None, PURGE_BATCH)
            .await
            .map_err(err)?;
        deleted += batch;
        if batch < PURGE_BATCH {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if report.rows != rows as u64 || deleted != report.rows {
        return Err(format!(
            "purge_export: exported {} and deleted {deleted} of {rows} rows",
            report.rows
        ));
    }
    Ok(json!({
        "rows": rows, "csv_bytes": report.digest.size,
        "export_and_verify_s": exported, "delete_s": secs - exported, "seconds": secs,
        "rows_per_s": (rows as f64 / secs).round(), "rss_before_mb": rss_before,
    }))
}

pub(super) async fn cost_aggregate(fresh: &FreshStore, rows: usize) -> Result<Value, String> {
    // 1,000 tenants × 5 modules, spread over October 2026 (the month aggregated).
    let fill = if fresh.pg.is_some() {
        format!(
            "INSERT INTO module_usage_logs \
                 (tenant_id, module, route, tokens, row_count, estimated_cost, latency_ms, created_at) \
             SELECT i % 1000, 'module_' || (i / 1000 % 5), '/api', i % 500, i % 7, (i % 1000) / 1000.0, \
                    i % 300, timestamptz '2026-10-01 00:00:00+00' + (i % 2678400) * interval '1 second' \
             FROM generate_series(1, {rows}) i; ANALYZE module_usage_logs;"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO module_usage_logs \
                 (tenant_id, module, route, tokens, row_count, estimated_cost, latency_ms, created_at) \
             SELECT i % 1000, 'module_' || (i / 1000 % 5), '/api', i % 500, i % 7, \
                    printf('%d.%03d', (i % 1000) / 1000, i % 1000), i % 300, \
                    1790812800000 + (i % 2678400) * 1000 FROM n;"
        )
    };
    let setup = Instant::now();
    fresh.raw(&fill).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let month = crate::store::data::parse_month("2026-10").ok_or("bad month")?;
    let started = Instant::now();
    let first = fresh.store.cost_aggregate(month).await.map_err(err)?;
    let secs = started.elapsed().as_secs_f64();
    let again = Instant::now();
    let second = fresh.store.cost_aggregate(month).await.map_err(err)?;
    let rerun = again.elapsed().as_secs_f64();
    if first != second || first.usage_rows != rows as i64 {
        return Err(format!(
            "cost_aggregate: {first:?} then {second:?} for {rows} rows"
        ));
    }
    Ok(json!({
        "usage_rows": rows, "cost_rows": first.cost_rows, "seconds": secs,
        "rows_per_s": (rows as f64 / secs).round(), "rerun_s": rerun, "setup_s": setup_s,
    }))
}

pub(super) async fn webhooks(fresh: &FreshStore, deliveries: usize) -> Result<Value, String> {
    const TENANTS: usize = 100;
    const CONCURRENCY: usize = 256;
    let received = Arc::new(AtomicUsize::new(0));
    let all_received = Arc::new(tokio::sync::Notify::new());
    let mut secrets = std::collections::HashMap::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err)?;
    let base = format!("http://{}", listener.local_addr().map_err(err)?);
    let mut jobs = Vec::with_capacity(deliveries);
    let mut ids = Vec::with_capacity(TENANTS);
    for n in 0..TENANTS {
        let id = fresh
            .store
            .tenant_create(&NewTenant {
                slug: format!("hook-{n}"),
                name: format!("Hook {n}"),
                ..Default::default()
            })
            .await
            .map_err(err)?
            .id;
        let secret = format!("bench-secret-{n}-{}", fastrand::u64(..));
        fresh
            .store
            .tenant_set_webhook(
                id,
                Some(&WebhookTarget {
                    url: format!("{base}/hooks"),
                    secret: secret.clone(),
                }),
            )
            .await
            .map_err(err)?;
        secrets.insert(id, secret);
        ids.push(id);
    }
    for i in 0..deliveries {
        let tenant = ids[i % TENANTS];
        let body = json!({"event": "module.deprecated", "delivery_id": format!("bench-{i}"),
                          "tenant_id": tenant, "module": "bench"});
        jobs.push(NewJob {
            kind: "webhook_deliver".into(),
            queue: "webhooks".into(),
            tenant: tenant.to_string(),
            payload: json!({"delivery_id": format!("bench-{i}"), "tenant_id": tenant,
                            "event": "module.deprecated", "body": body.to_string()}),
            priority: 0,
            max_attempts: 3,
            timeout_ms: 30_000,
            unique_key: None,
            run_at: None,
        });
    }
    for chunk in jobs.chunks(1_000) {
        fresh.store.jobs_insert_many(chunk).await.map_err(err)?;
    }

    let secrets = Arc::new(secrets);
    let app = {
        let (received, all_received) = (received.clone(), all_received.clone());
        axum::Router::new().route(
            "/hooks",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (received, all_received, secrets) =
                        (received.clone(), all_received.clone(), secrets.clone());
                    async move {
                        let tenant = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["tenant_id"].as_i64());
                        let signature = headers
                            .get(webhook::SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let valid = tenant.and_then(|t| secrets.get(&t)).is_some_and(|s| {
                            webhook::verify(s, &body, signature, chrono::Utc::now().timestamp())
                        });
                        if !valid {
                            return axum::http::StatusCode::UNAUTHORIZED;
                        }
                        if received.fetch_add(1, Ordering::Relaxed) + 1 == deliveries {
                            all_received.notify_one();
                        }
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        )
    };
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut registry = Registry::new();
    // The receiver is this process's loopback server: allowed explicitly, as a private
    // deployment would (public addresses only by default).
    let policy = EndpointPolicy::allowing(&["127.0.0.1".to_string()])?;
    webhook::register_jobs(
        &mut registry,
        WebhookSender::new(Duration::from_secs(10), policy, None)?,
    );
    let mut kinds = KindCatalog::default();
    kinds
        .add(JobKind::new("webhook_deliver", "webhooks"))
        .map_err(err)?;
    let mut config = RuntimeConfig::new(
        "bench",
        vec![QueueConfig {
            name: "webhooks".into(),
            concurrency: CONCURRENCY,
        }],
    );
    config.batch_size = CONCURRENCY;
    config.shutdown_grace = Duration::from_secs(5);
    let runtime = Runtime::new(Arc::clone(&fresh.store), registry, kinds, config).map_err(err)?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(600), all_received.notified())
        .await
        .map_err(|_| {
            format!(
                "webhooks: only {} of {deliveries} delivered in 10 minutes",
                received.load(Ordering::Relaxed)
            )
        })?;
    shutdown.cancel();
    running.await.map_err(err)?.map_err(err)?;
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    let not_completed: i64 = fresh
        .store
        .jobs_count_by_state()
        .await
        .map_err(err)?
        .into_iter()
        .filter(|c| c.state != crate::types::JobState::Completed)
        .map(|c| c.count)
        .sum();
    if not_completed != 0 {
        return Err(format!(
            "webhooks: {not_completed} deliveries not completed"
        ));
    }
    Ok(json!({
        "deliveries": deliveries, "tenants": TENANTS, "concurrency": CONCURRENCY,
        "seconds": secs, "deliveries_per_s": (deliveries as f64 / secs).round(),
    }))
}
