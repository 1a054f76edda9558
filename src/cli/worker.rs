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
    if let Some(listen) = &args.metrics_listen {
        let addr = spawn_monitoring(settings, store.clone(), listen, shutdown.clone()).await?;
        tracing::info!(%addr, "/health and /metrics served beside the worker");
    } else if let Some(listen) = &args.listen {
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

/// `--metrics-listen`: `/health` and `/metrics` only, for the scrape credential. Without
/// STEWARD_JWT_SECRET the API's keys are random, so no token but the scrape credential opens it.
async fn spawn_monitoring(
    settings: &Settings,
    store: crate::store::SharedStore,
    listen: &str,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr, CliError> {
    let token = settings.metrics_token.as_deref().ok_or_else(|| {
        CliError::Usage(
            "--metrics-listen needs STEWARD_METRICS_TOKEN (the credential a scraper sends)".into(),
        )
    })?;
    let keys = match settings.auth_keys() {
        Ok(keys) => keys,
        Err(_) => {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret)
                .map_err(|_| CliError::Failed("no randomness for the API keys".into()))?;
            crate::api::auth::AuthKeys::new(&hex::encode(secret)).map_err(CliError::Usage)?
        }
    };
    let kinds = super::load_kinds(settings)?;
    let engine = super::load_engine(settings, store, &kinds)?;
    crate::api::prometheus::install();
    let state = crate::api::AppState::new(engine, settings.exports(), keys)
        .with_metrics_token(token)
        .map_err(CliError::Usage)?;
    super::spawn_app(crate::http::monitoring_app(state), listen, shutdown).await
}
