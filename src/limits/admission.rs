//! Admission under flow-control limits, decided in one place and without a database: from
//! what the store read under lock for a batch of just-fetched jobs (each rate key's next free
//! start, the places held under each concurrency key, each circuit breaker, the starts
//! reserved earlier), when each job may start and what must be written for it. The store
//! ([`crate::store::LimitStore`]) reads the [`LimitState`], calls [`admit`] and writes the
//! [`Writes`] in the same transaction; a breaker's end of attempt is [`Breaker::after`].

use crate::types::limits::{Admission, BreakerOutcome, BreakerRecord, LimitAsk};
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, HashMap};

/// How long a job waits, while another job probes its circuit, before it asks again.
const PROBE_RECHECK: Duration = Duration::seconds(5);

/// A circuit breaker as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    /// Failed attempts in a row.
    pub failures: i64,
    pub opened_at: Option<DateTime<Utc>>,
    pub open_ms: i64,
    /// The job let through as the probe, and until when it may take.
    pub probe_job: Option<i64>,
    pub probe_until: Option<DateTime<Utc>>,
    pub changed_at: DateTime<Utc>,
}

/// What the store read, under lock, for one admission (by the database's clock `now`).
#[derive(Debug, Clone)]
pub struct LimitState {
    pub now: DateTime<Utc>,
    /// Per limit key (rate and concurrency): its next free start, never before `now`.
    pub next_slot: BTreeMap<String, DateTime<Utc>>,
    /// Per concurrency key: the places its running jobs hold.
    pub running: HashMap<String, i64>,
    pub breakers: BTreeMap<String, Breaker>,
    /// Starts reserved earlier, by (rate key, job id).
    pub reserved: HashMap<(String, i64), DateTime<Utc>>,
}

/// What one admission writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writes {
    /// Starts reserved for the jobs told `Later`: (key, job, slot).
    pub reserve: Vec<(String, i64, DateTime<Utc>)>,
    /// Reservations used up by a start: (key, job).
    pub unreserve: Vec<(String, i64)>,
    /// Places taken under concurrency keys: (key, job, attempt).
    pub hold: Vec<(String, i64, i32)>,
    /// Attempts' starts, when the limits let them: (job, attempt, at).
    pub started: Vec<(i64, i32, DateTime<Utc>)>,
    /// Circuits this admission lets a probe through: (key, job, until).
    pub probes: Vec<(String, i64, DateTime<Utc>)>,
    /// Every key's next free start after this admission.
    pub next_slot: BTreeMap<String, DateTime<Utc>>,
}

fn chrono_of(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

/// When each of `asks` may start (one [`Admission`] each, in order), and what to write.
/// A rate-limited job takes its reserved start if it has one (and it has not passed), else the
/// key's next free start; a start within `horizon` is its `Start`, a later one is reserved for
/// it (`Later`). A concurrency-limited job starts only while fewer than the limit run (`Full`
/// otherwise, nothing reserved), then holds a place. A job passes a circuit breaker only while
/// it is closed, or as the one probe once it has been open for its period (`Open` otherwise);
/// a job on its last attempt is never the probe.
pub fn admit(
    asks: &[LimitAsk],
    mut state: LimitState,
    horizon: std::time::Duration,
) -> (Vec<Admission>, Writes) {
    let (now, horizon) = (state.now, chrono_of(horizon));
    let mut writes = Writes::default();
    let mut each = Vec::with_capacity(asks.len());
    for ask in asks {
        let id = ask.lease.id;
        if let Some((key, probe_for)) = &ask.breaker
            && let Some(breaker) = state.breakers.get_mut(key)
            && let Some(opened_at) = breaker.opened_at
        {
            let probe_at = opened_at + Duration::milliseconds(breaker.open_ms);
            if now < probe_at {
                each.push(Admission::Open { until: probe_at });
                continue;
            }
            match (breaker.probe_job, breaker.probe_until) {
                (Some(job), Some(until)) if job != id && until > now => {
                    // Another job probes. Its deadline is its timeout, but a probe usually
                    // answers in a moment: look again soon, not at the deadline.
                    each.push(Admission::Open {
                        until: until.min(now + PROBE_RECHECK),
                    });
                    continue;
                }
                _ if ask.last_attempt => {
                    // Another job probes; this one looks again in a moment.
                    each.push(Admission::Open {
                        until: now + Duration::seconds(1),
                    });
                    continue;
                }
                _ => {
                    // Half-open: this job is the probe.
                    let until = now + chrono_of(*probe_for);
                    breaker.probe_job = Some(id);
                    breaker.probe_until = Some(until);
                    writes.probes.push((key.clone(), id, until));
                }
            }
        }
        if let Some((key, limit)) = &ask.concurrency {
            let n = state.running.get(key).copied().unwrap_or(0);
            if n >= *limit {
                each.push(Admission::Full { running: n });
                continue;
            }
        }
        let mut at = now;
        if let Some((key, every)) = &ask.rate {
            // A job back after its reserved start has passed takes the next free one: starting
            // it now could put two starts closer than `every`.
            let kept = state
                .reserved
                .remove(&(key.clone(), id))
                .filter(|slot| *slot >= now);
            let slot = kept.unwrap_or_else(|| {
                let free = state.next_slot.entry(key.clone()).or_insert(now);
                let slot = *free;
                *free = slot + chrono_of(*every);
                slot
            });
            if slot - now > horizon {
                if kept.is_none() {
                    writes.reserve.push((key.clone(), id, slot));
                }
                each.push(Admission::Later { slot });
                continue;
            }
            writes.unreserve.push((key.clone(), id));
            at = slot.max(now);
        }
        if let Some((key, _)) = &ask.concurrency {
            writes.hold.push((key.clone(), id, ask.lease.attempt));
            *state.running.entry(key.clone()).or_insert(0) += 1;
        }
        // The attempt starts when the limits let it, not when it was fetched.
        writes.started.push((id, ask.lease.attempt, at));
        each.push(Admission::Start { at });
    }
    writes.next_slot = state.next_slot;
    (each, writes)
}

impl Breaker {
    /// This breaker as operators see it at `now`.
    pub fn record(&self, key: String, now: DateTime<Utc>) -> BreakerRecord {
        let probe_at = self
            .opened_at
            .map(|at| at + Duration::milliseconds(self.open_ms));
        let state = match probe_at {
            None => "closed",
            Some(at) if at > now => "open",
            Some(_) => "half_open",
        };
        BreakerRecord {
            key,
            state: state.into(),
            failures: self.failures,
            opened_at: self.opened_at,
            probe_at,
            changed_at: self.changed_at,
        }
    }

    /// The breaker after a failed attempt (`current`: as stored, if it was), and whether that
    /// attempt was its probe: a failure counts, opens the circuit at its threshold, and a
    /// failed probe opens it again, for another period.
    pub fn after_failure(
        current: Option<&Breaker>,
        outcome: &BreakerOutcome<'_>,
        now: DateTime<Utc>,
    ) -> (Breaker, bool) {
        let failures = current.map_or(0, |b| b.failures) + 1;
        let was_probe = current.and_then(|b| b.probe_job) == Some(outcome.job_id);
        let opened_at = match current.and_then(|b| b.opened_at) {
            Some(_) if was_probe => Some(now),
            Some(at) => Some(at),
            None if failures >= i64::from(outcome.failures_to_open) => Some(now),
            None => None,
        };
        let breaker = Breaker {
            failures,
            opened_at,
            open_ms: i64::try_from(outcome.open_for.as_millis()).unwrap_or(i64::MAX),
            probe_job: current.and_then(|b| b.probe_job).filter(|_| !was_probe),
            probe_until: current.and_then(|b| b.probe_until).filter(|_| !was_probe),
            changed_at: now,
        };
        (breaker, was_probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lease;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn ask(id: i64) -> LimitAsk {
        LimitAsk {
            lease: Lease { id, attempt: 1 },
            rate: None,
            concurrency: None,
            breaker: None,
            last_attempt: false,
        }
    }

    fn state() -> LimitState {
        LimitState {
            now: at(0),
            next_slot: BTreeMap::new(),
            running: HashMap::new(),
            breakers: BTreeMap::new(),
            reserved: HashMap::new(),
        }
    }

    const HORIZON: std::time::Duration = std::time::Duration::from_secs(2);

    #[test]
    fn rate_limited_starts_are_spaced_and_those_past_the_horizon_reserved() {
        let asks: Vec<LimitAsk> = (1..=4)
            .map(|id| LimitAsk {
                rate: Some(("r".into(), std::time::Duration::from_secs(1))),
                ..ask(id)
            })
            .collect();
        let mut state = state();
        state.next_slot.insert("r".into(), at(0));
        let (each, writes) = admit(&asks, state, HORIZON);
        assert_eq!(
            each,
            vec![
                Admission::Start { at: at(0) },
                Admission::Start { at: at(1) },
                Admission::Start { at: at(2) },
                Admission::Later { slot: at(3) },
            ]
        );
        assert_eq!(writes.reserve, vec![("r".into(), 4, at(3))]);
        assert_eq!(writes.next_slot["r"], at(4));
        assert_eq!(writes.started.len(), 3);
    }

    #[test]
    fn a_reserved_start_is_kept_and_a_passed_one_is_not() {
        let rate = Some(("r".into(), std::time::Duration::from_secs(1)));
        let asks = [
            LimitAsk {
                rate: rate.clone(),
                ..ask(1)
            },
            LimitAsk { rate, ..ask(2) },
        ];
        let mut state = state();
        state.next_slot.insert("r".into(), at(5));
        state.reserved.insert(("r".into(), 1), at(1));
        state.reserved.insert(("r".into(), 2), at(-1));
        let (each, writes) = admit(&asks, state, HORIZON);
        // Job 1 keeps its start; job 2's has passed: it takes the next free one, beyond the
        // horizon, and is reserved again.
        assert_eq!(each[0], Admission::Start { at: at(1) });
        assert_eq!(each[1], Admission::Later { slot: at(5) });
        assert_eq!(writes.unreserve, vec![("r".into(), 1)]);
        assert_eq!(writes.reserve, vec![("r".into(), 2, at(5))]);
    }

    #[test]
    fn a_full_concurrency_limit_refuses_and_holds_are_counted_within_the_batch() {
        let asks: Vec<LimitAsk> = (1..=3)
            .map(|id| LimitAsk {
                concurrency: Some(("c".into(), 2)),
                ..ask(id)
            })
            .collect();
        let mut state = state();
        state.running.insert("c".into(), 1);
        let (each, writes) = admit(&asks, state, HORIZON);
        assert_eq!(each[0], Admission::Start { at: at(0) });
        assert_eq!(each[1], Admission::Full { running: 2 });
        assert_eq!(each[2], Admission::Full { running: 2 });
        assert_eq!(writes.hold, vec![("c".into(), 1, 1)]);
    }

    #[test]
    fn an_open_circuit_lets_one_probe_through_once_its_period_is_over() {
        let breaker = |id| LimitAsk {
            breaker: Some(("b".into(), std::time::Duration::from_secs(30))),
            ..ask(id)
        };
        let open = Breaker {
            failures: 5,
            opened_at: Some(at(-10)),
            open_ms: 20_000,
            probe_job: None,
            probe_until: None,
            changed_at: at(-10),
        };
        let mut state = state();
        state.breakers.insert("b".into(), open.clone());
        let (each, _) = admit(&[breaker(1)], state.clone(), HORIZON);
        assert_eq!(each, vec![Admission::Open { until: at(10) }]);
        state.breakers.insert(
            "b".into(),
            Breaker {
                opened_at: Some(at(-30)),
                ..open
            },
        );
        let last = LimitAsk {
            last_attempt: true,
            ..breaker(3)
        };
        let (each, writes) = admit(&[last, breaker(1), breaker(2)], state, HORIZON);
        // A last attempt is never the probe; job 1 is; job 2 looks again soon.
        assert_eq!(each[0], Admission::Open { until: at(1) });
        assert_eq!(each[1], Admission::Start { at: at(0) });
        assert_eq!(each[2], Admission::Open { until: at(5) });
        assert_eq!(writes.probes, vec![("b".into(), 1, at(30))]);
    }

    #[test]
    fn failures_open_the_circuit_at_the_threshold_and_a_failed_probe_reopens_it() {
        let outcome = |job_id| BreakerOutcome {
            key: "b",
            job_id,
            ok: false,
            failures_to_open: 2,
            open_for: std::time::Duration::from_secs(30),
        };
        let (first, _) = Breaker::after_failure(None, &outcome(1), at(0));
        assert_eq!((first.failures, first.opened_at), (1, None));
        let (second, _) = Breaker::after_failure(Some(&first), &outcome(2), at(1));
        assert_eq!(second.opened_at, Some(at(1)));
        assert_eq!(second.record("b".into(), at(2)).state, "open");
        assert_eq!(second.record("b".into(), at(31)).state, "half_open");
        let probing = Breaker {
            probe_job: Some(3),
            probe_until: Some(at(61)),
            ..second
        };
        let (again, was_probe) = Breaker::after_failure(Some(&probing), &outcome(3), at(40));
        assert!(was_probe);
        assert_eq!((again.opened_at, again.probe_job), (Some(at(40)), None));
    }
}
