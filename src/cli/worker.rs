//! `steward worker`: run the queues until a signal.

use super::{
    CliError, api_state, build_runtime, load_kinds, open_store, shutdown_signal, spawn_api,
};
use crate::config::{Settings, WorkerSettings};
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(settings: &Settings, args: &WorkerSettings) -> Result<(), CliError> {
    let kinds = load_kinds(settings)?;
    let store = open_store(settings).await?;
    let config = args.runtime(settings.worker_id(), &kinds.queues())?;
    tracing::info!(worker = %config.worker_id, queues = ?config.queues, backend = store.capabilities().name, "worker starting");
    let shutdown = CancellationToken::new();
    if let Some(listen) = &args.listen {
        let state = api_state(settings, store.clone())?;
        let addr = spawn_api(state, listen, shutdown.clone()).await?;
        tracing::info!(%addr, "API, dashboard and /metrics served beside the worker");
    } else {
        // The attempts and durations of this process, for a scraper of another process.
        crate::api::prometheus::install();
    }
    let runtime = build_runtime(settings, store, kinds, config)?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing running jobs");
        trigger.cancel();
    });
    runtime.run(shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}
