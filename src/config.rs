//! Configuration from the environment (and command-line flags, which win). Every variable is
//! listed, with its default, in the README.

use crate::queue::{QueueConfig, RuntimeConfig};
use std::time::Duration;

/// Settings shared by the subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Database: `postgres://…` or `sqlite://path` (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/steward.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Directory of job-kind definitions.
    #[arg(long, env = "STEWARD_JOBS_DIR", default_value = "jobs", global = true)]
    pub jobs_dir: std::path::PathBuf,

    /// Directory of workflow definitions.
    #[arg(
        long,
        env = "STEWARD_WORKFLOWS_DIR",
        default_value = "workflows",
        global = true
    )]
    pub workflows_dir: std::path::PathBuf,

    /// Where exports and upgrade backups are written (the local export storage).
    #[arg(
        long,
        env = "STEWARD_EXPORT_DIR",
        default_value = "data/exports",
        global = true
    )]
    pub export_dir: std::path::PathBuf,

    /// S3 bucket for exports; when set, exports go to S3 instead of `export_dir`.
    #[arg(long, env = "STEWARD_S3_BUCKET", global = true)]
    pub s3_bucket: Option<String>,

    /// S3 endpoint (an S3-compatible service: MinIO, Ceph, …); AWS itself when unset.
    #[arg(long, env = "STEWARD_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(
        long,
        env = "STEWARD_S3_REGION",
        default_value = "us-east-1",
        global = true
    )]
    pub s3_region: String,

    /// Path-style S3 addresses (`endpoint/bucket/key`), as most S3-compatible services want.
    #[arg(
        long,
        env = "STEWARD_S3_PATH_STYLE",
        default_value_t = false,
        global = true
    )]
    pub s3_path_style: bool,

    /// How long a webhook delivery waits for the tenant's endpoint, in seconds.
    #[arg(
        long,
        env = "STEWARD_WEBHOOK_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub webhook_timeout_secs: u64,

    /// Address ranges webhooks may reach besides public ones (`10.0.0.0/8,127.0.0.1`), for
    /// a private deployment: loopback, private and link-local endpoints are refused otherwise.
    #[arg(
        long,
        env = "STEWARD_WEBHOOK_ALLOW",
        value_delimiter = ',',
        global = true
    )]
    pub webhook_allow: Vec<String>,

    /// The HS256 secret of the API's bearer tokens (at least 32 bytes; never in the repo).
    #[arg(
        long,
        env = "STEWARD_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// A long-lived bearer credential that may read `/metrics` and nothing else (for
    /// Prometheus' `authorization.credentials_file`; at least 32 bytes).
    #[arg(
        long,
        env = "STEWARD_METRICS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub metrics_token: Option<String>,

    /// The key tenants' webhook secrets are sealed with at rest (AES-256-GCM; 64 hex digits).
    /// Registering a webhook needs it, and so does delivering to one registered with it.
    #[arg(
        long,
        env = "STEWARD_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub secret_key: Option<String>,

    /// How long to wait for the database at start-up (it may still be starting), in seconds;
    /// 0 fails at once.
    #[arg(
        long,
        env = "STEWARD_DB_WAIT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub db_wait_secs: u64,

    /// How long after an upgrade a manual rollback is allowed, in hours.
    #[arg(
        long,
        env = "STEWARD_ROLLBACK_WINDOW_HOURS",
        default_value_t = 48,
        global = true
    )]
    pub rollback_window_hours: u64,

    /// Directory of the module catalog (`catalog/*.toml`).
    #[arg(
        long,
        env = "STEWARD_CATALOG_DIR",
        default_value = "catalog",
        global = true
    )]
    pub catalog_dir: std::path::PathBuf,

    /// This process's worker id (part of every lease); default `<host>-<pid>`.
    #[arg(long, env = "STEWARD_WORKER_ID", global = true)]
    pub worker_id: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "STEWARD_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,

    /// What commands print: `table` (for people) or `json` (for programs).
    #[arg(
        long,
        value_enum,
        env = "STEWARD_OUTPUT",
        default_value = "table",
        global = true
    )]
    pub output: OutputFormat,
}

/// See [`Settings::output`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Worker tuning, with defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    /// Queues to work, `name=concurrency` (repeatable or comma-separated). Default: every
    /// queue named in `jobs/`, each with concurrency 100.
    #[arg(long = "queue", env = "STEWARD_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,

    /// Lease length in milliseconds; a worker silent this long loses its jobs.
    #[arg(long, env = "STEWARD_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,

    /// Most jobs leased per fetch.
    #[arg(long, env = "STEWARD_BATCH", default_value_t = 1000)]
    pub batch: usize,

    /// Fallback poll interval in milliseconds.
    #[arg(long, env = "STEWARD_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,

    /// Time running jobs get to finish at shutdown, in milliseconds.
    #[arg(long, env = "STEWARD_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// How long completed jobs are kept, in seconds.
    #[arg(
        long,
        env = "STEWARD_COMPLETED_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub completed_retention_secs: u64,

    /// How long dead and cancelled jobs are kept, in seconds.
    #[arg(long, env = "STEWARD_DEAD_RETENTION_SECS", default_value_t = 30 * 86_400)]
    pub dead_retention_secs: u64,

    /// Also serve the API, the dashboard and this process's `/metrics` on this address
    /// (`steward demo`: 127.0.0.1:8080 unless given).
    #[arg(long, env = "STEWARD_WORKER_LISTEN", conflicts_with = "metrics_listen")]
    pub listen: Option<String>,

    /// Serve only `/health` and this process's `/metrics` on this address, for a scraper
    /// holding STEWARD_METRICS_TOKEN (no API, no STEWARD_JWT_SECRET needed).
    #[arg(long, env = "STEWARD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// A `--queue` value that is not `name=concurrency`.
#[derive(Debug, thiserror::Error)]
#[error("invalid queue `{0}`: expected name=concurrency with concurrency between 1 and 100000")]
pub struct BadQueue(pub String);

impl Settings {
    /// The API's token keys, from `STEWARD_JWT_SECRET`.
    pub fn auth_keys(&self) -> Result<crate::api::auth::AuthKeys, String> {
        let secret = self
            .jwt_secret
            .as_deref()
            .ok_or("STEWARD_JWT_SECRET is not set: the API and `steward token` need it")?;
        crate::api::auth::AuthKeys::new(secret)
    }

    /// The export storage: S3 when a bucket is set, else `export_dir`.
    pub fn exports(&self) -> crate::export::SharedExports {
        crate::export::open(&crate::export::StorageConfig {
            dir: self.export_dir.clone(),
            s3_bucket: self.s3_bucket.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
        })
    }

    /// The key secrets are sealed with, when set.
    pub fn secret_key(&self) -> Result<Option<crate::secrets::SecretKey>, String> {
        self.secret_key
            .as_deref()
            .map(crate::secrets::SecretKey::from_hex)
            .transpose()
            .map_err(|e| e.to_string())
    }

    /// Where webhooks may go: public addresses and `--webhook-allow`.
    pub fn webhook_policy(&self) -> Result<crate::lifecycle::webhook::EndpointPolicy, String> {
        crate::lifecycle::webhook::EndpointPolicy::allowing(&self.webhook_allow)
    }

    /// The worker id, or `<host>-<pid>`.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "steward".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

impl WorkerSettings {
    /// The runtime configuration these settings describe.
    pub fn runtime(
        &self,
        worker_id: String,
        known_queues: &[String],
    ) -> Result<RuntimeConfig, BadQueue> {
        let queues = if self.queues.is_empty() {
            known_queues
                .iter()
                .map(|name| QueueConfig {
                    name: name.clone(),
                    concurrency: 100,
                })
                .collect()
        } else {
            self.queues
                .iter()
                .map(|spec| parse_queue(spec))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut config = RuntimeConfig::new(worker_id, queues)
            .with_lease(Duration::from_millis(self.lease_ms.max(300)));
        config.batch_size = self.batch.max(1);
        config.poll_interval = Duration::from_millis(self.poll_ms.max(10));
        config.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        config.maintenance.completed_retention = Duration::from_secs(self.completed_retention_secs);
        config.maintenance.dead_retention = Duration::from_secs(self.dead_retention_secs);
        Ok(config)
    }
}

fn parse_queue(spec: &str) -> Result<QueueConfig, BadQueue> {
    let bad = || BadQueue(spec.to_string());
    let (name, concurrency) = match spec.split_once('=') {
        Some((name, n)) => (name.trim(), n.trim().parse::<usize>().map_err(|_| bad())?),
        None => (spec.trim(), 100),
    };
    if name.is_empty() || !(1..=100_000).contains(&concurrency) {
        return Err(bad());
    }
    Ok(QueueConfig {
        name: name.to_string(),
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_parse() {
        assert_eq!(
            parse_queue("mail=5").expect("valid"),
            QueueConfig {
                name: "mail".into(),
                concurrency: 5
            }
        );
        assert_eq!(parse_queue("mail").expect("valid").concurrency, 100);
        assert!(parse_queue("mail=0").is_err());
        assert!(parse_queue("mail=x").is_err());
        assert!(parse_queue("=3").is_err());
    }
}
