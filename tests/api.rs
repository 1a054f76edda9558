//! The HTTP API on a real socket: authentication (no token, a bad signature, an expired token,
//! a tenant admin reaching another tenant: 401/403 and nothing changed), the operators'
//! actions, and bad input answered with a 4xx and a stable code.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use steward::api::AppState;
use steward::api::auth::{AuthKeys, Role};
use steward::domain::actor::Actor;
use steward::http::serve;
use steward::queue::{QueueConfig, Runtime, RuntimeConfig};
use steward::types::{JobId, JobState, NewJob};
use steward::workflow::Engine;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

struct Api {
    base: String,
    keys: AuthKeys,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Api {
    async fn start(t: &TestStore) -> Self {
        let keys = AuthKeys::new(SECRET).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let state = AppState::new(engine(t), t.exports.clone(), keys.clone());
        let until = stop.clone();
        tokio::spawn(async move {
            serve(listener, state, async move { until.cancelled().await }).await
        });
        Api {
            base,
            keys,
            http: reqwest::Client::new(),
            stop,
        }
    }

    fn token(&self, role: Role, tenant: Option<i64>) -> String {
        self.keys
            .mint("test", role, tenant, chrono::Duration::hours(1))
            .unwrap()
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(method, path, token, None).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        (status, body)
    }
}

/// The engine of the repository's `workflows/` over this test's store.
fn engine(t: &TestStore) -> Arc<Engine> {
    common::repo_engine(t, t.exports.clone())
}

/// One dead `fail` job for each tenant ("1" and "2").
async fn dead_jobs(t: &TestStore) -> (JobId, JobId) {
    let job = |tenant: &str| NewJob {
        tenant: tenant.into(),
        payload: json!({"fatal": true}),
        max_attempts: 1,
        ..common::new_job("fail", "default")
    };
    let ids = t
        .store
        .jobs_insert_many(&[job("1"), job("2")])
        .await
        .unwrap();
    let workers = common::builtin_workers(t, "api-test");
    t.wait_for_counts(Duration::from_secs(30), "two dead jobs", |count| {
        count(JobState::Dead) == 2
    })
    .await;
    workers.stop().await;
    (ids[0].id, ids[1].id)
}

async fn state_of(t: &TestStore, id: JobId) -> JobState {
    t.store.job_get(id).await.unwrap().unwrap().state
}

async fn only_the_right_callers_reach_the_api(backend: Backend) {
    let t = fresh(backend).await;
    let (mine, theirs) = dead_jobs(&t).await;
    let api = Api::start(&t).await;

    // Only /health is anonymous.
    let (status, body) = api.call("GET", "/health", None).await;
    assert_eq!((status, body["status"].clone()), (200, json!("ok")));
    // Every answer names its trace id (the caller's W3C one, else a new one), which the
    // log's lines of that request carry.
    let traced = |parent: Option<&'static str>| {
        let mut request = api.http.get(format!("{}/api/jobs", api.base));
        if let Some(parent) = parent {
            request = request.header("traceparent", parent);
        }
        request.send()
    };
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = traced(Some(parent)).await.unwrap();
    assert_eq!(
        answer.headers()["x-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let answer = traced(None).await.unwrap();
    let fresh_id = answer.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(
        fresh_id.len() == 32 && fresh_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh_id}"
    );
    let (status, body) = api.call("GET", "/api/jobs", None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("unauthenticated"))
    );

    // A bad signature and an expired token.
    let forged = AuthKeys::new("another-secret-of-at-least-32-bytes!")
        .unwrap()
        .mint("x", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let expired = api
        .keys
        .mint("x", Role::MasterAdmin, None, chrono::Duration::seconds(-10))
        .unwrap();
    for (token, why) in [
        (forged, "signature"),
        (expired, "expired"),
        ("garbage".into(), "not valid"),
    ] {
        let (status, body) = api
            .call("POST", &format!("/api/jobs/{theirs}/retry"), Some(&token))
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["code"], json!("unauthenticated"));
        assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    }
    assert_eq!(
        state_of(&t, theirs).await,
        JobState::Dead,
        "nothing changed"
    );

    // A tenant admin reaching another tenant.
    let tenant_one = api.token(Role::TenantAdmin, Some(1));
    for (method, path) in [
        ("POST", format!("/api/jobs/{theirs}/retry")),
        ("POST", format!("/api/jobs/{theirs}/discard")),
        ("GET", format!("/api/jobs/{theirs}")),
        ("GET", "/api/jobs?tenant=2".to_string()),
    ] {
        let (status, body) = api.call(method, &path, Some(&tenant_one)).await;
        assert_eq!(
            (status, body["code"].clone()),
            (403, json!("forbidden")),
            "{path}"
        );
    }
    assert_eq!(
        state_of(&t, theirs).await,
        JobState::Dead,
        "nothing changed"
    );
    // … sees only its own jobs, and may retry them.
    let (status, body) = api.call("GET", "/api/jobs", Some(&tenant_one)).await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![mine]);
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/jobs/{mine}/retry"),
            Some(&tenant_one),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(state_of(&t, mine).await, JobState::Available);

    // The platform's service token reads but does not operate; a master admin does.
    let service = api.token(Role::Service, None);
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/jobs/{theirs}/discard"),
            Some(&service),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = api
        .call("GET", &format!("/api/jobs/{theirs}"), Some(&service))
        .await;
    assert_eq!((status, body["state"].clone()), (200, json!("dead")));
    let master = api.token(Role::MasterAdmin, None);
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/jobs/{theirs}/discard"),
            Some(&master),
        )
        .await;
    assert_eq!((status, body["affected"].clone()), (200, json!(1)));
    assert_eq!(state_of(&t, theirs).await, JobState::Cancelled);
    // Discarding it again does not apply.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/jobs/{theirs}/discard"),
            Some(&master),
        )
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (409, json!("not_applicable"))
    );

    // Bad input: a 4xx with a stable code, never a 5xx.
    for (path, want, code) in [
        ("/api/jobs?state=bogus", 400, "invalid_input"),
        ("/api/jobs?limit=0", 400, "invalid_input"),
        ("/api/jobs?limit=abc", 400, "invalid_input"),
        ("/api/jobs?color=red", 400, "invalid_input"),
        ("/api/jobs/abc", 400, "invalid_input"),
        ("/api/jobs/999999999", 404, "not_found"),
        ("/api/nothing", 404, "not_found"),
    ] {
        let (status, body) = api.call("GET", path, Some(&master)).await;
        assert_eq!(
            (status, body["code"].clone()),
            (want, json!(code)),
            "{path}: {body}"
        );
    }
    let (status, body) = api
        .call("POST", &format!("/api/jobs/{mine}/explode"), Some(&master))
        .await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));

    api.stop.cancel();
    t.cleanup().await;
}

async fn runs_start_once_per_key_and_dead_letters_go_in_bulk(backend: Backend) {
    let t = fresh(backend).await;
    let (mine, theirs) = dead_jobs(&t).await;
    let api = Api::start(&t).await;
    let master = api.token(Role::MasterAdmin, None);
    let service = api.token(Role::Service, None);
    let tenant_one = api.token(Role::TenantAdmin, Some(1));

    // A run starts once per idempotency key.
    let start = json!({"workflow": "demo_pipeline", "params": {"tenant": "october"},
                       "idempotency_key": "october"});
    let (status, first) = api
        .send("POST", "/api/runs", Some(&service), Some(start.clone()))
        .await;
    assert_eq!(
        (status, first["created"].clone()),
        (201, json!(true)),
        "{first}"
    );
    let (status, again) = api
        .send("POST", "/api/runs", Some(&service), Some(start.clone()))
        .await;
    assert_eq!((status, again["created"].clone()), (200, json!(false)));
    assert_eq!(again["run"], first["run"]);
    let run = first["run"].as_i64().unwrap();
    let (status, body) = api
        .call("GET", &format!("/api/runs/{run}"), Some(&service))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["workflow"], json!("demo_pipeline"));
    assert_eq!(body["params"]["tenant"], json!("october"));
    let (status, body) = api
        .call("GET", "/api/runs?state=running", Some(&master))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["runs"][0]["id"], json!(run));
    // Only a failed run can be retried.
    let (status, body) = api
        .call("POST", &format!("/api/runs/{run}/retry"), Some(&master))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (409, json!("not_applicable"))
    );
    // Refused: a tenant admin, an unknown workflow, parameters that are not an object,
    // unknown fields, a body that is not JSON.
    for (token, body, want, code) in [
        (&tenant_one, start.clone(), 403, "not_permitted"),
        (&master, json!({"workflow": "nope"}), 404, "not_found"),
        (
            &master,
            json!({"workflow": "demo_pipeline", "params": [1]}),
            400,
            "invalid_input",
        ),
        (
            &master,
            json!({"workflow": "demo_pipeline", "colour": 1}),
            400,
            "invalid_input",
        ),
        (&master, json!("text"), 400, "invalid_input"),
    ] {
        let (status, answer) = api
            .send("POST", "/api/runs", Some(token), Some(body.clone()))
            .await;
        assert_eq!(
            (status, answer["code"].clone()),
            (want, json!(code)),
            "{body}: {answer}"
        );
    }
    let runs = t.store.runs_list(None, 100).await.unwrap();
    assert_eq!(runs.len(), 1, "nothing else started");

    // Bulk retry of the dead-letter queue: a tenant admin reaches only its own jobs.
    let (status, body) = api
        .send("POST", "/api/dlq/retry", Some(&tenant_one), Some(json!({})))
        .await;
    assert_eq!(
        (status, body["affected"].clone()),
        (200, json!(1)),
        "{body}"
    );
    assert_eq!(state_of(&t, mine).await, JobState::Available);
    assert_eq!(state_of(&t, theirs).await, JobState::Dead);
    let (status, _) = api
        .send(
            "POST",
            "/api/dlq/discard",
            Some(&tenant_one),
            Some(json!({"tenant": "2"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(state_of(&t, theirs).await, JobState::Dead);
    let (status, body) = api
        .send(
            "POST",
            "/api/dlq/discard",
            Some(&master),
            Some(json!({"kind": "fail"})),
        )
        .await;
    assert_eq!((status, body["affected"].clone()), (200, json!(1)));
    assert_eq!(state_of(&t, theirs).await, JobState::Cancelled);

    // /metrics needs a token; it describes what is there.
    assert_eq!(api.call("GET", "/metrics", None).await.0, 401);
    let response = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&master)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"steward_jobs{queue="default",state="cancelled"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"steward_runs{workflow="demo_pipeline",state="running"} 1"#),
        "{text}"
    );
    // /openapi.json for anyone: unique operation ids, every response described.
    let (status, doc) = api.call("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/runs"]["post"].is_object(), "{doc}");
    assert!(doc["paths"]["/api/tenant/{id}/modules/{module}"]["patch"].is_object());
    let mut ids = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            ids.push(operation["operationId"].as_str().unwrap().to_string());
            for (code, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {code}: no description"
                );
            }
        }
    }
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");

    api.stop.cancel();
    t.cleanup().await;
}

async fn tenants_manage_their_modules_and_admins_the_catalog(backend: Backend) {
    let t = fresh(backend).await;
    let api = Api::start(&t).await;
    let catalog = steward::domain::catalog::Catalog::load_dir(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/catalog"
    )))
    .unwrap();
    let engine = engine(&t);
    let life = steward::lifecycle::Lifecycle::new(engine).unwrap();
    life.load_catalog(&catalog, &Actor::master_admin("test"))
        .await
        .unwrap();
    let tenant = |slug: &str| steward::store::domain::NewTenant {
        slug: slug.into(),
        name: slug.into(),
        ..Default::default()
    };
    let one = t.store.tenant_create(&tenant("one")).await.unwrap().id;
    let two = t.store.tenant_create(&tenant("two")).await.unwrap().id;
    let admin_one = api.token(Role::TenantAdmin, Some(one));
    let master = api.token(Role::MasterAdmin, None);

    let (status, body) = api.call("GET", "/api/modules", Some(&admin_one)).await;
    assert_eq!(status, 200);
    assert!(
        body["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["slug"] == json!("inventory"))
    );

    // A tenant admin requests a module for its own tenant, not for another.
    let ask = json!({"module": "inventory"});
    let (status, _) = api
        .send(
            "POST",
            &format!("/api/tenant/{two}/modules"),
            Some(&admin_one),
            Some(ask.clone()),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        t.store
            .tenant_module_get(two, "inventory")
            .await
            .unwrap()
            .is_none()
    );
    let (status, body) = api
        .send(
            "POST",
            &format!("/api/tenant/{one}/modules"),
            Some(&admin_one),
            Some(ask.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["module"]["status"], json!("PROVISIONING"));
    assert!(body["run"].is_i64());
    let (status, body) = api
        .send(
            "POST",
            &format!("/api/tenant/{one}/modules"),
            Some(&admin_one),
            Some(json!({"module": "nope"})),
        )
        .await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));

    // Settings are checked against the version's JSON Schema.
    let settings = format!("/api/tenant/{one}/modules/inventory");
    let (status, body) = api
        .send(
            "PATCH",
            &settings,
            Some(&admin_one),
            Some(json!({"settings": {"low_stock_threshold": -1}})),
        )
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (422, json!("invalid_settings")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("low_stock_threshold"),
        "{body}"
    );
    let (status, body) = api
        .send(
            "PATCH",
            &settings,
            Some(&admin_one),
            Some(json!({"settings": {"colour": "red"}})),
        )
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (422, json!("invalid_settings")),
        "{body}"
    );
    assert_eq!(
        t.store.settings_get(one, "inventory").await.unwrap(),
        json!({})
    );
    let (status, body) = api
        .send(
            "PATCH",
            &settings,
            Some(&admin_one),
            Some(json!({"settings": {"low_stock_threshold": 5}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        t.store.settings_get(one, "inventory").await.unwrap(),
        json!({"low_stock_threshold": 5})
    );
    // A state the lifecycle does not allow from PROVISIONING is refused with its rule.
    let (status, body) = api
        .send(
            "PATCH",
            &settings,
            Some(&admin_one),
            Some(json!({"state": "DISABLED"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (422, json!("invalid_transition")),
        "{body}"
    );
    let (status, _) = api
        .send(
            "PATCH",
            &settings,
            Some(&admin_one),
            Some(json!({"state": "BOGUS"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = api
        .send("PATCH", &settings, Some(&admin_one), Some(json!({})))
        .await;
    assert_eq!(status, 400);

    // Usage: the aggregated months of this tenant module, and only of it.
    let entry = |tenant: i64, module: &str, cost: &str| steward::store::data::UsageEntry {
        tenant_id: tenant,
        module: module.into(),
        route: "/api/items".into(),
        tokens: 10,
        row_count: 1,
        estimated_cost: cost.parse().unwrap(),
        latency_ms: 5,
        at: "2026-10-15T12:00:00Z".parse().unwrap(),
    };
    t.store
        .usage_record(&[
            entry(one, "inventory", "0.25"),
            entry(one, "inventory", "0.50"),
            entry(one, "chatbot", "9"),
            entry(two, "inventory", "7"),
        ])
        .await
        .unwrap();
    let october = steward::store::data::parse_month("2026-10").unwrap();
    t.store.cost_aggregate(october).await.unwrap();
    let (status, body) = api
        .call(
            "GET",
            &format!("{settings}/usage?month=2026-10"),
            Some(&admin_one),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let months = body["months"].as_array().unwrap();
    assert_eq!(months.len(), 1, "{body}");
    assert_eq!(months[0]["calls"], json!(2));
    assert_eq!(months[0]["cost"], json!("0.75"));
    let (status, body) = api
        .call(
            "GET",
            &format!("{settings}/usage?month=2026-09"),
            Some(&admin_one),
        )
        .await;
    assert_eq!((status, body["months"].clone()), (200, json!([])));
    let (status, _) = api
        .call(
            "GET",
            &format!("/api/tenant/{two}/modules/inventory/usage"),
            Some(&admin_one),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(
            "GET",
            &format!("{settings}/usage?month=2026-13"),
            Some(&admin_one),
        )
        .await;
    assert_eq!(status, 400);

    // The catalog and the plans are a master admin's.
    let deprecate = json!({"maturity": "DEPRECATED"});
    let (status, _) = api
        .send(
            "PUT",
            "/api/catalog/inventory/maturity",
            Some(&admin_one),
            Some(deprecate.clone()),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        t.store
            .module_get("inventory")
            .await
            .unwrap()
            .unwrap()
            .maturity
            .to_string(),
        "GA"
    );
    let (status, body) = api
        .send(
            "PUT",
            "/api/catalog/inventory/maturity",
            Some(&master),
            Some(deprecate),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["from"].clone(), body["to"].clone()),
        (json!("GA"), json!("DEPRECATED"))
    );
    let run = body["run"].as_i64().expect("the deprecation run");
    let run = t.store.run_get(run).await.unwrap().unwrap();
    assert_eq!(run.workflow, "module_deprecation");
    let (status, body) = api
        .send(
            "PUT",
            "/api/catalog/inventory/maturity",
            Some(&master),
            Some(json!({"maturity": "PLANNED"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (422, json!("invalid_transition")),
        "{body}"
    );

    t.store.plan_create("pro", "Pro").await.unwrap();
    t.store
        .subscription_create(two, "pro", "active")
        .await
        .unwrap();
    let (status, _) = api
        .send(
            "POST",
            "/api/plans/pro/modules",
            Some(&admin_one),
            Some(json!({"module": "alert_engine"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = api
        .send(
            "POST",
            "/api/plans/pro/modules",
            Some(&master),
            Some(json!({"module": "alert_engine"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], json!(true), "{body}");
    // alert_engine needs inventory, which tenant two does not have: it is skipped, and the
    // summary says why (never a module without its dependencies).
    assert_eq!(body["synced"][0]["synced"], json!(0), "{body}");
    assert_eq!(
        body["synced"][0]["skipped_missing_dependencies"],
        json!(1),
        "{body}"
    );
    assert!(
        body["synced"][0]["skipped_reason"]
            .as_str()
            .is_some_and(|r| r.contains("depends on")),
        "{body}"
    );
    assert!(
        t.store
            .tenant_module_get(two, "alert_engine")
            .await
            .unwrap()
            .is_none()
    );

    api.stop.cancel();
    t.cleanup().await;
}

async fn a_failed_run_is_retried_from_its_failed_step(backend: Backend) {
    let t = fresh(backend).await;
    let api = Api::start(&t).await;
    let master = api.token(Role::MasterAdmin, None);
    // Workers for workflow steps, with the sweeper that fails a run whose step died.
    let engine = engine(&t);
    let mut registry = steward::queue::Registry::new();
    engine.register_jobs(&mut registry);
    // (A runtime names each queue it works with a width; 4 is plenty for these few runs.)
    let mut config = RuntimeConfig::new(
        "api-runs",
        vec![QueueConfig {
            name: "workflows".into(),
            concurrency: 4,
        }],
    );
    config.poll_interval = Duration::from_millis(20);
    let step_kind = common::repo_kinds().get("workflow_step").unwrap().clone();
    let runtime = Runtime::new(
        t.store.clone(),
        registry,
        common::kinds_of(&[step_kind]),
        config,
    )
    .unwrap()
    .with_service(Box::new(steward::workflow::RunSweeper {
        engine,
        every: Duration::from_millis(20),
    }));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));

    // The saga's last step fails on purpose: it dies at once, the run compensates and fails.
    let (status, body) = api
        .send(
            "POST",
            "/api/runs",
            Some(&master),
            Some(json!({"workflow": "demo_saga"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = body["run"].as_i64().unwrap();
    let failed = |t: &TestStore| {
        let store = t.store.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let record = store.run_get(run).await.unwrap().unwrap();
                if record.state == steward::store::runs::RunState::Failed {
                    return record;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "run {run} did not fail: {record:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let first = failed(&t).await;
    assert!(
        first
            .error
            .as_deref()
            .unwrap_or("")
            .contains("failed on purpose"),
        "{first:?}"
    );
    let (status, body) = api
        .call("GET", &format!("/api/runs/{run}"), Some(&master))
        .await;
    assert_eq!((status, body["state"].clone()), (200, json!("failed")));

    // Retried from the failed step (the undone ones redone): new jobs for them, and (the step
    // still failing on purpose) the run fails again.
    let (status, body) = api
        .call("POST", &format!("/api/runs/{run}/retry"), Some(&master))
        .await;
    assert_eq!(status, 200, "{body}");
    let tenant_one = api.token(Role::TenantAdmin, Some(1));
    let (status, _) = api
        .call("POST", &format!("/api/runs/{run}/retry"), Some(&tenant_one))
        .await;
    assert_eq!(status, 403);
    let second = failed(&t).await;
    assert_ne!(
        second.steps[0].job_id, first.steps[0].job_id,
        "the step ran again"
    );

    shutdown.cancel();
    handle.await.unwrap().unwrap();
    api.stop.cancel();
    t.cleanup().await;
}

/// The schema an OpenAPI `$ref` (or inline schema) stands for.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// A NUL byte in every string input of every operation the OpenAPI document lists (path
/// parameters, query parameters, each string field of a JSON body), by a master admin: always
/// a 4xx or a success, never a 5xx, and no answer carries the database's own text.
async fn nul_bytes_in_any_input_are_a_client_error(backend: Backend) {
    let t = fresh(backend).await;
    let tenant = t.store.tenant_create(&Default::default()).await;
    let tenant = tenant.map(|t| t.id).unwrap_or(1);
    let api = Api::start(&t).await;
    let master = api.token(Role::MasterAdmin, None);
    let (status, doc) = api.call("GET", "/openapi.json", Some(&master)).await;
    assert_eq!(status, 200);
    let nul = "x\u{0}y";
    let (mut calls, mut nul_calls) = (0, 0);
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let mut url = path.clone();
            let mut query = Vec::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                let schema = resolve(&doc, &parameter["schema"]);
                let is_text = schema["type"] == "string" || schema["type"].is_null();
                let value = if is_text {
                    "x%00y".to_string()
                } else {
                    tenant.to_string()
                };
                match parameter["in"].as_str() {
                    Some("path") => url = url.replace(&format!("{{{name}}}"), &value),
                    Some("query") if is_text => query.push(format!("{name}={value}")),
                    _ => {}
                }
            }
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            let body = operation["requestBody"]["content"]["application/json"]["schema"]
                .as_object()
                .map(|schema| {
                    let schema = resolve(&doc, &Value::Object(schema.clone())).clone();
                    let mut body = serde_json::Map::new();
                    for (field, spec) in schema["properties"].as_object().into_iter().flatten() {
                        let spec = resolve(&doc, spec);
                        let value = match spec["type"].as_str() {
                            Some("string") | None => json!(nul),
                            Some("object") => json!({"key": nul, nul: "value"}),
                            Some("array") => json!([nul]),
                            _ => continue,
                        };
                        body.insert(field.clone(), value);
                    }
                    Value::Object(body)
                });
            let (status, answer) = api
                .send(&method.to_uppercase(), &url, Some(&master), body.clone())
                .await;
            calls += 1;
            let has_nul = url.contains("%00")
                || body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("\\u0000"));
            if has_nul {
                nul_calls += 1;
                assert_eq!(
                    (status, answer["code"].as_str()),
                    (400, Some("invalid_input")),
                    "{method} {url} with {body:?}: {answer}"
                );
            }
            assert!(
                status < 500,
                "{method} {url} with {body:?} answered {status}: {answer}"
            );
            let text = answer.to_string();
            assert!(
                !text.contains("database error") && !text.contains("returned from database"),
                "{method} {url}: the answer shows the database's text: {text}"
            );
        }
    }
    assert!(
        calls >= 15,
        "the document lists the API's operations ({calls})"
    );
    assert!(nul_calls >= 15, "{nul_calls} calls carried a NUL");
    // The module routes, with NUL in every path segment and body field they take.
    let m = format!("/api/tenant/{tenant}/modules");
    let extra = [
        ("POST", m.clone(), Some(json!({"module": nul}))),
        (
            "PATCH",
            format!("{m}/x%00y"),
            Some(json!({"state": nul, "settings": {"k": nul}})),
        ),
        (
            "PATCH",
            format!("{m}/x%00y"),
            Some(json!({"settings": {nul: 1}})),
        ),
        ("GET", format!("{m}/x%00y/usage?month=x%00y"), None),
        (
            "POST",
            format!("{m}/x%00y/approve"),
            Some(json!({"reason": nul})),
        ),
        (
            "POST",
            format!("{m}/x%00y/suspend"),
            Some(json!({"reason": nul})),
        ),
        ("POST", format!("{m}/x%00y/x%00y"), Some(json!({}))),
        ("GET", format!("/api/tenant/{tenant}/audit?limit=5"), None),
        ("GET", "/api/modules?show_legacy=x%00y".to_string(), None),
        (
            "PUT",
            "/api/catalog/x%00y/maturity".to_string(),
            Some(json!({"maturity": nul, "force": false})),
        ),
        (
            "POST",
            "/api/catalog/x%00y/upgrade".to_string(),
            Some(json!({"version": nul})),
        ),
        (
            "POST",
            "/api/catalog/x%00y/rollback".to_string(),
            Some(json!({})),
        ),
        (
            "POST",
            "/api/plans/x%00y/modules".to_string(),
            Some(json!({"module": nul})),
        ),
        (
            "POST",
            "/api/runs".to_string(),
            Some(json!({"workflow": nul, "params": {nul: nul}, "idempotency_key": nul})),
        ),
        (
            "POST",
            "/api/runs".to_string(),
            Some(
                json!({"workflow": "demo_pipeline", "params": {"tenant": nul}, "idempotency_key": nul}),
            ),
        ),
        (
            "GET",
            "/api/jobs?queue=x%00y&kind=x%00y&tenant=x%00y&state=x%00y".to_string(),
            None,
        ),
    ];
    for (method, url, body) in extra {
        let (status, answer) = api.send(method, &url, Some(&master), body.clone()).await;
        let has_nul = url.contains("%00")
            || body
                .as_ref()
                .is_some_and(|b| b.to_string().contains("\\u0000"));
        if has_nul {
            assert_eq!(status, 400, "{method} {url} with {body:?}: {answer}");
        }
        assert!(
            status < 500,
            "{method} {url} with {body:?} answered {status}: {answer}"
        );
        assert!(
            !answer.to_string().contains("database"),
            "{method} {url}: the answer shows the database's text: {answer}"
        );
    }
    // Bodies that are not valid JSON text: an invalid escape, a lone surrogate.
    for raw in [r#"{"workflow": "a\xb"}"#, r#"{"workflow": "\ud800"}"#] {
        let answer = api
            .http
            .post(format!("{}/api/runs", api.base))
            .bearer_auth(&master)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{raw}");
    }
    api.stop.cancel();
    t.cleanup().await;
}

/// Queues and workers: the listing, pause and resume for master admins only, and a pause that
/// a live worker has not applied yet answered 202 naming it, not 200.
async fn operators_pause_and_resume_queues(backend: Backend) {
    use steward::store::control::{WorkerBeat, WorkerQueue};
    let t = fresh(backend).await;
    t.store
        .jobs_insert_many(&[common::new_job("noop", "mail")])
        .await
        .unwrap();
    let api = Api::start(&t).await;
    let admin = api.token(Role::MasterAdmin, None);
    let service = api.token(Role::Service, None);
    let tenant = api.token(Role::TenantAdmin, Some(1));

    let (status, body) = api.call("GET", "/api/queues", Some(&service)).await;
    assert_eq!(status, 200, "{body}");
    let mail = body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "mail")
        .unwrap()
        .clone();
    assert_eq!(
        (mail["jobs"]["available"].as_i64(), mail["paused"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(api.call("GET", "/api/queues", Some(&tenant)).await.0, 403);
    assert_eq!(api.call("GET", "/api/workers", Some(&tenant)).await.0, 403);
    assert_eq!(
        api.call("POST", "/api/queues/mail/pause", Some(&service))
            .await
            .0,
        403
    );
    assert_eq!(
        api.call("POST", "/api/queues/mail/pause", Some(&tenant))
            .await
            .0,
        403
    );
    let (status, body) = api
        .call("POST", "/api/queues/Bad%20Name/pause", Some(&admin))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_input")),
        "{body}"
    );
    assert_eq!(
        api.call("POST", "/api/queues/mail/freeze", Some(&admin))
            .await
            .0,
        404
    );
    assert_eq!(
        api.call("POST", "/api/queues/mail/pause?wait_ms=70000", Some(&admin))
            .await
            .0,
        400
    );

    // A live worker that has not applied the pause: recorded, but 202 and named.
    let queues = [WorkerQueue {
        name: "mail".into(),
        concurrency: 4,
    }];
    let beat = |seen| WorkerBeat {
        id: "slow-worker",
        host: "h",
        pid: 1,
        queues: &queues,
        running: 0,
        control_seen: seen,
        ttl: Duration::from_secs(60),
    };
    t.store.worker_beat(&beat(0)).await.unwrap();
    let (status, body) = api
        .call("POST", "/api/queues/mail/pause?wait_ms=200", Some(&admin))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["pending"], json!(["slow-worker"]));
    assert_eq!(body["changed"], json!(true));
    let (_, shown) = api.call("GET", "/api/queues/mail", Some(&admin)).await;
    assert_eq!(shown["paused"], json!(true), "{shown}");
    assert_eq!(shown["control"]["changed_by"], json!("api:test"));
    assert_eq!(shown["workers"][0]["id"], json!("slow-worker"));
    // Once it applies the version, the same call says so (and that nothing changed).
    t.store
        .worker_beat(&beat(body["version"].as_i64().unwrap()))
        .await
        .unwrap();
    let (status, body) = api
        .call("POST", "/api/queues/mail/pause?wait_ms=200", Some(&admin))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["changed"].as_bool(), body["applied_by"].clone()),
        (Some(false), json!(["slow-worker"]))
    );
    let (status, body) = api
        .call("POST", "/api/queues/mail/resume?wait_ms=0", Some(&admin))
        .await;
    assert_eq!(
        (status, body["paused"].as_bool()),
        (202, Some(false)),
        "{body}"
    );
    let (status, body) = api.call("GET", "/api/workers", Some(&service)).await;
    assert_eq!(
        (
            status,
            body["workers"][0]["queues"][0]["concurrency"].as_i64()
        ),
        (200, Some(4))
    );
    api.stop.cancel();
    t.cleanup().await;
}

/// `POST /api/jobs`: one job or a batch, for the roles a kind names; payloads checked against
/// the kind's declared fields (422), a unique key already held gives the existing job (200).
async fn the_platform_enqueues_jobs_over_http(backend: Backend) {
    let t = fresh(backend).await;
    let api = Api::start(&t).await;
    let service = api.token(Role::Service, None);
    let admin = api.token(Role::MasterAdmin, None);
    let tenant_admin = api.token(Role::TenantAdmin, Some(1));
    let post = |token: &str, body: Value| {
        let token = token.to_string();
        let api = &api;
        async move {
            api.send("POST", "/api/jobs", Some(&token), Some(body))
                .await
        }
    };

    let (status, body) = post(
        &service,
        json!({"kind": "sleep", "payload": {"ms": 1}, "tenant": "7"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["jobs"][0]["id"].as_i64().unwrap();
    let job = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        (job.kind.as_str(), job.queue.as_str(), job.tenant.as_str()),
        ("sleep", "default", "7")
    );
    assert_eq!(job.payload, json!({"ms": 1}));

    let batch = json!({"jobs": [{"kind": "noop"}, {"kind": "noop", "queue": "bulk"}, {"kind": "sleep", "payload": {"ms": 2}, "priority": 5}]});
    let (status, body) = post(&admin, batch).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jobs"].as_array().unwrap().len(), 3);
    assert!(
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["inserted"] == true)
    );
    let bulk = t
        .store
        .job_get(body["jobs"][1]["id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bulk.queue, "bulk");

    // A unique key already held: the existing job, 200.
    let unique = json!({"kind": "noop", "unique_key": "order-42"});
    let (status, first) = post(&service, unique.clone()).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = post(&service, unique).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["jobs"][0]["id"], first["jobs"][0]["id"]);
    assert_eq!(again["jobs"][0]["inserted"], json!(false));

    // Payloads go through the kind's declared fields.
    for payload in [
        json!({}),
        json!({"ms": "soon"}),
        json!({"ms": 1, "extra": true}),
    ] {
        let (status, body) = post(&service, json!({"kind": "sleep", "payload": payload})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_payload")),
            "{body}"
        );
    }
    let (status, body) = post(&service, json!({"kind": "noop", "payload": {"x": 1}})).await;
    assert_eq!(status, 422, "{body}");

    // Roles: the kind's enqueued_by, and never what steward enqueues itself.
    assert_eq!(post(&tenant_admin, json!({"kind": "noop"})).await.0, 403);
    for kind in ["workflow_step", "webhook_deliver", "fail"] {
        let (status, body) = post(&admin, json!({"kind": kind})).await;
        assert_eq!(status, 403, "{kind}: {body}");
    }
    assert_eq!(post(&service, json!({"kind": "no_such_kind"})).await.0, 404);
    // Bad input.
    assert_eq!(post(&service, json!({"jobs": []})).await.0, 400);
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"kind": "noop"})).collect();
    assert_eq!(post(&service, json!({"jobs": too_many})).await.0, 400);
    assert_eq!(
        post(&service, json!({"kind": "noop", "queue": "Bad Queue"}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(&service, json!({"kind": "noop", "colour": "red"}))
            .await
            .0,
        400
    );
    // An over-long tenant or unique key (indexed: a 20,000-character tenant could never be
    // made available on PostgreSQL, and would stop the stager behind it), even scheduled.
    let long = "t".repeat(20_000);
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    for job in [
        json!({"kind": "noop", "tenant": long, "run_at": run_at}),
        json!({"kind": "noop", "tenant": "t".repeat(201)}),
        json!({"kind": "noop", "unique_key": "k".repeat(201)}),
        json!({"kind": "noop", "unique_key": ""}),
    ] {
        let (status, body) = post(&service, job).await;
        assert_eq!(status, 400, "{body}");
    }
    if let Some(pg) = &t.pg {
        // Jobs enqueued in SQL meet the same bound.
        let err = sqlx::query(
            "INSERT INTO steward_jobs (kind, queue, tenant, payload, state, max_attempts, \
             timeout_ms) VALUES ('noop', 'default', $1, '{}', 'scheduled', 1, 1000)",
        )
        .bind(&long)
        .execute(pg.pool())
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("steward_jobs_tenant_length"),
            "{err}"
        );
    }
    // Nothing refused was written.
    let counts = t.store.jobs_count_by_state().await.unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 5, "{counts:?}");
    api.stop.cancel();
    t.cleanup().await;
}

/// `POST /api/tenant/{id}/modules/{m}/usage`: the platform records usage, the monthly cost
/// aggregation reads it; a tenant admin records nothing, not even for its own tenant.
async fn usage_posted_by_the_platform_is_costed(backend: Backend) {
    let t = fresh(backend).await;
    let (a, b) = common::lifecycle::stock_in_use(&t).await;
    let api = Api::start(&t).await;
    let service = api.token(Role::Service, None);
    let path = format!("/api/tenant/{a}/modules/stock/usage");
    let entries = json!({"entries": [
        {"route": "/stock/search", "tokens": 10, "row_count": 3, "estimated_cost": "0.5", "latency_ms": 12, "at": "2026-11-15T10:00:00Z"},
        {"route": "/stock/export", "tokens": 20, "estimated_cost": "0.25", "at": "2026-11-20T10:00:00Z"},
    ]});
    let (status, body) = api
        .send("POST", &path, Some(&service), Some(entries.clone()))
        .await;
    assert_eq!(
        (status, body["recorded"].as_i64()),
        (201, Some(2)),
        "{body}"
    );
    let (status, body) = api
        .send("POST", &path, Some(&service), Some(json!({"route": "/stock", "estimated_cost": "0.000001", "at": "2026-11-21T00:00:00Z"})))
        .await;
    assert_eq!(status, 201, "{body}");

    t.store
        .cost_aggregate(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
        .await
        .unwrap();
    let (status, body) = api
        .call("GET", &format!("{path}?month=2026-11"), Some(&service))
        .await;
    assert_eq!(status, 200, "{body}");
    let month = &body["months"][0];
    assert_eq!(
        (
            month["calls"].as_i64(),
            month["tokens"].as_i64(),
            month["cost"].as_str()
        ),
        (Some(3), Some(30), Some("0.750001")),
        "{body}"
    );

    // Not a tenant admin, of this tenant or another.
    for tenant in [a, b] {
        let token = api.token(Role::TenantAdmin, Some(tenant));
        let (status, _) = api
            .send("POST", &path, Some(&token), Some(entries.clone()))
            .await;
        assert_eq!(status, 403);
    }
    // Bad input: a 4xx, nothing recorded.
    let admin = api.token(Role::MasterAdmin, None);
    for bad in [
        json!({"route": "/x", "estimated_cost": "0.0000001"}),
        json!({"route": "/x", "estimated_cost": "-1"}),
        json!({"route": "", "estimated_cost": "1"}),
        json!({"route": "/x", "estimated_cost": "1", "tokens": -5}),
        json!({"route": "/x", "estimated_cost": "1", "at": "2999-01-01T00:00:00Z"}),
        json!({"entries": []}),
    ] {
        let (status, body) = api
            .send("POST", &path, Some(&admin), Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api
        .send(
            "POST",
            &format!("/api/tenant/{a}/modules/nothing/usage"),
            Some(&admin),
            Some(json!({"route": "/x", "estimated_cost": "1"})),
        )
        .await;
    assert_eq!(status, 404);
    t.store
        .cost_aggregate(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
        .await
        .unwrap();
    let (_, body) = api
        .call("GET", &format!("{path}?month=2026-11"), Some(&service))
        .await;
    assert_eq!(
        body["months"][0]["calls"].as_i64(),
        Some(3),
        "nothing refused was recorded"
    );
    api.stop.cancel();
    t.cleanup().await;
}

per_backend!(
    operators_see_circuit_breakers,
    the_platform_enqueues_jobs_over_http,
    usage_posted_by_the_platform_is_costed,
    operators_pause_and_resume_queues,
    nul_bytes_in_any_input_are_a_client_error,
    a_tenant_admins_catalog_shows_what_the_availability_table_shows,
    module_operations_reach_the_api_for_the_right_roles_only,
    a_dead_step_jobs_retry_advances_its_run,
    a_failed_run_is_retried_from_its_failed_step,
    only_the_right_callers_reach_the_api,
    an_unavailable_storage_is_named_in_health_without_its_cause,
    runs_start_once_per_key_and_dead_letters_go_in_bulk,
    tenants_manage_their_modules_and_admins_the_catalog,
);

/// `/health` is anonymous: it says what is unavailable, never why (a storage path, a
/// server's message), which goes to the log.
async fn an_unavailable_storage_is_named_in_health_without_its_cause(backend: Backend) {
    let t = fresh(backend).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside_a_file = file.path().join("exports");
    let exports: steward::export::SharedExports = Arc::new(
        steward::export::local::LocalStorage::new(inside_a_file.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let state = AppState::new(engine(&t), exports, AuthKeys::new(SECRET).unwrap());
    let until = stop.clone();
    tokio::spawn(
        async move { serve(listener, state, async move { until.cancelled().await }).await },
    );
    let answer = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    let body = answer.text().await.unwrap();
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["database"].clone(), health["storage"].clone()),
        (json!("ok"), json!("unavailable"))
    );
    let path = inside_a_file.to_string_lossy();
    assert!(!body.contains(path.as_ref()), "{body}");
    stop.cancel();
    t.cleanup().await;
}

#[test]
fn steward_token_mints_a_token_the_api_accepts_and_refuses_bad_input() {
    let run = |args: &[&str], secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_steward"));
        command.env("STEWARD_EXPORT_DIR", common::scratch_dir().join("process"));
        command.args(args).env_remove("STEWARD_JWT_SECRET");
        if let Some(secret) = secret {
            command.env("STEWARD_JWT_SECRET", secret);
        }
        command.output().unwrap()
    };
    let out = run(
        &["token", "--role", "tenant_admin", "--tenant", "7"],
        Some(SECRET),
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = AuthKeys::new(SECRET).unwrap().check(token.trim()).unwrap();
    assert_eq!(
        (claims.role, claims.tenant_id),
        (Role::TenantAdmin, Some(7))
    );
    for (args, secret, message) in [
        (
            &["token", "--role", "service"][..],
            None,
            "STEWARD_JWT_SECRET is not set",
        ),
        (
            &["token", "--role", "service"][..],
            Some("short"),
            "at least 32 bytes",
        ),
        (
            &["token", "--role", "tenant_admin"][..],
            Some(SECRET),
            "needs --tenant",
        ),
        (
            &["token", "--role", "root"][..],
            Some(SECRET),
            "invalid value",
        ),
    ] {
        let out = run(args, secret);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Every module maturity, published straight to the catalog.
async fn every_maturity(t: &TestStore) {
    use steward::domain::maturity::Maturity::*;
    for (slug, maturity) in [
        ("planned_mod", Planned),
        ("dev_mod", InDevelopment),
        ("alpha_mod", Alpha),
        ("beta_mod", Beta),
        ("ga_mod", Ga),
        ("maint_mod", Maintenance),
        ("old_mod", Deprecated),
        ("gone_mod", Retired),
    ] {
        common::lifecycle::publish(t, &common::lifecycle::module(slug, maturity, &[])).await;
    }
}

fn slugs(body: &Value) -> Vec<String> {
    let mut slugs: Vec<String> = body["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap().to_string())
        .collect();
    slugs.sort();
    slugs
}

async fn a_tenant_admins_catalog_shows_what_the_availability_table_shows(backend: Backend) {
    let t = fresh(backend).await;
    every_maturity(&t).await;
    let plain = common::lifecycle::tenant(&t, "plain", false, false).await;
    let tester = common::lifecycle::tenant(&t, "tester", true, false).await;
    let api = Api::start(&t).await;
    let own = api.token(Role::TenantAdmin, Some(plain));
    let (status, body) = api.call("GET", "/api/modules", Some(&own)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(slugs(&body), ["beta_mod", "ga_mod", "maint_mod"]);
    let badge = |body: &Value, slug: &str| {
        body["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["slug"] == json!(slug))
            .map(|m| m["listing"].clone())
    };
    assert_eq!(badge(&body, "beta_mod"), Some(json!("beta")));
    assert_eq!(badge(&body, "maint_mod"), Some(json!("legacy")));
    // "Show legacy modules" adds DEPRECATED, with its warning; never PLANNED, IN_DEVELOPMENT,
    // RETIRED, nor ALPHA for a tenant that is not an internal tester.
    let (_, body) = api
        .call("GET", "/api/modules?show_legacy=true", Some(&own))
        .await;
    assert_eq!(slugs(&body), ["beta_mod", "ga_mod", "maint_mod", "old_mod"]);
    assert_eq!(badge(&body, "old_mod"), Some(json!("deprecated")));
    let (_, body) = api
        .call(
            "GET",
            "/api/modules",
            Some(&api.token(Role::TenantAdmin, Some(tester))),
        )
        .await;
    assert_eq!(
        slugs(&body),
        ["alpha_mod", "beta_mod", "ga_mod", "maint_mod"]
    );
    // Another tenant's view is not a tenant admin's to read; the platform sees any.
    let (status, _) = api
        .call("GET", &format!("/api/modules?tenant={tester}"), Some(&own))
        .await;
    assert_eq!(status, 403);
    let (_, body) = api
        .call(
            "GET",
            &format!("/api/modules?tenant={tester}"),
            Some(&api.token(Role::Service, None)),
        )
        .await;
    assert_eq!(slugs(&body).len(), 4);
    let (_, body) = api
        .call(
            "GET",
            "/api/modules",
            Some(&api.token(Role::MasterAdmin, None)),
        )
        .await;
    assert_eq!(slugs(&body).len(), 8, "the whole catalog for operators");
    api.stop.cancel();
    t.cleanup().await;
}

async fn module_operations_reach_the_api_for_the_right_roles_only(backend: Backend) {
    use common::lifecycle::{module, publish, status, tenant, wait_for, workers};
    use steward::domain::maturity::Maturity;
    use steward::domain::status::TenantModuleStatus::*;
    let t = fresh(backend).await;
    publish(&t, &module("chatbot", Maturity::Alpha, &[])).await;
    publish(&t, &module("inventory", Maturity::Ga, &[])).await;
    let one = tenant(&t, "one", true, false).await;
    let api = Api::start(&t).await;
    let own = api.token(Role::TenantAdmin, Some(one));
    let service = api.token(Role::Service, None);
    let master = api.token(Role::MasterAdmin, None);
    let modules = format!("/api/tenant/{one}/modules");
    for slug in ["chatbot", "inventory"] {
        let (status, body) = api
            .send("POST", &modules, Some(&own), Some(json!({"module": slug})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let running = workers(&t);
    wait_for(&t, &[one], "inventory", Enabled).await;

    // Approve and reject are a Master Admin's: the tenant's own admin and the platform's
    // services are refused, and nothing moves.
    let chatbot = format!("{modules}/chatbot");
    for token in [&own, &service] {
        for action in ["approve", "reject"] {
            let (status, body) = api
                .send(
                    "POST",
                    &format!("{chatbot}/{action}"),
                    Some(token),
                    Some(json!({"reason": "mine"})),
                )
                .await;
            assert_eq!(
                (status, body["code"].clone()),
                (403, json!("not_permitted")),
                "{action}: {body}"
            );
        }
    }
    assert_eq!(status(&t, one, "chatbot").await, Some(PendingApproval));
    // A refused PATCH writes nothing: a pending module cannot be turned on, and the
    // settings sent with it are not written either.
    let (status_code, body) = api
        .send(
            "PATCH",
            &chatbot,
            Some(&own),
            Some(json!({"state": "ENABLED", "settings": {"mode": "x"}})),
        )
        .await;
    assert_eq!(status_code, 422, "{body}");
    assert_eq!(
        t.store.settings_get(one, "chatbot").await.unwrap(),
        json!({})
    );
    let (status_code, body) = api
        .send("POST", &format!("{chatbot}/reject"), Some(&master), None)
        .await;
    assert_eq!(
        (status_code, body["code"].clone()),
        (400, json!("invalid_input")),
        "a rejection needs a reason: {body}"
    );
    let (status_code, body) = api
        .send("POST", &format!("{chatbot}/approve"), Some(&master), None)
        .await;
    assert_eq!(status_code, 200, "{body}");
    assert!(body["run"].is_i64());
    wait_for(&t, &[one], "chatbot", Enabled).await;
    running.stop().await;

    // Suspend and resume: a Master Admin's; the tenant cannot lift a suspension.
    let inventory = format!("{modules}/inventory");
    let (status_code, _) = api
        .send(
            "POST",
            &format!("{inventory}/suspend"),
            Some(&own),
            Some(json!({"reason": "unpaid"})),
        )
        .await;
    assert_eq!(status_code, 403);
    let (status_code, body) = api
        .send(
            "POST",
            &format!("{inventory}/suspend"),
            Some(&master),
            Some(json!({"reason": "unpaid"})),
        )
        .await;
    assert_eq!(status_code, 200, "{body}");
    assert_eq!(body["module"]["status"], json!("SUSPENDED"));
    for (method, path, body) in [
        ("POST", format!("{inventory}/resume"), None),
        (
            "PATCH",
            inventory.clone(),
            Some(json!({"state": "ENABLED"})),
        ),
    ] {
        let (status_code, answer) = api.send(method, &path, Some(&own), body).await;
        assert_eq!(
            (status_code, answer["code"].clone()),
            (403, json!("not_permitted")),
            "{path}: {answer}"
        );
    }
    assert_eq!(status(&t, one, "inventory").await, Some(Suspended));
    let (status_code, body) = api
        .send("POST", &format!("{inventory}/resume"), Some(&master), None)
        .await;
    assert_eq!(
        (status_code, body["module"]["status"].clone()),
        (200, json!("ENABLED"))
    );
    // Repair of a consistent record: 409, nothing done.
    let (status_code, body) = api
        .send("POST", &format!("{inventory}/repair"), Some(&master), None)
        .await;
    assert_eq!(
        (status_code, body["code"].clone()),
        (409, json!("not_applicable")),
        "{body}"
    );
    let (status_code, _) = api
        .send("POST", &format!("{inventory}/explode"), Some(&master), None)
        .await;
    assert_eq!(status_code, 404);

    // Upgrade and rollback of the catalog: a Master Admin's.
    for token in [&own, &service] {
        let (status_code, body) = api
            .send(
                "POST",
                "/api/catalog/inventory/upgrade",
                Some(token),
                Some(json!({"version": "1.0.0"})),
            )
            .await;
        assert_eq!(status_code, 403, "{body}");
        let (status_code, body) = api
            .send("POST", "/api/catalog/inventory/rollback", Some(token), None)
            .await;
        assert_eq!(status_code, 403, "{body}");
    }
    let (status_code, body) = api
        .send(
            "POST",
            "/api/catalog/inventory/rollback",
            Some(&master),
            None,
        )
        .await;
    assert_eq!(
        (status_code, body["code"].clone()),
        (409, json!("not_applicable")),
        "nothing was upgraded, nothing is rolled back: {body}"
    );
    // The dashboard asks first (a catalog action touches every tenant of the module): the
    // first post only says what it would do; the confirmed one acts.
    let post = |form: &'static str| {
        api.http
            .post(format!(
                "{}/dashboard/modules/catalog/inventory/rollback",
                api.base
            ))
            .bearer_auth(&master)
            .header("origin", &api.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let asked = post("version=").await.unwrap();
    assert_eq!(asked.status().as_u16(), 200);
    let asked = asked.text().await.unwrap();
    assert!(
        asked.contains("Roll inventory's last upgrade back, for the tenants it upgraded")
            && asked.contains("id=\"confirm-rollback\""),
        "{asked}"
    );
    let confirmed = post("version=&confirmed=yes").await.unwrap();
    assert_eq!(
        confirmed.status().as_u16(),
        409,
        "it acted, and said why it could not"
    );

    // Lifecycle workflows are never started with raw parameters.
    for token in [&service, &master] {
        let (status_code, body) = api
            .send(
                "POST",
                "/api/runs",
                Some(token),
                Some(json!({"workflow": "module_purge",
                            "params": {"tenant_id": one, "module": "inventory", "before": "2100-01-01"}})),
            )
            .await;
        assert_eq!(
            (status_code, body["code"].clone()),
            (403, json!("not_permitted")),
            "{body}"
        );
    }
    // The tenant's audit log: its own admin reads it, another tenant's does not.
    let (status_code, body) = api
        .call("GET", &format!("/api/tenant/{one}/audit"), Some(&own))
        .await;
    assert_eq!(status_code, 200, "{body}");
    let actions: Vec<&str> = body["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["action"].as_str().unwrap())
        .collect();
    for expected in ["module.approve", "module.suspend", "module.resume"] {
        assert!(actions.contains(&expected), "{actions:?}");
    }
    let (status_code, _) = api
        .call(
            "GET",
            &format!("/api/tenant/{one}/audit"),
            Some(&api.token(Role::TenantAdmin, Some(one + 1))),
        )
        .await;
    assert_eq!(status_code, 403);
    api.stop.cancel();
    t.cleanup().await;
}

async fn a_dead_step_jobs_retry_advances_its_run(backend: Backend) {
    use common::lifecycle::{life, stock_in_use, workers};
    let t = fresh(backend).await;
    let (a, _) = stock_in_use(&t).await;
    let api = Api::start(&t).await;
    let master = api.token(Role::MasterAdmin, None);
    // An archive of a module in use: its export step dies, the run fails.
    let (run, _) = engine(&t)
        .start(
            "module_archive",
            json!({"tenant_id": a, "module": "stock"}),
            None,
        )
        .await
        .unwrap();
    let running = workers(&t);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let record = t.store.run_get(run).await.unwrap().unwrap();
        if record.state == steward::store::runs::RunState::Failed {
            break record.steps[0].job_id.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    life(&t)
        .disable(a, "stock", &Actor::tenant_admin("tenant"))
        .await
        .unwrap();
    // "Retry all matching" in the dead-letter queue retries the run through its dead job.
    let (status, body) = api
        .send("POST", "/api/dlq/retry", Some(&master), Some(json!({})))
        .await;
    assert_eq!(
        (status, body["affected"].clone()),
        (200, json!(1)),
        "{body}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let record = t.store.run_get(run).await.unwrap().unwrap();
        if record.state == steward::store::runs::RunState::Completed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    // Nothing dead is left: retrying the job again is refused, not reported as done.
    let (status, body) = api
        .call("POST", &format!("/api/jobs/{dead}/retry"), Some(&master))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (409, json!("not_applicable")),
        "{body}"
    );
    api.stop.cancel();
    t.cleanup().await;
}

async fn operators_see_circuit_breakers(backend: Backend) {
    use steward::store::limits::BreakerOutcome;
    let t = fresh(backend).await;
    // A webhook host that failed 20 deliveries in a row (the repository's threshold).
    let key = "breaker:webhook_deliver:hooks.example";
    for job_id in 1..=20 {
        t.store
            .breaker_record(&BreakerOutcome {
                key,
                job_id,
                ok: false,
                failures_to_open: 20,
                open_for: Duration::from_secs(30),
            })
            .await
            .unwrap();
    }
    let api = Api::start(&t).await;
    let service = api.token(Role::Service, None);
    let tenant = api.token(Role::TenantAdmin, Some(1));
    assert_eq!(api.call("GET", "/api/breakers", Some(&tenant)).await.0, 403);
    let (status, body) = api.call("GET", "/api/breakers", Some(&service)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["breakers"][0]["key"].as_str(),
            body["breakers"][0]["state"].as_str(),
            body["breakers"][0]["failures"].as_i64()
        ),
        (Some(key), Some("open"), Some(20))
    );
    // On the page of the queue its kind works.
    let (status, body) = api
        .call("GET", "/api/queues/webhooks", Some(&service))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["breakers"][0]["key"].as_str(), Some(key), "{body}");
    let (_, body) = api.call("GET", "/api/queues/default", Some(&service)).await;
    assert_eq!(body["breakers"], json!([]), "{body}");
    // And on the dashboard's page of that queue: the dependency, its state, its failures.
    let page = |queue: &str| {
        api.http
            .get(format!("{}/dashboard/queues/{queue}", api.base))
            .bearer_auth(&service)
            .send()
    };
    let html = page("webhooks").await.unwrap().text().await.unwrap();
    let table = html
        .split("id=\"breakers\"")
        .nth(1)
        .expect("a breakers table")
        .split("</table>")
        .next()
        .unwrap();
    assert!(
        table.contains(key) && table.contains("open") && table.contains(">20<"),
        "{table}"
    );
    let html = page("default").await.unwrap().text().await.unwrap();
    assert!(
        !html.contains("id=\"breakers\""),
        "no breaker on the default queue"
    );
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!("steward_circuit_open{{key=\"{key}\"}} 1")),
        "{text}"
    );
    // A success closes it.
    t.store
        .breaker_record(&BreakerOutcome {
            key,
            job_id: 21,
            ok: true,
            failures_to_open: 20,
            open_for: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let (_, body) = api.call("GET", "/api/breakers", Some(&service)).await;
    assert_eq!(body["breakers"][0]["state"].as_str(), Some("closed"));
    api.stop.cancel();
    t.cleanup().await;
}
