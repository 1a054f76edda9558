//! The HTTP API on a real socket: authentication (no token, a bad signature, an expired token,
//! a tenant admin reaching another tenant: 401/403 and nothing changed), the operators'
//! actions, and bad input answered with a 4xx and a stable code.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::{Value, json};
use std::time::Duration;
use steward::api::auth::{AuthKeys, Role};
use steward::api::{AppState, serve};
use steward::queue::{QueueConfig, Runtime, RuntimeConfig};
use steward::types::{JobId, JobState, NewJob};
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
        let state = AppState {
            store: t.store.clone(),
            exports: t.exports.clone(),
            keys: keys.clone(),
        };
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
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
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
    let mut config = RuntimeConfig::new(
        "api-test",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 4,
        }],
    );
    config.poll_interval = Duration::from_millis(20);
    let runtime = Runtime::new(
        t.store.clone(),
        steward::queue::builtin::registry(),
        common::builtin_kinds(),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    t.wait_for_counts(Duration::from_secs(30), "two dead jobs", |count| {
        count(JobState::Dead) == 2
    })
    .await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();
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

per_backend!(only_the_right_callers_reach_the_api);

#[test]
fn steward_token_mints_a_token_the_api_accepts_and_refuses_bad_input() {
    let run = |args: &[&str], secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_steward"));
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
