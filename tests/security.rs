//! Attacks on the HTTP server and the webhook sender, each tried as an attacker would and
//! shown to fail (issue #14): tokens not yet valid or without their role's claims, a tenant
//! admin reading deployment-wide metrics, made-up HTTP methods inflating `/metrics`, a 10 MB
//! body, cross-site dashboard writes, slowloris connections, and webhook endpoints that
//! point inside the network, redirect there, or answer with a huge body.

mod common;

use common::{Backend, TestStore, fresh};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use steward::api::AppState;
use steward::api::auth::{AuthKeys, Role};
use steward::domain::maturity::Maturity;
use steward::domain::status::TenantModuleStatus;
use steward::http::{ServerLimits, serve_with};
use steward::lifecycle::webhook::{self, EndpointPolicy, WebhookSender};
use steward::queue::{QueueConfig, Registry, Runtime, RuntimeConfig};
use steward::secrets::SecretKey;
use steward::store::data::WebhookTarget;
use steward::store::domain::NewTenant;
use steward::types::{JobState, NewJob};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const METRICS_TOKEN: &str = "a-scrape-credential-of-32-bytes-or-more";

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    keys: AuthKeys,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(t: &TestStore, limits: ServerLimits) -> Server {
    start_with(t, limits, common::repo_engine(t, t.exports.clone())).await
}

async fn start_with(
    t: &TestStore,
    limits: ServerLimits,
    engine: Arc<steward::workflow::Engine>,
) -> Server {
    let keys = AuthKeys::new(SECRET).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(engine, t.exports.clone(), keys.clone())
        .with_metrics_token(METRICS_TOKEN)
        .unwrap();
    let stop = CancellationToken::new();
    let until = stop.clone();
    let done = tokio::spawn(async move {
        serve_with(
            listener,
            state,
            limits,
            async move { until.cancelled().await },
        )
        .await
    });
    Server {
        base: format!("http://{addr}"),
        addr,
        keys,
        stop,
        done,
    }
}

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn tokens_metrics_and_bodies(backend: Backend) {
    let t = fresh(backend).await;
    let server = start(&t, ServerLimits::default()).await;
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();

    // A token not valid before a future time, and a tenant_admin naming no tenant: 401.
    let not_yet = signed(
        json!({"sub": "x", "role": "master_admin", "iat": now, "exp": now + 600, "nbf": now + 300}),
    );
    let tenantless =
        signed(json!({"sub": "x", "role": "tenant_admin", "iat": now, "exp": now + 600}));
    // Issued ten minutes from now (beyond the 60 s a skewed clock is allowed): 401.
    let future =
        signed(json!({"sub": "x", "role": "master_admin", "iat": now + 600, "exp": now + 1200}));
    for token in [&not_yet, &tenantless, &future] {
        let (status, body) = get(&http, &format!("{}/api/jobs", server.base), token).await;
        assert_eq!(status, 401, "{body}");
    }
    // Thirty seconds ahead (a skewed clock): let through.
    let skewed =
        signed(json!({"sub": "x", "role": "master_admin", "iat": now + 30, "exp": now + 600}));
    assert_eq!(
        get(&http, &format!("{}/api/jobs", server.base), &skewed)
            .await
            .0,
        200
    );

    // Metrics: the scrape credential and operators, not a tenant admin.
    let tenant_admin = server
        .keys
        .mint("t", Role::TenantAdmin, Some(1), chrono::Duration::hours(1))
        .unwrap();
    let master = server
        .keys
        .mint("m", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let metrics = format!("{}/metrics", server.base);
    assert_eq!(get(&http, &metrics, &tenant_admin).await.0, 403);
    assert_eq!(get(&http, &metrics, METRICS_TOKEN).await.0, 200);
    assert_eq!(get(&http, &metrics, &master).await.0, 200);
    // The scrape credential reads nothing else.
    assert_eq!(
        get(&http, &format!("{}/api/jobs", server.base), METRICS_TOKEN)
            .await
            .0,
        401
    );

    // Made-up methods and paths do not become metric labels: after 5,000 requests the
    // unmatched ones are a handful of series (method "other", a status class), not one each.
    steward::api::prometheus::install().expect("the metrics recorder");
    for i in 0..5_000 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let response = http
            .request(method, format!("{}/made-up/{i}", server.base))
            .send()
            .await
            .unwrap();
        // No such route; a write without a token is refused before routing (403).
        assert!(
            matches!(response.status().as_u16(), 403 | 404),
            "{response:?}"
        );
    }
    let page = get(&http, &metrics, METRICS_TOKEN).await.1;
    assert!(
        !page.contains("M17X") && !page.contains("/made-up/"),
        "labels from the client"
    );
    let unmatched: Vec<&str> = page
        .lines()
        .filter(|l| {
            l.starts_with("steward_http_request_duration_seconds_count")
                && l.contains("route=\"unmatched\"")
        })
        .collect();
    assert!(
        !unmatched.is_empty() && unmatched.len() <= 4,
        "the made-up requests are counted in a few series: {unmatched:?} in {page}"
    );
    // Every label of the request histogram comes from a fixed set: so its size is bounded by
    // the routes the server has, whatever clients send (other tests in this process add
    // series of their own, so the page's size says nothing here).
    let routes: Vec<String> = steward::http::routes()
        .served()
        .iter()
        .map(|(_, p)| format!("route=\"{p}\""))
        .chain(["route=\"unmatched\"".to_string()])
        .collect();
    let methods = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
    ];
    for line in page.lines().filter(|l| l.starts_with("steward_http_")) {
        assert!(
            methods
                .iter()
                .any(|m| line.contains(&format!("method=\"{m}\"")))
                && routes.iter().any(|r| line.contains(r.as_str()))
                && ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .iter()
                    .any(|c| line.contains(&format!("status=\"{c}\""))),
            "a label outside the fixed sets: {line}"
        );
    }

    // A 10 MB body: 413 with a stable code. The server may answer (and close) before the
    // client has sent it all, so the body is written by one task while the answer is read
    // by another, over a plain socket, and a write cut short is expected.
    let body_len = 10 * 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/runs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {master}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n",
        server.addr
    );
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..body_len / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(18).any(|w| w == b"payload_too_large\"") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a 10 MB body");
    writing.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    server.stop.cancel();
    server.done.await.unwrap().unwrap();
    t.cleanup().await;
}

async fn dashboard_writes_need_this_origin(backend: Backend) {
    let t = fresh(backend).await;
    let server = start(&t, ServerLimits::default()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let master = server
        .keys
        .mint("m", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let cookie = format!("steward_token={master}");
    let post = |origin: Option<&str>| {
        let mut request = http
            .post(format!("{}/dashboard/dead/retry", server.base))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("kind=&queue=&tenant=&confirmed=yes");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // Without an Origin, or from another site: refused, nothing done.
    for origin in [None, Some("http://evil.example"), Some("null")] {
        let response = post(origin).await.unwrap();
        assert_eq!(response.status().as_u16(), 403, "origin {origin:?}");
    }
    // From the dashboard itself: the action runs (a redirect back to the page).
    let response = post(Some(&server.base)).await.unwrap();
    assert_ne!(response.status().as_u16(), 403);
    assert!(response.status().as_u16() < 500);
    // A bearer-token client (the platform) is not a browser: no Origin needed.
    let response = http
        .post(format!("{}/api/dlq/retry", server.base))
        .bearer_auth(&master)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(response.status().as_u16(), 403);

    // Security headers on every page, and a Secure cookie behind a TLS proxy.
    let page = http
        .get(format!("{}/dashboard/login", server.base))
        .send()
        .await
        .unwrap();
    let headers = page.headers();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let login = http
        .post(format!("{}/dashboard/login", server.base))
        .header("origin", &server.base)
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={master}"))
        .send()
        .await
        .unwrap();
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("Secure") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );

    server.stop.cancel();
    server.done.await.unwrap().unwrap();
    t.cleanup().await;
}

/// Half-sent requests are dropped after the header timeout and shutdown is bounded. The
/// limits are shortened from their defaults (10 s) so the test takes seconds, not minutes.
/// The connection cap holds: with every slot taken by a silent connection, a new request
/// waits (in the kernel's backlog) until the header timeout frees the slots, then is served.
async fn connections_beyond_the_cap_wait_for_a_free_slot(backend: Backend) {
    let t = fresh(backend).await;
    // (A cap of 8 and a 1 s header timeout, so the test fills the cap and waits it out fast.)
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 8,
        ..ServerLimits::default()
    };
    let server = start(&t, limits).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let opened = Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/health", server.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "served after {waited:?}, while the cap was full"
    );
    drop(silent);
    server.stop.cancel();
    t.cleanup().await;
}

async fn slowloris_connections_are_closed(backend: Backend) {
    let t = fresh(backend).await;
    // (Short limits, so the test does not wait out the 10 s defaults.)
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(1),
    };
    let server = start(&t, limits).await;
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request head; the other half of the connections send nothing at all.
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    // The server still answers while they hang.
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Every slow connection is closed by the server within the timeout (and a margin).
    let started = Instant::now();
    for mut stream in slow {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // A kept-alive connection, idle after its answer, is closed too.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle kept-alive connection stayed open");

    // A whole head, then a body trickled a byte at a time: 408 once the body's time is up,
    // and the connection is closed.
    let mut trickle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    trickle
        .write_all(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            // One more byte every 100 ms: never idle, never done.
            let _ = trickle.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(100), trickle.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "a trickled body kept its connection open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Shutdown with a connection mid-request returns within the grace.
    let mut hanging = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    hanging
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();
    let stopping = Instant::now();
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("shutdown is bounded")
        .unwrap()
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(3));
    t.cleanup().await;
}

/// A loopback receiver: `/hook` answers `status` with `body_bytes` of body; `/redirect`
/// redirects to `/secret`; every request is counted by path.
async fn receiver(status: u16, body_bytes: usize) -> (String, Arc<[AtomicUsize; 3]>) {
    let hits: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (h1, h2, h3) = (hits.clone(), hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move || {
                h1[0].fetch_add(1, Ordering::SeqCst);
                async move {
                    // The body is streamed: an endpoint answering without end.
                    let chunk = bytes_of(64 * 1024);
                    let chunks = body_bytes / chunk.len();
                    let stream = futures::stream::iter(
                        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                    );
                    axum::response::Response::builder()
                        .status(status)
                        .body(axum::body::Body::from_stream(stream))
                        .unwrap()
                }
            }),
        )
        .route(
            "/redirect",
            axum::routing::post(move || {
                h2[1].fetch_add(1, Ordering::SeqCst);
                async { axum::response::Redirect::temporary("/secret") }
            }),
        )
        .route(
            "/secret",
            axum::routing::any(move || {
                h3[2].fetch_add(1, Ordering::SeqCst);
                async { "internal-secret-do-not-leak" }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn bytes_of(n: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(vec![b's'; n])
}

/// Deliver one webhook to `url` under `policy`; the job's last error (`None`: delivered).
async fn deliver_once(
    t: &TestStore,
    url: &str,
    policy: EndpointPolicy,
    secret: &str,
    key: Option<SecretKey>,
) -> Option<String> {
    let tenant = t
        .store
        .tenant_create(&NewTenant {
            slug: format!("t{}", fastrand::u32(..)),
            name: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    t.store
        .tenant_set_webhook(
            tenant.id,
            Some(&WebhookTarget {
                url: url.to_string(),
                secret: secret.to_string(),
            }),
        )
        .await
        .unwrap();
    let job = NewJob {
        payload: json!({"delivery_id": "d1", "tenant_id": tenant.id, "event": "module.deprecated", "body": "{}"}),
        max_attempts: 1,
        ..common::new_job("webhook_deliver", "webhooks")
    };
    let id = t.store.jobs_insert_many(&[job]).await.unwrap()[0].id;
    let mut registry = Registry::new();
    webhook::register_jobs(
        &mut registry,
        WebhookSender::new(Duration::from_secs(20), policy, key).unwrap(),
    );
    // (A runtime names each queue it works with a width; one delivery at a time is the test.)
    let config = RuntimeConfig::new(
        "security",
        vec![QueueConfig {
            name: "webhooks".into(),
            concurrency: 2,
        }],
    );
    let runtime = Runtime::new(t.store.clone(), registry, common::repo_kinds(), config).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = t.store.job_get(id).await.unwrap().unwrap();
        if matches!(job.state, JobState::Completed | JobState::Dead) {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery did not end: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.cancel();
    running.await.unwrap().unwrap();
    job.attempts.last().and_then(|a| a.error.clone())
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

async fn webhooks_reach_only_what_they_may(backend: Backend) {
    let t = fresh(backend).await;
    let (base, hits) = receiver(200, 0).await;

    // Loopback with the default policy: refused at delivery, nothing sent.
    let error = deliver_once(
        &t,
        &format!("{base}/hook"),
        EndpointPolicy::default(),
        "s",
        None,
    )
    .await
    .expect("refused");
    assert!(error.contains("may not reach"), "{error}");
    assert_eq!(
        hits[0].load(Ordering::SeqCst),
        0,
        "nothing reached the receiver"
    );
    // A name that resolves to loopback (as a rebinding DNS answers at delivery time) is
    // refused by the resolver the sender connects through: nothing sent either.
    let by_name = base.replace("127.0.0.1", "localhost");
    let error = deliver_once(
        &t,
        &format!("{by_name}/hook"),
        EndpointPolicy::default(),
        "s",
        None,
    )
    .await
    .expect("refused");
    assert!(error.contains("may not reach"), "{error}");
    assert_eq!(
        hits[0].load(Ordering::SeqCst),
        0,
        "nothing reached the receiver"
    );
    // ... and at registration, for the metadata address and a name resolving to loopback.
    for url in [
        format!("{base}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://localhost:5432/".to_string(),
    ] {
        assert!(
            EndpointPolicy::default().check_url(&url).await.is_err(),
            "{url}"
        );
    }

    // Loopback allowed (a private deployment), but a redirect is not followed.
    let loopback = || EndpointPolicy::allowing(&["127.0.0.1".to_string()]).unwrap();
    let error = deliver_once(&t, &format!("{base}/redirect"), loopback(), "s", None)
        .await
        .expect("a redirect is a failure");
    assert!(error.contains("307"), "{error}");
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
    assert_eq!(
        hits[2].load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );

    // A 300 MB answer: not read, not kept, not shown.
    let (big, big_hits) = receiver(500, 300 * 1024 * 1024).await;
    let before = rss_mb();
    let error = deliver_once(&t, &format!("{big}/hook"), loopback(), "s", None)
        .await
        .expect("a 500 is a failure");
    assert_eq!(big_hits[0].load(Ordering::SeqCst), 1);
    assert!(error.contains("500") && !error.contains("sss"), "{error}");
    let grown = rss_mb() - before;
    assert!(grown < 100.0, "RSS grew by {grown:.0} MB");

    // A secret stored sealed: delivered with the key, refused (for good) without it.
    let hex_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let sealed = SecretKey::from_hex(hex_key).unwrap().seal("whsec").unwrap();
    let key = SecretKey::from_hex(hex_key).unwrap();
    let error = deliver_once(&t, &format!("{base}/hook"), loopback(), &sealed, Some(key)).await;
    assert_eq!(error, None, "delivered");
    assert_eq!(hits[0].load(Ordering::SeqCst), 1);
    let error = deliver_once(&t, &format!("{base}/hook"), loopback(), &sealed, None)
        .await
        .expect("no key, no delivery");
    assert!(error.contains("STEWARD_SECRET_KEY"), "{error}");
    // A secret stored plain (before sealing existed) is delivered, then sealed in place.
    let key = SecretKey::from_hex(hex_key).unwrap();
    let error = deliver_once(
        &t,
        &format!("{base}/hook"),
        loopback(),
        "whsec-plain",
        Some(key),
    )
    .await;
    assert_eq!(error, None, "delivered");
    let plain = "SELECT count(*) FROM tenants WHERE webhook_secret = 'whsec-plain'";
    assert_eq!(
        common::lifecycle::count(&t, plain).await,
        0,
        "still stored plain"
    );
    t.cleanup().await;
}

async fn post_json(http: &reqwest::Client, url: &str, token: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The four abuses of `POST /api/runs` by a service token, refused; and a caller's
/// idempotency key never takes a run steward starts itself.
async fn runs_start_only_what_a_role_may(backend: Backend) {
    let t = fresh(backend).await;
    let server = start(&t, ServerLimits::default()).await;
    let http = reqwest::Client::new();
    let runs = format!("{}/api/runs", server.base);
    let service = server
        .keys
        .mint("platform", Role::Service, None, chrono::Duration::hours(1))
        .unwrap();
    let tenant_admin = server
        .keys
        .mint("t", Role::TenantAdmin, Some(1), chrono::Duration::hours(1))
        .unwrap();
    for abuse in [
        json!({"workflow": "module_upgrade", "params": {"module": "journal", "version": "2.0.0", "export_dir": "/any/dir"}}),
        json!({"workflow": "module_purge", "params": {"tenant_id": 1, "module": "journal", "before": "2100-01-01T00:00:00Z", "date": "2100-01-01"}}),
        json!({"workflow": "module_deprecation", "params": {"module": "journal", "maturity": "RETIRED", "force": true}}),
        json!({"workflow": "module_provision", "params": {"tenant_id": 1, "module": "journal"}}),
        // Billing: a month recomputed on a caller's word (it replaces that month's figures).
        json!({"workflow": "cost_aggregation", "params": {"month": "2020-01"}}),
    ] {
        let (status, body) = post_json(&http, &runs, &service, abuse.clone()).await;
        assert_eq!(status, 403, "{abuse}: {body}");
    }
    let master = server
        .keys
        .mint("ops", Role::MasterAdmin, None, chrono::Duration::hours(1))
        .unwrap();
    let (status, body) = post_json(
        &http,
        &runs,
        &master,
        json!({"workflow": "cost_aggregation", "params": {"month": "2020-01"}}),
    )
    .await;
    assert_eq!(
        status, 403,
        "the cost schedule's workflow, even for a master admin: {body}"
    );
    // A workflow open to the platform, but not to a tenant admin, and only with typed params.
    let (status, _) = post_json(
        &http,
        &runs,
        &tenant_admin,
        json!({"workflow": "demo_pipeline"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = post_json(
        &http,
        &runs,
        &service,
        json!({"workflow": "demo_pipeline", "params": {"tenant": {"$gt": ""}}}),
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("invalid_input")),
        "{body}"
    );
    // The key the deprecation of `journal` uses, taken first by a caller on another workflow:
    // the real deprecation still starts its own run.
    let key = "journal:DEPRECATED";
    let (status, body) = post_json(
        &http,
        &runs,
        &service,
        json!({"workflow": "demo_pipeline", "idempotency_key": key}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let engine = common::repo_engine(&t, t.exports.clone());
    let (deprecation, created) = engine
        .start(
            "module_deprecation",
            json!({"module": "journal", "maturity": "DEPRECATED", "force": false}),
            Some(key.to_string()),
        )
        .await
        .unwrap();
    assert!(created, "the deprecation was not taken over");
    assert_ne!(json!(deprecation), body["run"]);
    // And the same key on the same workflow from the API is still one run.
    let (status, again) = post_json(
        &http,
        &runs,
        &service,
        json!({"workflow": "demo_pipeline", "idempotency_key": key}),
    )
    .await;
    assert_eq!((status, again["run"].clone()), (200, body["run"].clone()));
    assert_eq!(
        t.store.runs_list(None, 100).await.unwrap().len(),
        2,
        "nothing else started"
    );
    // A caller's key on the same workflow as steward's own: the next nightly tick's key,
    // taken first over the API, does not stop that tick from starting its run.
    let tick = steward::workflow::scheduler::tick_key(
        chrono::Utc::now()
            .date_naive()
            .and_hms_opt(6, 0, 0)
            .unwrap()
            .and_utc()
            + chrono::Duration::days(1),
    );
    let (status, body) = post_json(
        &http,
        &runs,
        &service,
        json!({"workflow": "nightly_report", "idempotency_key": tick}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (nightly, created) = engine
        .start("nightly_report", json!({}), Some(tick))
        .await
        .unwrap();
    assert!(created, "the tick's run was taken over by a caller's key");
    assert_ne!(json!(nightly), body["run"]);
    server.stop.cancel();
    t.cleanup().await;
}

/// One row of SECURITY.md's table: method, route template, what each caller gets
/// (anonymous, tenant_admin of tenant 1, service, master_admin).
/// The rows of SECURITY.md's table: method, route, and what each caller gets (anonymous,
/// tenant_admin, service, master_admin).
fn security_table() -> Vec<(String, String, [String; 4])> {
    include_str!("../SECURITY.md")
        .lines()
        .filter_map(|line| {
            let cells: Vec<String> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
            (cells.len() == 6 && methods.contains(&cells[0].as_str())).then(|| {
                (
                    cells[0].clone(),
                    cells[1].clone(),
                    [
                        cells[2].clone(),
                        cells[3].clone(),
                        cells[4].clone(),
                        cells[5].clone(),
                    ],
                )
            })
        })
        .collect()
}

/// The served route template a row of the table calls: the same one, or the template whose
/// placeholders the row fills with a literal (`/api/jobs/{id}/retry` calls
/// `/api/jobs/{id}/{action}`, `/dashboard/modules/catalog/{module}/upgrade` calls
/// `/dashboard/modules/{tenant}/{module}/{action}`).
fn template_of<'a>(row: &str, served: &'a [(String, String)], method: &str) -> Option<&'a str> {
    let of_method = || served.iter().filter(|(m, _)| m == method).map(|(_, p)| p);
    if let Some(exact) = of_method().find(|p| *p == row) {
        return Some(exact);
    }
    let parts: Vec<&str> = row.split('/').collect();
    of_method()
        .find(|template| {
            let pattern: Vec<&str> = template.split('/').collect();
            pattern.len() == parts.len()
                && pattern.iter().zip(&parts).all(|(p, r)| {
                    p == r || (p.starts_with('{') && !r.starts_with('{') && !r.is_empty())
                })
        })
        .map(String::as_str)
}

/// A workflow an API caller may start and signal (as a platform service or an operator).
const GATED: &str = "name = \"gated\"\nstarted_by = [\"service\", \"master_admin\"]\n\
    [signals]\ngo = { sent_by = [\"service\", \"master_admin\"] }\n\
    [[steps]]\nname = \"wait\"\nhandler = \"wait.signal\"\njob = \"workflow_step\"\n\
    signal = \"go\"\n";

/// What the table's rows are called on: each call that the table lets through gets an object
/// in the state its action needs (a dead job to retry, a failed run, a module waiting for
/// approval…), made fresh for it, so every such call must answer its 2xx.
struct World<'a> {
    t: &'a TestStore,
    engine: Arc<steward::workflow::Engine>,
    tenant: i64,
    /// A run of no tenant (for reads).
    run: i64,
    fresh: usize,
}

impl World<'_> {
    fn life(&self) -> steward::lifecycle::Lifecycle {
        steward::lifecycle::Lifecycle::new(self.engine.clone()).unwrap()
    }

    fn next(&mut self) -> usize {
        self.fresh += 1;
        self.fresh
    }

    async fn job(&self, dead: bool) -> i64 {
        let id = self
            .t
            .store
            .jobs_insert_many(&[NewJob {
                tenant: self.tenant.to_string(),
                ..common::new_job("noop", "default")
            }])
            .await
            .unwrap()[0]
            .id;
        if dead {
            common::lifecycle::execute(
                self.t,
                &format!(
                    "UPDATE steward_jobs SET state = 'dead', attempt = 1, finished_at = created_at \
                     WHERE id = {id}"
                ),
            )
            .await;
        }
        id
    }

    async fn run_of(&self, workflow: &str) -> i64 {
        self.engine
            .start(workflow, json!({}), None)
            .await
            .unwrap()
            .0
    }

    /// A run that failed at its first step.
    async fn failed_run(&self) -> i64 {
        let run = self.run_of("demo_pipeline").await;
        for sql in [
            format!(
                "UPDATE steward_run_steps SET state = 'dead', error = 'x' WHERE run_id = {run} AND idx = 0"
            ),
            format!(
                "UPDATE steward_runs SET state = 'failed', error = 'x', current_step = 0 WHERE id = {run}"
            ),
        ] {
            common::lifecycle::execute(self.t, &sql).await;
        }
        run
    }

    /// A fresh module, published at 1.0.0 (with `next` published too, when given).
    async fn module(&mut self, maturity: Maturity, next: Option<&str>) -> String {
        let slug = format!("m{}", self.next());
        let record = common::lifecycle::module(&slug, maturity, &[]);
        common::lifecycle::publish(self.t, &record).await;
        if let Some(version) = next {
            common::lifecycle::publish_next(self.t, &slug, version).await;
        }
        slug
    }

    /// `stock` of the tenant in `status` (ENABLED or SUSPENDED), whatever it was.
    async fn stock(&self, want: TenantModuleStatus) {
        let admin = steward::domain::actor::Actor::master_admin("table");
        let now = common::lifecycle::status(self.t, self.tenant, "stock").await;
        if now == Some(TenantModuleStatus::Upgrading) {
            self.life()
                .repair(self.tenant, "stock", &admin)
                .await
                .unwrap();
        }
        let now = common::lifecycle::status(self.t, self.tenant, "stock").await;
        match (now, want) {
            (Some(TenantModuleStatus::Suspended), TenantModuleStatus::Enabled) => {
                self.life()
                    .resume(self.tenant, "stock", &admin)
                    .await
                    .unwrap();
            }
            (Some(TenantModuleStatus::Enabled), TenantModuleStatus::Suspended) => {
                self.life()
                    .suspend(self.tenant, "stock", &admin, "table")
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }

    async fn queue(&self, queue: &str, paused: bool) {
        steward::queue::control::set_paused(&self.t.store, queue, paused, "table", Duration::ZERO)
            .await
            .unwrap();
    }

    /// The path to call for `row` (a route of the table, its action filled in), and its body
    /// (JSON for the API, a form for the dashboard), with the object it needs made.
    async fn call(&mut self, method: &str, row: &str) -> (String, String) {
        let tenant = self.tenant;
        let action = row.rsplit('/').next().unwrap_or_default().to_string();
        let mut module = "stock".to_string();
        let mut object = self.run;
        let mut queue = "default";
        let mut body = json!({});
        let mut form = String::new();
        match (method, row) {
            ("POST", "/api/jobs") => body = json!({"kind": "noop"}),
            ("POST", "/api/runs") => body = json!({"workflow": "demo_pipeline"}),
            ("GET", r) if r.contains("/jobs/{id}") => object = self.job(false).await,
            ("POST", r)
                if r.starts_with("/api/jobs/{id}/") || r.starts_with("/dashboard/jobs/{id}/") =>
            {
                object = self.job(action != "cancel").await;
            }
            ("POST", r) if r.starts_with("/api/dlq/") || r.starts_with("/dashboard/dead/") => {
                self.job(true).await;
                form = "confirmed=yes".into();
            }
            ("POST", r) if r.contains("/queues/{queue}/") => {
                queue = if r.starts_with("/api") {
                    "ledger"
                } else {
                    "webhooks"
                };
                self.queue(queue, action == "resume").await;
            }
            ("POST", r) if r.contains("/runs/{id}/signal/") => object = self.run_of("gated").await,
            ("POST", r) if r.ends_with("/runs/{id}/retry") => object = self.failed_run().await,
            ("POST", r) if r.ends_with("/runs/{id}/cancel") => {
                object = self.run_of("demo_pipeline").await
            }
            ("POST", "/api/tenant/{id}/modules") => {
                body = json!({"module": self.module(Maturity::Ga, None).await});
            }
            ("PATCH", _) => {
                self.stock(TenantModuleStatus::Enabled).await;
                body = json!({"settings": {}});
            }
            ("POST", "/api/tenant/{id}/modules/{module}/usage") => {
                self.stock(TenantModuleStatus::Enabled).await;
                body = json!({"route": "/x", "estimated_cost": "0.1"});
            }
            ("POST", r)
                if r.starts_with("/api/tenant/{id}/modules/{module}/")
                    || r.starts_with("/dashboard/modules/{tenant}/{module}/") =>
            {
                match action.as_str() {
                    "approve" | "reject" => {
                        module = self.module(Maturity::Alpha, None).await;
                        self.life()
                            .request(
                                tenant,
                                &module,
                                &steward::domain::actor::Actor::tenant_admin("ana"),
                            )
                            .await
                            .unwrap();
                    }
                    "suspend" => self.stock(TenantModuleStatus::Enabled).await,
                    "resume" => self.stock(TenantModuleStatus::Suspended).await,
                    "repair" => {
                        self.stock(TenantModuleStatus::Enabled).await;
                        common::lifecycle::execute(
                            self.t,
                            &format!(
                                "UPDATE tenant_modules SET status = 'UPGRADING' \
                                 WHERE tenant_id = {tenant} AND module = 'stock'"
                            ),
                        )
                        .await;
                    }
                    _ => {}
                }
                body = json!({"reason": "the table test"});
                form = "reason=the+table+test".into();
            }
            ("PUT", "/api/catalog/{module}/maturity") => {
                module = self.module(Maturity::Alpha, None).await;
                body = json!({"maturity": "BETA"});
            }
            ("POST", r) if r.ends_with("/{module}/upgrade") => {
                module = self.module(Maturity::Ga, Some("1.1.0")).await;
                body = json!({"version": "1.1.0"});
                form = "version=1.1.0&confirmed=yes".into();
            }
            ("POST", r) if r.ends_with("/{module}/rollback") => {
                module = if r.starts_with("/api") {
                    "rb_api"
                } else {
                    "rb_dash"
                }
                .into();
                form = "confirmed=yes".into();
            }
            ("POST", "/api/plans/{plan}/modules") => {
                body = json!({"module": self.module(Maturity::Ga, None).await});
            }
            _ => {}
        }
        let path = row
            .replace("/api/tenant/{id}", &format!("/api/tenant/{tenant}"))
            .replace(
                "/dashboard/tenant/{id}",
                &format!("/dashboard/tenant/{tenant}"),
            )
            .replace("{id}", &object.to_string())
            .replace("{module}", &module)
            .replace("{plan}", "basic")
            .replace("{queue}", queue)
            .replace("{name}", "go")
            .replace("{tenant}", &tenant.to_string());
        let body = if path.starts_with("/dashboard") {
            form
        } else {
            body.to_string()
        };
        (path, body)
    }
}

async fn every_route_answers_each_role_as_the_table_says(backend: Backend) {
    use common::lifecycle::{publish, publish_next, tenant, wait_for, workers};
    let t = fresh(backend).await;
    let table = security_table();
    let served: Vec<(String, String)> = steward::http::routes()
        .served()
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    // Every row calls a served route, and every served route has a row.
    let mut called = std::collections::BTreeSet::new();
    for (method, row, _) in &table {
        let template = template_of(row, &served, method).unwrap_or_else(|| {
            panic!("SECURITY.md's `{method} {row}` is not a route the server answers")
        });
        called.insert((method.clone(), template.to_string()));
    }
    let lacking: Vec<_> = served.iter().filter(|r| !called.contains(*r)).collect();
    assert!(
        lacking.is_empty(),
        "routes the server answers that SECURITY.md's table lacks: {lacking:?}"
    );

    // The world: tenant `acme` (an internal tester) with `stock` enabled; two modules upgraded
    // (to be rolled back), a plan.
    let acme = tenant(&t, "acme", true, true).await;
    let life = common::lifecycle::life(&t);
    let admin = steward::domain::actor::Actor::master_admin("table");
    let stock = common::lifecycle::module("stock", Maturity::Ga, &[]);
    publish(&t, &stock).await;
    for slug in ["rb_api", "rb_dash"] {
        publish(&t, &common::lifecycle::module(slug, Maturity::Ga, &[])).await;
    }
    let running = workers(&t);
    for slug in ["stock", "rb_api", "rb_dash"] {
        life.request(
            acme,
            slug,
            &steward::domain::actor::Actor::tenant_admin("ana"),
        )
        .await
        .unwrap();
    }
    wait_for(&t, &[acme], "stock", TenantModuleStatus::Enabled).await;
    for slug in ["rb_api", "rb_dash"] {
        wait_for(&t, &[acme], slug, TenantModuleStatus::Enabled).await;
        publish_next(&t, slug, "1.1.0").await;
        life.upgrade(slug, "1.1.0", &admin).await.unwrap();
        wait_for(&t, &[acme], slug, TenantModuleStatus::UpToDate).await;
    }
    running.stop().await;
    t.store.plan_create("basic", "Basic").await.unwrap();

    let engine = common::repo_engine_with(&t, t.exports.clone(), &[GATED]);
    let run = engine
        .start("demo_pipeline", json!({}), None)
        .await
        .unwrap()
        .0;
    let server = start_with(&t, ServerLimits::default(), engine.clone()).await;
    let mut world = World {
        t: &t,
        engine,
        tenant: acme,
        run,
        fresh: 0,
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mint = |role, tenant| {
        server
            .keys
            .mint("table", role, tenant, chrono::Duration::hours(1))
            .unwrap()
    };
    let callers = [
        None,
        Some(mint(Role::TenantAdmin, Some(acme))),
        Some(mint(Role::Service, None)),
        Some(mint(Role::MasterAdmin, None)),
    ];
    let who = ["anonymous", "tenant_admin", "service", "master_admin"];
    let mut wrong = Vec::new();
    for (method, row, expected) in &table {
        for ((caller, want), who) in callers.iter().zip(expected).zip(who) {
            let (path, body) = world.call(method, row).await;
            let mut request = http.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", server.base),
            );
            if path.starts_with("/dashboard") {
                request = request.header("origin", &server.base);
                let body = if path == "/dashboard/login" && method == "POST" {
                    format!("token={}", caller.clone().unwrap_or_default())
                } else {
                    if let Some(token) = caller {
                        request = request.header("cookie", format!("steward_token={token}"));
                    }
                    body
                };
                if method != "GET" {
                    request = request
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body);
                }
            } else {
                if let Some(token) = caller {
                    request = request.bearer_auth(token);
                }
                if method != "GET" {
                    request = request
                        .header("content-type", "application/json")
                        .body(body);
                }
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // Every answer, whatever the route, caller or status, carries the security headers.
            for (header, value) in [
                ("x-frame-options", "DENY"),
                ("x-content-type-options", "nosniff"),
            ] {
                if response.headers().get(header).is_none_or(|v| v != value) {
                    wrong.push(format!("{method} {path} as {who}: no `{header}: {value}`"));
                }
            }
            if response.headers().get("content-security-policy").is_none() {
                wrong.push(format!(
                    "{method} {path} as {who}: no content-security-policy"
                ));
            }
            let to_login = status == 303
                && response
                    .headers()
                    .get("location")
                    .is_some_and(|l| l == "/dashboard/login");
            let holds = match want.as_str() {
                "login" => to_login,
                code => code.parse::<u16>().ok() == Some(status) && !(status == 303 && to_login),
            };
            if !holds {
                let text = response.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{method} {path} as {who}: {status}, the table says {want}: {}",
                    text.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that differ from SECURITY.md:\n{}",
        wrong.join("\n")
    );

    // Every dashboard write sent from another site's page (a foreign Origin) is refused with
    // 403, even with an operator's cookie and the right object.
    let mut crossed = Vec::new();
    for (method, row, _) in table
        .iter()
        .filter(|(m, r, _)| m == "POST" && r.starts_with("/dashboard"))
    {
        let (path, body) = world.call(method, row).await;
        let cookie = format!("steward_token={}", callers[3].clone().unwrap());
        let status = http
            .post(format!("{}{path}", server.base))
            .header("origin", "https://evil.example")
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != 403 {
            crossed.push(format!("{method} {path}: {status}"));
        }
    }
    assert!(
        crossed.is_empty(),
        "cross-site dashboard writes not refused: {crossed:?}"
    );

    // A method a route does not declare is not served (no handler behind an undeclared verb).
    let mut undeclared = Vec::new();
    for (_, template) in &served {
        let declared: Vec<&str> = served
            .iter()
            .filter(|(_, p)| p == template)
            .map(|(m, _)| m.as_str())
            .collect();
        let path = template.replace(['{', '}'], "");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if declared.contains(&method) {
                continue;
            }
            let status = http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", server.base),
                )
                .bearer_auth(callers[3].clone().unwrap())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status != 405 {
                undeclared.push(format!("{method} {template}: {status}"));
            }
        }
    }
    assert!(
        undeclared.is_empty(),
        "undeclared methods answered: {undeclared:?}"
    );
    server.stop.cancel();
    t.cleanup().await;
}

per_backend!(
    every_route_answers_each_role_as_the_table_says,
    runs_start_only_what_a_role_may,
    tokens_metrics_and_bodies,
    dashboard_writes_need_this_origin,
    slowloris_connections_are_closed,
    connections_beyond_the_cap_wait_for_a_free_slot,
    webhooks_reach_only_what_they_may,
);
