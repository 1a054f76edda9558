//! Job kinds, declared one per file in `jobs/*.toml`.
//!
//! A kind fixes a job's defaults: its queue, priority, attempts, backoff, timeout and an
//! optional unique-key template. Definitions are validated when loaded; a bad file stops
//! start-up with its path, line and problem.
//!
//! ```toml
//! kind = "provision_module"
//! queue = "lifecycle"
//! priority = 1                       # lower runs first (default 0)
//! max_attempts = 10                  # default 20
//! timeout_secs = 300                 # default 60
//! unique = "provision:{tenant}:{module}"   # placeholders: payload fields and {tenant}
//! [backoff]
//! base_ms = 1000                     # first retry after about this long (default 1000)
//! max_ms = 3600000                   # never wait longer (default one hour)
//! jitter = true                      # spread retries (default true)
//! ```

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A job-kind definition that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A definition is malformed.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    #[serde(default = "default_true")]
    pub jitter: bool,
}

fn default_base_ms() -> u64 {
    1000
}
fn default_max_ms() -> u64 {
    3_600_000
}
fn default_true() -> bool {
    true
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: default_base_ms(),
            max_ms: default_max_ms(),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait before the attempt after `attempt` (1-based): `base · 2^(attempt-1)`, capped,
    /// with jitter so that a burst of failures does not retry in lockstep.
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.base_ms))
            .with_max_delay(Duration::from_millis(self.max_ms.max(self.base_ms)))
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let index = usize::try_from(attempt.max(1) - 1).unwrap_or(0).min(64);
        let delay = builder
            .build()
            .nth(index)
            .unwrap_or(Duration::from_millis(self.max_ms));
        // Whole milliseconds: the floating-point growth leaves sub-microsecond noise.
        Duration::from_millis(delay.as_millis() as u64)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindFile {
    kind: toml::Spanned<String>,
    #[serde(default = "default_queue")]
    queue: toml::Spanned<String>,
    #[serde(default)]
    priority: i16,
    #[serde(default = "default_attempts")]
    max_attempts: toml::Spanned<i32>,
    #[serde(default = "default_timeout")]
    timeout_secs: toml::Spanned<u64>,
    unique: Option<toml::Spanned<String>>,
    #[serde(default)]
    backoff: Backoff,
    description: Option<String>,
    /// The roles that may enqueue it over the API (`POST /api/jobs`); none by default.
    enqueued_by: Option<toml::Spanned<Vec<String>>>,
    /// Its payload's declared fields (the syntax of a workflow's `[params]`); without it any
    /// object is accepted.
    payload: Option<BTreeMap<String, toml::Spanned<crate::fields::FieldFile>>>,
    /// Starts per period, across every node (see [`crate::limits`]).
    rate_limit: Option<toml::Spanned<crate::limits::RateLimitFile>>,
    /// Running at once, across every node.
    concurrency_limit: Option<toml::Spanned<crate::limits::ConcurrencyLimitFile>>,
    /// Waits while a dependency keeps failing.
    circuit_breaker: Option<toml::Spanned<crate::limits::CircuitBreakerFile>>,
}

/// Kinds that steward enqueues itself: their definitions cannot name `enqueued_by` (a caller
/// could forge a workflow step, or a signed webhook to a tenant).
pub const INTERNAL_KINDS: [&str; 2] = ["workflow_step", "webhook_deliver"];

fn default_queue() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "default".to_string())
}
fn default_attempts() -> toml::Spanned<i32> {
    toml::Spanned::new(0..0, 20)
}
fn default_timeout() -> toml::Spanned<u64> {
    toml::Spanned::new(0..0, 60)
}

/// One validated job kind.
#[derive(Debug, Clone, PartialEq)]
pub struct JobKind {
    pub name: String,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub unique: Option<String>,
    pub backoff: Backoff,
    pub description: Option<String>,
    /// The roles that may enqueue it over the API (`master_admin`, `service`, `tenant_admin`).
    pub enqueued_by: Vec<String>,
    /// Its payload's declared fields, checked (and defaults filled) on every enqueue; `None`:
    /// any JSON object.
    pub payload: Option<Vec<crate::fields::FieldDef>>,
    /// Its rate and concurrency limits, enforced across every node before a job starts.
    pub limits: crate::limits::Limits,
    /// Where the kind was declared, for error messages.
    pub source: PathBuf,
    /// Line of the `kind = …` key.
    pub line: usize,
}

impl JobKind {
    /// A kind with default settings, for tests and built-ins.
    pub fn new(name: &str, queue: &str) -> Self {
        Self {
            name: name.to_string(),
            queue: queue.to_string(),
            priority: 0,
            max_attempts: 20,
            timeout: Duration::from_secs(60),
            unique: None,
            backoff: Backoff::default(),
            description: None,
            enqueued_by: Vec::new(),
            payload: None,
            limits: crate::limits::Limits::default(),
            source: PathBuf::from("<built-in>"),
            line: 0,
        }
    }

    /// Render the unique-key template for a payload: `{field}` takes a top-level payload
    /// field (strings as is, other values as JSON) and `{tenant}` the tenant.
    pub fn unique_key(&self, payload: &Value, tenant: &str) -> Result<Option<String>, String> {
        let Some(template) = &self.unique else {
            return Ok(None);
        };
        let key = crate::limits::render(template, payload, tenant, None).map_err(|field| {
            if field.starts_with("unclosed") {
                field
            } else {
                format!(
                    "the unique key `{template}` of kind `{}` needs `{field}`, which the payload lacks",
                    self.name
                )
            }
        })?;
        Ok(Some(format!("{}:{key}", self.name)))
    }
}

/// Every job kind, by name.
#[derive(Debug, Clone, Default)]
pub struct KindCatalog {
    kinds: BTreeMap<String, JobKind>,
}

use crate::definitions::{line_of, read_toml_dir};

pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl KindCatalog {
    /// Load every `*.toml` in a directory.
    pub fn load_dir(dir: &Path) -> Result<Self, KindError> {
        let files = read_toml_dir(dir).map_err(|(path, source)| KindError::Io { path, source })?;
        let mut catalog = Self::default();
        for (path, text) in files {
            catalog.add(Self::parse(&path, &text)?)?;
        }
        Ok(catalog)
    }

    /// Parse one definition.
    pub fn parse(path: &Path, text: &str) -> Result<JobKind, KindError> {
        let invalid = |line: usize, message: String| KindError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let file: KindFile = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            invalid(line, err.message().to_string())
        })?;
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        let name = file.kind.get_ref().clone();
        if !valid_name(&name) {
            return Err(invalid(
                at(file.kind.span()),
                format!("kind `{name}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"),
            ));
        }
        let queue = file.queue.get_ref().clone();
        if !valid_name(&queue) {
            return Err(invalid(
                at(file.queue.span()),
                format!(
                    "queue `{queue}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"
                ),
            ));
        }
        let max_attempts = *file.max_attempts.get_ref();
        if !(1..=1000).contains(&max_attempts) {
            return Err(invalid(
                at(file.max_attempts.span()),
                format!("max_attempts must be between 1 and 1000, got {max_attempts}"),
            ));
        }
        let timeout_secs = *file.timeout_secs.get_ref();
        if !(1..=7 * 24 * 3600).contains(&timeout_secs) {
            return Err(invalid(
                at(file.timeout_secs.span()),
                format!("timeout_secs must be between 1 and 604800, got {timeout_secs}"),
            ));
        }
        const THIRTY_DAYS_MS: u64 = 30 * 24 * 3600 * 1000;
        if file.backoff.base_ms == 0
            || file.backoff.max_ms < file.backoff.base_ms
            || file.backoff.max_ms > THIRTY_DAYS_MS
        {
            return Err(invalid(
                line_of(text, text.find("[backoff]").unwrap_or(0)),
                "backoff needs 0 < base_ms <= max_ms <= 2592000000 (30 days)".into(),
            ));
        }
        let enqueued_by = match &file.enqueued_by {
            None => Vec::new(),
            Some(roles) => {
                if INTERNAL_KINDS.contains(&name.as_str()) {
                    return Err(invalid(
                        at(roles.span()),
                        format!(
                            "kind `{name}` is enqueued by steward itself: it cannot name enqueued_by"
                        ),
                    ));
                }
                if let Some(bad) = roles
                    .get_ref()
                    .iter()
                    .find(|r| !crate::fields::ROLES.contains(&r.as_str()))
                {
                    return Err(invalid(
                        at(roles.span()),
                        format!(
                            "enqueued_by: unknown role `{bad}` (known: {})",
                            crate::fields::ROLES.join(", ")
                        ),
                    ));
                }
                roles.get_ref().clone()
            }
        };
        let payload = match &file.payload {
            None => None,
            Some(fields) => Some(
                crate::fields::parse(fields, "payload field", |n| !n.is_empty() && n.len() <= 64)
                    .map_err(|(offset, message)| invalid(line_of(text, offset), message))?,
            ),
        };
        let mut limits = crate::limits::Limits::default();
        if let Some(rate) = file.rate_limit {
            let line = at(rate.span());
            limits.rate = Some(
                rate.into_inner()
                    .build(&name)
                    .map_err(|m| invalid(line, m))?,
            );
        }
        if let Some(concurrency) = file.concurrency_limit {
            let line = at(concurrency.span());
            limits.concurrency = Some(
                concurrency
                    .into_inner()
                    .build(&name)
                    .map_err(|m| invalid(line, m))?,
            );
        }
        if let Some(breaker) = file.circuit_breaker {
            let line = at(breaker.span());
            limits.breaker = Some(
                breaker
                    .into_inner()
                    .build(&name)
                    .map_err(|m| invalid(line, m))?,
            );
        }
        let kind = JobKind {
            name,
            queue,
            priority: file.priority,
            max_attempts,
            timeout: Duration::from_secs(timeout_secs),
            unique: file.unique.as_ref().map(|u| u.get_ref().clone()),
            backoff: file.backoff,
            description: file.description,
            enqueued_by,
            payload,
            limits,
            source: path.to_path_buf(),
            line: at(file.kind.span()),
        };
        if let Some(unique) = &file.unique {
            let template = unique.get_ref();
            if template.is_empty() || template.matches('{').count() != template.matches('}').count()
            {
                return Err(invalid(
                    at(unique.span()),
                    format!("unique template `{template}` has unbalanced braces"),
                ));
            }
        }
        Ok(kind)
    }

    /// Add a kind; a second kind of the same name is an error naming both files.
    pub fn add(&mut self, kind: JobKind) -> Result<(), KindError> {
        if let Some(existing) = self.kinds.get(&kind.name) {
            return Err(KindError::Invalid {
                path: kind.source.clone(),
                line: kind.line,
                message: format!(
                    "kind `{}` is already declared in {}:{}",
                    kind.name,
                    existing.source.display(),
                    existing.line
                ),
            });
        }
        for other in self.kinds.values() {
            let rate = |k: &JobKind| k.limits.rate.clone().map(|r| (r.name.clone(), r));
            let conc = |k: &JobKind| k.limits.concurrency.clone().map(|c| (c.name.clone(), c));
            let brk = |k: &JobKind| k.limits.breaker.clone().map(|c| (c.name.clone(), c));
            let clash = matches!((rate(&kind), rate(other)), (Some((a, x)), Some((b, y))) if a == b && x != y)
                || matches!((conc(&kind), conc(other)), (Some((a, x)), Some((b, y))) if a == b && x != y)
                || matches!((brk(&kind), brk(other)), (Some((a, x)), Some((b, y))) if a == b && x != y);
            if clash {
                return Err(KindError::Invalid {
                    path: kind.source.clone(),
                    line: kind.line,
                    message: format!(
                        "kind `{}` shares a limit name with {}:{} but declares it differently",
                        kind.name,
                        other.source.display(),
                        other.line
                    ),
                });
            }
        }
        self.kinds.insert(kind.name.clone(), kind);
        Ok(())
    }

    /// A kind by name.
    pub fn get(&self, name: &str) -> Option<&JobKind> {
        self.kinds.get(name)
    }

    /// Every kind, by name.
    pub fn iter(&self) -> impl Iterator<Item = &JobKind> {
        self.kinds.values()
    }

    /// The queues the kinds name, sorted, without duplicates.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self.kinds.values().map(|k| k.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobKind, KindError> {
        KindCatalog::parse(Path::new("jobs/x.toml"), text)
    }

    #[test]
    fn who_may_enqueue_and_the_payload_are_declared() {
        let kind = parse(
            "kind = \"report\"\nenqueued_by = [\"service\"]\n[payload]\n\
             month = { type = \"date\", required = true }\n",
        )
        .unwrap();
        assert_eq!(kind.enqueued_by, ["service"]);
        assert_eq!(kind.payload.unwrap()[0].name, "month");
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(
            err("kind = \"webhook_deliver\"\nenqueued_by = [\"service\"]\n"),
            "jobs/x.toml:2: kind `webhook_deliver` is enqueued by steward itself: it cannot name enqueued_by"
        );
        assert!(err("kind = \"r\"\nenqueued_by = [\"root\"]\n").contains("unknown role `root`"));
        assert!(
            err("kind = \"r\"\n[payload]\nn = { type = \"integer\", default = \"x\" }\n")
                .starts_with("jobs/x.toml:3: payload field `n`")
        );
    }

    #[test]
    fn parses_a_full_definition() {
        let kind = parse(
            "kind = \"provision\"\nqueue = \"lifecycle\"\npriority = 1\nmax_attempts = 5\n\
             timeout_secs = 30\nunique = \"{tenant}:{module}\"\n[backoff]\nbase_ms = 10\nmax_ms = 100\n",
        )
        .expect("valid");
        assert_eq!(kind.queue, "lifecycle");
        assert_eq!(kind.max_attempts, 5);
        assert_eq!(kind.backoff.max_ms, 100);
        let key = kind
            .unique_key(&serde_json::json!({"module": "chat"}), "t1")
            .expect("renders");
        assert_eq!(key.as_deref(), Some("provision:t1:chat"));
        assert!(kind.unique_key(&serde_json::json!({}), "t1").is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("kind = \"ok\"\nqueue = \"q\"\nmax_attempts = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs/x.toml:3: max_attempts must be between 1 and 1000, got 0"
        );
        let err = parse("kind = \"ok\"\n\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("jobs/x.toml:3: "), "{err}");
        let err = parse("kind = \"ok\"\nqueue = [\n").unwrap_err();
        assert!(err.to_string().starts_with("jobs/x.toml:"), "{err}");
        let err = parse("kind = \"Bad Name\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("jobs/x.toml:1: kind `Bad Name`"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 1000,
            jitter: false,
        };
        assert_eq!(backoff.delay_after(1), Duration::from_millis(100));
        assert_eq!(backoff.delay_after(2), Duration::from_millis(200));
        assert_eq!(backoff.delay_after(10), Duration::from_millis(1000));
        let jittered = Backoff {
            jitter: true,
            ..backoff
        };
        let d = jittered.delay_after(2);
        assert!(
            d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
            "{d:?}"
        );
    }
}
