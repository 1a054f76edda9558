//! Durable waits: the built-in step handlers `wait.signal` and `wait.until`. A waiting step
//! holds no worker: its job snoozes (back to its queue, `scheduled`, its attempt not counted)
//! until its time or its timeout, and a signal sent meanwhile makes it due at once
//! ([`crate::store::RunStore::run_signal_send`]). Its state is rows in the database, so it
//! survives restarts of every worker and of the database.

use super::definition::{OnTimeout, Wait};
use super::engine::{StepContext, StepFuture};
use crate::queue::JobError;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use std::time::Duration;

/// The longest a timer snoozes at once (it then looks again).
const AT_MOST: Duration = Duration::from_secs(3600);

/// The longest a signal wait snoozes at once: a signal is normally a wake-up at once
/// ([`crate::workflow::Engine::signal`]); one lost in a crash costs at most this.
pub(crate) const SIGNAL_AT_MOST: Duration = Duration::from_secs(60);

fn snooze_until(at: DateTime<Utc>, now: DateTime<Utc>) -> JobError {
    let wait = (at - now).to_std().unwrap_or_default();
    JobError::snooze(wait.min(AT_MOST))
}

/// `wait.signal`: complete with the signal's payload once it is sent; after the timeout,
/// fail or go on as the definition says.
pub(super) fn signal(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let Some(Wait::Signal {
            signal,
            timeout_secs,
            on_timeout,
        }) = ctx.wait
        else {
            return Err(JobError::Fatal(format!(
                "step {} is not a signal wait",
                ctx.step
            )));
        };
        if let Some(sent) = ctx.store().run_signal_get(ctx.run_id, signal).await? {
            return Ok(json!({
                "signal": signal,
                "payload": sent.payload,
                "sent_by": sent.sent_by,
                "sent_at": sent.sent_at,
            }));
        }
        let now = ctx.now();
        let deadline = timeout_secs
            .map(|secs| ctx.queued_at.unwrap_or(now) + chrono::Duration::seconds(secs as i64));
        match deadline {
            Some(deadline) if deadline <= now => match on_timeout {
                OnTimeout::Continue => Ok(json!({"signal": signal, "timed_out": true})),
                OnTimeout::Fail => Err(JobError::Fatal(format!(
                    "signal `{signal}` did not come within {}s",
                    timeout_secs.unwrap_or_default()
                ))),
            },
            Some(deadline) => Err(JobError::snooze(
                (deadline - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(SIGNAL_AT_MOST),
            )),
            None => Err(JobError::snooze(SIGNAL_AT_MOST)),
        }
    })
}

/// `wait.until`: complete (passing its input on) once the time named by `until` has come; a
/// missing or null time waits for nothing (e.g. a deprecation without a sunset date).
pub(super) fn until(ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let Some(Wait::Until { until }) = ctx.wait else {
            return Err(JobError::Fatal(format!(
                "step {} is not a timed wait",
                ctx.step
            )));
        };
        let value = match until.strip_prefix("input.") {
            Some(field) => ctx.input.get(field),
            None => ctx.params.get(until.as_str()),
        };
        let value = value.filter(|v| !v.is_null());
        let Some(value) = value else {
            return Ok(ctx.input.clone());
        };
        let at = time_of(value).ok_or_else(|| {
            JobError::Fatal(format!(
                "`{until}` holds no time (RFC 3339 or YYYY-MM-DD): {value}"
            ))
        })?;
        let now = ctx.now();
        if at > now {
            return Err(snooze_until(at, now));
        }
        Ok(ctx.input.clone())
    })
}

/// A time as RFC 3339, or a date (its midnight, UTC).
fn time_of(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            time_of(&json!("2027-01-02")).map(|t| t.to_rfc3339()),
            Some("2027-01-02T00:00:00+00:00".into())
        );
        assert_eq!(
            time_of(&json!("2027-01-02T03:04:05-03:00")).map(|t| t.to_rfc3339()),
            Some("2027-01-02T06:04:05+00:00".into())
        );
        assert_eq!(time_of(&json!("soon")), None);
        assert_eq!(time_of(&json!(5)), None);
    }
}
