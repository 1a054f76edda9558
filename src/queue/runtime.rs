//! The runtime: one apalis worker per queue, under an apalis `Monitor`, with the producer,
//! completer, heartbeat and maintenance services around them, and a graceful shutdown.
//!
//! Shutdown (SIGTERM, SIGINT, or the caller's token): producers stop fetching; jobs fetched
//! but not started are released; running jobs get `shutdown_grace` to finish, then are
//! stopped and made available again; the completer writes every outcome; then it returns.

use super::ack::AckLayer;
use super::backend::QueueBackend;
use super::completer;
use super::control::{Gates, Watcher};
use super::dispatcher::Dispatcher;
use super::heartbeat;
use super::inflight::{self, InFlight};
use super::producer::Producer;
use super::registry::Registry;
use crate::kinds::KindCatalog;
use crate::maintenance::{self, MaintenanceConfig};
use crate::store::SharedStore;
use crate::store::control::WorkerQueue;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why the runtime could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is unusable.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// apalis's monitor failed.
    #[error("worker monitor failed: {0}")]
    Monitor(String),
}

/// A queue this process works, and how many of its jobs may run at once here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub concurrency: usize,
}

/// How a worker process runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Unique per process; part of every lease (`STEWARD_WORKER_ID`).
    pub worker_id: String,
    pub queues: Vec<QueueConfig>,
    /// Most jobs one fetch leases (default 1000).
    pub batch_size: usize,
    /// A lease lasts this long without a heartbeat (default 10 s).
    pub lease: Duration,
    /// Heartbeat period (default lease / 3).
    pub heartbeat_every: Duration,
    /// Fallback poll when no enqueue signal arrives (default 500 ms; SQLite across processes
    /// relies on it, and it bounds the rare PostgreSQL wake-up a racing enqueue can miss).
    pub poll_interval: Duration,
    /// Time running jobs get to finish at shutdown (default 10 s).
    pub shutdown_grace: Duration,
    pub maintenance: MaintenanceConfig,
    /// Run the maintenance services in this process (default true).
    pub run_maintenance: bool,
}

impl RuntimeConfig {
    /// Defaults for a worker id and queues.
    pub fn new(worker_id: impl Into<String>, queues: Vec<QueueConfig>) -> Self {
        Self {
            worker_id: worker_id.into(),
            queues,
            batch_size: 1000,
            lease: Duration::from_secs(10),
            heartbeat_every: Duration::from_millis(3333),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            maintenance: MaintenanceConfig::default(),
            run_maintenance: true,
        }
    }

    /// Set the lease and derive the heartbeat period from it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat_every = lease / 3;
        self
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        if self.worker_id.is_empty() {
            return Err(RuntimeError::Config("worker id must not be empty".into()));
        }
        if self.queues.is_empty() {
            return Err(RuntimeError::Config("no queue to work".into()));
        }
        if self.heartbeat_every >= self.lease {
            return Err(RuntimeError::Config(
                "heartbeat must be shorter than the lease".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(RuntimeError::Config("batch size must be at least 1".into()));
        }
        if self.heartbeat_every.is_zero() || self.poll_interval.is_zero() {
            return Err(RuntimeError::Config(
                "heartbeat and poll periods must be greater than zero".into(),
            ));
        }
        self.maintenance.validate().map_err(RuntimeError::Config)
    }
}

/// A worker process's queue runtime.
pub struct Runtime {
    store: SharedStore,
    registry: Arc<Registry>,
    kinds: Arc<KindCatalog>,
    config: RuntimeConfig,
    services: Vec<Box<dyn maintenance::Service>>,
    rounds: maintenance::Rounds,
}

impl Runtime {
    /// Check that the configuration is sound. A declared kind without a handler in this binary
    /// is a warning, not an error (a rolling deploy runs old and new binaries at once): its
    /// jobs are released here without using an attempt, for a worker that has the handler.
    pub fn new(
        store: SharedStore,
        registry: Registry,
        kinds: KindCatalog,
        config: RuntimeConfig,
    ) -> Result<Self, RuntimeError> {
        config.validate()?;
        for kind in kinds.iter().filter(|k| !registry.contains(&k.name)) {
            tracing::warn!(
                "{}:{}: no handler is registered for job kind `{}` in this binary: its jobs are \
                 left to workers that have one",
                kind.source.display(),
                kind.line,
                kind.name
            );
        }
        Ok(Self {
            store,
            registry: Arc::new(registry),
            kinds: Arc::new(kinds),
            config,
            services: Vec::new(),
            rounds: maintenance::Rounds::default(),
        })
    }

    /// The rounds of this runtime's periodic services (its test signal): subscribe before
    /// [`Runtime::run`] to see each round this node runs.
    pub fn rounds(&self) -> maintenance::Rounds {
        self.rounds.clone()
    }

    /// Also run a background service (such as the workflow engine's run sweeper).
    pub fn with_service(mut self, service: Box<dyn maintenance::Service>) -> Self {
        self.services.push(service);
        self
    }

    /// Run until `shutdown` is cancelled, then shut down gracefully.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let config = &self.config;
        let worker: Arc<str> = Arc::from(config.worker_id.as_str());
        let inflight = InFlight::default();
        let (outcomes, completer) = completer::spawn(
            Arc::clone(&self.store),
            Arc::clone(&worker),
            inflight.clone(),
        );
        let background = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat::run(
            Arc::clone(&self.store),
            Arc::clone(&worker),
            inflight.clone(),
            config.heartbeat_every,
            config.lease,
            background.clone(),
        ));
        let mut services = Vec::new();
        let extra = std::mem::take(&mut self.services);
        let config = &self.config;
        if config.run_maintenance {
            // One node (the elected leader, leases as long as the jobs') runs them.
            let (leadership, elector) = maintenance::elector::spawn(
                Arc::clone(&self.store),
                config.worker_id.clone(),
                config.lease,
                shutdown.clone(),
            );
            services.push(elector);
            // After an outage, the rescuer waits at least one of this process's leases.
            let mut maintenance = config.maintenance.clone();
            maintenance.rescue_grace = maintenance.rescue_grace.max(config.lease);
            for service in maintenance.services().into_iter().chain(extra) {
                services.push(maintenance::spawn_led(
                    service,
                    Arc::clone(&self.store),
                    shutdown.clone(),
                    leadership.clone(),
                    self.rounds.clone(),
                ));
            }
        }

        // Which queues are paused, before the first fetch; then kept current (and this process
        // registered) by the watcher.
        let gates = Arc::new(Gates::new(config.queues.iter().map(|q| q.name.as_str())));
        let watcher = Watcher {
            store: Arc::clone(&self.store),
            worker_id: config.worker_id.clone(),
            queues: config
                .queues
                .iter()
                .map(|q| WorkerQueue {
                    name: q.name.clone(),
                    concurrency: q.concurrency,
                })
                .collect(),
            gates: Arc::clone(&gates),
            running: Box::new({
                let inflight = inflight.clone();
                move || inflight.running()
            }),
            poll: config.poll_interval,
            beat_every: config.heartbeat_every,
            ttl: config.lease,
        };
        let applied = watcher.prime().await;
        let watcher = tokio::spawn(watcher.run(applied, background.clone()));

        // The kinds' defaults, for enqueues from SQL (`steward_enqueue` gives a kind its
        // declared queue, priority, attempts and timeout).
        let defaults: Vec<_> = self
            .kinds
            .iter()
            .map(|k| crate::store::KindDefaults {
                kind: k.name.clone(),
                queue: k.queue.clone(),
                priority: k.priority,
                max_attempts: k.max_attempts,
                timeout_ms: i64::try_from(k.timeout.as_millis()).unwrap_or(i64::MAX),
            })
            .collect();
        if let Err(err) = self.store.kinds_publish(&defaults).await {
            tracing::warn!(error = %err, "could not publish the job kinds' defaults");
        }
        // The attempt counters of every kind this process runs, at zero until it runs one
        // (a series that appears only once something happened cannot be alerted on).
        for kind in self.kinds.iter() {
            if config.queues.iter().any(|q| q.name == kind.queue)
                && self.registry.contains(&kind.name)
            {
                for outcome in ["completed", "failed", "fatal"] {
                    metrics::counter!("steward_job_attempts_total",
                        "queue" => kind.queue.clone(), "kind" => kind.name.clone(), "outcome" => outcome)
                    .increment(0);
                }
            }
        }
        let mut monitor = Monitor::new();
        let mut producers = Vec::new();
        for queue in &config.queues {
            let permits = inflight::permits(queue.concurrency);
            let (tx, rx) = mpsc::channel(queue.concurrency.max(1));
            producers.push(tokio::spawn(
                Producer {
                    store: Arc::clone(&self.store),
                    concurrency: queue.concurrency,
                    outcomes: outcomes.clone(),
                    queue: queue.name.clone(),
                    worker: Arc::clone(&worker),
                    batch: config.batch_size,
                    lease_for: config.lease,
                    poll_interval: config.poll_interval,
                    permits,
                    unwritten: inflight::unwritten_slots(queue.concurrency),
                    inflight: inflight.clone(),
                    jobs: tx,
                    gate: gates.watch(&queue.name),
                    shutdown: shutdown.clone(),
                    kinds: Arc::clone(&self.kinds),
                }
                .run(),
            ));
            // The monitor may call the factory again to restart a worker; the channel can
            // only be handed out once, so a restarted worker gets a closed one and ends.
            let receiver = Mutex::new(Some(rx));
            let ack = AckLayer {
                outcomes: outcomes.clone(),
                store: Arc::clone(&self.store),
                inflight: inflight.clone(),
                kinds: Arc::clone(&self.kinds),
                gate: gates.watch(&queue.name),
            };
            let dispatcher = Dispatcher {
                registry: Arc::clone(&self.registry),
                store: Arc::clone(&self.store),
                worker: Arc::clone(&worker),
                inflight: inflight.clone(),
            };
            let name = format!("{}/{}", config.worker_id, queue.name);
            monitor = monitor.register(move |_| {
                let jobs = receiver
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| mpsc::channel(1).1);
                WorkerBuilder::new(name.as_str())
                    .backend(QueueBackend {
                        jobs,
                        ack: ack.clone(),
                    })
                    .build(dispatcher.clone())
            });
        }
        drop(outcomes);

        // After the grace period, stop whatever still runs; it is released for another worker.
        let grace = config.shutdown_grace;
        let stopper = {
            let inflight = inflight.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                if inflight.running() > 0 {
                    tracing::warn!(
                        count = inflight.running(),
                        "shutdown grace over; stopping running jobs"
                    );
                    inflight.stop_all("worker shutting down");
                }
            })
        };
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                Ok(())
            }
        };
        let monitored = monitor.run_with_signal(signal).await;
        stopper.abort();
        for producer in producers {
            let _ = producer.await;
        }
        // Every ack layer is gone with its worker: the completer drains and ends.
        let _ = completer.await;
        background.cancel();
        let _ = heartbeat.await;
        let _ = watcher.await;
        for service in services {
            let _ = service.await;
        }
        monitored.map_err(|e| RuntimeError::Monitor(e.to_string()))
    }
}
