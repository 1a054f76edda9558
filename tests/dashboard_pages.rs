//! Every page of the dashboard in a real headless Chromium, as an operator walks through it:
//! the overview updating itself without a reload, queues and a queue paused and resumed from
//! its page, job search by payload text, a job, the dead-letter queue with a confirmed bulk
//! retry, workers, runs, a run's step graph with its outputs, a run cancelled from its page,
//! the modules area with an approval, the audit log and the schedules. Each page is
//! screenshotted under `target/` and what it shows is asserted.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::lifecycle::{
    life, module, publish, publish_next, status, tenant, workers as workflow_workers,
};
use common::{Backend, fresh};
use serde_json::json;
use std::time::{Duration, Instant};
use steward::api::auth::{AuthKeys, Role};
use steward::domain::actor::Actor;
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus;
use steward::store::runs::RunState;
use steward::types::{JobState, NewJob};
use tokio_util::sync::CancellationToken;
use webdriver::Browser;

const SECRET: &str = "a-dashboard-secret-of-32-bytes-or-more";

/// Reload until `css`'s text satisfies `check` (for pages without live parts).
async fn until_text(browser: &Browser, css: &str, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // (After a click or a reload, the page may not have its element yet.)
        browser.wait_for(css).await;
        let text = browser.text(css).await;
        if check(&text) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: `{css}` shows {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.refresh().await;
    }
}

/// Mark the page open in the browser: the mark survives the page's live updates, not a
/// reload (see [`until_live`]).
async fn mark(browser: &Browser) {
    browser
        .execute("window.stewardMarker = true; return null;")
        .await;
}

/// Wait (up to 30 s) until `css`'s text satisfies `check` on the page [`mark`]ed before: it
/// updated itself, without a reload.
async fn until_live(browser: &Browser, css: &str, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = browser.text(css).await;
        if check(&text) {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: `{css}` shows {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        browser
            .execute("return window.stewardMarker === true;")
            .await,
        json!(true),
        "{what}: the page was reloaded instead of updated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_walks_through_every_page() {
    let t = fresh(Backend::Postgres).await;
    // A module that needs approval, requested by an internal tester.
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    let acme = tenant(&t, "acme", true, false).await;
    let requested = life(&t)
        .request(acme, "chatbot", &Actor::tenant_admin("user:ana"))
        .await
        .unwrap();
    assert_eq!(requested.module.status, TenantModuleStatus::PendingApproval);
    publish(&t, &module("pilot", Maturity::Alpha, &[])).await;
    life(&t)
        .request(acme, "pilot", &Actor::tenant_admin("user:ana"))
        .await
        .unwrap();
    // Jobs: some that complete, and one that dies on its first attempt and succeeds on its
    // second (the outage is over when the operator retries).
    let mut jobs: Vec<NewJob> = (0..10)
        .map(|_| common::new_job("noop", "default"))
        .collect();
    jobs.push(NewJob {
        tenant: acme.to_string(),
        payload: json!({"message": "the CRM was down", "fatal": true, "succeed_on_attempt": 2}),
        max_attempts: 1,
        ..common::new_job("fail", "default")
    });
    let dead = t
        .store
        .jobs_insert_many(&jobs)
        .await
        .unwrap()
        .last()
        .unwrap()
        .id;
    let builtin = common::builtin_workers(&t, "pages-builtin");
    let workflow = workflow_workers(&t);
    t.wait_for_counts(Duration::from_secs(30), "10 done, 1 dead", |n| {
        n(JobState::Completed) >= 10 && n(JobState::Dead) == 1
    })
    .await;
    // A run that completes (its steps' outputs are on its page).
    let engine = common::repo_engine(&t, t.exports.clone());
    let (done_run, _) = engine
        .start("demo_pipeline", json!({}), None)
        .await
        .unwrap();
    // A saga whose last step fails: its two ledger steps are undone.
    let (saga_run, _) = engine.start("demo_saga", json!({}), None).await.unwrap();

    let keys = AuthKeys::new(SECRET).unwrap();
    let stop = CancellationToken::new();
    let base = common::serve_http(&t, engine.clone(), keys.clone(), &stop).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/dashboard/login")).await;
    let token = keys
        .mint("ops", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    browser.log_in(&token, "#totals").await;

    // Overview: it updates itself. A marker set in the page survives (no reload) while the
    // completed count grows with new jobs.
    let before: i64 = browser.text("#count-completed b").await.parse().unwrap();
    mark(&browser).await;
    let more: Vec<NewJob> = (0..5).map(|_| common::new_job("noop", "default")).collect();
    t.store.jobs_insert_many(&more).await.unwrap();
    until_live(
        &browser,
        "#count-completed b",
        "the overview counts the new jobs",
        |now| now.parse::<i64>().is_ok_and(|now| now >= before + 5),
    )
    .await;
    assert!(browser.text("#queues").await.contains("default"));
    browser.find("#failures rect").await;
    browser.shot("overview").await;

    // Queues, then the workflows queue paused from its page.
    browser.submit("header a[href='/dashboard/queues']").await;
    browser.wait_for("#queue-workflows").await;
    assert!(browser.text("#queue-default").await.contains("active"));
    browser.shot("queues").await;
    browser.submit("#queue-workflows a").await;
    browser.wait_for("#queue-state").await;
    browser.submit("#queue-state button.danger").await;
    browser.wait_for("#notice").await;
    let notice = browser.text("#notice").await;
    assert!(
        notice.starts_with("paused queue workflows: applied by 2 live worker(s)"),
        "{notice}"
    );
    assert!(
        browser
            .text("#queue-state")
            .await
            .contains("paused by api:ops")
    );
    browser.shot("queue-paused").await;

    // While it is paused, a run waits at its first step: cancelled from its page.
    let (cancelled, _) = engine
        .start("demo_pipeline", json!({}), None)
        .await
        .unwrap();
    browser
        .goto(&format!("{base}/dashboard/runs/{cancelled}"))
        .await;
    browser.wait_for("#graph").await;
    assert!(browser.text("#run-state").await.contains("running"));
    browser.submit("#run-live button.danger").await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "cancelled the run");
    until_text(&browser, "#run-state", "the run is cancelled", |s| {
        s == "cancelled"
    })
    .await;
    let run = t.store.run_get(cancelled).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Cancelled);
    browser.shot("run-cancelled").await;

    // A running run's page updates itself: another run, cancelled elsewhere (by the API, say)
    // while its page is open, shows `cancelled` without a reload.
    let (elsewhere, _) = engine
        .start("demo_pipeline", json!({}), None)
        .await
        .unwrap();
    browser
        .goto(&format!("{base}/dashboard/runs/{elsewhere}"))
        .await;
    browser.wait_for("#graph").await;
    assert!(browser.text("#run-state").await.contains("running"));
    mark(&browser).await;
    steward::lifecycle::operator::Operator::new(engine.clone())
        .cancel_run(elsewhere, &Actor::master_admin("ops"))
        .await
        .unwrap();
    until_live(
        &browser,
        "#run-state",
        "the run page shows the cancel",
        |s| s == "cancelled",
    )
    .await;

    // Resume the queue from its page.
    browser
        .goto(&format!("{base}/dashboard/queues/workflows"))
        .await;
    browser.submit("#queue-state button.primary").await;
    browser.wait_for("#notice").await;
    assert!(
        browser
            .text("#notice")
            .await
            .starts_with("resumed queue workflows")
    );
    assert!(browser.text("#queue-state").await.contains("active"));
    // The queue's latency (age of its oldest waiting job) and concurrency in use.
    assert!(browser.text("#latency").await.starts_with("oldest waiting"));
    // Its depth by state, each a link to those jobs.
    let depth = browser.text("#depth").await;
    assert!(
        depth.contains("available") && depth.contains("completed"),
        "{depth}"
    );
    let in_use = browser.text("#in-use").await;
    let concurrency: u32 = in_use
        .rsplit(" / ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(concurrency > 0, "the workers' concurrency: {in_use}");
    browser.find("#charts #throughput rect").await;
    browser.shot("queue-resumed").await;

    // Runs, and the completed run's step graph with each step's output.
    browser.submit("header a[href='/dashboard/runs']").await;
    browser.wait_for(&format!("#run-{done_run}")).await;
    until_text(
        &browser,
        &format!("#run-{done_run}"),
        "the run completes",
        |s| s.contains("completed"),
    )
    .await;
    assert!(browser.text("#total").await.contains("runs · showing"));
    browser.shot("runs").await;
    // The list updates itself: a run started meanwhile appears without a reload.
    mark(&browser).await;
    let (started, _) = engine
        .start("demo_pipeline", json!({}), None)
        .await
        .unwrap();
    until_live(
        &browser,
        &format!("#run-{started}"),
        "the runs list shows the new run",
        |row| row.contains("demo_pipeline"),
    )
    .await;
    browser.submit(&format!("#run-{done_run} a")).await;
    browser.wait_for("#graph").await;
    let graph = browser.text("#graph").await;
    for step in ["extract", "transform", "load"] {
        assert!(graph.contains(step), "{graph}");
    }
    assert!(
        browser.text("#output-0").await.contains('{'),
        "step 0 has an output"
    );
    // Each step's input: the run's parameters for the first, the output of the step before
    // for the next ones.
    assert!(
        browser.text("#step-0 pre.input").await.contains("tenant-0"),
        "the first step reads the run's parameters"
    );
    assert_eq!(
        browser.text("#step-1 pre.input").await,
        browser.text("#output-0").await,
        "the second step reads the first one's output"
    );
    // Each step's attempts and timing.
    let step = browser.text("#step-0").await;
    assert!(step.contains("1 of ") && step.contains("took"), "{step}");
    browser.shot("run-graph").await;

    // The saga's page: each undo is its own node, with its own job and timing.
    // (This test's two runtimes share one election: when the built-in one leads, the run
    // sweeper of the workflow runtime is idle, so its rounds are run from here.)
    let sweeper = steward::workflow::RunSweeper {
        engine: engine.clone(),
        every: Duration::from_millis(50),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let saga = t.store.run_get(saga_run).await.unwrap().unwrap();
        if saga.state == RunState::Failed {
            break;
        }
        steward::maintenance::Service::run_once(&sweeper, &t.store)
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "the saga did not fail: {saga:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .goto(&format!("{base}/dashboard/runs/{saga_run}"))
        .await;
    until_text(&browser, "#run-state", "the saga fails", |s| s == "failed").await;
    let undo = browser.text("#compensation").await;
    assert!(
        undo.contains("undo charge") && undo.contains("undo reserve"),
        "{undo}"
    );
    assert_eq!(undo.matches("compensated").count(), 2, "{undo}");
    let saga = t.store.run_get(saga_run).await.unwrap().unwrap();
    let reserve = saga.steps[0].compensation.as_ref().expect("reserve undone");
    let row = browser.text("#step-0 tr.undo").await;
    assert!(row.contains(&reserve.job_id.to_string()), "{row}");
    assert_ne!(Some(reserve.job_id), saga.steps[0].job_id);
    browser.shot("run-compensated").await;
    // Retried from its page: the failed step gets a new job.
    browser.submit("#run-live button.primary").await;
    browser.wait_for("#notice").await;
    assert_eq!(
        browser.text("#notice").await,
        "retried: the run goes on from its failed step"
    );
    let retried = t.store.run_get(saga_run).await.unwrap().unwrap();
    assert!(
        retried.state != RunState::Failed || retried.steps[2].job_id != saga.steps[2].job_id,
        "the retry did nothing: {retried:?}"
    );
    assert!(
        retried.steps[0].job_id != saga.steps[0].job_id,
        "{retried:?}"
    );

    // The jobs list updates itself too, and pages both ways (50 a page, newest first).
    browser.submit("header a[href='/dashboard/jobs']").await;
    browser.wait_for("#filter-q").await;
    let before = browser.text("#total").await;
    mark(&browser).await;
    let many: Vec<NewJob> = (0..50)
        .map(|_| common::new_job("noop", "default"))
        .collect();
    t.store.jobs_insert_many(&many).await.unwrap();
    until_live(
        &browser,
        "#total",
        "the jobs list counts the new jobs",
        |s| s != before,
    )
    .await;
    browser.goto(&format!("{base}/dashboard/jobs")).await;
    browser.submit("#older").await;
    browser.wait_for("#newer").await;
    let older_page = browser.text("#results").await;
    assert!(
        older_page.contains(&format!("{dead}")),
        "the oldest jobs are on page 2"
    );
    browser.submit("#newer").await;
    browser.wait_for("#older").await;

    // Job search by text in the payload finds the dead job, and only it.
    browser.wait_for("#filter-q").await;
    browser.type_into("#filter-q", "crm WAS down").await;
    browser.submit("#search").await;
    // (The page before the search lists the dead job too: wait for the search's answer.)
    until_text(&browser, "#total", "the search found one job", |t| {
        t.starts_with("1 matching")
    })
    .await;
    browser.wait_for(&format!("#job-{dead}")).await;
    browser.shot("jobs-search").await;
    browser.submit(&format!("#job-{dead} a")).await;
    browser.wait_for("#job-state").await;
    assert_eq!(browser.text("#job-state").await, "dead");
    browser.shot("job").await;

    // Dead letters, filtered by kind (the saga's dead step jobs are there too): a bulk retry
    // of the matching ones, confirmed; the job completes on its second attempt.
    browser.submit("header a[href='/dashboard/dead']").await;
    browser.wait_for("#bulk-retry").await;
    let dead_letters = browser.text("#results").await;
    assert!(dead_letters.contains("workflow_step"), "{dead_letters}");
    browser
        .goto(&format!("{base}/dashboard/dead?kind=fail"))
        .await;
    browser.wait_for("#bulk-retry").await;
    browser.click("#bulk-retry").await;
    browser.wait_for("#confirm-retry").await;
    assert!(
        browser
            .text("#confirm-what")
            .await
            .starts_with("Retry 1 dead job(s)")
    );
    browser.shot("dead-confirm").await;
    browser.submit("#confirm-retry").await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "retried 1 job(s)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.store.job_get(dead).await.unwrap().unwrap().state != JobState::Completed {
        assert!(
            Instant::now() < deadline,
            "the retried job did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        t.store.job_get(dead).await.unwrap().unwrap().state,
        JobState::Completed
    );

    // Workers: both runtimes of this test, alive.
    browser.submit("header a[href='/dashboard/workers']").await;
    browser.wait_for("#worker-pages-builtin").await;
    assert!(
        browser
            .text("#worker-pages-builtin")
            .await
            .contains("active")
    );
    let row = browser.text("#worker-pages-builtin").await;
    assert!(row.contains("default ("), "its queues: {row}");
    // Its jobs in hand (a number) and its last heartbeat (a time of today).
    let in_hand = browser
        .text("#worker-pages-builtin td:nth-of-type(6)")
        .await;
    assert!(in_hand.parse::<u64>().is_ok(), "jobs in hand: {in_hand:?}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(row.contains(&today), "its heartbeat: {row}");
    browser.shot("workers").await;

    // Modules: the catalog, and the approval queue; approving starts provisioning.
    browser.submit("header a[href='/dashboard/modules']").await;
    browser.wait_for("#catalog-chatbot").await;
    assert!(browser.text("#catalog-chatbot").await.contains("ALPHA"));
    let approval = format!("#approval-{acme}-chatbot");
    assert!(browser.text(&approval).await.contains("chatbot"));
    browser.shot("modules").await;
    browser.submit(&format!("{approval} button.primary")).await;
    browser.wait_for("#notice").await;
    assert!(browser.text("#notice").await.starts_with("approved"));
    let waiting = browser.text("#approvals").await;
    assert!(
        !waiting.contains("chatbot") && waiting.contains("pilot"),
        "{waiting}"
    );
    assert!(
        browser
            .text("#module-tenants")
            .await
            .contains(&acme.to_string())
    );
    browser.shot("approvals").await;
    // The other request is rejected with a reason.
    let pilot = format!("#approval-{acme}-pilot");
    browser
        .type_into(&format!("{pilot} input[name=reason]"), "not for this plan")
        .await;
    browser.submit(&format!("{pilot} button.danger")).await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "rejected");
    assert!(
        browser
            .text("#approvals")
            .await
            .contains("nothing waits for approval")
    );
    // Once provisioned, chatbot is suspended with a reason and resumed from its tenants' list.
    let row = format!("#tenant-module-{acme}");
    browser
        .goto(&format!("{base}/dashboard/modules?module=chatbot"))
        .await;
    until_text(&browser, &row, "chatbot is provisioned", |s| {
        s.contains("ENABLED")
    })
    .await;
    browser
        .type_into(&format!("{row} input[name=reason]"), "unpaid invoice")
        .await;
    browser.submit(&format!("{row} button.danger")).await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "suspended");
    assert!(browser.text(&row).await.contains("SUSPENDED"));
    browser.shot("module-suspended").await;
    browser.submit(&format!("{row} button.primary")).await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "resumed");
    assert!(browser.text(&row).await.contains("ENABLED"));
    assert_eq!(
        status(&t, acme, "pilot").await,
        Some(TenantModuleStatus::Disabled)
    );
    // The module's tenants show the version they are at.
    assert!(browser.text(&row).await.contains("1.0.0"));

    // A catalog upgrade from the module's row: asked first (it acts on every tenant), then
    // started; once it is done, rolled back from the same row, asked first too.
    publish_next(&t, "chatbot", "1.1.0").await;
    browser
        .goto(&format!("{base}/dashboard/modules?module=chatbot"))
        .await;
    browser.wait_for("#catalog-chatbot").await;
    browser.click("#catalog-chatbot button.primary").await;
    browser.wait_for("#confirm-upgrade").await;
    assert_eq!(
        browser.text("#confirm-what").await,
        "Upgrade chatbot to 1.1.0 for its 1 tenant(s) in use (1 in all; the others catch up \
         when they are turned back on)?"
    );
    browser.shot("upgrade-confirm").await;
    browser.submit("#confirm-upgrade").await;
    browser.wait_for("#notice").await;
    assert_eq!(
        browser.text("#notice").await,
        "upgrade started: its run is under Runs"
    );
    until_text(&browser, &row, "chatbot is upgraded", |s| {
        s.contains("UP_TO_DATE") && s.contains("1.1.0")
    })
    .await;
    browser.click("#catalog-chatbot button.danger").await;
    browser.wait_for("#confirm-rollback").await;
    assert!(
        browser
            .text("#confirm-what")
            .await
            .starts_with("Roll chatbot's last upgrade back")
    );
    browser.submit("#confirm-rollback").await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#notice").await, "rolled back");
    until_text(&browser, &row, "chatbot is back at 1.0.0", |s| {
        s.contains("ENABLED") && s.contains("rolled back from 1.1.0 to 1.0.0")
    })
    .await;
    browser.shot("rolled-back").await;

    // The audit log, filtered by module: the approval is there, with who made it.
    browser.submit("header a[href='/dashboard/audit']").await;
    browser.wait_for("#audit-module").await;
    browser.type_into("#audit-module", "chatbot").await;
    browser.submit("#audit-search").await;
    until_text(&browser, "#audit", "the approval is audited", |s| {
        s.contains("api:ops")
    })
    .await;
    assert!(
        !browser
            .text("#audit")
            .await
            .contains("no audit row matches")
    );
    // With its total (one page: no link either way).
    let total = browser.text("#total").await;
    assert!(
        total.contains(" rows · showing ") && total.contains("newest first"),
        "{total}"
    );
    browser.shot("audit").await;

    // Schedules.
    browser
        .submit("header a[href='/dashboard/schedules']")
        .await;
    browser.wait_for("#schedules").await;
    assert!(
        browser
            .text("#schedules")
            .await
            .contains("cost_aggregation")
    );
    browser.shot("schedules").await;

    // A tenant admin lands on their tenant's page, and the deployment-wide pages are not theirs.
    browser.submit("header button").await;
    browser.wait_for("#token").await;
    let tenant_token = keys
        .mint(
            "ana",
            Role::TenantAdmin,
            Some(acme),
            chrono::Duration::hours(1),
        )
        .unwrap();
    browser.log_in(&tenant_token, "#modules").await;
    assert!(
        browser
            .url()
            .await
            .ends_with(&format!("/dashboard/tenant/{acme}"))
    );
    assert!(browser.text("#modules").await.contains("chatbot"));
    browser.shot("tenant-admin").await;
    browser.goto(&format!("{base}/dashboard/queues")).await;
    browser.wait_for("#error").await;
    assert!(browser.text("#error").await.starts_with("forbidden"));
    browser.close().await;

    stop.cancel();
    builtin.stop().await;
    workflow.stop().await;
    t.cleanup().await;
}
