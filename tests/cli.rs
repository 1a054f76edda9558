//! The command line on bad input: a clear message, a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

/// The binary under test. Its exports (of commands that open the export storage) go to a
/// scratch directory outside the working tree unless a test names its own.
fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steward"));
    let scratch = std::env::var_os("STEWARD_TEST_SCRATCH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("steward-test-exports-{}", std::process::id()));
    command.env("STEWARD_EXPORT_DIR", scratch);
    command
}

fn steward(args: &[&str], database_url: &str, jobs_dir: &Path) -> Output {
    bin()
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("STEWARD_JOBS_DIR", jobs_dir)
        .env(
            "STEWARD_WORKFLOWS_DIR",
            jobs_dir.with_file_name("workflows"),
        )
        .env("RUST_LOG", "error")
        .output()
        .expect("run steward")
}

fn repo_jobs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs"))
}

/// A SQLite database in `dir`, migrated (`steward migrate`, as a user runs it first).
fn sqlite(dir: &tempfile::TempDir) -> String {
    let url = blank_sqlite(dir);
    let output = bin()
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "error")
        .output()
        .expect("run steward migrate");
    assert!(output.status.success(), "{output:?}");
    url
}

/// The URL of a SQLite database in `dir` that nothing has created yet.
fn blank_sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("cli.db").display())
}

/// Exit code and stderr; asserts it did not panic.
fn failed(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "steward panicked: {stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn unknown_job_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = failed(&steward(
        &["enqueue", "launch_rockets"],
        &sqlite(&dir),
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error: unknown job kind `launch_rockets`"),
        "{stderr}"
    );
}

#[test]
fn malformed_payloads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let (code, stderr) = failed(&steward(
        &["enqueue", "sleep", "--payload", "{\"ms\": "],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("--payload is not valid JSON"), "{stderr}");
    let (code, stderr) = failed(&steward(
        &["enqueue", "sleep", "--payload", "{\"ms\": \"soon\"}"],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid payload for job kind `sleep`"),
        "{stderr}"
    );
    let (code, stderr) = failed(&steward(
        &["enqueue", "noop", "--payload", "[1, 2]"],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("must be a JSON object"), "{stderr}");
    // Nothing was enqueued by the refused commands.
    let list = steward(&["jobs", "list", "--output", "json"], &url, repo_jobs());
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

#[test]
fn malformed_job_definition_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(
        jobs.join("broken.toml"),
        "kind = \"broken\"\nqueue = \"q\"\nmax_attempts = \"many\"\n",
    )
    .unwrap();
    let (code, stderr) = failed(&steward(&["worker"], &sqlite(&dir), &jobs));
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.toml:3:"), "{stderr}");
    // A kind without code in this binary is a warning (a rolling deploy runs old and new
    // binaries side by side): the worker starts, and names the file and line.
    std::fs::write(jobs.join("broken.toml"), "kind = \"mystery\"\n").unwrap();
    let mut worker = bin()
        .arg("worker")
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_JOBS_DIR", &jobs)
        .env("STEWARD_WORKFLOWS_DIR", dir.path().join("workflows"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(worker.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("broken.toml:1: no handler is registered for job kind `mystery`") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "the worker exited instead of warning: {seen}");
        seen.push_str(&line);
    }
    assert!(worker.try_wait().unwrap().is_none(), "the worker runs on");
    worker.kill().unwrap();
    let _ = worker.wait();
}

#[test]
fn unreachable_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // `--db-wait-secs 1`: by default a command waits 60 s for a database that is still
    // starting; this one never comes, so the test bounds the wait (and sees it logged).
    let output = bin()
        .args(["--db-wait-secs", "1", "jobs", "list"])
        .env(
            "DATABASE_URL",
            "postgres://postgres:secret@127.0.0.1:1/nowhere",
        )
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    assert!(stderr.contains("waiting for the database"), "{stderr}");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot use database postgres://postgres:***@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password must not be printed"
    );
    // A password passed as a parameter is not printed either.
    let output = bin()
        .args(["--db-wait-secs", "1", "jobs", "list"])
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable&password=hunter2",
        )
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    assert_eq!(code, 1);
    assert!(stderr.contains("password=***"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let (code, stderr) = failed(&steward(&["migrate"], "mysql://localhost/x", repo_jobs()));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("DATABASE_URL must start with postgres:// or sqlite:"),
        "{stderr}"
    );
    drop(dir);
}

#[test]
fn operator_commands_refuse_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let (code, stderr) = failed(&steward(&["jobs", "show", "999"], &url, repo_jobs()));
    assert_eq!(code, 1);
    assert!(stderr.contains("no job 999"), "{stderr}");
    let (code, stderr) = failed(&steward(&["dlq", "retry"], &url, repo_jobs()));
    assert_eq!(code, 2);
    assert!(stderr.contains("give job ids or --all"), "{stderr}");
    let (code, stderr) = failed(&steward(
        &["jobs", "list", "--state", "sleeping"],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown job state `sleeping`"), "{stderr}");
    let (code, _) = failed(&steward(&["jobs", "show", "abc"], &url, repo_jobs()));
    assert_eq!(code, 2);
    let (code, stderr) = failed(&steward(
        &["worker", "--queue", "default=0"],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid queue `default=0`"), "{stderr}");
}

#[test]
fn workflow_runs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let out = steward(
        &[
            "run",
            "demo_pipeline",
            "--param",
            "tenant=acme",
            "--idempotency-key",
            "k",
        ],
        &url,
        repo_jobs(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "started run 1");
    let out = steward(
        &["run", "demo_pipeline", "--idempotency-key", "k"],
        &url,
        repo_jobs(),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "run 1 already exists for this idempotency key"
    );
    let out = steward(
        &["runs", "show", "1", "--output", "json"],
        &url,
        repo_jobs(),
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(run["params"]["tenant"], "acme");
    assert_eq!(run["steps"][0]["state"], "queued");
    // The run records the version of the definition it started with; the list shows it.
    let version = run["version"].as_str().expect("a version").to_string();
    assert_eq!(version.len(), 12);
    let out = steward(&["runs", "list"], &url, repo_jobs());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("VERSION") && listing.contains(&version),
        "{listing}"
    );
    let (code, stderr) = failed(&steward(&["run", "no_such_flow"], &url, repo_jobs()));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unknown workflow `no_such_flow`"),
        "{stderr}"
    );
    let (code, stderr) = failed(&steward(
        &["run", "demo_pipeline", "--param", "oops"],
        &url,
        repo_jobs(),
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--param `oops` is not NAME=VALUE"),
        "{stderr}"
    );
    let (code, stderr) = failed(&steward(&["runs", "retry", "1"], &url, repo_jobs()));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("only a failed run can be retried"),
        "{stderr}"
    );
    let out = steward(&["runs", "cancel", "1"], &url, repo_jobs());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "run 1 cancelled"
    );
}

/// `steward runs signal`: only signals the run's workflow declares, only those it lets a
/// master admin send (the CLI's operator), once; bad JSON is a usage error.
#[test]
fn runs_take_declared_signals_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    for entry in std::fs::read_dir(repo_jobs()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, jobs.join(path.file_name().unwrap())).unwrap();
    }
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    let waiting = |name: &str, sent_by: &str| {
        format!(
            "name = \"{name}\"\nstarted_by = [\"master_admin\"]\n[signals]\napproval = {{ sent_by = [{sent_by}] }}\n\
             [[steps]]\nname = \"await\"\nhandler = \"wait.signal\"\njob = \"workflow_step\"\n\
             signal = \"approval\"\ntimeout_secs = 600\n"
        )
    };
    std::fs::write(
        workflows.join("signalled.toml"),
        waiting("signalled", "\"master_admin\""),
    )
    .unwrap();
    std::fs::write(workflows.join("strict.toml"), waiting("strict", "")).unwrap();
    let ok = |args: &[&str]| {
        let out = steward(args, &url, &jobs);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ok(&["run", "signalled"]), "started run 1");
    assert_eq!(ok(&["run", "strict"]), "started run 2");
    let (code, stderr) = failed(&steward(&["runs", "signal", "1", "nope"], &url, &jobs));
    assert_eq!(code, 1);
    assert!(stderr.contains("declares no signal `nope`"), "{stderr}");
    let (code, stderr) = failed(&steward(&["runs", "signal", "2", "approval"], &url, &jobs));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not sent by master_admin"), "{stderr}");
    let (code, stderr) = failed(&steward(
        &["runs", "signal", "1", "approval", "--payload", "{oops"],
        &url,
        &jobs,
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("--payload is not JSON"), "{stderr}");
    assert_eq!(
        ok(&[
            "runs",
            "signal",
            "1",
            "approval",
            "--payload",
            "{\"ok\": true}"
        ]),
        "signal `approval` sent to run 1"
    );
    let (code, stderr) = failed(&steward(&["runs", "signal", "1", "approval"], &url, &jobs));
    assert_eq!(code, 1);
    assert!(stderr.contains("was already sent to run 1"), "{stderr}");
}

#[test]
fn enqueue_then_operate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let out = steward(
        &["enqueue", "noop", "--unique-key", "k1"],
        &url,
        repo_jobs(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One table style: a header row, then the rows.
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [vec!["JOB", "ENQUEUED"], vec!["1", "enqueued"]],
        "{table}"
    );
    // And JSON for programs: the same answer, parsed.
    let out = steward(
        &["enqueue", "noop", "--unique-key", "k1", "--output", "json"],
        &url,
        repo_jobs(),
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again[0]["id"], 1, "{again}");
    assert_eq!(
        again[0]["inserted"], false,
        "a duplicate of the live job: {again}"
    );
    let out = steward(&["jobs", "cancel", "1"], &url, repo_jobs());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cancelled 1 job(s)"
    );
    let out = steward(
        &["jobs", "show", "1", "--output", "json"],
        &url,
        repo_jobs(),
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let counts = steward(&["jobs", "counts"], &url, repo_jobs());
    let counts = String::from_utf8_lossy(&counts.stdout).to_string();
    assert!(counts.starts_with("QUEUE"), "headers first: {counts}");
    assert_eq!(job["state"], "cancelled");
    // An action that applies to nothing says so and exits non-zero: a job that does not
    // exist, a dead-letter queue with nothing in it.
    for args in [
        &["jobs", "retry", "999"][..],
        &["jobs", "discard", "999"][..],
        &["dlq", "retry", "--all"][..],
    ] {
        let (code, stderr) = failed(&steward(args, &url, repo_jobs()));
        assert_eq!(code, 1, "{args:?}");
        assert!(
            stderr.contains("no job") || stderr.contains("nothing was retried"),
            "{args:?}: {stderr}"
        );
    }
    // Ids asked for one by one: each one not retried is named, with why.
    let out = steward(&["enqueue", "noop", "--output", "json"], &url, repo_jobs());
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let second = second[0]["id"].as_i64().expect("an id").to_string();
    let out = steward(&["jobs", "retry", "1", &second, "999"], &url, repo_jobs());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "job 1 was retried: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retried 1 job(s)"),
        "{out:?}"
    );
    assert!(
        stderr.contains(&format!(
            "not retried: job {second} is available: nothing to retry"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not retried: no job 999"), "{stderr}");
    let (code, stderr) = failed(&steward(&["jobs", "retry", &second], &url, repo_jobs()));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is available: nothing to retry"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_then_exits_cleanly() {
    use steward::store::JobAdmin;
    use steward::types::JobState;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let out = steward(
        &["enqueue", "sleep", "--payload", "{\"ms\": 1500}"],
        &url,
        repo_jobs(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut worker = bin()
        .args(["worker", "--poll-ms", "50"])
        .env("DATABASE_URL", &url)
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn worker");
    let store = steward::store::sqlite::SqliteStore::connect(&url)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.job_get(1).await.unwrap().map(|j| j.state) != Some(JobState::Running) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful exit, got {exit:?}");
    let job = store.job_get(1).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Completed,
        "the running job finished before exit"
    );
}

#[test]
fn module_lifecycle_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    // Answers read as JSON (`--output json`, here from the environment).
    let run = |args: &[&str]| {
        bin()
            .args(args)
            .env("DATABASE_URL", &url)
            .env("STEWARD_JOBS_DIR", repo_jobs())
            .env(
                "STEWARD_WORKFLOWS_DIR",
                repo_jobs().with_file_name("workflows"),
            )
            .env("STEWARD_OUTPUT", "json")
            .env("RUST_LOG", "error")
            .output()
            .expect("run steward")
    };
    let ok = |args: &[&str]| {
        let output = run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    assert!(ok(&["catalog", "load"]).contains("\"modules\":3"));
    assert!(ok(&["tenant", "create", "acme", "--internal-tester"]).contains("\"id\": 1"));
    assert!(ok(&["module", "request", "1", "chatbot"]).contains("PENDING_APPROVAL"));
    assert!(ok(&["module", "approve", "1", "chatbot"]).contains("PROVISIONING"));

    // Refused by a rule: exit 1 and the rule; bad input: exit 2.
    let (code, stderr) = failed(&run(&["module", "request", "1", "alert_engine"]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("needs its dependencies enabled first: inventory"),
        "{stderr}"
    );
    let (code, stderr) = failed(&run(&["module", "approve", "1", "chatbot"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("PROVISIONING"), "{stderr}");
    let (code, stderr) = failed(&run(&[
        "module",
        "request",
        "1",
        "x\"; DROP TABLE tenants; --",
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid module slug"), "{stderr}");
    let (code, stderr) = failed(&run(&["catalog", "set-maturity", "inventory", "ALPHA"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot go from GA to ALPHA"), "{stderr}");
    let (code, _) = failed(&run(&["catalog", "set-maturity", "inventory", "SHINY"]));
    assert_eq!(code, 2);

    // Settings from the CLI are checked against the version's JSON Schema, as the API's.
    ok(&["module", "request", "1", "inventory"]);
    let (code, stderr) = failed(&run(&[
        "module",
        "settings",
        "1",
        "inventory",
        "--set",
        r#"{"low_stock_threshold": -3, "colour": "red"}"#,
    ]));
    assert_eq!(code, 1);
    assert!(stderr.contains("do not follow its schema"), "{stderr}");
    assert_eq!(
        ok(&["module", "settings", "1", "inventory"]).trim(),
        "{}",
        "nothing was written"
    );
    assert!(
        ok(&[
            "module",
            "settings",
            "1",
            "inventory",
            "--set",
            r#"{"low_stock_threshold": 3}"#
        ])
        .contains("\"low_stock_threshold\": 3")
    );
    // Repairing a consistent record does nothing, and says so.
    let (code, stderr) = failed(&run(&["module", "repair", "1", "chatbot"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("nothing to repair"), "{stderr}");

    // A module added to a plan no one subscribes to yet is added (exit 0); added again, with
    // no tenant lacking it, nothing was done (exit 1).
    ok(&["plan", "create", "pro", "Pro"]);
    let added = ok(&["plan", "add-module", "pro", "inventory"]);
    assert!(added.contains("\"added\":true"), "{added}");
    let (code, stderr) = failed(&run(&["plan", "add-module", "pro", "inventory"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("was in it already"), "{stderr}");

    let audit = ok(&["audit", "--tenant", "1"]);
    assert!(
        audit.contains("module.approve") && audit.contains("module.request"),
        "{audit}"
    );
}

#[test]
fn malformed_catalog_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    std::fs::create_dir(&catalog).unwrap();
    std::fs::write(
        catalog.join("broken.toml"),
        "slug = \"broken\"\nname = \"Broken\"\ndescription = \"\"\npricing_tier = \"free\"\n\
         maturity = \"GA\"\n\n[[versions]]\nversion = \"1.0.0\"\nbuild_hash = \"x\"\n\
         tables = [\"tenant_other_items\"]\nup_sql = \"CREATE TABLE tenant_other_items (tenant_id BIGINT)\"\n\
         down_sql = \"DROP TABLE tenant_other_items\"\n",
    )
    .unwrap();
    let output = bin()
        .args(["catalog", "load"])
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_CATALOG_DIR", &catalog)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.toml:10"), "{stderr}");
    assert!(stderr.contains("tenant_other_items"), "{stderr}");
}

#[test]
fn the_demo_runs_the_module_lifecycle_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = std::time::Instant::now();
    let output = bin()
        .args(["demo", "--exit-when-idle", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_JOBS_DIR", repo.join("jobs"))
        .env("STEWARD_WORKFLOWS_DIR", repo.join("workflows"))
        .env("STEWARD_CATALOG_DIR", repo.join("catalog"))
        .env("STEWARD_EXPORT_DIR", dir.path().join("exports"))
        .env("RUST_LOG", "warn")
        .env("STEWARD_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (code, stderr) = failed(&output);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The demo settles (every run ended, the failing saga compensated) in under 20 s, a debug
    // build on a loaded 2-core machine included.
    assert!(
        took < std::time::Duration::from_secs(20),
        "the demo took {took:?}"
    );
    // JSON logs: the failed attempt of the demo's tenant-1 job carries its trace and tenant.
    let failed_attempt = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["fields"]["message"] == "attempt failed"
                && line["fields"]["tenant_id"] == "tenant-1"
        })
        .unwrap_or_else(|| panic!("no JSON line of a tenant-1 failure in:\n{stderr}"));
    let trace_id = failed_attempt["fields"]["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32, "{failed_attempt}");
    for step in [
        "inventory 1.0.0 provisioned for tenants 1 and 2",
        "chatbot (ALPHA) is PENDING_APPROVAL",
        "inventory upgraded to 2.0.0",
        "inventory rolled back to 1.0.0 for 2 tenants",
        "alert_engine 1.1.0 failed and was rolled back",
        "/dashboard  (log in with the token below)",
        "token:     eyJ",
    ] {
        assert!(
            stdout.contains(step),
            "missing `{step}` in:\n{stdout}\n{stderr}"
        );
    }
    let backups = dir.path().join("exports/backups/inventory/1.0.0");
    assert!(backups.is_dir(), "the major upgrade was backed up");
    // The hints name this binary as it can be run from here, the dead job a retry fixes, and
    // how to replay the demo; the retry they name works.
    let binary = env!("CARGO_BIN_EXE_steward");
    assert!(
        stdout.contains("to replay the demo from the start, remove"),
        "{stdout}"
    );
    let retry_line = stdout
        .lines()
        .find(|l| l.contains("this retry completes it"))
        .unwrap_or_else(|| panic!("no retry hint in:\n{stdout}"));
    let retry_args: Vec<&str> = retry_line
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(retry_args[..3], [binary, "dlq", "retry"], "{retry_line}");
    let retried = Command::new(binary)
        .args(&retry_args[1..])
        .current_dir(dir.path())
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_JOBS_DIR", repo.join("jobs"))
        .env("STEWARD_WORKFLOWS_DIR", repo.join("workflows"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (code, stderr) = failed(&retried);
    assert_eq!(code, 0, "{retry_line}: {stderr}");
    assert!(String::from_utf8_lossy(&retried.stdout).contains("retried 1 job(s)"));
    // Read back by `module restore-backup`: verified, and since the rollback kept every row,
    // nothing to put back, which it says with a non-zero exit.
    let run = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("run-").map(str::to_string))
        })
        .expect("a run-<id> directory");
    for (run, expected) in [
        (run.as_str(), "nothing to restore"),
        ("999999", "no run 999999"),
    ] {
        let output = bin()
            .args(["module", "restore-backup", "inventory", "--run", run])
            .current_dir(dir.path())
            .env("DATABASE_URL", sqlite(&dir))
            .env("STEWARD_JOBS_DIR", repo.join("jobs"))
            .env("STEWARD_WORKFLOWS_DIR", repo.join("workflows"))
            .env("STEWARD_EXPORT_DIR", dir.path().join("exports"))
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let (code, stderr) = failed(&output);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// A command started while PostgreSQL is not reachable yet waits for it (with backoff, saying
/// so) and does its work once it answers: here the database's port is a loopback relay that
/// starts relaying to the real server only after the command has begun waiting.
#[test]
fn a_command_waits_for_a_database_that_comes_up_later() {
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    let Ok(real) = std::env::var("STEWARD_TEST_DATABASE_URL") else {
        panic!("this test needs STEWARD_TEST_DATABASE_URL (scripts/test.sh sets it)");
    };
    let target = real
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in STEWARD_TEST_DATABASE_URL")
        .to_string();
    // A port nobody listens on yet: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Its own schema, migrated: the test reads nothing it did not write.
    let schema = format!("steward_test_cli_wait_{}", std::process::id());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(async {
        use steward::store::JobStore;
        let store = steward::store::postgres::PgStore::connect(&real, Some(&schema))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    });
    let separator = if real.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{separator}options=-c%20search_path%3D{schema}",
        real.replacen(&target, &format!("127.0.0.1:{port}"), 1)
    );
    let mut child = bin()
        .args(["jobs", "list"])
        .env("DATABASE_URL", &url)
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command says it is waiting, then open the port.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("waiting for the database") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "steward exited: {seen}"
        );
        seen.push_str(&line);
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = TcpStream::connect(&target).unwrap();
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let status = child.wait().unwrap();
    runtime.block_on(store.drop_schema()).unwrap();
    assert!(
        status.success(),
        "steward failed after the database came up: {seen}"
    );
}

/// Secrets in the environment never reach the help text (clap shows env values otherwise).
#[test]
fn help_never_prints_secrets() {
    for args in [&["--help"][..], &["worker", "--help"], &["serve", "--help"]] {
        let output = bin()
            .args(args)
            .env(
                "DATABASE_URL",
                "postgres://steward:hunter2-db-pass@db.internal/steward",
            )
            .env(
                "STEWARD_JWT_SECRET",
                "jwt-secret-value-of-more-than-32-bytes",
            )
            .env(
                "STEWARD_METRICS_TOKEN",
                "metrics-token-value-of-more-than-32-bytes",
            )
            .env(
                "STEWARD_SECRET_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            )
            .output()
            .expect("run steward");
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        // Documented in `steward --help`; a subcommand's help points there.
        let documented = if args.len() == 1 {
            "DATABASE_URL"
        } else {
            "`steward --help`"
        };
        assert!(
            text.contains(documented),
            "{args:?}: the option is documented"
        );
        for secret in [
            "hunter2",
            "jwt-secret-value",
            "metrics-token-value",
            "00112233445566",
        ] {
            assert!(!text.contains(secret), "{args:?} printed {secret}");
        }
    }
}

/// A tenant's webhook secret is stored sealed, and only with a key to seal it.
#[test]
fn webhook_secrets_are_stored_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let run = |args: &[&str], key: Option<&str>| {
        let mut command = bin();
        command
            .args(args)
            .env("DATABASE_URL", &url)
            .env("STEWARD_JOBS_DIR", repo_jobs())
            .env(
                "STEWARD_WORKFLOWS_DIR",
                repo_jobs().with_file_name("workflows"),
            )
            .env("RUST_LOG", "error");
        if let Some(key) = key {
            command.env("STEWARD_SECRET_KEY", key);
        }
        command.output().expect("run steward")
    };
    let created = run(&["tenant", "create", "acme"], None);
    assert!(created.status.success(), "{created:?}");
    let set = [
        "tenant",
        "webhook",
        "1",
        "https://93.184.216.34/hooks",
        "--secret",
        "whsec-plain-value",
    ];
    let (code, stderr) = failed(&run(&set, None));
    assert!(
        code != 0 && stderr.contains("STEWARD_SECRET_KEY"),
        "{stderr}"
    );
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let output = run(&set, Some(key));
    assert!(output.status.success(), "{output:?}");
    let file = dir.path().join("cli.db");
    let bytes = std::fs::read(&file).unwrap();
    let wal = std::fs::read(file.with_extension("db-wal")).unwrap_or_default();
    let needle = b"whsec-plain-value";
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle)
            && !wal.windows(needle.len()).any(|w| w == needle),
        "the secret is not in the database file"
    );
    // Endpoints inside the network are refused at registration, by name or by address.
    for inside in [
        "http://127.0.0.1:5432/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "http://localhost:8080/hook",
    ] {
        let (code, stderr) = failed(&run(
            &["tenant", "webhook", "1", inside, "--secret", "whsec-x"],
            Some(key),
        ));
        assert_ne!(code, 0, "{inside} was accepted");
        assert!(
            stderr.contains("a loopback, private, link-local or reserved"),
            "{inside}: {stderr}"
        );
    }
}

/// Numeric options are checked by the parser: a negative or zero limit is refused with the
/// range, before any database is opened.
#[test]
fn numeric_options_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["jobs", "list", "--limit=-5"][..],
        &["jobs", "list", "--limit", "0"],
        &["dlq", "list", "--limit", "100000"],
        &["runs", "list", "--limit=-1"],
        &["audit", "--limit", "0"],
        &["schedules", "--count", "0"],
        &["token", "--role", "service", "--ttl-hours=-3"],
    ] {
        let (code, stderr) = failed(&steward(args, &blank_sqlite(&dir), repo_jobs()));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("is not in"), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("cli.db").exists(),
        "refused before the database was opened"
    );
}

/// `--version` names the schema the binary writes.
#[test]
fn the_version_names_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let output = steward(&["--version"], &sqlite(&dir), repo_jobs());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.starts_with(&format!("steward {} (schema ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
}

/// Cron expressions as crontab writes them (five fields) are accepted beside six-field ones.
#[test]
fn five_field_cron_expressions_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("nightly.toml"),
        "name = \"nightly\"\n[trigger]\ncron = \"15 1 * * *\"\n\
         [[steps]]\nname = \"only\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n",
    )
    .unwrap();
    let output = bin()
        .args(["schedules", "--count", "2"])
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("STEWARD_WORKFLOWS_DIR", &workflows)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("nightly"), "{stdout}");
    assert!(stdout.contains("01:15:00"), "{stdout}");
    // A broken one says how many fields it wants, with the file and line.
    std::fs::write(
        workflows.join("nightly.toml"),
        "name = \"nightly\"\n[trigger]\ncron = \"15 1 *\"\n\
         [[steps]]\nname = \"only\"\nhandler = \"step.noop\"\njob = \"workflow_step\"\n",
    )
    .unwrap();
    let output = bin()
        .args(["schedules"])
        .env("DATABASE_URL", sqlite(&dir))
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("STEWARD_WORKFLOWS_DIR", &workflows)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nightly.toml:3"), "{stderr}");
    assert!(stderr.contains("give five"), "{stderr}");
}

/// Logs written to a pipe or a file carry no colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    // A port nobody listens on: the command logs that it waits for the database, then gives up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = bin()
        .args(["jobs", "list", "--db-wait-secs", "1"])
        .env(
            "DATABASE_URL",
            format!("postgres://nobody@127.0.0.1:{port}/none"),
        )
        .env("STEWARD_JOBS_DIR", repo_jobs())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let (code, stderr) = failed(&output);
    assert_ne!(code, 0);
    assert!(stderr.contains("waiting for the database"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in: {stderr:?}");
}

/// The global options are described once, in `steward --help`; a subcommand's help lists its
/// own options (each described) and points there; the globals still work after it.
#[test]
fn global_options_are_described_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = steward(&["--help"], &sqlite(&dir), repo_jobs());
    let root = String::from_utf8_lossy(&root.stdout).to_string();
    assert_eq!(root.matches("--database-url").count(), 1, "{root}");
    assert!(root.contains("[env: DATABASE_URL]"), "{root}");
    for args in [
        &["jobs", "list", "--help"][..],
        &["module", "request", "--help"],
    ] {
        let output = steward(args, &sqlite(&dir), repo_jobs());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}");
        assert!(!help.contains("--database-url"), "{args:?}: {help}");
        assert!(!help.contains("--s3-bucket"), "{args:?}: {help}");
        assert!(help.contains("`steward --help`"), "{args:?}: {help}");
    }
    let help = steward(&["module", "request", "--help"], &sqlite(&dir), repo_jobs());
    assert!(String::from_utf8_lossy(&help.stdout).contains("<TENANT>  The tenant's id"));
    // Given after the subcommand, a global option is still taken.
    let output = steward(
        &["jobs", "list", "--database-url", "mysql://elsewhere"],
        &sqlite(&dir),
        repo_jobs(),
    );
    let (code, stderr) = failed(&output);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("mysql://elsewhere"), "{stderr}");
}

/// Only `steward migrate` (and the demo) change the schema: any other command on a database
/// that was never migrated, or is behind, is refused with the command to run, and changes
/// nothing.
#[test]
fn commands_refuse_a_database_whose_schema_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = blank_sqlite(&dir);
    for args in [
        &["jobs", "list"][..],
        &["enqueue", "noop"],
        &["catalog", "list"],
        &["jobs", "list"],
    ] {
        let (code, stderr) = failed(&steward(args, &url, repo_jobs()));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("has no steward schema") && stderr.contains("run `steward migrate`"),
            "{args:?}: {stderr}"
        );
    }
    let output = steward(&["migrate"], &url, repo_jobs());
    assert!(output.status.success(), "{output:?}");
    let (code, stderr) = failed(&steward(&["jobs", "list"], &url, repo_jobs()));
    assert_eq!(code, 0, "{stderr}");

    // A database an older steward migrated (every migration but the last): refused with its
    // version, then brought up by `steward migrate`.
    let older = tempfile::tempdir().unwrap();
    let url = blank_sqlite(&older);
    let behind = migrate_all_but_the_last(&url);
    for args in [
        &["jobs", "list"][..],
        &["enqueue", "noop"],
        &["runs", "list"],
    ] {
        let (code, stderr) = failed(&steward(args, &url, repo_jobs()));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("has schema version {behind}"))
                && stderr.contains("run `steward migrate`"),
            "{args:?}: {stderr}"
        );
    }
    let output = steward(&["migrate"], &url, repo_jobs());
    assert!(output.status.success(), "{output:?}");
    let (code, stderr) = failed(&steward(&["runs", "list"], &url, repo_jobs()));
    assert_eq!(code, 0, "{stderr}");
}

/// Apply the repository's SQLite migrations but the last one to a new database at `url`, as
/// the steward before it would have; returns the version it is left at.
fn migrate_all_but_the_last(url: &str) -> i64 {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let mut migrator = sqlx::migrate::Migrator::new(Path::new("migrations/sqlite"))
            .await
            .unwrap();
        let mut migrations = migrator.migrations.to_vec();
        migrations.pop();
        let behind = migrations.last().unwrap().version;
        migrator.migrations = migrations.into();
        migrator.run(&pool).await.unwrap();
        pool.close().await;
        behind
    })
}

#[test]
fn queues_pause_resume_and_workers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let run = |args: &[&str]| steward(args, &url, repo_jobs());
    // Resuming a queue that was never paused did nothing.
    let (code, stderr) = failed(&run(&["queues", "resume", "default"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("already running"), "{stderr}");
    let paused = run(&["queues", "pause", "default", "--wait", "0"]);
    assert!(paused.status.success(), "{paused:?}");
    assert!(String::from_utf8_lossy(&paused.stdout).contains("paused queue `default`"));
    // Pausing a paused queue did nothing: it says so and exits non-zero.
    let (code, stderr) = failed(&run(&["queues", "pause", "default"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("already paused"), "{stderr}");
    let listed = run(&["queues", "list", "--output", "json"]);
    let queues: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["paused"], true);
    let table = run(&["queues", "list"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["QUEUE", "STATE", "AVAILABLE"]);
    assert!(table.lines().nth(1).unwrap().contains("paused"), "{table}");
    assert!(run(&["queues", "resume", "default"]).status.success());
    let (code, stderr) = failed(&run(&["queues", "resume", "default"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("already running"), "{stderr}");
    let (code, stderr) = failed(&run(&["queues", "pause", "No Such"]));
    assert_eq!(code, 2, "{stderr}");
    let (code, _) = failed(&run(&["queues", "pause", "default", "--wait", "61"]));
    assert_eq!(code, 2);
    let workers = run(&["workers"]);
    assert!(workers.status.success());
    assert!(String::from_utf8_lossy(&workers.stdout).starts_with("WORKER"));
}

/// The `sustained` bench scenario, shortened (the recorded run is 600 s at 20,000 jobs/s, in
/// BENCHMARKS.md): every interval is reported with its rate, pickup, backlog and sizes, and
/// the offered jobs are executed as they come.
#[test]
fn the_sustained_bench_reports_each_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![blank_sqlite(&dir)];
    if let Ok(pg) = std::env::var("STEWARD_TEST_DATABASE_URL") {
        urls.push(pg);
    }
    for url in urls {
        let output = steward(
            &[
                "bench",
                "--scenario",
                "sustained",
                "--seconds",
                "3",
                "--interval-secs",
                "1",
                "--rate",
                "500",
            ],
            &url,
            repo_jobs(),
        );
        assert!(output.status.success(), "{output:?}");
        let line = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        let intervals = report["intervals"].as_array().expect("intervals");
        assert_eq!(intervals.len(), 3, "{report}");
        let executed: f64 = intervals
            .iter()
            .map(|i| i["jobs_per_s"].as_f64().unwrap())
            .sum();
        // 1,500 offered in 3 s; the last interval's jobs may still be running at its end.
        assert!(executed >= 900.0, "{report}");
        for interval in intervals {
            assert!(
                interval["pickup_p99_ms"].as_f64().unwrap() > 0.0,
                "{report}"
            );
            assert!(interval["rss_mb"].as_f64().unwrap() > 0.0, "{report}");
            let sized = interval.get("jobs_indexes_mb").or(interval.get("file_mb"));
            assert!(sized.is_some_and(|s| s.as_f64().unwrap() > 0.0), "{report}");
        }
    }
}

/// Every listing and action answers `--output json` with JSON (an array for a listing), and
/// a listing's table starts with its upper-case header row.
#[test]
fn every_listing_and_action_speaks_json_and_tables_have_headers() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(&dir);
    let run = |args: &[&str]| steward(args, &url, repo_jobs());
    let json_of = |args: &[&str]| -> serde_json::Value {
        let mut with = args.to_vec();
        with.extend(["--output", "json"]);
        let output = run(&with);
        assert!(output.status.success(), "{with:?}: {output:?}");
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{with:?} is not JSON ({e}): {output:?}"))
    };
    // Actions.
    assert!(json_of(&["catalog", "load"]).is_object());
    let tenant = json_of(&["tenant", "create", "acme", "--internal-tester"]);
    assert!(tenant.is_object(), "{tenant}");
    let tenant = tenant["id"].as_i64().expect("the tenant's id").to_string();
    let enqueued = json_of(&["enqueue", "noop"]);
    assert!(enqueued.is_array(), "one row per job enqueued: {enqueued}");
    let job = enqueued[0]["id"].as_i64().expect("a job id").to_string();
    assert!(json_of(&["queues", "pause", "default", "--wait", "0"]).is_object());
    // Every action says what it did as one object.
    assert_eq!(json_of(&["jobs", "cancel", &job])["cancelled"], 1);
    assert_eq!(json_of(&["jobs", "retry", &job])["retried_jobs"], 1);
    let requested = json_of(&["module", "request", &tenant, "chatbot"]);
    assert!(requested.is_object(), "{requested}");
    let approved = json_of(&["module", "approve", &tenant, "chatbot"]);
    assert!(approved.is_object(), "{approved}");
    let runs = json_of(&["runs", "list"]);
    let provisioning = runs[0]["id"]
        .as_i64()
        .expect("the provisioning run")
        .to_string();
    assert!(json_of(&["runs", "cancel", &provisioning]).is_object());
    // Listings: JSON arrays, and tables with a header.
    let listings: [&[&str]; 10] = [
        &["jobs", "list"],
        &["jobs", "counts"],
        &["dlq", "list"],
        &["queues", "list"],
        &["workers"],
        &["runs", "list"],
        &["schedules"],
        &["catalog", "list"],
        &["audit"],
        &["cost", "show"],
    ];
    for args in listings {
        let value = json_of(args);
        assert!(value.is_array(), "{args:?}: {value}");
        let table = run(args);
        assert!(table.status.success(), "{args:?}: {table:?}");
        let text = String::from_utf8_lossy(&table.stdout).to_string();
        let header = text.lines().next().unwrap_or_default();
        assert!(
            !header.is_empty() && header == header.to_uppercase(),
            "{args:?}: no header row in {text:?}"
        );
    }
    let modules = json_of(&["tenant", "modules", &tenant]);
    assert!(modules.is_array(), "{modules}");
}

/// With the deployment's own STEWARD_JWT_SECRET set (a demo run against a real deployment's
/// settings), the demo prints no token: one signed with that secret would be a real
/// operator's credential. (The default demo, without the variable, signs with a secret it
/// makes up, and prints that token.)
#[test]
fn the_demo_never_prints_a_token_signed_with_the_deployments_secret() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = bin()
        .args(["demo", "--exit-when-idle", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("DATABASE_URL", sqlite(&dir))
        .env(
            "STEWARD_JWT_SECRET",
            "the-deployments-own-secret-of-32-bytes!",
        )
        .env("STEWARD_JOBS_DIR", repo.join("jobs"))
        .env("STEWARD_WORKFLOWS_DIR", repo.join("workflows"))
        .env("STEWARD_CATALOG_DIR", repo.join("catalog"))
        .env("STEWARD_EXPORT_DIR", dir.path().join("exports"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (code, stderr) = failed(&output);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("so not shown"), "{stdout}");
    for text in [stdout.to_string(), stderr] {
        assert!(!text.contains("eyJ"), "a JWT was printed:\n{text}");
    }
}
