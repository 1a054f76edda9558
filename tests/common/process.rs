//! Real `steward` processes for tests: the binary under test, reading the repository's jobs,
//! workflows and catalog, against a test's own database.

use super::TestStore;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The JWT secret test processes are started with.
pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// The URL a process uses to reach `t`'s database (on PostgreSQL, in the test's schema).
pub fn url_of(t: &TestStore) -> String {
    match &t.schema {
        Some(schema) => {
            let separator = if t.url.contains('?') { '&' } else { '?' };
            format!("{}{separator}options=-c%20search_path%3D{schema}", t.url)
        }
        None => t.url.clone(),
    }
}

/// `steward <args>` against `url`, with the repository's definitions, quiet.
pub fn command(args: &[&str], url: &str) -> Command {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new(env!("CARGO_BIN_EXE_steward"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("STEWARD_JWT_SECRET", SECRET)
        .env("STEWARD_JOBS_DIR", format!("{dir}/jobs"))
        .env("STEWARD_WORKFLOWS_DIR", format!("{dir}/workflows"))
        .env("STEWARD_CATALOG_DIR", format!("{dir}/catalog"))
        .env("STEWARD_EXPORT_DIR", super::scratch_dir().join("process"))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A loopback address with a port free right now, for a server a test starts.
pub fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port();
    format!("127.0.0.1:{port}")
}

/// Wait (up to 60 s) until the server at `base` (`http://…`) answers `/health` with 200.
pub async fn await_healthy(base: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(health) = http.get(format!("{base}/health")).send().await
            && health.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never answered /health");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is killed if the test ends (or panics) while it still runs, so a
/// failed test leaves no worker behind holding database connections.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `steward worker` (every queue of `jobs/`, default settings) named `id`.
pub fn worker(url: &str, id: &str) -> Running {
    Running(
        command(&["worker"], url)
            .env("STEWARD_WORKER_ID", id)
            .spawn()
            .expect("spawn steward worker"),
    )
}

/// SIGTERM `child` and wait for it to exit (at most `within`).
pub fn terminate(child: &mut Child, within: Duration) -> ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    let since = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for steward") {
            return status;
        }
        if since.elapsed() > within {
            let _ = child.kill();
            panic!("steward did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
