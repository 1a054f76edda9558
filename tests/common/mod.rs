//! Shared test set-up: a fresh store per test on a real PostgreSQL (its own schema) or a real
//! SQLite file, and waiting on database states instead of sleeping.
#![allow(dead_code)]

pub mod lifecycle;
pub mod process;

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use steward::kinds::{JobKind, KindCatalog};
use steward::store::postgres::PgStore;
use steward::store::sqlite::SqliteStore;
use steward::store::{JobStore, SharedStore};
use steward::types::{JobState, NewJob};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The PostgreSQL the tests use: `STEWARD_TEST_DATABASE_URL`, else the local default.
pub fn pg_url() -> String {
    std::env::var("STEWARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub struct TestStore {
    pub store: SharedStore,
    pub pg: Option<PgStore>,
    pub sqlite: Option<SqliteStore>,
    pub url: String,
    pub schema: Option<String>,
    /// A local export storage of this test's own.
    pub exports: steward::export::SharedExports,
    pub exports_dir: tempfile::TempDir,
    _dir: Option<tempfile::TempDir>,
}

/// Where this test process keeps what it never reads back (exports of tests that do not
/// export, a spawned process's exports): under `STEWARD_TEST_SCRATCH` (the test command's own
/// temporary directory, removed at its end), else the system's temporary directory; never in
/// the working tree.
pub fn scratch_dir() -> std::path::PathBuf {
    std::env::var_os("STEWARD_TEST_SCRATCH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("steward-test-exports-{}", std::process::id()))
}

/// An export storage for tests that never export (workflow and cron tests).
pub fn scratch_exports() -> steward::export::SharedExports {
    Arc::new(steward::export::local::LocalStorage::new(scratch_dir()))
}

fn local_exports() -> (tempfile::TempDir, steward::export::SharedExports) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exports: steward::export::SharedExports = Arc::new(
        steward::export::local::LocalStorage::new(dir.path().to_path_buf()),
    );
    (dir, exports)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub async fn fresh(backend: Backend) -> TestStore {
    match backend {
        Backend::Postgres => {
            // The test command drops every schema with its run's prefix at exit.
            let prefix = std::env::var("STEWARD_TEST_SCHEMA_PREFIX")
                .unwrap_or_else(|_| "steward_test".into());
            let schema = format!(
                "{prefix}_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                fastrand::u32(..)
            );
            let url = pg_url();
            let pg = PgStore::connect(&url, Some(&schema))
                .await
                .unwrap_or_else(|e| {
                    panic!("tests need PostgreSQL at {url} (set STEWARD_TEST_DATABASE_URL): {e}")
                });
            pg.migrate().await.expect("migrate postgres");
            let (exports_dir, exports) = local_exports();
            TestStore {
                exports,
                exports_dir,
                store: Arc::new(pg.clone()),
                pg: Some(pg),
                sqlite: None,
                url,
                schema: Some(schema),
                _dir: None,
            }
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("steward.db").display());
            let sqlite = SqliteStore::connect(&url).await.expect("open sqlite");
            sqlite.migrate().await.expect("migrate sqlite");
            let (exports_dir, exports) = local_exports();
            TestStore {
                exports,
                exports_dir,
                store: Arc::new(sqlite.clone()),
                pg: None,
                sqlite: Some(sqlite),
                url,
                schema: None,
                _dir: Some(dir),
            }
        }
    }
}

impl TestStore {
    pub async fn cleanup(self) {
        if let Some(pg) = &self.pg {
            pg.drop_schema().await.expect("drop schema");
        }
    }

    /// Wait (up to `limit`) until `check` holds on the job counts.
    pub async fn wait_for_counts(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&dyn Fn(JobState) -> i64) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let counts = self.store.jobs_count_by_state().await.expect("counts");
            let count = |state: JobState| {
                counts
                    .iter()
                    .filter(|c| c.state == state)
                    .map(|c| c.count)
                    .sum::<i64>()
            };
            if check(&count) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; counts: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn new_job(kind: &str, queue: &str) -> NewJob {
    NewJob {
        kind: kind.into(),
        queue: queue.into(),
        tenant: String::new(),
        payload: json!({}),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        unique_key: None,
        run_at: None,
    }
}

/// The repository's `jobs/` catalog.
/// A workflow engine on `store` whose only workflow is `definition` (TOML), with the repo's
/// kinds and every built-in step handler.
pub fn engine_of(store: SharedStore, definition: &str) -> Arc<steward::workflow::Engine> {
    let kinds = repo_kinds();
    let registry = steward::lifecycle::step_registry(scratch_exports());
    let def = steward::workflow::WorkflowCatalog::parse(
        std::path::Path::new("test.toml"),
        definition,
        &kinds,
        &|h| registry.contains(h),
    )
    .expect("valid");
    let mut catalog = steward::workflow::WorkflowCatalog::default();
    catalog.add(def).unwrap();
    steward::workflow::Engine::new(store, catalog, kinds, registry)
}

pub fn repo_kinds() -> KindCatalog {
    KindCatalog::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/jobs"
    )))
    .expect("jobs/ loads")
}

pub fn kinds_of(kinds: &[JobKind]) -> KindCatalog {
    let mut catalog = KindCatalog::default();
    for kind in kinds {
        catalog.add(kind.clone()).expect("unique kinds");
    }
    catalog
}

/// Generate one `#[tokio::test]` per backend for each listed async fn taking a [`Backend`].
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// The repository's job kinds that the built-in handlers serve (without the workflow step
/// kind, whose handler the workflow engine registers).
pub fn builtin_kinds() -> KindCatalog {
    let registry = steward::queue::builtin::registry();
    let kinds: Vec<JobKind> = repo_kinds()
        .iter()
        .filter(|k| registry.contains(&k.name))
        .cloned()
        .collect();
    kinds_of(&kinds)
}

/// The workflow engine of the repository's `workflows/` and `jobs/` over this test's store,
/// exporting to `exports`.
pub fn repo_engine(
    t: &TestStore,
    exports: steward::export::SharedExports,
) -> Arc<steward::workflow::Engine> {
    repo_engine_with(t, exports, &[])
}

/// [`repo_engine`] with more workflows (TOML definitions) beside the repository's.
pub fn repo_engine_with(
    t: &TestStore,
    exports: steward::export::SharedExports,
    extra: &[&str],
) -> Arc<steward::workflow::Engine> {
    let kinds = repo_kinds();
    let steps = steward::lifecycle::step_registry(exports);
    let mut workflows = steward::workflow::WorkflowCatalog::load_dir(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")),
        &kinds,
        &|h| steps.contains(h),
    )
    .expect("workflows/ loads");
    for definition in extra {
        let def = steward::workflow::WorkflowCatalog::parse(
            std::path::Path::new("extra.toml"),
            definition,
            &kinds,
            &|h| steps.contains(h),
        )
        .expect("a valid definition");
        workflows.add(def).unwrap();
    }
    steward::workflow::Engine::new(t.store.clone(), workflows, kinds, steps)
}

/// Worker runtime of the built-in handlers on the `default` queue, running until
/// [`Workers::stop`].
pub struct Workers {
    pub shutdown: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), steward::queue::RuntimeError>>,
}

/// Start workers for the built-in job kinds (`noop`, `fail`, …) on the `default` queue.
pub fn builtin_workers(t: &TestStore, worker_id: &str) -> Workers {
    use steward::queue::{QueueConfig, Runtime, RuntimeConfig};
    // (A runtime names each queue it works with a width; the built-in test jobs need few.)
    let mut config = RuntimeConfig::new(
        worker_id,
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 4,
        }],
    );
    config.poll_interval = Duration::from_millis(20);
    let runtime = Runtime::new(
        t.store.clone(),
        steward::queue::builtin::registry(),
        builtin_kinds(),
        config,
    )
    .expect("runtime");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    Workers { shutdown, handle }
}

impl Workers {
    /// Stop the workers gracefully and wait for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("runtime ran");
    }
}

/// Serve the API and the dashboard over `engine` on a loopback port until `stop` is cancelled:
/// the server's base URL.
pub async fn serve_http(
    t: &TestStore,
    engine: Arc<steward::workflow::Engine>,
    keys: steward::api::auth::AuthKeys,
    stop: &tokio_util::sync::CancellationToken,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    let state = steward::api::AppState::new(engine, t.exports.clone(), keys);
    let until = stop.clone();
    tokio::spawn(async move {
        steward::http::serve(listener, state, async move { until.cancelled().await }).await
    });
    base
}

/// Every job of `t` (up to 1,000), each checked to have completed at its first attempt: no
/// lease lost, nothing run twice.
pub async fn jobs_each_completed_once(t: &TestStore) -> Vec<steward::types::JobRecord> {
    let jobs = t
        .store
        .jobs_list(&steward::types::JobFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    for job in &jobs {
        assert_eq!(job.state, steward::types::JobState::Completed, "{job:?}");
        assert_eq!(
            job.attempt, 1,
            "job {} ({}) took more than one attempt: {:?}",
            job.id, job.kind, job.attempts
        );
    }
    jobs
}

/// A workflow of one step that writes in its transaction, then holds it (and, on SQLite, the
/// file's one writer) for `step_ms`: 15 s by default, longer than the default 10 s lease.
pub const HOLDING_WORKFLOW: &str = r#"
name = "holding"
[params]
step_ms = { default = 15000 }
[[steps]]
name = "hold"
handler = "ledger.append"
job = "workflow_step"
"#;
