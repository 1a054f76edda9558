//! Tenant data work on real parts: purge-and-export to a local directory and to a real
//! S3-compatible server (s3s-fs, in process, stopped mid-upload), monthly cost aggregation,
//! and deprecation webhooks to a real HTTP receiver on loopback that fails 30% of requests.

mod common;
// Only the tests that export to S3 compile the server (s3s, hyper).
#[path = "common/s3.rs"]
mod s3;

use common::lifecycle::try_execute;
use common::{Backend, TestStore, fresh};
use rust_decimal::Decimal;
use s3::S3Server;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use steward::domain::actor::Actor;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::{self, *};
use steward::export::SharedExports;
use steward::lifecycle::Lifecycle;
use steward::lifecycle::webhook::{self, EndpointPolicy, WebhookSender};
use steward::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use steward::store::data::{CostFilter, UsageEntry, WebhookTarget, parse_month};
use steward::store::domain::{ModuleRecord, NewTenant, NewVersion, TenantId};
use steward::store::runs::{RunId, RunState};
use steward::types::{JobFilter, JobState};
use steward::workflow::{Engine, RunSweeper, WorkflowCatalog};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Set-up: a `journal` module (30-day retention) in use by tenants, and workers.

const JOURNAL: &str = "CREATE TABLE tenant_journal_entries (tenant_id BIGINT NOT NULL, \
    id BIGINT NOT NULL, note TEXT, qty INTEGER NOT NULL DEFAULT 0, \
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (tenant_id, id));";

fn engine(t: &TestStore, exports: SharedExports) -> Arc<Engine> {
    common::repo_engine(t, exports)
}

struct Workers {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), steward::queue::RuntimeError>>,
}

impl Workers {
    fn start(t: &TestStore, engine: &Arc<Engine>) -> Self {
        let mut registry = Registry::new();
        engine.register_jobs(&mut registry);
        // The tests' webhook receiver listens on loopback, which a deployment refuses unless
        // allowed: allowed here as a private deployment would (STEWARD_WEBHOOK_ALLOW).
        let policy = EndpointPolicy::allowing(&["127.0.0.1".to_string()]).unwrap();
        webhook::register_jobs(
            &mut registry,
            WebhookSender::new(Duration::from_secs(5), policy, None).expect("http client"),
        );
        // (A runtime names each queue it works with a width; 8 runs a test's steps at once.)
        let mut config = RuntimeConfig::new(
            format!("data-{}", fastrand::u32(..)),
            vec![
                QueueConfig {
                    name: "workflows".into(),
                    concurrency: 8,
                },
                QueueConfig {
                    name: "webhooks".into(),
                    concurrency: 32,
                },
            ],
        );
        config.poll_interval = Duration::from_millis(50);
        let kinds = common::repo_kinds();
        let runtime = Runtime::new(
            t.store.clone(),
            registry,
            common::kinds_of(&[
                kinds.get("workflow_step").expect("kind").clone(),
                kinds.get("webhook_deliver").expect("kind").clone(),
            ]),
            config,
        )
        .expect("runtime")
        .with_service(Box::new(RunSweeper {
            engine: engine.clone(),
            every: Duration::from_millis(50),
        }));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(shutdown.clone()));
        Workers { shutdown, handle }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("join")
            .expect("runtime ends cleanly");
    }
}

async fn journal_in_use(t: &TestStore, engine: &Arc<Engine>, tenants: usize) -> Vec<TenantId> {
    t.store
        .module_put(
            &ModuleRecord {
                slug: "journal".into(),
                name: "Journal".into(),
                description: String::new(),
                pricing_tier: "standard".into(),
                maturity: Maturity::Ga,
                dependencies: vec![],
                data_retention_days: Some(30),
                successor: Some("ledger".into()),
                sunset_date: Some("2027-06-30".into()),
            },
            "test",
        )
        .await
        .unwrap();
    t.store
        .version_publish(
            "journal",
            &NewVersion {
                version: "1.0.0".into(),
                major: 1,
                minor: 0,
                patch: 0,
                build_hash: "j1".into(),
                changelog: String::new(),
                up_sql: JOURNAL.into(),
                down_sql: "DROP TABLE tenant_journal_entries;".into(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: vec!["tenant_journal_entries".into()],
            },
        )
        .await
        .unwrap();
    let life = Lifecycle::new(engine.clone()).unwrap();
    let mut ids = Vec::new();
    for n in 0..tenants {
        let id = t
            .store
            .tenant_create(&NewTenant {
                slug: format!("tenant-{n}"),
                name: format!("Tenant {n}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .id;
        life.request(id, "journal", &Actor::tenant_admin("test"))
            .await
            .unwrap();
        ids.push(id);
    }
    let workers = Workers::start(t, engine);
    wait_until(
        t,
        "every tenant ENABLED",
        Duration::from_secs(60),
        || async {
            let all = t.store.module_tenants("journal").await.unwrap();
            all.len() == tenants && all.iter().all(|m| m.status == Enabled)
        },
    )
    .await;
    workers.stop().await;
    ids
}

async fn wait_until<F, Fut>(t: &TestStore, what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let _ = t;
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn execute(t: &TestStore, sql: &str) {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => drop(sqlx::raw_sql(sql).execute(pg.pool()).await.unwrap()),
        (_, Some(sqlite)) => drop(sqlx::raw_sql(sql).execute(sqlite.pool()).await.unwrap()),
        _ => unreachable!(),
    }
}

async fn count(t: &TestStore, sql: &str) -> i64 {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await.unwrap(),
        (_, Some(sqlite)) => sqlx::query_scalar(sql)
            .fetch_one(sqlite.pool())
            .await
            .unwrap(),
        _ => unreachable!(),
    }
}

/// Insert `n` rows for `tenant` with ids from `first`, `days` days old.
async fn insert_rows(t: &TestStore, tenant: TenantId, first: i64, n: i64, days: i64) {
    let last = first + n - 1;
    let sql = if t.pg.is_some() {
        format!(
            "INSERT INTO tenant_journal_entries (tenant_id, id, note, qty, created_at) \
             SELECT {tenant}, i, 'entry, \"quoted\" ' || i, (i % 97)::int, \
                    (now() at time zone 'utc') - interval '{days} days' \
             FROM generate_series({first}, {last}) AS i"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO tenant_journal_entries (tenant_id, id, note, qty, created_at) \
             SELECT {tenant}, i, 'entry, \"quoted\" ' || i, i % 97, datetime('now', '-{days} days') FROM n"
        )
    };
    execute(t, &sql).await;
}

async fn run_state(t: &TestStore, run: RunId) -> RunState {
    t.store.run_get(run).await.unwrap().unwrap().state
}

async fn wait_run(t: &TestStore, run: RunId, limit: Duration) {
    wait_until(t, &format!("run {run} to complete"), limit, || async {
        let got = t.store.run_get(run).await.unwrap().unwrap();
        let errors: Vec<_> = got.steps.iter().filter_map(|s| s.error.as_ref()).collect();
        assert_ne!(got.state, RunState::Failed, "run {run} failed: {errors:?}");
        got.state == RunState::Completed
    })
    .await;
}

async fn wait_failed(t: &TestStore, run: RunId) {
    wait_until(
        t,
        &format!("run {run} to fail"),
        Duration::from_secs(60),
        || async { run_state(t, run).await == RunState::Failed },
    )
    .await;
}

/// The ids in an exported CSV, after checking its header and every row's shape.
fn exported_ids(csv_bytes: &[u8], tenant: TenantId) -> Vec<i64> {
    let mut reader = csv::Reader::from_reader(csv_bytes);
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(headers, ["tenant_id", "id", "note", "qty", "created_at"]);
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r[0].parse::<i64>().unwrap(), tenant);
            let id: i64 = r[1].parse().unwrap();
            assert_eq!(
                r[2],
                format!("entry, \"quoted\" {id}"),
                "the note survives quoting"
            );
            assert_eq!(r[3].parse::<i64>().unwrap(), id % 97);
            id
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Purge-and-export on the local storage, both backends.

async fn purge_exports_expired_rows_verified_then_deletes_exactly_them(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, t.exports.clone());
    let tenants = journal_in_use(&t, &engine, 2).await;
    let (a, b) = (tenants[0], tenants[1]);
    insert_rows(&t, a, 1, 5_000, 100).await; // expired
    insert_rows(&t, a, 10_001, 100, 2).await; // kept
    insert_rows(&t, b, 1, 50, 31).await; // expired

    let workers = Workers::start(&t, &engine);
    let (schedule, _) = engine
        .start("data_retention", json!({}), None)
        .await
        .unwrap();
    wait_run(&t, schedule, Duration::from_secs(60)).await;
    let scheduled = t.store.run_get(schedule).await.unwrap().unwrap();
    assert_eq!(
        scheduled.steps[0].output.as_ref().unwrap()["purges_started"],
        json!(2)
    );
    let purges = t.store.runs_list(None, 100).await.unwrap();
    let purges: Vec<_> = purges
        .iter()
        .filter(|r| r.workflow == "module_purge")
        .collect();
    assert_eq!(purges.len(), 2);
    for run in &purges {
        wait_run(&t, run.id, Duration::from_secs(60)).await;
    }

    let date = chrono::Utc::now().date_naive();
    for (tenant, expected) in [
        (a, (1..=5_000).collect::<Vec<i64>>()),
        (b, (1..=50).collect()),
    ] {
        let key = format!("tenant_exports/{tenant}/journal/tenant_journal_entries/{date}.csv");
        let bytes = t.exports.read(&key).await.expect("the export exists");
        let mut ids = exported_ids(&bytes, tenant);
        ids.sort();
        assert_eq!(ids, expected, "tenant {tenant}: exactly the expired rows");
    }
    let left =
        |tenant| format!("SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {tenant}");
    assert_eq!(count(&t, &left(a)).await, 100, "the recent rows stay");
    assert_eq!(
        count(
            &t,
            &format!(
                "SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {a} AND id <= 5000"
            )
        )
        .await,
        0
    );
    assert_eq!(count(&t, &left(b)).await, 0);
    // Audited once per table, not row by row (the rows are in the export, not in audit_logs).
    let audit = t.store.audit_list(Some(a), 500).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "data.purge"), "{audit:?}");
    assert!(!audit.iter().any(|e| e.action == "row.delete"));
    // No audit row anywhere holds a value of the deleted rows (every `note` was
    // 'entry, "quoted" N'): their inserts were audited by key and column names only.
    assert!(
        count(
            &t,
            "SELECT count(*) FROM audit_logs WHERE entity LIKE '%journal%'"
        )
        .await
            > 0
    );
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM audit_logs WHERE CAST(before AS TEXT) LIKE '%quoted%' \
             OR CAST(after AS TEXT) LIKE '%quoted%' OR entity LIKE '%quoted%'"
        )
        .await,
        0,
        "a deleted row's value lives on in audit_logs"
    );

    // The same night again: the same runs, nothing new exported or deleted.
    let (again, _) = engine
        .start("data_retention", json!({}), None)
        .await
        .unwrap();
    wait_run(&t, again, Duration::from_secs(60)).await;
    let again = t.store.run_get(again).await.unwrap().unwrap();
    assert_eq!(
        again.steps[0].output.as_ref().unwrap()["purges_started"],
        json!(0)
    );
    workers.stop().await;
    t.cleanup().await;
}

/// Tenant A of `journal` with 10 expired rows, exported by hand to `key`.
async fn ten_expired_rows_exported(
    t: &TestStore,
    key: &str,
) -> (
    TenantId,
    chrono::DateTime<chrono::Utc>,
    steward::domain::ident::ModuleTable,
    steward::export::csv_stream::ExportReport,
) {
    let engine = engine(t, t.exports.clone());
    let a = journal_in_use(t, &engine, 1).await[0];
    insert_rows(t, a, 1, 10, 100).await;
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    let table = steward::domain::ident::ModuleTable::parse(
        &steward::domain::ident::Slug::parse("journal").unwrap(),
        "tenant_journal_entries",
    )
    .unwrap();
    let report = steward::export::csv_stream::export_rows(
        t.store.as_ref(),
        t.exports.as_ref(),
        &table,
        a,
        Some(before),
        key,
        &|_| {},
    )
    .await
    .unwrap();
    (a, before, table, report)
}

async fn a_purge_refuses_to_delete_rows_its_export_does_not_hold(backend: Backend) {
    let t = fresh(backend).await;
    // Export by hand, then a backdated row appears before the deletion.
    let (a, before, _table, report) =
        ten_expired_rows_exported(&t, "tenant_exports/manual.csv").await;
    assert_eq!(report.rows, 10);
    assert_eq!(
        report.digest,
        t.exports.digest("tenant_exports/manual.csv").await.unwrap()
    );
    insert_rows(&t, a, 11, 1, 200).await;

    // `purge.delete` alone, given that export as its input: it refuses, and deletes nothing.
    let dir = tempfile::tempdir().unwrap();
    let delete_only = delete_only_engine(&t, dir.path());
    let workers = Workers::start(&t, &delete_only);
    let (run, _) = delete_only
        .start(
            "delete_only",
            json!({"tenant_id": a, "module": "journal", "before": before.to_rfc3339(),
                   "exports": [{"table": "tenant_journal_entries", "export": report}]}),
            None,
        )
        .await
        .unwrap();
    wait_failed(&t, run).await;
    workers.stop().await;
    let failed = t.store.run_get(run).await.unwrap().unwrap();
    let why = failed.steps[1].error.clone().unwrap_or_default();
    assert!(why.contains("nothing more deleted"), "{why}");
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {a}")
        )
        .await,
        11
    );
    t.cleanup().await;
}

/// An engine whose only workflow, `name`, runs `steps` (TOML `[[steps]]` tables) with the
/// parameters of a purge and, for a `purge.delete` alone, the export to delete.
fn purge_steps_engine(t: &TestStore, dir: &Path, name: &str, steps: &str) -> Arc<Engine> {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\n[params]\ntenant_id = {{ required = true }}\n\
             module = {{ required = true }}\nbefore = {{ required = true }}\n\
             date = {{ required = false }}\nexports = {{ required = false }}\n{steps}"
        ),
    )
    .unwrap();
    let kinds = common::repo_kinds();
    let mut steps = steward::lifecycle::step_registry(t.exports.clone());
    // After a `wait.signal` step: its signal's payload, as the next step's input.
    steps.register("test.payload", |ctx| {
        Box::pin(async move { Ok(ctx.input["payload"].clone()) })
    });
    let workflows = WorkflowCatalog::load_dir(dir, &kinds, &|h| steps.contains(h)).unwrap();
    Engine::new(t.store.clone(), workflows, kinds, steps)
}

/// An engine whose only workflow holds the rows, then runs `purge.delete` on the export
/// given as its parameters.
fn delete_only_engine(t: &TestStore, dir: &Path) -> Arc<Engine> {
    purge_steps_engine(
        t,
        dir,
        "delete_only",
        "[[steps]]\nname = \"hold\"\nhandler = \"purge.hold\"\njob = \"workflow_step\"\n\
         compensate = \"purge.release\"\n\
         [[steps]]\nname = \"delete\"\nhandler = \"purge.delete\"\njob = \"workflow_step\"\n",
    )
}

async fn an_expired_row_cannot_change_between_its_export_and_its_deletion(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, t.exports.clone());
    let a = journal_in_use(&t, &engine, 1).await[0];
    insert_rows(&t, a, 1, 10, 100).await;
    insert_rows(&t, a, 11, 1, 1).await;
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    let params = |extra: serde_json::Value| {
        let mut p = json!({"tenant_id": a, "module": "journal", "before": before.to_rfc3339(),
                           "date": "2026-12-06"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let edit = format!(
        "UPDATE tenant_journal_entries SET note = 'edited' WHERE tenant_id = {a} AND id = 3"
    );

    // `module_purge`'s steps, with a pause between the export and the deletion: the signal's
    // payload is the export's output, which the deletion reads.
    let dir = tempfile::tempdir().unwrap();
    let steps = |names: &[(&str, &str)]| {
        names
            .iter()
            .map(|(name, handler)| {
                let extra = match *handler {
                    "purge.hold" => "compensate = \"purge.release\"\n",
                    "wait.signal" => "signal = \"go\"\n",
                    _ => "",
                };
                format!(
                    "[[steps]]\nname = \"{name}\"\nhandler = \"{handler}\"\n\
                     job = \"workflow_step\"\n{extra}"
                )
            })
            .collect::<String>()
    };
    let paused = purge_steps_engine(
        &t,
        dir.path(),
        "paused_purge",
        &format!(
            "[signals]\ngo = {{ sent_by = [] }}\n{}",
            steps(&[
                ("hold", "purge.hold"),
                ("export", "purge.export"),
                ("pause", "wait.signal"),
                ("resume", "test.payload"),
                ("delete", "purge.delete"),
            ])
        ),
    );
    let workers = Workers::start(&t, &paused);
    let (run, _) = paused
        .start("paused_purge", params(json!({})), None)
        .await
        .unwrap();
    wait_until(&t, "the export", Duration::from_secs(60), || async {
        t.store.run_get(run).await.unwrap().unwrap().steps[1]
            .output
            .is_some()
    })
    .await;
    let exported = t.store.run_get(run).await.unwrap().unwrap().steps[1]
        .output
        .clone()
        .unwrap();

    // Between the export and the deletion the application cannot change what was exported
    // (before the hold, this edit went through and was then deleted unexported).
    let err = try_execute(&t, &edit).await.unwrap_err();
    assert!(err.contains("being exported and deleted"), "{err}");
    try_execute(
        &t,
        &format!("UPDATE tenant_journal_entries SET note = 'recent edit' WHERE tenant_id = {a} AND id = 11"),
    )
    .await
    .unwrap();

    // The deletion deletes what was exported and lifts the hold.
    paused
        .signal(run, "go", &exported, "test", None)
        .await
        .unwrap();
    wait_run(&t, run, Duration::from_secs(60)).await;
    workers.stop().await;
    let done = t.store.run_get(run).await.unwrap().unwrap();
    let output = done.steps[4].output.clone().unwrap();
    assert_eq!(output["deleted"], json!(10));
    assert_eq!(output["hold_released"], json!(true));
    let left = format!("SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {a}");
    assert_eq!(count(&t, &left).await, 1);
    try_execute(
        &t,
        &format!(
            "INSERT INTO tenant_journal_entries (tenant_id, id, note, qty, created_at) \
             SELECT tenant_id, 12, 'backdated', 1, {} FROM tenant_journal_entries \
             WHERE tenant_id = {a} AND id = 11",
            match backend {
                Backend::Postgres => "created_at - interval '60 days'",
                Backend::Sqlite => "datetime(created_at, '-60 days')",
            }
        ),
    )
    .await
    .unwrap();

    // A run that dies after its hold lifts it (the hold's compensation).
    insert_rows(&t, a, 20, 3, 100).await;
    let dying = purge_steps_engine(
        &t,
        dir.path(),
        "hold_then_fail",
        &steps(&[("hold", "purge.hold"), ("fail", "step.fail")]),
    );
    let workers = Workers::start(&t, &dying);
    let (run, _) = dying
        .start("hold_then_fail", params(json!({})), None)
        .await
        .unwrap();
    wait_failed(&t, run).await;
    workers.stop().await;
    try_execute(
        &t,
        &format!(
            "UPDATE tenant_journal_entries SET note = 'edited' WHERE tenant_id = {a} AND id = 20"
        ),
    )
    .await
    .unwrap();
    t.cleanup().await;
}

async fn a_purge_resumed_after_some_batches_deletes_the_rest_of_its_export(backend: Backend) {
    let t = fresh(backend).await;
    let (a, before, table, report) =
        ten_expired_rows_exported(&t, "tenant_exports/resume.csv").await;
    // An earlier attempt deleted one batch of 4, then died before the step completed.
    assert_eq!(
        t.store
            .module_rows_purge(&table, "journal", a, Some(before), None, 4)
            .await
            .unwrap(),
        4
    );
    let dir = tempfile::tempdir().unwrap();
    let delete_only = delete_only_engine(&t, dir.path());
    let workers = Workers::start(&t, &delete_only);
    let (run, _) = delete_only
        .start(
            "delete_only",
            json!({"tenant_id": a, "module": "journal", "before": before.to_rfc3339(),
                   "exports": [{"table": "tenant_journal_entries", "export": report}]}),
            None,
        )
        .await
        .unwrap();
    wait_run(&t, run, Duration::from_secs(60)).await;
    workers.stop().await;
    let done = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(done.steps[1].output.as_ref().unwrap()["deleted"], json!(6));
    assert_eq!(
        count(
            &t,
            &format!("SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {a}")
        )
        .await,
        0
    );
    // The audit accounts for every exported row: the 4 the lost attempt deleted too.
    let audit = t.store.audit_list(Some(a), 50).await.unwrap();
    let purge = audit.iter().find(|r| r.action == "data.purge").unwrap();
    let after = purge.after.as_ref().unwrap();
    assert_eq!(
        (
            after["deleted_now"].clone(),
            after["deleted_earlier"].clone()
        ),
        (json!(6), json!(4))
    );
    t.cleanup().await;
}

per_backend!(
    purge_exports_expired_rows_verified_then_deletes_exactly_them,
    a_purge_resumed_after_some_batches_deletes_the_rest_of_its_export,
    a_purge_refuses_to_delete_rows_its_export_does_not_hold,
    an_expired_row_cannot_change_between_its_export_and_its_deletion,
    cost_aggregation_is_exact_on_month_boundaries_and_idempotent,
    deprecation_webhooks_reach_every_tenant_once_or_dead_letter_with_the_reason,
    a_deprecated_module_is_retired_at_its_sunset_unless_it_changed,
    a_forced_retirement_after_a_plain_one_suspends_the_tenants_in_use,
    an_unreachable_export_storage_opens_its_circuit_and_steps_wait_without_attempts,
    a_storage_that_never_answers_opens_its_circuit_too,
);

/// A step that writes one small object to the export storage (behind its circuit breaker).
fn store_one(
    ctx: steward::workflow::StepContext<'_>,
    exports: SharedExports,
) -> steward::workflow::StepFuture<'_> {
    Box::pin(async move {
        let key = format!("circuit/run-{}.txt", ctx.run_id);
        let unavailable =
            |e: steward::export::ExportError| steward::queue::JobError::Retryable(e.to_string());
        let mut upload = exports.upload(&key).await.map_err(unavailable)?;
        upload.part(b"ok".to_vec()).await.map_err(unavailable)?;
        upload.finish().await.map_err(unavailable)?;
        Ok(json!({"key": key}))
    })
}

/// An engine whose one workflow, `store_one`, writes an object to `storage` behind its
/// circuit breaker, and five runs of it started.
async fn store_one_runs(
    t: &TestStore,
    storage: &SharedExports,
    kinds: steward::kinds::KindCatalog,
) -> (Arc<Engine>, Vec<RunId>) {
    let mut steps = steward::lifecycle::step_registry(storage.clone());
    steps.register(
        "test.store_one",
        steward::lifecycle::storage_circuit::guarded(storage.clone(), store_one),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("store_one.toml"),
        "name = \"store_one\"\n[[steps]]\nname = \"store\"\nhandler = \"test.store_one\"\n\
         job = \"workflow_step\"\n",
    )
    .unwrap();
    let workflows = WorkflowCatalog::load_dir(dir.path(), &kinds, &|h| steps.contains(h)).unwrap();
    let engine = Engine::new(t.store.clone(), workflows, kinds, steps);
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(engine.start("store_one", json!({}), None).await.unwrap().0);
    }
    (engine, runs)
}

/// The export storage's circuit breaker (`lifecycle::storage_circuit`): steps that find S3
/// unreachable open it after five failures in a row; while open, their retries wait without
/// using attempts; once the server is back, one probe closes it and every run completes.
async fn an_unreachable_export_storage_opens_its_circuit_and_steps_wait_without_attempts(
    backend: Backend,
) {
    use steward::lifecycle::storage_circuit::{FAILURES_TO_OPEN, key_of};
    let t = fresh(backend).await;
    // A port nothing listens on yet: the storage is down.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let storage = s3::storage_at(([127, 0, 0, 1], port).into());
    let kinds = common::repo_kinds();
    let (engine, runs) = store_one_runs(&t, &storage, kinds).await;
    let workers = Workers::start(&t, &engine);
    let key = key_of(storage.as_ref());
    let breaker = async || {
        t.store
            .breakers_list()
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.key == key)
    };
    wait_until(
        &t,
        "the storage's circuit open",
        Duration::from_secs(60),
        || async { breaker().await.is_some_and(|b| b.state == "open") },
    )
    .await;
    let opened_at = breaker().await.unwrap().opened_at.unwrap();
    // Attempts admitted just before it opened may still be failing: once they have ended, the
    // failures counted are all there will be (none is admitted while it is open: checked by
    // their start times below).
    wait_until(
        &t,
        "no attempt in flight",
        Duration::from_secs(60),
        || async {
            let running = JobFilter {
                state: Some(JobState::Running),
                ..JobFilter::default()
            };
            t.store.jobs_count(&running, 10).await.unwrap() == 0
        },
    )
    .await;
    // The storage comes back.
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path(), port).await;
    let failures = breaker().await.unwrap().failures;
    assert!(failures >= i64::from(FAILURES_TO_OPEN), "{failures}");
    wait_until(
        &t,
        "every run completed",
        Duration::from_secs(90),
        || async {
            let mut done = true;
            for &run in &runs {
                done &= t.store.run_get(run).await.unwrap().unwrap().state == RunState::Completed;
            }
            done
        },
    )
    .await;
    workers.stop().await;
    let mut failed_attempts = 0;
    for &run in &runs {
        let record = t.store.run_get(run).await.unwrap().unwrap();
        let job = t
            .store
            .job_get(record.steps[0].job_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        failed_attempts += i64::from(job.attempt) - 1;
        for failed in job.attempts.iter().filter(|a| a.error.is_some()) {
            assert!(
                failed.started_at.is_some_and(|at| at <= opened_at),
                "an attempt started while the circuit was open: {failed:?}, opened at {opened_at}"
            );
        }
    }
    // Retries kept coming every 200 ms–10 s while the circuit was open (30 s): none used
    // an attempt, and none reached the storage but the probe.
    assert_eq!(
        failed_attempts, failures,
        "failed attempts beyond those that opened it"
    );
    let closed = breaker().await.unwrap();
    assert_eq!(
        (closed.state.as_str(), closed.failures),
        ("closed", 0),
        "{closed:?}"
    );
    server.stop().await;
    t.cleanup().await;
}

/// A storage that accepts connections and never answers (a hung server, a black-holed load
/// balancer) counts as unreachable too: a step still waiting for it when its time is nearly
/// up stops, and its failure counts, so the circuit opens as for a refused connection.
async fn a_storage_that_never_answers_opens_its_circuit_too(backend: Backend) {
    use steward::lifecycle::storage_circuit::key_of;
    let t = fresh(backend).await;
    // Connections are queued by the kernel and never accepted: requests wait for ever.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let storage = s3::storage_at(hung.local_addr().unwrap());
    // The repository's kinds with a 3 s step timeout instead of 300 s, so that a hung call is
    // met in seconds (the deadline is the timeout's; the rule does not depend on its length).
    let jobs = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("timeout_secs = 300", "timeout_secs = 3");
        std::fs::write(jobs.path().join(path.file_name().unwrap()), text).unwrap();
    }
    let kinds = steward::kinds::KindCatalog::load_dir(jobs.path()).unwrap();
    let (engine, runs) = store_one_runs(&t, &storage, kinds).await;
    let workers = Workers::start(&t, &engine);
    let key = key_of(storage.as_ref());
    wait_until(
        &t,
        "the hung storage's circuit open",
        Duration::from_secs(90),
        || async {
            t.store
                .breakers_list()
                .await
                .unwrap()
                .into_iter()
                .any(|b| b.key == key && b.state == "open")
        },
    )
    .await;
    workers.stop().await;
    let record = t.store.run_get(runs[0]).await.unwrap().unwrap();
    let job = t
        .store
        .job_get(record.steps[0].job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    let failed = job.attempts.iter().find_map(|a| a.error.clone());
    assert!(
        failed
            .as_deref()
            .is_some_and(|e| e.contains("did not end within")),
        "{job:?}"
    );
    t.cleanup().await;
}

/// Wait until a DEPRECATED run waits for its module's sunset date (`await_sunset`, its job
/// parked in the queue); returns that job.
async fn parked_at_sunset(t: &TestStore, run: RunId) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let record = t.store.run_get(run).await.unwrap().unwrap();
        assert_ne!(record.state, RunState::Failed, "run {run} failed");
        if record.current_step == 2
            && let Some(job) = record.steps[2].job_id
            && t.store.job_get(job).await.unwrap().unwrap().state == JobState::Scheduled
        {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run} never waited: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A forced retirement asked after a plain one is a run of its own, and suspends the tenants
/// the plain one left in use (the plain run's idempotency key used to return that run).
async fn a_forced_retirement_after_a_plain_one_suspends_the_tenants_in_use(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, t.exports.clone());
    let a = journal_in_use(&t, &engine, 1).await[0];
    let life = Lifecycle::new(engine.clone()).unwrap();
    let admin = Actor::master_admin("test");
    let status = || async {
        t.store
            .tenant_module_get(a, "journal")
            .await
            .unwrap()
            .unwrap()
            .status
    };
    let workers = Workers::start(&t, &engine);
    life.set_maturity("journal", Maturity::Deprecated, false, &admin)
        .await
        .unwrap();
    let (_, plain) = life
        .set_maturity("journal", Maturity::Retired, false, &admin)
        .await
        .unwrap();
    wait_run(&t, plain.unwrap(), Duration::from_secs(60)).await;
    assert_eq!(
        status().await,
        Enabled,
        "a plain retirement leaves it in use"
    );
    let (_, forced) = life
        .set_maturity("journal", Maturity::Retired, true, &admin)
        .await
        .unwrap();
    assert_ne!(forced, plain);
    wait_run(&t, forced.unwrap(), Duration::from_secs(60)).await;
    workers.stop().await;
    assert_eq!(status().await, Suspended);
    // Asked again, forced or not: a run already started (nothing is sent twice).
    let (_, again) = life
        .set_maturity("journal", Maturity::Retired, true, &admin)
        .await
        .unwrap();
    assert_eq!(again, forced);
    let (_, again) = life
        .set_maturity("journal", Maturity::Retired, false, &admin)
        .await
        .unwrap();
    assert_eq!(again, plain);
    t.cleanup().await;
}

/// A module (no tenant) with a sunset date.
async fn module_with_sunset(t: &TestStore, slug: &str, sunset: &str) -> ModuleRecord {
    let module = ModuleRecord {
        slug: slug.into(),
        name: slug.into(),
        description: String::new(),
        pricing_tier: "standard".into(),
        maturity: Maturity::Ga,
        dependencies: vec![],
        data_retention_days: None,
        successor: None,
        sunset_date: Some(sunset.into()),
    };
    t.store.module_put(&module, "test").await.unwrap();
    module
}

async fn a_deprecated_module_is_retired_at_its_sunset_unless_it_changed(backend: Backend) {
    let t = fresh(backend).await;
    let engine = engine(&t, t.exports.clone());
    let life = Lifecycle::new(engine.clone()).unwrap();
    let admin = Actor::master_admin("test");
    module_with_sunset(&t, "gazette", "2027-06-30").await;
    let almanac = module_with_sunset(&t, "almanac", "2027-06-30").await;
    let workers = Workers::start(&t, &engine);
    let (_, retiring) = life
        .set_maturity("gazette", Maturity::Deprecated, true, &admin)
        .await
        .unwrap();
    let (_, moved) = life
        .set_maturity("almanac", Maturity::Deprecated, false, &admin)
        .await
        .unwrap();
    let (retiring, moved) = (retiring.unwrap(), moved.unwrap());
    let jobs = [
        parked_at_sunset(&t, retiring).await,
        parked_at_sunset(&t, moved).await,
    ];
    // Still DEPRECATED while they wait; then almanac's sunset moves a month.
    assert_eq!(
        t.store
            .module_get("gazette")
            .await
            .unwrap()
            .unwrap()
            .maturity,
        Maturity::Deprecated
    );
    let later = ModuleRecord {
        sunset_date: Some("2027-07-31".into()),
        ..almanac
    };
    t.store.module_put(&later, "test").await.unwrap();
    // The clock passes 2027-06-30 (injected, not slept), and the parked jobs look again.
    let past = chrono::DateTime::parse_from_rfc3339("2027-07-01T00:00:05Z").unwrap();
    engine.set_clock_offset(past.with_timezone(&chrono::Utc) - chrono::Utc::now());
    t.store
        .jobs_retry(&JobFilter {
            ids: jobs.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_run(&t, retiring, Duration::from_secs(60)).await;
    wait_run(&t, moved, Duration::from_secs(60)).await;
    workers.stop().await;
    let last = |run: RunId| {
        let store = t.store.clone();
        async move {
            let record = store.run_get(run).await.unwrap().unwrap();
            record.steps.last().unwrap().output.clone().unwrap()
        }
    };
    let retired = last(retiring).await;
    assert_eq!(retired["retired"], json!(true), "{retired}");
    assert_eq!(
        t.store
            .module_get("gazette")
            .await
            .unwrap()
            .unwrap()
            .maturity,
        Maturity::Retired,
        "retired at its sunset"
    );
    // The retirement is the maturity operation's own run (forced, as the deprecation said).
    let retire_run = retired["retire_run"].as_i64().unwrap();
    let run = t.store.run_get(retire_run).await.unwrap().unwrap();
    assert_eq!(
        (
            run.workflow.as_str(),
            run.params["maturity"].clone(),
            run.params["force"].clone()
        ),
        ("module_deprecation", json!("RETIRED"), json!(true))
    );
    let kept = last(moved).await;
    assert_eq!(kept["retired"], json!(false), "{kept}");
    assert!(
        kept["reason"].as_str().unwrap().contains("2027-07-31"),
        "{kept}"
    );
    assert_eq!(
        t.store
            .module_get("almanac")
            .await
            .unwrap()
            .unwrap()
            .maturity,
        Maturity::Deprecated,
        "a changed sunset date: nothing happens"
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Purge-and-export of 1,000,000 rows to a real S3-compatible server that goes away mid-upload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_purge_to_s3_survives_the_server_stopping_mid_upload() {
    const ROWS: i64 = 1_000_000;
    let t = fresh(Backend::Postgres).await;
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path(), 0).await;
    let storage = server.storage();
    let engine = engine(&t, storage.clone());
    let a = journal_in_use(&t, &engine, 1).await[0];
    insert_rows(&t, a, 1, ROWS, 40).await;
    execute(&t, "ANALYZE tenant_journal_entries").await;

    let workers = Workers::start(&t, &engine);
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    let date = chrono::Utc::now().date_naive();
    let (run, _) = engine
        .start(
            "module_purge",
            json!({"tenant_id": a, "module": "journal", "before": before.to_rfc3339(),
                   "date": date.to_string()}),
            None,
        )
        .await
        .unwrap();

    // Mid-upload: a part has gone up, the object is not whole yet. Then the server goes away.
    wait_until(
        &t,
        "the first uploaded part",
        Duration::from_secs(120),
        || async {
            let run = t.store.run_get(run).await.unwrap().unwrap();
            let export = run.steps.iter().find(|s| s.name == "export").unwrap();
            export
                .progress
                .as_ref()
                .and_then(|p| p["bytes_uploaded"].as_u64())
                .is_some_and(|b| b > 0)
        },
    )
    .await;
    let (root_path, port) = server.stop().await;
    t.wait_for_counts(
        Duration::from_secs(60),
        "the export step to fail its attempt",
        |count| count(JobState::Retryable) >= 1,
    )
    .await;
    let all = format!("SELECT count(*) FROM tenant_journal_entries WHERE tenant_id = {a}");
    assert_eq!(
        count(&t, &all).await,
        ROWS,
        "no row is deleted while the export failed"
    );
    assert_eq!(run_state(&t, run).await, RunState::Running);
    let failed = t
        .store
        .jobs_list(&JobFilter {
            kind: Some("workflow_step".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let errors: Vec<String> = failed
        .iter()
        .flat_map(|j| j.attempts.iter().filter_map(|a| a.error.clone()))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("export storage unavailable")),
        "{errors:?}"
    );

    // The server comes back on the same address: the run completes.
    let server = S3Server::start(&root_path, port).await;
    wait_run(&t, run, Duration::from_secs(300)).await;
    workers.stop().await;

    let key = format!("tenant_exports/{a}/journal/tenant_journal_entries/{date}.csv");
    let bytes = server.storage().read(&key).await.expect("one object");
    let mut ids = exported_ids(&bytes, a);
    assert_eq!(ids.len() as i64, ROWS);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as i64, ROWS, "no duplicate row in the export");
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, ROWS), "no missing row");
    assert_eq!(
        count(&t, &all).await,
        0,
        "exactly the exported rows were deleted"
    );
    let done = t.store.run_get(run).await.unwrap().unwrap();
    let delete = done.steps.iter().find(|s| s.name == "delete").unwrap();
    let output = delete.output.clone().unwrap();
    assert_eq!(output["deleted"], json!(ROWS));
    assert_eq!(output["hold_released"], json!(true));
    assert_eq!(
        output["exports"][0]["export"]["size"],
        json!(bytes.len()),
        "the verified size is the object's"
    );
    server.stop().await;
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Monthly cost aggregation.

fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn usage(tenant: TenantId, module: &str, when: &str, tokens: i64, cost: &str) -> UsageEntry {
    UsageEntry {
        tenant_id: tenant,
        module: module.into(),
        route: "/api/x".into(),
        tokens,
        row_count: 1,
        estimated_cost: Decimal::from_str(cost).unwrap(),
        latency_ms: 12,
        at: at(when),
    }
}

async fn cost_aggregation_is_exact_on_month_boundaries_and_idempotent(backend: Backend) {
    let t = fresh(backend).await;
    t.store
        .usage_record(&[
            usage(1, "inventory", "2026-09-30T23:59:59.999Z", 5, "0.000001"),
            usage(1, "inventory", "2026-10-01T00:00:00Z", 10, "0.1"),
            usage(1, "inventory", "2026-10-15T12:00:00Z", 20, "0.1"),
            usage(1, "inventory", "2026-10-31T23:59:59.999Z", 30, "0.1"),
            usage(1, "inventory", "2026-11-01T00:00:00Z", 40, "7"),
            usage(2, "inventory", "2026-10-10T00:00:00Z", 1, "9456.654321"),
            usage(1, "chatbot", "2026-10-10T00:00:00Z", 2, "3"),
        ])
        .await
        .unwrap();
    let oct = parse_month("2026-10").unwrap();
    let done = t.store.cost_aggregate(oct).await.unwrap();
    assert_eq!((done.usage_rows, done.cost_rows), (5, 3));
    let first = t
        .store
        .monthly_costs(&CostFilter::month(Some(oct)))
        .await
        .unwrap();
    let row = |rows: &[steward::store::data::MonthlyCost], tenant, module: &str| {
        rows.iter()
            .find(|r| r.tenant_id == tenant && r.module == module)
            .cloned()
            .unwrap()
    };
    let inv = row(&first, 1, "inventory");
    assert_eq!((inv.calls, inv.tokens, inv.row_count), (3, 60, 3));
    assert_eq!(
        inv.cost,
        Decimal::from_str("0.3").unwrap(),
        "exact, not 0.30000000000000004"
    );
    assert_eq!(
        row(&first, 2, "inventory").cost,
        Decimal::from_str("9456.654321").unwrap()
    );
    // September and November are other months.
    t.store
        .cost_aggregate(parse_month("2026-09").unwrap())
        .await
        .unwrap();
    let sep = t
        .store
        .monthly_costs(&CostFilter::month(parse_month("2026-09")))
        .await
        .unwrap();
    assert_eq!(sep.len(), 1);
    assert_eq!(sep[0].cost, Decimal::from_str("0.000001").unwrap());

    // A re-run gives identical rows.
    t.store.cost_aggregate(oct).await.unwrap();
    assert_eq!(
        t.store
            .monthly_costs(&CostFilter::month(Some(oct)))
            .await
            .unwrap(),
        first
    );

    // A late log changes its month on the next run, and only its row.
    t.store
        .usage_record(&[usage(1, "inventory", "2026-10-20T00:00:00Z", 1, "0.05")])
        .await
        .unwrap();
    t.store.cost_aggregate(oct).await.unwrap();
    let second = t
        .store
        .monthly_costs(&CostFilter::month(Some(oct)))
        .await
        .unwrap();
    assert_eq!(
        row(&second, 1, "inventory").cost,
        Decimal::from_str("0.35").unwrap()
    );
    assert_eq!(row(&second, 1, "chatbot"), row(&first, 1, "chatbot"));

    // Bad usage is refused before it is stored.
    for bad in [
        usage(1, "inventory", "2026-10-20T00:00:00Z", 1, "-1"),
        usage(1, "inventory", "2026-10-20T00:00:00Z", 1, "0.0000001"),
        usage(1, "Bad Slug", "2026-10-20T00:00:00Z", 1, "1"),
    ] {
        assert!(t.store.usage_record(&[bad]).await.is_err());
    }
    t.cleanup().await;
}

#[test]
fn cost_aggregate_from_the_cli_refuses_a_bad_month() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"))
        .args(["cost", "aggregate", "--month", "2026-13"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("month `2026-13` is not YYYY-MM"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

// ---------------------------------------------------------------------------------------------
// Deprecation webhooks against a real receiver that fails 30% of requests.

#[derive(Default)]
struct Received {
    /// delivery id → tenant, for the 2xx answers.
    delivered: HashMap<String, TenantId>,
    answered_2xx: usize,
    failed_on_purpose: usize,
    bad_signatures: usize,
}

type ReceiverState = (Arc<HashMap<TenantId, String>>, Arc<Mutex<Received>>);

async fn receiver(secrets: HashMap<TenantId, String>) -> (String, Arc<Mutex<Received>>) {
    use axum::http::{HeaderMap, StatusCode};
    let received = Arc::new(Mutex::new(Received::default()));
    let state = (Arc::new(secrets), received.clone());
    let app = axum::Router::new()
        .route(
            "/hooks",
            axum::routing::post(
                |axum::extract::State((secrets, received)): axum::extract::State<ReceiverState>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let body_json: Value = serde_json::from_slice(&body).unwrap();
                    let tenant = body_json["tenant_id"].as_i64().unwrap();
                    let signature = headers
                        .get(webhook::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let id = headers
                        .get(webhook::DELIVERY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let mut r = received.lock().unwrap();
                    if !webhook::verify(
                        &secrets[&tenant],
                        &body,
                        signature,
                        chrono::Utc::now().timestamp(),
                    ) || body_json["delivery_id"] != json!(id)
                    {
                        r.bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    if fastrand::f64() < 0.3 {
                        r.failed_on_purpose += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    r.answered_2xx += 1;
                    r.delivered.insert(id, tenant);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/broken",
            axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "disk full") }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), received)
}

async fn deprecation_webhooks_reach_every_tenant_once_or_dead_letter_with_the_reason(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let engine = engine(&t, t.exports.clone());
    let tenants = journal_in_use(&t, &engine, 24).await;
    let secrets: HashMap<TenantId, String> = tenants
        .iter()
        .map(|id| (*id, format!("secret-of-{id}-{}", fastrand::u64(..))))
        .collect();
    let (base, received) = receiver(secrets.clone()).await;
    let broken = tenants[0];
    for id in &tenants {
        let path = if *id == broken { "broken" } else { "hooks" };
        t.store
            .tenant_set_webhook(
                *id,
                Some(&WebhookTarget {
                    url: format!("{base}/{path}"),
                    secret: secrets[id].clone(),
                }),
            )
            .await
            .unwrap();
    }
    let life = Lifecycle::new(engine.clone()).unwrap();
    // Some tenants turned it off already; one was suspended.
    let (off, suspended) = (tenants[1], tenants[2]);
    life.disable(off, "journal", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    t.store
        .tenant_module_move(&steward::store::domain::StatusChange {
            tenant_id: suspended,
            module: "journal",
            to: Suspended,
            from: Some(Enabled),
            reason: Some("unpaid"),
            actor: "billing",
            action: "module.suspend",
            provisioning: None,
            set_version: None,
            unchanged_since: None,
            catch_up: &[],
            tenant_seen: None,
        })
        .await
        .unwrap();

    let workers = Workers::start(&t, &engine);
    let (from, run) = life
        .set_maturity(
            "journal",
            Maturity::Deprecated,
            false,
            &Actor::master_admin("test"),
        )
        .await
        .unwrap();
    assert_eq!(from, Maturity::Ga);
    // Every tenant notified; the run then waits for the sunset date (2027-06-30).
    parked_at_sunset(&t, run.unwrap()).await;
    let (_, retire) = life
        .set_maturity(
            "journal",
            Maturity::Retired,
            true,
            &Actor::master_admin("test"),
        )
        .await
        .unwrap();
    wait_run(&t, retire.unwrap(), Duration::from_secs(120)).await;
    workers.stop().await;

    // Two events (deprecated, retired) per tenant: delivered exactly once by delivery id, or
    // dead-lettered with the last answer.
    let dead = t
        .store
        .jobs_list(&JobFilter {
            kind: Some("webhook_deliver".into()),
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    for job in &dead {
        let last = job.attempts.last().and_then(|a| a.error.clone()).unwrap();
        assert!(
            last.contains("answered"),
            "the reason is the last answer: {last}"
        );
    }
    // Every delivery carries its endpoint's host: the key of the per-host limits that
    // jobs/webhook_deliver.toml declares.
    let deliveries = t
        .store
        .jobs_list(&JobFilter {
            kind: Some("webhook_deliver".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2 * tenants.len(), "every tenant, twice");
    assert!(
        deliveries
            .iter()
            .all(|j| j.payload["host"] == json!("127.0.0.1")),
        "{:?}",
        deliveries
            .iter()
            .map(|j| &j.payload["host"])
            .collect::<Vec<_>>()
    );
    let limits = common::repo_kinds()
        .get("webhook_deliver")
        .unwrap()
        .limits
        .clone();
    assert_eq!(
        (
            limits.rate.as_ref().unwrap().key.as_deref(),
            limits.concurrency.as_ref().unwrap().key.as_deref()
        ),
        (Some("{host}"), Some("{host}"))
    );
    let broken_dead = dead
        .iter()
        .filter(|j| j.payload["tenant_id"] == json!(broken))
        .count();
    assert_eq!(
        broken_dead, 2,
        "the broken endpoint's deliveries are dead-lettered"
    );
    // The last answer's status and time, never its body (the endpoint's to keep).
    for job in dead
        .iter()
        .filter(|j| j.payload["tenant_id"] == json!(broken))
    {
        let last = job.attempts.last().unwrap().error.clone().unwrap();
        assert!(
            last.contains("500") && !last.contains("disk full"),
            "{last}"
        );
    }
    {
        let r = received.lock().unwrap();
        assert_eq!(r.bad_signatures, 0, "every signature verifies");
        assert!(
            r.failed_on_purpose > 0,
            "the receiver did fail some requests"
        );
        let dead_ids: HashSet<String> = dead
            .iter()
            .map(|j| j.payload["delivery_id"].as_str().unwrap().to_string())
            .collect();
        let delivered_ids: HashSet<&String> = r.delivered.keys().collect();
        for id in &tenants {
            for event_run in [run.unwrap(), retire.unwrap()] {
                let delivery = format!("run{event_run}-tenant{id}");
                assert!(
                    delivered_ids.contains(&delivery) ^ dead_ids.contains(&delivery),
                    "{delivery}: delivered once or dead-lettered, not both nor neither"
                );
            }
        }
        assert_eq!(r.delivered.len() + dead_ids.len(), 2 * tenants.len());
    }

    // RETIRED by policy: in use → SUSPENDED; turned off → DISABLED.
    let statuses: HashMap<TenantId, TenantModuleStatus> = t
        .store
        .module_tenants("journal")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.tenant_id, m.status))
        .collect();
    assert_eq!(statuses[&off], Disabled);
    assert_eq!(statuses[&suspended], Disabled);
    for id in &tenants[3..] {
        assert_eq!(statuses[id], Suspended, "tenant {id}");
    }
    t.cleanup().await;
}
