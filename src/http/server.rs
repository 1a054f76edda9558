//! Accepting connections: hyper's HTTP/1 server with a header-read timeout (a client that
//! does not finish its request head in time is dropped, so half-sent requests cannot pile
//! up), a body-read timeout (the same for a body trickled after its head), a cap on open connections (beyond it new ones wait in the kernel's backlog instead
//! of exhausting file descriptors) and a graceful shutdown bounded by a grace period.

use super::app;
use crate::api::AppState;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A connection must deliver each request head within this time, including the wait for
    /// the first byte of the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this time (408 after it; see
    /// [`super::guard::body_deadline`]).
    pub body_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// At shutdown, how long requests in flight get before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serve the app on `listener` with the default [`ServerLimits`] until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServerLimits::default(), shutdown).await
}

/// Serve the app on `listener` with `limits` until `shutdown` resolves; then stop accepting,
/// let requests in flight finish for at most the grace, and return.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener, app(state), limits, shutdown).await
}

/// Serve `app` (the whole app, or a worker's monitoring app) as [`serve_with`] does.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.body_read_timeout,
        super::guard::body_deadline,
    ));
    let service = TowerToHyperService::new(app);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "connections still open after the shutdown grace; dropping them"
        );
    }
    Ok(())
}
