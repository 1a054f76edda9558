//! The library API for enqueuing: validate a job against its kind, fill in the kind's
//! defaults, and insert it on the store or inside the caller's own transaction.

use crate::kinds::KindCatalog;
use crate::queue::Registry;
use crate::store::{SharedStore, StoreError, TransactionalEnqueue};
use crate::types::{Enqueued, NewJob};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `jobs/*.toml` declares this kind.
    #[error("unknown job kind `{0}`")]
    UnknownKind(String),
    /// The payload does not fit the kind.
    #[error("invalid payload for job kind `{kind}`: {message}")]
    InvalidPayload { kind: String, message: String },
    /// An option (tenant, unique key) is out of bounds.
    #[error("{0}")]
    InvalidOption(String),
    /// The store refused the insert.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest tenant or unique key a job carries, in characters. Both are indexed: a longer
/// tenant could not be made `available` on PostgreSQL (an index entry is at most 2,704
/// bytes), which would stop the stager's every round behind it (`steward_jobs` bounds the
/// tenant too, for jobs enqueued in SQL); a unique key too long for its index fails its insert.
pub const KEY_MAX_CHARS: usize = 200;

fn check_key(what: &str, key: &str, empty_allowed: bool) -> Result<(), ClientError> {
    if (key.is_empty() && !empty_allowed)
        || key.chars().count() > KEY_MAX_CHARS
        || key.contains('\0')
    {
        return Err(ClientError::InvalidOption(format!(
            "{what} must be {} to {KEY_MAX_CHARS} characters, without NUL",
            usize::from(!empty_allowed)
        )));
    }
    Ok(())
}

/// Per-job overrides of a kind's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnqueueOptions {
    /// Fairness key; also fills `{tenant}` in unique templates.
    pub tenant: Option<String>,
    pub priority: Option<i16>,
    pub queue: Option<String>,
    pub max_attempts: Option<i32>,
    /// Run no earlier than this.
    pub run_at: Option<DateTime<Utc>>,
    /// Replaces the kind's unique template.
    pub unique_key: Option<String>,
}

/// Enqueues jobs of the kinds it knows.
#[derive(Clone)]
pub struct Client {
    store: SharedStore,
    kinds: Arc<KindCatalog>,
    registry: Option<Registry>,
}

impl Client {
    /// A client over a store and the job kinds it may enqueue.
    pub fn new(store: SharedStore, kinds: KindCatalog) -> Self {
        Self {
            store,
            kinds: Arc::new(kinds),
            registry: None,
        }
    }

    /// Also check payloads against the handlers' argument types before enqueuing.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The store behind this client.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The job kinds this client knows.
    pub fn kinds(&self) -> &KindCatalog {
        &self.kinds
    }

    /// Build (without inserting) the job a kind and payload describe.
    pub fn build(
        &self,
        kind: &str,
        payload: Value,
        options: EnqueueOptions,
    ) -> Result<NewJob, ClientError> {
        let spec = self
            .kinds
            .get(kind)
            .ok_or_else(|| ClientError::UnknownKind(kind.to_string()))?;
        let invalid = |message: String| ClientError::InvalidPayload {
            kind: kind.to_string(),
            message,
        };
        if !payload.is_object() {
            return Err(invalid("the payload must be a JSON object".into()));
        }
        // The kind's declared fields (defaults filled in), the same check the API makes.
        let payload = match &spec.payload {
            Some(fields) => crate::fields::complete(fields, payload, "field").map_err(invalid)?,
            None => payload,
        };
        if let Some(registry) = &self.registry {
            registry.validate(kind, &payload).map_err(invalid)?;
        }
        let tenant = options.tenant.unwrap_or_default();
        check_key("tenant", &tenant, true)?;
        let unique_key = match options.unique_key {
            Some(key) => Some(key),
            None => spec.unique_key(&payload, &tenant).map_err(invalid)?,
        };
        if let Some(key) = &unique_key {
            check_key("unique_key", key, false)?;
        }
        Ok(NewJob {
            kind: spec.name.clone(),
            queue: options.queue.unwrap_or_else(|| spec.queue.clone()),
            tenant,
            payload,
            priority: options.priority.unwrap_or(spec.priority),
            max_attempts: options.max_attempts.unwrap_or(spec.max_attempts).max(1),
            timeout_ms: spec.timeout.as_millis() as i64,
            unique_key,
            run_at: options.run_at,
        })
    }

    /// Enqueue a typed job ([`crate::Job`]): its kind from the type, its arguments serialized.
    pub async fn enqueue_job<J: crate::Job>(
        &self,
        job: &J,
        options: EnqueueOptions,
    ) -> Result<Enqueued, ClientError> {
        let payload = serde_json::to_value(job).map_err(|e| ClientError::InvalidPayload {
            kind: J::KIND.to_string(),
            message: e.to_string(),
        })?;
        self.enqueue(J::KIND, payload, options).await
    }

    /// Enqueue one job. A duplicate of a live unique job returns that job.
    pub async fn enqueue(
        &self,
        kind: &str,
        payload: Value,
        options: EnqueueOptions,
    ) -> Result<Enqueued, ClientError> {
        let job = self.build(kind, payload, options)?;
        let mut done = self
            .store
            .jobs_insert_many(std::slice::from_ref(&job))
            .await?;
        done.pop()
            .ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()).into())
    }

    /// Enqueue many jobs in one statement.
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, ClientError> {
        Ok(self.store.jobs_insert_many(jobs).await?)
    }

    /// Enqueue inside the caller's transaction (`&mut *tx` of a `sqlx::Transaction` on
    /// PostgreSQL or SQLite): the job exists if and only if the transaction commits.
    pub async fn enqueue_in<C>(
        &self,
        conn: &mut C,
        kind: &str,
        payload: Value,
        options: EnqueueOptions,
    ) -> Result<Enqueued, ClientError>
    where
        C: TransactionalEnqueue + ?Sized,
    {
        let job = self.build(kind, payload, options)?;
        let mut done = conn.insert_jobs(std::slice::from_ref(&job)).await?;
        done.pop()
            .ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()).into())
    }
}
