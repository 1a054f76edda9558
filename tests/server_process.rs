//! A real `steward serve` process, with its default limits, under the abuse of #14 (on both
//! backends): 80,000 requests with made-up methods leave `/metrics` small; half-sent requests
//! are closed by the header-read timeout while the server keeps answering; SIGTERM with
//! connections hanging ends the process within the shutdown grace.

mod common;

use common::{Backend, fresh, process};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METRICS_TOKEN: &str = "a-metrics-scrape-token-of-32-bytes-at-least";
/// The defaults of `steward serve` (`http::ServerLimits::default()`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `steward migrate` on `url`, as a deployment runs it before anything else.
fn migrate(url: &str) {
    let output = process::command(&["migrate"], url)
        .output()
        .expect("run steward migrate");
    assert!(output.status.success(), "{output:?}");
}

/// `steward serve` on `url` (a migrated database), with a metrics scrape credential.
fn serve(url: &str, listen: &str) -> Child {
    process::command(&["serve", "--listen", listen], url)
        .env("STEWARD_METRICS_TOKEN", METRICS_TOKEN)
        .env("RUST_LOG", "error")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn steward serve")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Half a request head, sent and left hanging.
async fn half_sent(addr: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

per_backend!(a_served_process_keeps_metrics_bounded_drops_slow_clients_and_stops_within_its_grace);

async fn a_served_process_keeps_metrics_bounded_drops_slow_clients_and_stops_within_its_grace(
    backend: Backend,
) {
    let t = fresh(backend).await;
    let listen = process::free_address();
    let base = format!("http://{listen}");
    let mut server = serve(&process::url_of(&t), &listen);
    let http = reqwest::Client::new();
    process::await_healthy(&base).await;
    let rss_before = rss_kib(server.id());

    // 80,000 requests with made-up methods and paths, eight clients at a time.
    let senders: Vec<_> = (0..8)
        .map(|client| {
            let http = http.clone();
            let base = base.clone();
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let n = client * 10_000 + i;
                    let method = reqwest::Method::from_bytes(format!("M{n}X").as_bytes()).unwrap();
                    let status = http
                        .request(method, format!("{base}/made-up/{n}"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16();
                    assert!((403..=405).contains(&status), "{n}: {status}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let page = http
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("steward_http_request_duration_seconds"),
        "{page}"
    );
    assert!(!page.contains("M17X") && !page.contains("/made-up/"));
    assert!(
        page.len() < 100 * 1024,
        "/metrics is {} bytes after 80,000 made-up requests",
        page.len()
    );
    let rss_after = rss_kib(server.id());
    eprintln!(
        "/metrics {} bytes; RSS {rss_before} KiB before, {rss_after} KiB after",
        page.len()
    );
    // The attack this answers took a server from 65 to 145 MB.
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // Slow clients (half the request head, then nothing) are closed by the header-read
    // timeout while the server answers others.
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(half_sent(&listen).await);
    }
    let opened = Instant::now();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for mut stream in slow {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 2, async {
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
    assert!(opened.elapsed() < HEADER_READ_TIMEOUT + Duration::from_secs(5));

    // SIGTERM with connections hanging: the process exits, cleanly, within the grace.
    let mut hanging = Vec::new();
    for _ in 0..50 {
        hanging.push(half_sent(&listen).await);
    }
    let stopping = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(5),
            "steward serve still running {:?} after SIGTERM",
            stopping.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    drop(hanging);
    t.cleanup().await;
}

/// Every sample's metric has `# HELP` and `# TYPE` (histogram samples under their base name).
fn undescribed(page: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| page.contains(&format!("# TYPE {b} histogram")))
            })
            .unwrap_or(name);
        for kind in ["HELP", "TYPE"] {
            if !page.contains(&format!("# {kind} {base} ")) {
                missing.push(format!("{kind} {base}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

/// `steward worker --metrics-listen` without STEWARD_JWT_SECRET: `/health` and its own
/// `/metrics` for the scrape credential only; every series described; the queue's latency
/// and the zero counts there; every metric the Grafana dashboard charts exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_described_metrics_to_the_scrape_credential_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("worker.db").display());
    migrate(&url);
    // A job to run, and one that waits in a paused queue: its age is the queue's latency.
    for args in [
        &["enqueue", "noop"][..],
        &["queues", "pause", "ledger", "--wait", "0"],
        &["enqueue", "ledger"],
    ] {
        let done = process::command(args, &url).output().unwrap();
        assert!(done.status.success(), "{args:?}: {done:?}");
    }
    let waiting_since = Instant::now();
    let listen = process::free_address();
    let base = format!("http://{listen}");
    let mut worker = process::command(&["worker", "--metrics-listen", &listen], &url)
        .env("STEWARD_METRICS_TOKEN", METRICS_TOKEN)
        .env_remove("STEWARD_JWT_SECRET")
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let scrape = || async {
        let response = http
            .get(format!("{base}/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response.text().await.ok()?)
    };
    // Until the worker ran the job (its completed attempt is in this process's recorder, and
    // the database gauges, read every few seconds, no longer show it waiting). The attempt
    // series exist before (kept at zero), so the wait is for the noop's own count.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        if let Some(page) = scrape().await
            && page.contains(
                "steward_job_attempts_total{queue=\"default\",kind=\"noop\",outcome=\"completed\"} 1",
            )
            && page.contains("steward_jobs{queue=\"default\",state=\"available\"} 0")
            && page.contains("steward_http_request_duration_seconds_count{")
        {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt in /metrics: {:?}",
            worker.try_wait()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(undescribed(&page), Vec::<String>::new(), "{page}");
    for series in [
        "steward_queue_oldest_available_seconds{queue=\"default\"} 0.000",
        "steward_queue_paused{queue=\"default\"} 0",
        "steward_workers_alive 1",
        "steward_jobs{queue=\"default\",state=\"available\"} 0",
        "steward_jobs{queue=\"default\",state=\"dead\"} 0",
        "steward_dead_letters{queue=\"default\"} 0",
        "steward_runs{workflow=\"module_provision\",state=\"failed\"} 0",
        "outcome=\"completed\"",
        // Kept at zero: a kind that never ran, a live worker holding nothing.
        "steward_job_attempts_total{queue=\"default\",kind=\"fail\",outcome=\"fatal\"} 0",
    ] {
        assert!(page.contains(series), "no `{series}` in {page}");
    }
    // The paused queue's oldest job has waited about as long as this test has.
    let age: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("steward_queue_oldest_available_seconds{queue=\"ledger\"} "))
        .unwrap_or_else(|| panic!("no ledger latency in {page}"))
        .parse()
        .unwrap();
    let waited = waiting_since.elapsed().as_secs_f64();
    assert!(
        age > 0.0 && age <= waited + 1.0,
        "age {age} s, waited {waited} s"
    );
    assert!(
        page.contains("steward_queue_paused{queue=\"ledger\"} 1"),
        "{page}"
    );
    let line = |prefix: &str| {
        page.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {page}"))
            .to_string()
    };
    // The one worker leads, and holds no job once the noop ran.
    assert!(line("steward_leader{name=\"steward\",worker=").ends_with(" 1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = scrape().await.unwrap_or_default();
        if page
            .lines()
            .any(|l| l.starts_with("steward_worker_running_jobs{worker=") && l.ends_with("} 0"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no zero running-jobs gauge: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dashboard charts only what is there.
    let grafana = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/steward.json"
    ))
    .unwrap();
    let mut charted: Vec<&str> = grafana
        .match_indices("steward_")
        .map(|(at, _)| {
            let rest = &grafana[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| name.len() > "steward_".len())
        .collect();
    charted.sort();
    charted.dedup();
    for name in charted {
        let base = ["_bucket", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            page.contains(&format!("# HELP {base} ")),
            "the Grafana dashboard charts {name}, which /metrics lacks"
        );
    }
    // Only the scrape credential; nothing but /health and /metrics.
    let anonymous = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let forged = http
        .get(format!("{base}/metrics"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let api = http
        .get(format!("{base}/api/jobs"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404);
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// Credentials never reach the log, even at debug level: bearer tokens on API and dashboard
/// requests, a token posted to the login form, the session cookie it sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_out_of_the_log_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    migrate(&url);
    let listen = process::free_address();
    let base = format!("http://{listen}");
    let mut server = process::command(&["serve", "--listen", &listen], &url)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn steward serve");
    process::await_healthy(&base).await;
    let token = steward::api::auth::AuthKeys::new(process::SECRET)
        .unwrap()
        .mint(
            "ops",
            steward::api::auth::Role::MasterAdmin,
            None,
            chrono::Duration::hours(1),
        )
        .unwrap();
    let http = reqwest::Client::new();
    for path in ["/api/jobs", "/api/runs", "/dashboard", "/metrics"] {
        let answer = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
    }
    // (Not followed: the session cookie is set on the redirect itself.)
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirect
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &base)
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let cookie = login
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().to_string())
        .unwrap_or_default();
    let session = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_string())
        .unwrap_or_default();
    let _ = process::terminate(&mut server, Duration::from_secs(10));
    let mut log = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // The requests were logged (so the check below is about a log that was written)...
    assert!(
        log.matches("request").count() >= 5,
        "no request log at debug level: {log}"
    );
    // ...without any credential, nor its signature alone.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "a bearer token was logged");
    assert!(session.len() >= 16, "no session cookie: {cookie:?}");
    assert!(!log.contains(&session), "the session cookie was logged");
}
