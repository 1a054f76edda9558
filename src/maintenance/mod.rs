//! Maintenance services, each the same shape (like River's): a name, an interval from
//! [`MaintenanceConfig`] (defaults, validated at start-up), and a batched `run_once` that tests
//! can call directly; [`spawn`] runs it in a loop until shutdown and reports every round on
//! [`Rounds`], the test signal (tests wait for a round instead of sleeping, and see which
//! node ran it).
//!
//! Only the elected leader runs them ([`elector`]): one node at a time fires cron ticks, sweeps
//! runs, prunes and vacuums. Each statement still claims its rows with `FOR UPDATE SKIP LOCKED`
//! (PostgreSQL) or under the single writer (SQLite), so the short overlap of a hand-over
//! repeats nothing.

pub mod elector;
mod pruner;
mod rescuer;
mod stager;
mod vacuumer;

pub use pruner::Pruner;
pub use rescuer::Rescuer;
pub use stager::Stager;
pub use vacuumer::Vacuumer;

use crate::store::{SharedStore, StoreResult};
use async_trait::async_trait;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One background service.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Pause between runs.
    fn interval(&self) -> Duration;
    /// Do one round of work; returns how many jobs it touched.
    async fn run_once(&self, store: &SharedStore) -> StoreResult<u64>;
    /// The leadership it runs under, for a service that must know what its elector saw
    /// (called once, before the first round).
    fn led_by(&mut self, _leadership: &elector::Leadership) {}
}

/// One round of a periodic service, as the process that ran it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// [`Service::name`].
    pub service: &'static str,
    /// What `run_once` touched, or its error as text.
    pub outcome: Result<u64, String>,
}

/// The test signal of a process's periodic services: every round, as it ends, to whoever
/// subscribed (nobody in production: a send without receivers costs nothing). A receiver that
/// lags loses the oldest rounds, never blocks a service.
#[derive(Clone)]
pub struct Rounds(tokio::sync::broadcast::Sender<Round>);

impl Default for Rounds {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(1024).0)
    }
}

impl Rounds {
    /// Rounds from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Round> {
        self.0.subscribe()
    }

    fn report(&self, round: Round) {
        let _ = self.0.send(round);
    }
}

/// Intervals and retention of the periodic services, with their defaults.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// How often expired leases are looked for (default 1 s).
    pub rescue_every: Duration,
    /// After a database outage, how long the rescuer waits once it answers again before it
    /// rescues anything (default 10 s, the default lease; the runtime sets its own lease).
    pub rescue_grace: Duration,
    /// How often due scheduled and retryable jobs are made available (default 200 ms).
    pub stage_every: Duration,
    /// How often finished jobs are pruned (default 60 s).
    pub prune_every: Duration,
    /// Completed jobs are kept this long (default 1 day).
    pub completed_retention: Duration,
    /// Dead and cancelled jobs are kept this long (default 30 days).
    pub dead_retention: Duration,
    /// How often steward's tables are checked for dead row versions to vacuum (default 10 s;
    /// [`Vacuumer`]).
    pub vacuum_every: Duration,
    /// How often runs whose step died are swept (default 500 ms; `workflow::RunSweeper`).
    pub sweep_every: Duration,
    /// How often cron triggers are checked for due ticks (default 100 ms;
    /// `workflow::scheduler::CronScheduler`).
    pub cron_every: Duration,
    /// How often tenant modules stuck in PROVISIONING are looked for (default 5 s;
    /// `lifecycle::ProvisioningReconciler`)…
    pub reconcile_every: Duration,
    /// …once they have not moved for this long (default 30 s).
    pub reconcile_idle: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            rescue_every: Duration::from_secs(1),
            rescue_grace: Duration::from_secs(10),
            stage_every: Duration::from_millis(200),
            prune_every: Duration::from_secs(60),
            completed_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
            vacuum_every: Duration::from_secs(10),
            sweep_every: Duration::from_millis(500),
            cron_every: Duration::from_millis(100),
            reconcile_every: Duration::from_secs(5),
            reconcile_idle: Duration::from_secs(30),
        }
    }
}

impl MaintenanceConfig {
    /// Retentions a pruner accepts: from a minute (a shorter one would prune jobs operators are
    /// still looking at) to a hundred years (longer ones overflow date arithmetic, which must
    /// never turn into "prune everything").
    pub const RETENTION_RANGE: (Duration, Duration) = (
        Duration::from_secs(60),
        Duration::from_secs(100 * 365 * 24 * 3600),
    );

    /// Refuse periods of zero and retentions out of [`Self::RETENTION_RANGE`].
    pub fn validate(&self) -> Result<(), String> {
        let periods = [
            self.rescue_every,
            self.stage_every,
            self.prune_every,
            self.vacuum_every,
            self.sweep_every,
            self.cron_every,
            self.reconcile_every,
            self.reconcile_idle,
        ];
        if periods.iter().any(Duration::is_zero) {
            return Err("maintenance periods must be greater than zero".into());
        }
        let (min, max) = Self::RETENTION_RANGE;
        for (name, retention) in [
            ("completed", self.completed_retention),
            ("dead", self.dead_retention),
        ] {
            if retention < min || retention > max {
                return Err(format!(
                    "the {name} jobs' retention must be between {} s and {} s, not {} s",
                    min.as_secs(),
                    max.as_secs(),
                    retention.as_secs()
                ));
            }
        }
        Ok(())
    }

    /// The services this configuration describes.
    pub fn services(&self) -> Vec<Box<dyn Service>> {
        vec![
            Box::new(Rescuer::new(self.rescue_every, self.rescue_grace)),
            Box::new(Stager {
                every: self.stage_every,
            }),
            Box::new(Pruner {
                every: self.prune_every,
                completed_retention: self.completed_retention,
                dead_retention: self.dead_retention,
            }),
            Box::new(Vacuumer {
                every: self.vacuum_every,
                min_dead: Vacuumer::MIN_DEAD,
            }),
        ]
    }
}

/// Run a service until `stop`, always (see [`spawn_led`]); errors are logged and the loop
/// goes on.
pub fn spawn(
    service: Box<dyn Service>,
    store: SharedStore,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_led(
        service,
        store,
        stop,
        elector::Leadership::always(),
        Rounds::default(),
    )
}

/// Run a service until `stop`, each round only while this process leads, reporting each
/// round on `rounds`.
pub fn spawn_led(
    mut service: Box<dyn Service>,
    store: SharedStore,
    stop: CancellationToken,
    leadership: elector::Leadership,
    rounds: Rounds,
) -> tokio::task::JoinHandle<()> {
    service.led_by(&leadership);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(service.interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            if !leadership.is_leader() {
                continue;
            }
            let outcome = service.run_once(&store).await;
            match &outcome {
                // Every round is logged (rounds that did nothing at trace level): which node
                // ran what can be read off the logs.
                Ok(0) => tracing::trace!(service = service.name(), jobs = 0, "maintenance round"),
                Ok(n) => tracing::debug!(service = service.name(), jobs = n, "maintenance round"),
                Err(err) => {
                    tracing::warn!(service = service.name(), error = %err, "maintenance round failed")
                }
            }
            rounds.report(Round {
                service: service.name(),
                outcome: outcome.map_err(|e| e.to_string()),
            });
        }
    })
}
