//! Flow-control limits a job kind declares in `jobs/*.toml`: a rate limit (N starts per
//! period) and a concurrency limit (at most N running at once on every node together), each
//! for the whole kind or per key, a template over the payload. The runtime enforces them
//! before a job starts ([`crate::queue::limits`]), with their state in the database
//! ([`crate::store::LimitStore`]).
//!
//! ```toml
//! [rate_limit]
//! limit = 100            # starts per period, spaced evenly (one every period / limit)
//! period_secs = 1        # default 1
//! key = "{host}"         # optional: one limit per key (payload fields and {tenant})
//! name = "webhooks"      # optional: kinds that give the same name share one limit
//! [concurrency_limit]
//! limit = 5              # at most this many running at once, anywhere
//! key = "{host}"
//! [circuit_breaker]      # per dependency: after `failures` failed attempts in a row it opens,
//! key = "{host}"         # and the kind's jobs for that key wait (using no attempt) until,
//! failures = 5           # `open_secs` later, one probe job is let through; its success
//! open_secs = 30         # closes the circuit, its failure opens it again
//! ```

pub mod admission;

use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// `[rate_limit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitFile {
    limit: u32,
    #[serde(default = "one")]
    period_secs: u64,
    key: Option<String>,
    name: Option<String>,
}

/// `[concurrency_limit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConcurrencyLimitFile {
    limit: u32,
    key: Option<String>,
    name: Option<String>,
}

fn one() -> u64 {
    1
}

/// A rate limit: `limit` starts per `period`, one every `period / limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The limit's name (the kind's, unless kinds share it).
    pub name: String,
    pub limit: u32,
    pub period: Duration,
    /// One limit per rendered key; `None`: one for the whole name.
    pub key: Option<String>,
}

/// A concurrency limit: at most `limit` running at once, on every node together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    pub name: String,
    pub limit: u32,
    pub key: Option<String>,
}

/// A circuit breaker: a dependency (a webhook host, an endpoint) that failed `failures`
/// times in a row is left alone for `open_for`, then tried by one probe job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub name: String,
    pub failures: u32,
    pub open_for: Duration,
    pub key: Option<String>,
}

impl CircuitBreaker {
    /// The database key of a job's circuit.
    pub fn key_of(&self, payload: &Value, tenant: &str) -> String {
        format!(
            "breaker:{}:{}",
            self.name,
            render_key(self.key.as_deref(), payload, tenant)
        )
    }
}

/// Every limit of a kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub rate: Option<RateLimit>,
    pub concurrency: Option<ConcurrencyLimit>,
    pub breaker: Option<CircuitBreaker>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.concurrency.is_none() && self.breaker.is_none()
    }
}

/// `[circuit_breaker]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CircuitBreakerFile {
    #[serde(default = "five")]
    failures: u32,
    #[serde(default = "thirty")]
    open_secs: u64,
    key: Option<String>,
    name: Option<String>,
}

fn five() -> u32 {
    5
}
fn thirty() -> u64 {
    30
}

impl CircuitBreakerFile {
    /// Validate, naming the circuit after `kind` unless it names itself.
    pub(crate) fn build(self, kind: &str) -> Result<CircuitBreaker, String> {
        check_range("circuit_breaker.failures", self.failures, 1..=1000)?;
        check_range("circuit_breaker.open_secs", self.open_secs, 1..=86_400)?;
        let (key, name) = key_and_name(self.key, self.name, kind)?;
        Ok(CircuitBreaker {
            name,
            failures: self.failures,
            open_for: Duration::from_secs(self.open_secs),
            key,
        })
    }
}

impl RateLimit {
    /// The spacing of starts.
    pub fn every(&self) -> Duration {
        self.period / self.limit.max(1)
    }

    /// The database key of a job's limit.
    pub fn key_of(&self, payload: &Value, tenant: &str) -> String {
        format!(
            "rate:{}:{}",
            self.name,
            render_key(self.key.as_deref(), payload, tenant)
        )
    }
}

impl ConcurrencyLimit {
    /// The database key of a job's limit.
    pub fn key_of(&self, payload: &Value, tenant: &str) -> String {
        format!(
            "conc:{}:{}",
            self.name,
            render_key(self.key.as_deref(), payload, tenant)
        )
    }
}

/// A key template rendered for a job; a field the payload lacks renders empty (such jobs
/// share one key), since a job enqueued over SQL was never checked against the template.
fn render_key(template: Option<&str>, payload: &Value, tenant: &str) -> String {
    match template {
        None => String::new(),
        Some(template) => render(template, payload, tenant, Some("")).unwrap_or_default(),
    }
}

/// Render `{field}` placeholders from a payload's top-level fields (strings as they are,
/// other values as JSON) and `{tenant}` from the tenant; a missing field takes `missing`, or
/// is an error naming it.
pub(crate) fn render(
    template: &str,
    payload: &Value,
    tenant: &str,
    missing: Option<&str>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in template `{template}`"))?;
        let field = &rest[open + 1..open + close];
        match (field, payload.get(field)) {
            (_, Some(Value::String(s))) => out.push_str(s),
            (_, Some(other)) => out.push_str(&other.to_string()),
            ("tenant", None) if !tenant.is_empty() => out.push_str(tenant),
            _ => match missing {
                Some(fill) => out.push_str(fill),
                None => return Err(field.to_string()),
            },
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Check a template's braces.
fn check_template(template: &str) -> Result<(), String> {
    if template.is_empty() || template.matches('{').count() != template.matches('}').count() {
        return Err(format!(
            "template `{template}` is empty or has unbalanced braces"
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if crate::kinds::valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "limit name `{name}` must be 1-64 of a-z, 0-9, _ and -, starting with a letter"
        ))
    }
}

const LIMIT_MAX: u32 = 1_000_000;

/// `what` (e.g. `rate_limit.limit`) within `range`.
fn check_range<T: PartialOrd + std::fmt::Display>(
    what: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{what} must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ))
    }
}

/// A limit's key template (checked) and its name: its own, else the kind's.
fn key_and_name(
    key: Option<String>,
    name: Option<String>,
    kind: &str,
) -> Result<(Option<String>, String), String> {
    if let Some(key) = &key {
        check_template(key)?;
    }
    let name = name.unwrap_or_else(|| kind.to_string());
    check_name(&name)?;
    Ok((key, name))
}

impl RateLimitFile {
    /// Validate, naming the limit after `kind` unless it names itself.
    pub(crate) fn build(self, kind: &str) -> Result<RateLimit, String> {
        check_range("rate_limit.limit", self.limit, 1..=LIMIT_MAX)?;
        check_range("rate_limit.period_secs", self.period_secs, 1..=86_400)?;
        let (key, name) = key_and_name(self.key, self.name, kind)?;
        Ok(RateLimit {
            name,
            limit: self.limit,
            period: Duration::from_secs(self.period_secs),
            key,
        })
    }
}

impl ConcurrencyLimitFile {
    /// Validate, naming the limit after `kind` unless it names itself.
    pub(crate) fn build(self, kind: &str) -> Result<ConcurrencyLimit, String> {
        check_range("concurrency_limit.limit", self.limit, 1..=LIMIT_MAX)?;
        let (key, name) = key_and_name(self.key, self.name, kind)?;
        Ok(ConcurrencyLimit {
            name,
            limit: self.limit,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_render_from_the_payload_and_missing_fields_share_one_key() {
        let rate = RateLimitFile {
            limit: 100,
            period_secs: 1,
            key: Some("{host}/{tenant}".into()),
            name: None,
        }
        .build("webhook_deliver")
        .unwrap();
        assert_eq!(rate.every(), Duration::from_millis(10));
        assert_eq!(
            rate.key_of(&json!({"host": "a.example"}), "7"),
            "rate:webhook_deliver:a.example/7"
        );
        assert_eq!(rate.key_of(&json!({}), ""), "rate:webhook_deliver:/");
        let bad = RateLimitFile {
            limit: 0,
            period_secs: 1,
            key: None,
            name: None,
        };
        assert!(bad.build("k").unwrap_err().contains("between 1 and"));
        let bad_key = ConcurrencyLimitFile {
            limit: 2,
            key: Some("{host".into()),
            name: None,
        };
        assert!(bad_key.build("k").unwrap_err().contains("unbalanced"));
        let bad_name = ConcurrencyLimitFile {
            limit: 2,
            key: None,
            name: Some("Bad Name".into()),
        };
        assert!(bad_name.build("k").is_err());
    }
}
