//! The dashboard in a real headless Chromium (through chromedriver): log in with a token,
//! see the overview (its screenshot is written to the test's target directory), find the
//! dead job in the dead-letter view, click Retry, and watch the job complete; then a tenant
//! admin logs in and lands on their own tenant's page.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::{Backend, fresh};
use serde_json::json;
use std::time::{Duration, Instant};
use steward::api::auth::{AuthKeys, Role};
use steward::types::{JobState, NewJob};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-dashboard-secret-of-32-bytes-or-more";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_dead_job_from_the_dashboard() {
    let t = fresh(Backend::Postgres).await;
    // Work for the overview's counts and chart, and a job that dies on its first attempt
    // and succeeds on its second (the outage is over when the operator retries).
    let mut jobs: Vec<NewJob> = (0..30)
        .map(|i| NewJob {
            tenant: format!("{}", i % 3 + 1),
            ..common::new_job("noop", "default")
        })
        .collect();
    jobs.push(NewJob {
        tenant: "1".into(),
        payload: json!({"message": "the CRM was down", "fatal": true, "succeed_on_attempt": 2}),
        max_attempts: 1,
        ..common::new_job("fail", "default")
    });
    let ids = t.store.jobs_insert_many(&jobs).await.unwrap();
    let dead = ids.last().unwrap().id;

    let workers = common::builtin_workers(&t, "dashboard-test");
    let stop = CancellationToken::new();
    t.wait_for_counts(Duration::from_secs(30), "30 done, 1 dead", |count| {
        count(JobState::Completed) == 30 && count(JobState::Dead) == 1
    })
    .await;

    let keys = AuthKeys::new(SECRET).unwrap();
    let engine = common::repo_engine(&t, t.exports.clone());
    let base = common::serve_http(&t, engine, keys.clone(), &stop).await;

    // Without a token the dashboard sends the browser to the login page.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http.get(format!("{base}/dashboard")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/dashboard/login");

    let browser = webdriver::Browser::start().await;
    browser.goto(&format!("{base}/dashboard/dead")).await;
    assert!(browser.url().await.ends_with("/dashboard/login"));
    // A bad token is refused on the login page.
    browser.type_into("#token", "not-a-token").await;
    browser.submit("#login").await;
    browser.wait_for("p.error").await;
    assert!(browser.text("p.error").await.contains("not valid"));
    assert!(browser.url().await.ends_with("/dashboard/login"));
    let token = keys
        .mint("ops", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    browser.log_in(&token, "#totals").await;

    // The overview: counts per state and the throughput chart.
    assert!(browser.url().await.ends_with("/dashboard"));
    assert_eq!(browser.text("#count-dead b").await, "1");
    assert_eq!(browser.text("#count-completed b").await, "30");
    browser.find("#throughput rect").await;
    browser.shot("overview-dead-job").await;

    // The dead-letter view lists the dead job with its error. A bulk action asks first,
    // saying how many jobs it matches; cancelled, nothing changed.
    browser.submit("a[href='/dashboard/dead']").await;
    browser.wait_for("#bulk-retry").await;
    let row = format!("#job-{dead}");
    assert!(browser.text(&row).await.contains("the CRM was down"));
    browser.click("#bulk-discard").await;
    browser.wait_for("#confirm-discard").await;
    assert!(
        browser
            .text("#confirm-what")
            .await
            .contains("Discard 1 dead job(s)"),
        "{}",
        browser.text("#confirm-what").await
    );
    browser.click("#cancel").await;
    browser.wait_for(&row).await;
    assert_eq!(
        t.store.job_get(dead).await.unwrap().unwrap().state,
        JobState::Dead
    );
    // Retry the one job: its page says what was done.
    browser.submit(&format!("{row} button.primary")).await;
    browser.wait_for("#job-state").await;
    assert!(
        browser
            .url()
            .await
            .contains(&format!("/dashboard/jobs/{dead}?done=retry"))
    );
    assert_eq!(browser.text("#notice").await, "retried 1 job(s)");
    // The worker picks it up: the job page shows it completed (reloaded until it does).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if browser.text("#job-state").await == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried job did not complete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.refresh().await;
    }
    let job = t.store.job_get(dead).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts.len(), 2, "the failed attempt and the retry");
    browser.find("#attempts").await;
    assert!(browser.text("#attempts").await.contains("the CRM was down"));

    // A tenant admin lands on their own tenant's page (the overview covers every tenant):
    // its modules and its jobs, the retried one among them.
    let tenant = t
        .store
        .tenant_create(&steward::store::domain::NewTenant {
            slug: "acme".into(),
            name: "Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tenant.id, 1, "the jobs above name tenant 1");
    browser.submit("header button").await;
    browser.wait_for("#token").await;
    let tenant_token = keys
        .mint(
            "acme-admin",
            Role::TenantAdmin,
            Some(1),
            chrono::Duration::hours(1),
        )
        .unwrap();
    browser.log_in(&tenant_token, "#modules").await;
    assert!(browser.url().await.ends_with("/dashboard/tenant/1"));
    assert!(browser.text("#tenant").await.contains("Acme"));
    assert!(browser.text("#modules").await.contains("no module yet"));
    assert!(
        browser.text("#jobs").await.contains(&dead.to_string()),
        "the tenant's jobs are listed"
    );
    browser.shot("tenant-admin-landing").await;
    // Another tenant's page is not theirs.
    let other = http
        .get(format!("{base}/dashboard/tenant/2"))
        .header("cookie", format!("steward_token={tenant_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    browser.close().await;

    stop.cancel();
    workers.stop().await;
    t.cleanup().await;
}
