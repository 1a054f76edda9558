//! `steward demo`: the embedded default. SQLite under `./data/`, the worker runtime, a
//! handful of sample jobs (some that succeed, some that sleep, some that fail into the
//! dead-letter queue), two workflow runs, and the module lifecycle ([`demo_lifecycle`]:
//! provisioning, approval, a failed migration, an upgrade and its rollback); then it keeps
//! running until Ctrl-C so the CLI can be tried against it.

use super::{
    CliError, api_state, build_runtime, demo_lifecycle, load_engine, load_kinds,
    open_store_migrated, shutdown_signal, spawn_api,
};
use crate::config::{Settings, WorkerSettings};
use crate::{Client, EnqueueOptions};
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Stop once the sample jobs have settled instead of running until Ctrl-C.
    #[arg(long)]
    exit_when_idle: bool,
    #[command(flatten)]
    worker: WorkerSettings,
}

pub(crate) async fn run(settings: &Settings, args: &DemoArgs) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store_migrated(settings).await?;
    let client = Client::new(store.clone(), kinds.clone()).with_registry(super::job_registry());
    let mut enqueued = Vec::new();
    for i in 0..20 {
        let tenant = format!("tenant-{}", i % 3);
        let options = EnqueueOptions {
            tenant: Some(tenant),
            ..EnqueueOptions::default()
        };
        enqueued.push(client.enqueue("noop", json!({}), options.clone()).await?.id);
        enqueued.push(
            client
                .enqueue("ledger", json!({"ms": 5}), options)
                .await?
                .id,
        );
    }
    enqueued.push(
        client
            .enqueue("sleep", json!({"ms": 1500}), EnqueueOptions::default())
            .await?
            .id,
    );
    let dead = client
        .enqueue(
            "fail",
            json!({"message": "payment provider said no", "fatal": true}),
            EnqueueOptions::default(),
        )
        .await?
        .id;
    let retry_me = client
        .enqueue(
            "fail",
            json!({"message": "the CRM was down for maintenance", "fatal": true,
                   "succeed_on_attempt": 2}),
            EnqueueOptions {
                tenant: Some("tenant-1".into()),
                ..EnqueueOptions::default()
            },
        )
        .await?
        .id;
    let flaky = client
        .enqueue(
            "fail",
            json!({"message": "flaky upstream"}),
            EnqueueOptions::default(),
        )
        .await?
        .id;
    let engine = load_engine(settings, store.clone(), &kinds)?;
    let (saga, _) = engine.start("demo_saga", json!({}), None).await?;
    let (pipeline, _) = engine.start("demo_pipeline", json!({}), None).await?;
    let lifecycle = demo_lifecycle::LifecycleDemo {
        life: crate::lifecycle::Lifecycle::new(engine.clone())?,
        store: store.clone(),
        catalog_dir: settings.catalog_dir.clone(),
        window: std::time::Duration::from_secs(settings.rollback_window_hours.saturating_mul(3600)),
    };
    let config = args.worker.runtime(settings.worker_id(), &kinds.queues())?;
    let runtime = build_runtime(settings, store.clone(), kinds, config)?;
    let shutdown = CancellationToken::new();
    out!(
        "steward demo: SQLite at {}",
        crate::secrets::redact(&settings.database_url)
    );
    dashboard(settings, &store, args, &shutdown, retry_me).await?;
    out!(
        "  enqueued {} sample jobs; job {dead} fails for good, job {flaky} retries then dies",
        enqueued.len() + [dead, retry_me, flaky].len()
    );
    let steward = invocation();
    out!("  try, in another terminal (in this directory):");
    out!("    {steward} jobs counts");
    out!("    {steward} dlq list");
    out!("    {steward} jobs show {dead}       # failed for good: a retry fails again");
    out!("    {steward} dlq retry {retry_me}      # the CRM is back: this retry completes it");
    out!("    {steward} enqueue sleep --payload '{{\"ms\": 200}}'");
    out!("    {steward} runs show {pipeline}     # a workflow that completes");
    out!("    {steward} runs show {saga}     # one that fails and compensates");
    out!("    {steward} run demo_pipeline --param tenant=tenant-1");
    out!(
        "  Ctrl-C stops the workers gracefully; to replay the demo from the start, {}",
        replay(settings, &steward)
    );
    let trigger = shutdown.clone();
    let idle = args.exit_when_idle;
    let watched = store.clone();
    let scenario = tokio::spawn(async move {
        if let Err(err) = lifecycle.run().await {
            eprintln!("  lifecycle demo stopped: {err}");
        }
    });
    tokio::spawn(async move {
        if idle {
            let _ = scenario.await;
            wait_until_settled(&watched).await;
        } else {
            shutdown_signal().await;
        }
        trigger.cancel();
    });
    runtime.run(shutdown).await?;
    for count in store.jobs_count_by_state().await? {
        out!("  {:<10} {:<10} {}", count.queue, count.state, count.count);
    }
    for run in store.runs_list(None, 20).await? {
        out!("  run {:<4} {:<16} {}", run.id, run.workflow, run.state);
    }
    Ok(())
}

/// Serve the API and the dashboard (with a secret of its own when STEWARD_JWT_SECRET is
/// not set) and print where to look and the token to log in with.
async fn dashboard(
    settings: &Settings,
    store: &crate::store::SharedStore,
    args: &DemoArgs,
    shutdown: &CancellationToken,
    retry_me: crate::types::JobId,
) -> Result<(), CliError> {
    let mut settings = settings.clone();
    // A token is printed only when it is signed with a secret made up for this demo (it opens
    // nothing else); with the deployment's own STEWARD_JWT_SECRET it would be a real
    // operator's credential in a terminal's scrollback.
    let throwaway = settings.jwt_secret.is_none();
    if throwaway {
        settings.jwt_secret = Some(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ));
    }
    let state = api_state(&settings, store.clone())?;
    let token = state
        .keys
        .mint(
            "demo-operator",
            crate::api::auth::Role::MasterAdmin,
            None,
            chrono::Duration::hours(12),
        )
        .map_err(CliError::Failed)?;
    let listen = args.worker.listen.as_deref().unwrap_or("127.0.0.1:8080");
    match spawn_api(state, listen, shutdown.clone()).await {
        Ok(addr) => {
            out!("  dashboard: http://{addr}/dashboard  (log in with the token below)");
            out!(
                "  API:       http://{addr}/openapi.json, http://{addr}/metrics, http://{addr}/health"
            );
            if throwaway {
                out!("  token:     {token}");
            } else {
                out!(
                    "  token:     signed with your STEWARD_JWT_SECRET, so not shown: `steward token --role master_admin` mints one"
                );
            }
            out!(
                "  open Dead letters, then job {retry_me} (the CRM was down): click Retry and watch it complete"
            );
        }
        Err(err) => out!("  dashboard not started ({err}); pass --listen ADDR"),
    }
    Ok(())
}

/// How to run this binary again from another terminal in the same directory: `steward` when
/// that is what `PATH` finds, else its path (`./target/release/steward` after `cargo run
/// --release`, say).
pub(super) fn invocation() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "steward".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("steward")).ok() == std::fs::canonicalize(&exe).ok()
        })
    });
    if on_path {
        return "steward".into();
    }
    match std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| p.to_path_buf()))
    {
        Some(relative) => format!("./{}", relative.display()),
        None => exe.display().to_string(),
    }
}

/// What to do to see the demo again from an empty database.
fn replay(settings: &Settings, steward: &str) -> String {
    match settings.database_url.strip_prefix("sqlite://") {
        Some(path) => {
            format!("remove {path} (and its -wal and -shm files), then run `{steward} demo` again")
        }
        None => format!("point DATABASE_URL at an empty database and run `{steward} demo` again"),
    }
}

/// Until nothing is queued or running (the demo's own jobs and runs have settled).
async fn wait_until_settled(store: &crate::store::SharedStore) {
    use crate::types::JobState;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        ticker.tick().await;
        match store.jobs_count_by_state().await {
            Ok(counts) => {
                let busy = counts.iter().any(|c| {
                    matches!(
                        c.state,
                        JobState::Available
                            | JobState::Running
                            | JobState::Retryable
                            | JobState::Scheduled
                    ) && c.count > 0
                });
                let runs_busy = match store.runs_list(None, 1000).await {
                    Ok(runs) => runs.iter().any(|r| {
                        matches!(
                            r.state,
                            crate::store::runs::RunState::Running
                                | crate::store::runs::RunState::Compensating
                        )
                    }),
                    Err(_) => true,
                };
                if !busy && !runs_busy {
                    return;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read job counts"),
        }
    }
}
