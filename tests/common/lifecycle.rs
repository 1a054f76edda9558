//! Helpers of the module-lifecycle tests (tests/lifecycle.rs, tests/integrity.rs): catalog
//! modules and versions, tenants, workers for the lifecycle workflows, and waiting on a
//! tenant module's status instead of sleeping.

use super::TestStore;
use std::sync::Arc;
use std::time::Duration;
use steward::domain::actor::Actor;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus::{self, *};
use steward::lifecycle::{Lifecycle, LifecycleError};
use steward::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use steward::store::domain::{ModuleRecord, NewTenant, NewVersion, TenantId};
use steward::workflow::{Engine, RunSweeper};
use tokio_util::sync::CancellationToken;

pub async fn table_exists(t: &TestStore, table: &str) -> bool {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_scalar::<_, bool>(
            "SELECT to_regclass(current_schema() || '.' || $1) IS NOT NULL",
        )
        .bind(table)
        .fetch_one(pg.pool())
        .await
        .unwrap(),
        (_, Some(sqlite)) => {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(table)
            .fetch_one(sqlite.pool())
            .await
            .unwrap()
                == 1
        }
        _ => unreachable!(),
    }
}

pub fn engine(t: &TestStore) -> Arc<Engine> {
    super::repo_engine(t, t.exports.clone())
}

pub fn life(t: &TestStore) -> Lifecycle {
    Lifecycle::new(engine(t)).expect("module_provision is defined")
}

/// Workers for the provisioning runs, until `stop`.
pub struct Workers {
    pub shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), steward::queue::RuntimeError>>,
}

pub fn workers(t: &TestStore) -> Workers {
    workers_with(t, t.exports.clone())
}

/// Workers whose steps export to `exports`.
pub fn workers_with(t: &TestStore, exports: steward::export::SharedExports) -> Workers {
    let engine = super::repo_engine(t, exports);
    let mut registry = Registry::new();
    engine.register_jobs(&mut registry);
    // (A runtime names each queue it works with a width; 8 runs a test's provisionings at once.)
    let mut config = RuntimeConfig::new(
        format!("lifecycle-{}", fastrand::u32(..)),
        vec![QueueConfig {
            name: "workflows".into(),
            concurrency: 8,
        }],
    );
    config.poll_interval = Duration::from_millis(50);
    let step_kind = super::repo_kinds()
        .get("workflow_step")
        .expect("jobs/workflow_step.toml")
        .clone();
    let runtime = Runtime::new(
        t.store.clone(),
        registry,
        super::kinds_of(&[step_kind]),
        config,
    )
    .unwrap()
    .with_service(Box::new(RunSweeper {
        engine,
        every: Duration::from_millis(50),
    }));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    Workers { shutdown, handle }
}

impl Workers {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// Wait until every listed tenant module has left PROVISIONING; their statuses.
pub async fn settled(t: &TestStore, tenants: &[TenantId], slug: &str) -> Vec<TenantModuleStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for tenant in tenants {
            statuses.push(status(t, *tenant, slug).await.expect("requested"));
        }
        if statuses.iter().all(|s| *s != Provisioning) {
            return statuses;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still provisioning: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn module(slug: &str, maturity: Maturity, dependencies: &[&str]) -> ModuleRecord {
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

/// A module whose version creates two tables, `tenant_<slug>_items` and `_notes`.
pub async fn publish(t: &TestStore, m: &ModuleRecord) {
    let tables = [
        format!("tenant_{}_items", m.slug),
        format!("tenant_{}_notes", m.slug),
    ];
    let up_sql = tables
        .iter()
        .map(|table| {
            format!(
                "CREATE TABLE {table} (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
                 body TEXT NOT NULL DEFAULT '', \
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (tenant_id, id));"
            )
        })
        .collect::<String>();
    publish_version(t, m, "1.0.0", &tables, &up_sql).await;
}

pub async fn publish_version(
    t: &TestStore,
    m: &ModuleRecord,
    version: &str,
    tables: &[String],
    up_sql: &str,
) {
    let numbers: Vec<i32> = version.split('.').map(|n| n.parse().unwrap()).collect();
    t.store.module_put(m, "catalog").await.unwrap();
    t.store
        .version_publish(
            &m.slug,
            &NewVersion {
                version: version.into(),
                major: numbers[0],
                minor: numbers[1],
                patch: numbers[2],
                build_hash: "abc".into(),
                changelog: "first".into(),
                up_sql: up_sql.into(),
                down_sql: tables.iter().map(|t| format!("DROP TABLE {t};")).collect(),
                pre_upgrade_sql: None,
                post_upgrade_sql: None,
                settings_schema: None,
                tables_created: tables.to_vec(),
            },
        )
        .await
        .unwrap();
}

pub async fn tenant(t: &TestStore, slug: &str, internal: bool, beta: bool) -> TenantId {
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

pub async fn status(t: &TestStore, tenant: TenantId, slug: &str) -> Option<TenantModuleStatus> {
    t.store
        .tenant_module_get(tenant, slug)
        .await
        .unwrap()
        .map(|m| m.status)
}

pub fn rule_code(err: LifecycleError) -> &'static str {
    match err {
        LifecycleError::Domain(rule) => rule.code(),
        other => panic!("expected a lifecycle rule to refuse, got {other:?}"),
    }
}

pub async fn column_exists(t: &TestStore, table: &str, column: &str) -> bool {
    let sql = match (&t.pg, &t.sqlite) {
        (Some(_), _) => {
            "SELECT count(*) FROM information_schema.columns \
                         WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
        }
        _ => "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
    };
    let count: i64 = match (&t.pg, &t.sqlite) {
        (Some(pg), _) => {
            sqlx::query_scalar(sql)
                .bind(table)
                .bind(column)
                .fetch_one(pg.pool())
                .await
        }
        (_, Some(sqlite)) => {
            sqlx::query_scalar(sql)
                .bind(table)
                .bind(column)
                .fetch_one(sqlite.pool())
                .await
        }
        _ => unreachable!(),
    }
    .unwrap();
    count == 1
}

pub async fn wait_for(
    t: &TestStore,
    tenants: &[TenantId],
    slug: &str,
    want: TenantModuleStatus,
) -> Vec<steward::store::domain::TenantModuleRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut records = Vec::new();
        for tenant in tenants {
            records.push(
                t.store
                    .tenant_module_get(*tenant, slug)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        if records.iter().all(|r| r.status == want) {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {want}: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn execute(t: &TestStore, sql: &str) {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => {
            sqlx::raw_sql(sql).execute(pg.pool()).await.unwrap();
        }
        (_, Some(sqlite)) => {
            sqlx::raw_sql(sql).execute(sqlite.pool()).await.unwrap();
        }
        _ => unreachable!(),
    }
}

pub async fn count(t: &TestStore, sql: &str) -> i64 {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await.unwrap(),
        (_, Some(sqlite)) => sqlx::query_scalar(sql)
            .fetch_one(sqlite.pool())
            .await
            .unwrap(),
        _ => unreachable!(),
    }
}

pub const STOCK_V1: &str = "CREATE TABLE tenant_stock_items (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
    sku TEXT NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);";

/// `stock` 1.0.0 enabled for two tenants, each with a row.
pub async fn stock_in_use(t: &TestStore) -> (TenantId, TenantId) {
    let stock = module("stock", Maturity::Ga, &[]);
    publish_version(t, &stock, "1.0.0", &["tenant_stock_items".into()], STOCK_V1).await;
    let a = tenant(t, "a", false, false).await;
    let b = tenant(t, "b", false, false).await;
    let life = life(t);
    life.request(a, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    life.request(b, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    let running = workers(t);
    wait_for(t, &[a, b], "stock", Enabled).await;
    running.stop().await;
    execute(
        t,
        &format!(
            "INSERT INTO tenant_stock_items (id, tenant_id, sku) VALUES (1, {a}, 'apple'), (2, {b}, 'pear')"
        ),
    )
    .await;
    (a, b)
}

pub async fn publish_upgrade(
    t: &TestStore,
    version: &str,
    tables: &[&str],
    up: &str,
    down: &str,
    post: Option<&str>,
) {
    let tables: Vec<String> = tables.iter().map(|s| s.to_string()).collect();
    publish_version_sql(t, "stock", version, &tables, up, down, post).await;
}

/// Publish `version` of `slug` with its SQL.
async fn publish_version_sql(
    t: &TestStore,
    slug: &str,
    version: &str,
    tables: &[String],
    up: &str,
    down: &str,
    post: Option<&str>,
) {
    let numbers: Vec<i32> = version.split('.').map(|n| n.parse().unwrap()).collect();
    t.store
        .version_publish(
            slug,
            &NewVersion {
                version: version.into(),
                major: numbers[0],
                minor: numbers[1],
                patch: numbers[2],
                build_hash: "h".into(),
                changelog: String::new(),
                up_sql: up.into(),
                down_sql: down.into(),
                pre_upgrade_sql: None,
                post_upgrade_sql: post.map(str::to_string),
                settings_schema: None,
                tables_created: tables.to_vec(),
            },
        )
        .await
        .unwrap();
}

pub async fn try_execute(t: &TestStore, sql: &str) -> Result<(), String> {
    let result = match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::raw_sql(sql).execute(pg.pool()).await.map(|_| ()),
        (_, Some(sqlite)) => sqlx::raw_sql(sql).execute(sqlite.pool()).await.map(|_| ()),
        _ => unreachable!(),
    };
    result.map_err(|e| e.to_string())
}

/// Publish `version` of `slug` after its 1.0.0: one more table.
pub async fn publish_next(t: &TestStore, slug: &str, version: &str) {
    let table = format!("tenant_{slug}_extra");
    let up = format!(
        "CREATE TABLE {table} (id BIGINT NOT NULL, tenant_id BIGINT NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);"
    );
    let down = format!("DROP TABLE {table};");
    publish_version_sql(t, slug, version, &[table], &up, &down, None).await;
}
