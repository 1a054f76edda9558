//! Enqueueing from SQL on PostgreSQL (`steward_enqueue`, `steward_enqueue_many`, migration
//! 0011), as any client in any language does it, here `psql` and Python's psycopg: 1,000 jobs
//! in one transaction that a worker then runs, a transaction that rolls back leaves no job, and
//! a unique key gives the existing job's id.

mod common;

use common::{Backend, fresh};
use std::process::Command;
use std::time::Duration;
use steward::types::JobState;

/// Run `sql` through `psql` in the test's schema; its output (tuples only).
fn psql(t: &common::TestStore, sql: &str) -> String {
    let schema = t.schema.as_deref().expect("a PostgreSQL schema");
    let output = Command::new("psql")
        .arg(&t.url)
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .expect("the SQL test needs psql (the PostgreSQL client)");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sql_client_enqueues_in_its_own_transaction() {
    let t = fresh(Backend::Postgres).await;
    // A transaction that rolls back enqueues nothing.
    psql(&t, "BEGIN; SELECT steward_enqueue('noop'); ROLLBACK;");
    assert_eq!(psql(&t, "SELECT count(*) FROM steward_jobs"), "0");

    // 1,000 jobs in one transaction, and a unique key held by a live job.
    let ids = psql(
        &t,
        "BEGIN; SELECT steward_enqueue('noop', tenant => 't' || (i % 7)) FROM generate_series(1, 1000) AS i; COMMIT;",
    );
    assert_eq!(ids.lines().count(), 1000);
    let first = psql(
        &t,
        "SELECT steward_enqueue('noop', unique_key => 'order-42')",
    );
    let again = psql(
        &t,
        "SELECT steward_enqueue('noop', unique_key => 'order-42')",
    );
    assert_eq!(first, again, "a held unique key gives the existing job");
    // Fair keys as the Rust client gives them: each tenant's jobs numbered on, one by one.
    assert_eq!(
        psql(
            &t,
            "SELECT count(*) || ' ' || (max(fair_key) - min(fair_key) + 1) FROM steward_jobs WHERE tenant = 't3'"
        ),
        "143 143"
    );
    // The batch form, as the Rust client calls it.
    let batch = psql(
        &t,
        "SELECT count(*) FROM steward_enqueue_many(ARRAY['noop','noop'], ARRAY['default','default'], \
         ARRAY['',''], ARRAY['{}','{}']::jsonb[], ARRAY[0,0]::int2[], ARRAY[3,3], ARRAY[1000,1000]::int8[], \
         ARRAY[NULL,NULL]::text[], ARRAY[NULL,NULL]::timestamptz[])",
    );
    assert_eq!(batch, "2");

    // A Python client (psycopg), in its own transactions: one rolled back, one committed.
    let python = std::env::var("STEWARD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs STEWARD_TEST_PYTHON, a python with psycopg (scripts/test.sh sets it)"
        )
    });
    let script = r#"
import sys, psycopg
url, schema = sys.argv[1], sys.argv[2]
with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
    rolled_back = conn.execute("SELECT steward_enqueue('sleep', '{\"ms\": 1}')").fetchone()[0]
    conn.rollback()
    committed = conn.execute("SELECT steward_enqueue('sleep', '{\"ms\": 1}')").fetchone()[0]
    conn.commit()
print(rolled_back, committed)
"#;
    let output = Command::new(&python)
        .args(["-c", script, &t.url, t.schema.as_deref().unwrap()])
        .output()
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<i64> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(
        t.store.job_get(ids[0]).await.unwrap().is_none(),
        "the rolled-back job exists"
    );
    let committed = t
        .store
        .job_get(ids[1])
        .await
        .unwrap()
        .expect("the committed job");
    assert_eq!(committed.payload, serde_json::json!({"ms": 1}));

    // A worker runs every one of them.
    let workers = common::builtin_workers(&t, "sql-enqueue");
    t.wait_for_counts(
        Duration::from_secs(60),
        "every SQL-enqueued job done",
        |n| n(JobState::Completed) == 1004,
    )
    .await;
    workers.stop().await;

    // A runtime publishes the kinds' defaults when it starts: from then on a kind enqueued
    // from SQL without a queue gets its declared queue, attempts and timeout (`ledger` is
    // declared in queue `ledger`), as the Rust client gives them; what the caller names wins.
    let kinds = common::repo_kinds();
    let ledger = kinds.get("ledger").expect("the ledger kind");
    let declared = format!(
        "{} {} {}",
        ledger.queue,
        ledger.max_attempts,
        ledger.timeout.as_millis()
    );
    let of = |id: String| {
        format!(
            "SELECT queue || ' ' || max_attempts || ' ' || timeout_ms FROM steward_jobs WHERE id = {id}"
        )
    };
    let id = psql(&t, "SELECT steward_enqueue('ledger', '{\"ms\": 0}')");
    assert_eq!(psql(&t, &of(id)), declared);
    assert_ne!(ledger.queue, "default");
    let id = psql(
        &t,
        "SELECT steward_enqueue('ledger', '{}', queue => 'elsewhere', max_attempts => 2)",
    );
    assert!(psql(&t, &of(id)).starts_with("elsewhere 2 "));
    let queues = psql(
        &t,
        "SELECT string_agg(queue, ',' ORDER BY id) FROM steward_enqueue_kinds(\
         ARRAY['ledger', 'no_such_kind'], ARRAY['{}', '{}']::jsonb[])",
    );
    assert_eq!(queues, format!("{},default", ledger.queue));
    t.cleanup().await;
}
