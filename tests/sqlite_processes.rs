//! Two processes on one SQLite file, as README says works: `steward serve` takes 800 settings
//! PATCHes while `steward worker` drains 20,000 jobs. SQLite has one writer across processes:
//! every write transaction begins IMMEDIATE and waits its turn (busy timeout), so no request
//! fails with "database is locked".

mod common;

use common::lifecycle::*;
use common::{Backend, fresh};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steward::api::auth::{AuthKeys, Role};
use steward::types::JobState;
use steward::{Client, EnqueueOptions};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn steward(args: &[&str], url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("STEWARD_JWT_SECRET", SECRET)
        .env(
            "STEWARD_JOBS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/jobs"),
        )
        .env(
            "STEWARD_WORKFLOWS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"),
        )
        .env(
            "STEWARD_CATALOG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/catalog"),
        )
        .env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn steward")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_a_worker_share_one_sqlite_file_without_locked_errors() {
    let t = fresh(Backend::Sqlite).await;
    let (tenant, _) = stock_in_use(&t).await;
    let noop = Client::new(t.store.clone(), common::repo_kinds())
        .build("noop", json!({}), EnqueueOptions::default())
        .unwrap();
    let jobs = vec![noop; 20_000];
    for chunk in jobs.chunks(5_000) {
        t.store.jobs_insert_many(chunk).await.unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut api = steward(&["serve", "--listen", &listen], &t.url);
    let mut worker = steward(&["worker", "--queue", "default"], &t.url);
    let token = AuthKeys::new(SECRET)
        .unwrap()
        .mint("test", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "steward serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed = || async {
        t.store
            .jobs_count_by_state()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.state == JobState::Completed)
            .map(|c| c.count)
            .sum::<i64>()
    };
    // The PATCHes begin once the worker is draining.
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed().await == 0 {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done_before = completed().await;
    let mut statuses = std::collections::BTreeMap::new();
    let mut server_errors = Vec::new();
    for i in 0..800 {
        let response = http
            .patch(format!("{base}/api/tenant/{tenant}/modules/stock"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(json!({"settings": {"n": i}}).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        if status >= 500 {
            server_errors.push(response.text().await.unwrap());
        }
    }
    // The worker was draining meanwhile (the two processes wrote the file at the same time).
    let done_after = completed().await;
    assert!(
        done_before < 20_000 && done_after > done_before,
        "no overlap: {done_before} jobs done before the PATCHes, {done_after} after"
    );
    // Wait for the rest.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = t.store.jobs_count_by_state().await.unwrap();
        let done: i64 = counts
            .iter()
            .filter(|c| c.state == JobState::Completed)
            .map(|c| c.count)
            .sum();
        if done >= 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in [&mut api, &mut worker] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        server_errors.is_empty(),
        "{} of 800 PATCHes failed ({statuses:?}): {:?}",
        server_errors.len(),
        server_errors.first()
    );
    assert_eq!(statuses.get(&200), Some(&800), "{statuses:?}");
    let settings = t.store.settings_get(tenant, "stock").await.unwrap();
    assert_eq!(settings, json!({"n": 799}));
    t.cleanup().await;
}
