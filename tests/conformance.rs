//! The storage conformance suite: every behaviour of the durable queue, run against both
//! backends (`postgres::*` and `sqlite::*`).

mod common;

use chrono::Utc;
use common::{Backend, fresh, new_job};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use steward::store::{FetchParams, Rescue, TransactionalEnqueue};
use steward::types::{FetchedJob, JobFilter, JobState, Lease, Outcome};
use steward::{Client, EnqueueOptions};

per_backend!(
    one_holder_leads_until_it_resigns_or_its_lease_runs_out,
    runtime_gauges_show_queue_latency_workers_and_the_leader,
    the_schema_version_is_this_builds_once_migrated,
    enqueue_then_fetch_leases_the_job,
    fetch_orders_by_priority_then_arrival,
    a_fetch_from_a_cursor_takes_only_jobs_after_it,
    jobs_without_a_tenant_are_first_in_first_out,
    one_tenants_flood_does_not_delay_another_tenant,
    scheduled_jobs_wait_for_their_time,
    stale_worker_cannot_complete_fail_or_heartbeat,
    a_rescue_that_waited_for_the_writer_rescues_nothing,
    failures_back_off_then_dead_letter_with_every_attempt,
    released_jobs_do_not_use_an_attempt,
    an_error_message_with_nul_bytes_is_stored,
    duplicate_unique_enqueue_returns_the_existing_job,
    uniqueness_holds_under_50_concurrent_enqueuers,
    transactional_enqueue_follows_the_transaction,
    operators_retry_discard_and_cancel,
    pruning_removes_finished_jobs_after_retention,
    vacuum_keeps_the_hot_table_from_growing_over_rounds_of_jobs,
    listing_filters_and_counts,
    a_paused_queue_is_not_fetched_and_versions_order_changes,
    workers_register_beat_expire_and_leave,
    search_by_text_and_time_newest_first_with_totals,
    rate_limits_space_starts_and_reserve_them_for_jobs_sent_back,
    concurrency_limits_count_running_attempts_only,
    a_circuit_opens_at_its_threshold_and_lets_one_probe_through,
    failures_recorded_at_once_are_each_counted,
    an_enqueue_hands_one_job_to_an_idle_producers_offer,
    kind_defaults_are_published_once_and_changed_in_place,
);

/// `kinds_publish`: what a runtime writes at start for enqueues from SQL; publishing the
/// same defaults again changes nothing, a changed kind is updated in place.
async fn kind_defaults_are_published_once_and_changed_in_place(backend: Backend) {
    use steward::store::KindDefaults;
    let t = fresh(backend).await;
    let kind = |name: &str, queue: &str| KindDefaults {
        kind: name.into(),
        queue: queue.into(),
        priority: 2,
        max_attempts: 5,
        timeout_ms: 1_000,
    };
    let both = [kind("mail", "mailq"), kind("report", "reports")];
    assert_eq!(t.store.kinds_publish(&both).await.unwrap(), 2);
    assert_eq!(t.store.kinds_publish(&both).await.unwrap(), 0);
    let moved = [kind("mail", "other"), kind("report", "reports")];
    assert_eq!(t.store.kinds_publish(&moved).await.unwrap(), 1);
    t.cleanup().await;
}

/// The in-process hand-off (`store::handoff`): an enqueue of one job that may start now,
/// into a queue whose idle producer offered to take it, inserts it leased to that producer
/// and hands it over; everything else takes the usual path.
async fn an_enqueue_hands_one_job_to_an_idle_producers_offer(backend: Backend) {
    let t = fresh(backend).await;
    let lease_for = Duration::from_secs(30);
    let state = async |id| t.store.job_get(id).await.unwrap().unwrap();
    let mut offer = t.store.offers().offer("ho", "w1".into(), lease_for);
    // A batch, a unique key, a future run_at, another queue: enqueued the usual way.
    let mut keyed = new_job("noop", "ho");
    keyed.unique_key = Some("k".into());
    let mut later = new_job("noop", "ho");
    later.run_at = Some(Utc::now() + chrono::Duration::seconds(60));
    let usual = [
        t.store
            .jobs_insert_many(&[new_job("noop", "ho"), new_job("noop", "ho")])
            .await
            .unwrap(),
        t.store.jobs_insert_many(&[keyed]).await.unwrap(),
        t.store.jobs_insert_many(&[later]).await.unwrap(),
        t.store
            .jobs_insert_many(&[new_job("noop", "elsewhere")])
            .await
            .unwrap(),
    ];
    for enqueued in usual.iter().flatten() {
        let job = state(enqueued.id).await;
        assert!(
            matches!(job.state, JobState::Available | JobState::Scheduled),
            "{job:?}"
        );
        assert_eq!(job.attempt, 0);
    }
    // One job now: inserted leased to the offer's worker, handed over as a fetch returns it.
    let mut one = new_job("noop", "ho");
    one.tenant = "acme".into();
    one.payload = json!({"n": 1});
    let id = t.store.jobs_insert_many(&[one]).await.unwrap()[0].id;
    let handed = offer.taken().await.expect("the job is handed over");
    assert_eq!(
        (handed.id, handed.attempt, handed.tenant.as_str()),
        (id, 1, "acme")
    );
    assert_eq!(handed.payload, json!({"n": 1}));
    let job = state(id).await;
    assert_eq!(job.state, JobState::Running);
    assert_eq!((job.attempt, job.leased_by.as_deref()), (1, Some("w1")));
    // An offer is taken once: the next job takes the usual path.
    let next = t
        .store
        .jobs_insert_many(&[new_job("noop", "ho")])
        .await
        .unwrap()[0]
        .id;
    assert_eq!(state(next).await.state, JobState::Available);
    // From here the handed job is an ordinary leased one: its worker completes it.
    let done = t
        .store
        .jobs_apply_outcomes(
            "w1",
            &[Outcome::Completed {
                lease: handed.lease(),
                finished_at: Utc::now(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(done, vec![handed.lease()]);
    // A withdrawn offer takes nothing.
    let offer = t.store.offers().offer("ho", "w1".into(), lease_for);
    assert!(offer.withdraw().await.is_none());
    let after = t
        .store
        .jobs_insert_many(&[new_job("noop", "ho")])
        .await
        .unwrap()[0]
        .id;
    assert_eq!(state(after).await.state, JobState::Available);
    // A paused queue is not handed to: the offer hears nothing, the job waits available.
    t.store.queue_set_paused("ho", true, "op").await.unwrap();
    assert!(
        t.store
            .jobs_insert_leased(&new_job("noop", "ho"), "w1", lease_for)
            .await
            .unwrap()
            .is_none(),
        "a leased insert into a paused queue"
    );
    let mut offer = t.store.offers().offer("ho", "w1".into(), lease_for);
    let paused = t
        .store
        .jobs_insert_many(&[new_job("noop", "ho")])
        .await
        .unwrap()[0]
        .id;
    assert!(offer.taken().await.is_none());
    assert_eq!(state(paused).await.state, JobState::Available);
    t.cleanup().await;
}

/// Admission results, simplified: `Some(ms after now)` to start, `None` when not now.
fn starts(admitted: &steward::store::limits::Admitted) -> Vec<Option<i64>> {
    use steward::store::limits::Admission;
    admitted
        .each
        .iter()
        .map(|a| match a {
            Admission::Start { at } => Some((*at - admitted.now).num_milliseconds()),
            _ => None,
        })
        .collect()
}

async fn rate_limits_space_starts_and_reserve_them_for_jobs_sent_back(backend: Backend) {
    use steward::store::limits::{Admission, LimitAsk};
    let t = fresh(backend).await;
    let jobs: Vec<_> = (0..10).map(|_| new_job("noop", "rl")).collect();
    t.store.jobs_insert_many(&jobs).await.unwrap();
    let fetched = fetch(&t.store, "rl", 10, "w1").await;
    let every = Duration::from_millis(100);
    let ask = |job: &FetchedJob, key: &str| LimitAsk {
        lease: job.lease(),
        rate: Some((key.to_string(), every)),
        concurrency: None,
        breaker: None,
        last_attempt: false,
    };
    let asks: Vec<_> = fetched.iter().map(|j| ask(j, "rate:a")).collect();
    let horizon = Duration::from_millis(450);
    let first = t.store.limits_admit(&asks, horizon).await.unwrap();
    // 100 ms apart: starts at 0, 100, ... 400 ms fit the horizon; the other five are reserved.
    assert_eq!(
        starts(&first),
        vec![
            Some(0),
            Some(100),
            Some(200),
            Some(300),
            Some(400),
            None,
            None,
            None,
            None,
            None
        ]
    );
    let reserved: Vec<_> = first.each[5..]
        .iter()
        .map(|a| match a {
            Admission::Later { slot } => (*slot - first.now).num_milliseconds(),
            other => panic!("expected a reservation, got {other:?}"),
        })
        .collect();
    assert_eq!(reserved, vec![500, 600, 700, 800, 900]);
    // Another key is not slowed by this one.
    let other: Vec<_> = jobs_of(&t, "rl2", 1)
        .await
        .iter()
        .map(|j| ask(j, "rate:b"))
        .collect();
    assert_eq!(
        starts(&t.store.limits_admit(&other, horizon).await.unwrap()),
        vec![Some(0)]
    );
    // A job that comes back keeps its reserved start; a new one queues behind every
    // reservation (asked with a long horizon, so both fit).
    let later = jobs_of(&t, "rl3", 1).await;
    let again = vec![asks[9].clone(), ask(&later[0], "rate:a")];
    let second = t
        .store
        .limits_admit(&again, Duration::from_secs(5))
        .await
        .unwrap();
    let ms = chrono::Duration::milliseconds;
    assert_eq!(
        second.each,
        vec![
            Admission::Start {
                at: first.now + ms(900)
            },
            Admission::Start {
                at: first.now + ms(1000)
            }
        ],
        "the returning job keeps its start; the new one takes the next free one"
    );
    t.cleanup().await;
}

/// Insert and lease `n` jobs of a queue of their own.
async fn jobs_of(t: &common::TestStore, queue: &str, n: usize) -> Vec<FetchedJob> {
    let jobs: Vec<_> = (0..n).map(|_| new_job("noop", queue)).collect();
    t.store.jobs_insert_many(&jobs).await.unwrap();
    fetch(&t.store, queue, n, "w1").await
}

async fn concurrency_limits_count_running_attempts_only(backend: Backend) {
    use steward::store::limits::{Admission, LimitAsk};
    let t = fresh(backend).await;
    let fetched = jobs_of(&t, "cl", 3).await;
    let ask = |job: &FetchedJob| LimitAsk {
        lease: job.lease(),
        rate: None,
        concurrency: Some(("conc:x".to_string(), 2)),
        breaker: None,
        last_attempt: false,
    };
    let horizon = Duration::from_millis(500);
    let asks: Vec<_> = fetched.iter().map(ask).collect();
    let first = t.store.limits_admit(&asks, horizon).await.unwrap();
    assert_eq!(starts(&first), vec![Some(0), Some(0), None]);
    assert_eq!(first.each[2], Admission::Full { running: 2 });
    // Still full while both run; the third is released (its attempt not counted).
    let third = &fetched[2];
    assert_eq!(
        starts(&t.store.limits_admit(&asks[2..], horizon).await.unwrap()),
        vec![None]
    );
    t.store
        .jobs_apply_outcomes(
            "w1",
            &[Outcome::Released {
                lease: third.lease(),
                retry_at: None,
            }],
        )
        .await
        .unwrap();
    // The first completes: its place frees by itself, and the third takes it.
    t.store
        .jobs_apply_outcomes(
            "w1",
            &[Outcome::Completed {
                lease: fetched[0].lease(),
                finished_at: Utc::now(),
            }],
        )
        .await
        .unwrap();
    let again = fetch(&t.store, "cl", 1, "w1").await;
    assert_eq!(again[0].id, third.id);
    assert_eq!(again[0].attempt, 1, "waiting used no attempt");
    let admitted = t
        .store
        .limits_admit(&[ask(&again[0])], horizon)
        .await
        .unwrap();
    assert_eq!(starts(&admitted), vec![Some(0)]);
    // Now two hold it again: a fourth job waits.
    let fourth = jobs_of(&t, "cl2", 1).await;
    assert_eq!(
        starts(
            &t.store
                .limits_admit(&[ask(&fourth[0])], horizon)
                .await
                .unwrap()
        ),
        vec![None]
    );
    t.cleanup().await;
}

async fn search_by_text_and_time_newest_first_with_totals(backend: Backend) {
    let t = fresh(backend).await;
    let mut jobs = Vec::new();
    for i in 0..7 {
        let mut job = new_job("noop", "s");
        job.payload = json!({"order": format!("Order-{i}"), "note": if i % 2 == 0 { "50%_off" } else { "plain" }});
        jobs.push(job);
    }
    let ids: Vec<i64> = t
        .store
        .jobs_insert_many(&jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let list = |filter: JobFilter| {
        let store = t.store.clone();
        async move {
            store
                .jobs_list(&filter)
                .await
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    let newest = |limit| JobFilter {
        queue: Some("s".into()),
        newest_first: true,
        limit: Some(limit),
        ..Default::default()
    };
    // Newest first, a page at a time both ways.
    assert_eq!(list(newest(3)).await, [ids[6], ids[5], ids[4]]);
    let older = JobFilter {
        before_id: Some(ids[4]),
        ..newest(3)
    };
    assert_eq!(list(older).await, [ids[3], ids[2], ids[1]]);
    let newer = JobFilter {
        after_id: Some(ids[1]),
        ..newest(3)
    };
    assert_eq!(
        list(newer).await,
        [ids[4], ids[3], ids[2]],
        "the page just newer than id 1"
    );
    // Text, case-insensitive; LIKE's wildcards match only themselves.
    let text = |needle: &str| JobFilter {
        text: Some(needle.into()),
        ..newest(100)
    };
    assert_eq!(list(text("order-3")).await, [ids[3]]);
    assert_eq!(
        list(text("50%_OFF")).await,
        [ids[6], ids[4], ids[2], ids[0]]
    );
    assert!(list(text("5_%")).await.is_empty());
    assert!(list(text("50%x")).await.is_empty());
    // Errors are searched too.
    let job = fetch(&t.store, "s", 1, "w").await.remove(0);
    t.store
        .jobs_apply_outcomes(
            "w",
            &[Outcome::Failed {
                lease: job.lease(),
                error: "the CRM said 503".into(),
                started_at: Utc::now(),
                finished_at: Utc::now(),
                retry_at: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(list(text("crm said")).await, [ids[0]]);
    // Time range.
    let future = JobFilter {
        since: Some(Utc::now() + chrono::Duration::hours(1)),
        ..newest(100)
    };
    assert!(list(future).await.is_empty());
    let past = JobFilter {
        until: Some(Utc::now() + chrono::Duration::hours(1)),
        ..newest(100)
    };
    assert_eq!(list(past).await.len(), 7);
    // Totals ignore paging and stop at the cap.
    let paged = JobFilter {
        before_id: Some(ids[2]),
        ..newest(1)
    };
    assert_eq!(t.store.jobs_count(&paged, 100).await.unwrap(), 7);
    assert_eq!(t.store.jobs_count(&paged, 5).await.unwrap(), 5);
    assert_eq!(t.store.jobs_count(&text("50%_off"), 100).await.unwrap(), 4);
    t.cleanup().await;
}

async fn a_paused_queue_is_not_fetched_and_versions_order_changes(backend: Backend) {
    let t = fresh(backend).await;
    t.store
        .jobs_insert_many(&[new_job("noop", "q"), new_job("noop", "q")])
        .await
        .unwrap();
    // Resuming a queue never paused changes nothing, and records nothing.
    let resumed = t.store.queue_set_paused("q", false, "op").await.unwrap();
    assert!(!resumed.changed);
    assert!(t.store.queue_states().await.unwrap().is_empty());
    let paused = t.store.queue_set_paused("q", true, "op").await.unwrap();
    assert!(paused.changed);
    assert!(
        fetch(&t.store, "q", 10, "w").await.is_empty(),
        "a paused queue was fetched"
    );
    // Pausing again changes nothing and keeps the version.
    let again = t.store.queue_set_paused("q", true, "op").await.unwrap();
    assert_eq!((again.changed, again.version), (false, paused.version));
    // Another queue is not affected, and its change takes the next version.
    let other = t
        .store
        .queue_set_paused("other", true, "op2")
        .await
        .unwrap();
    assert!(other.version > paused.version);
    let states = t.store.queue_states().await.unwrap();
    assert_eq!(
        states
            .iter()
            .map(|s| (s.queue.as_str(), s.paused, s.changed_by.as_str()))
            .collect::<Vec<_>>(),
        [("other", true, "op2"), ("q", true, "op")]
    );
    let resumed = t.store.queue_set_paused("q", false, "op").await.unwrap();
    assert!(resumed.changed && resumed.version > other.version);
    assert_eq!(fetch(&t.store, "q", 10, "w").await.len(), 2);
    let resumed_again = t.store.queue_set_paused("q", false, "op").await.unwrap();
    assert!(!resumed_again.changed);
    t.cleanup().await;
}

async fn workers_register_beat_expire_and_leave(backend: Backend) {
    use steward::store::control::{WorkerBeat, WorkerQueue};
    let t = fresh(backend).await;
    let queues = [WorkerQueue {
        name: "default".into(),
        concurrency: 7,
    }];
    let beat = |id: &'static str, running, seen, ttl| WorkerBeat {
        id,
        host: "h",
        pid: 42,
        queues: &queues,
        running,
        control_seen: seen,
        ttl,
    };
    t.store
        .worker_beat(&beat("w1", 0, 0, Duration::from_secs(30)))
        .await
        .unwrap();
    t.store
        .worker_beat(&beat("w2", 3, 0, Duration::ZERO))
        .await
        .unwrap();
    t.store
        .worker_beat(&beat("w1", 5, 9, Duration::from_secs(30)))
        .await
        .unwrap();
    let workers = t.store.workers_list().await.unwrap();
    assert_eq!(
        workers
            .iter()
            .map(|w| (w.id.as_str(), w.alive, w.running, w.control_seen))
            .collect::<Vec<_>>(),
        [("w1", true, 5, 9), ("w2", false, 3, 0)],
        "alive first; a beat renews the row"
    );
    assert_eq!(workers[0].queues, queues);
    assert!(workers[0].heartbeat_at >= workers[0].started_at);
    t.store.worker_leave("w1").await.unwrap();
    let left: Vec<_> = t
        .store
        .workers_list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(left, ["w2"]);
    t.cleanup().await;
}

async fn fetch(
    store: &steward::store::SharedStore,
    queue: &str,
    limit: usize,
    worker: &str,
) -> Vec<FetchedJob> {
    store
        .jobs_fetch_available(FetchParams {
            queue,
            limit,
            worker,
            lease_for: Duration::from_secs(30),
            after: None,
        })
        .await
        .expect("fetch")
}

async fn enqueue_then_fetch_leases_the_job(backend: Backend) {
    let t = fresh(backend).await;
    let mut job = new_job("noop", "default");
    job.payload = json!({"n": 7});
    job.tenant = "acme".into();
    let done = t.store.jobs_insert_many(&[job]).await.expect("insert");
    assert!(done[0].inserted);
    let fetched = fetch(&t.store, "default", 10, "w1").await;
    assert_eq!(fetched.len(), 1);
    let job = &fetched[0];
    assert_eq!(
        (
            job.id,
            job.attempt,
            job.payload.clone(),
            job.tenant.as_str()
        ),
        (done[0].id, 1, json!({"n": 7}), "acme")
    );
    assert!(
        fetch(&t.store, "default", 10, "w2").await.is_empty(),
        "a leased job is not fetched twice"
    );
    assert!(fetch(&t.store, "other", 10, "w2").await.is_empty());
    let record = t.store.job_get(job.id).await.expect("get").expect("exists");
    assert_eq!(record.state, JobState::Running);
    assert_eq!(record.leased_by.as_deref(), Some("w1"));
    let applied = t
        .store
        .jobs_apply_outcomes(
            "w1",
            &[Outcome::Completed {
                lease: job.lease(),
                finished_at: Utc::now(),
            }],
        )
        .await
        .expect("complete");
    assert_eq!(applied, vec![job.lease()]);
    let record = t
        .store
        .job_get(job.id)
        .await
        .expect("get")
        .expect("kept after completion");
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.attempts[0].worker.as_deref(), Some("w1"));
    assert!(record.attempts[0].error.is_none());
    t.cleanup().await;
}

async fn fetch_orders_by_priority_then_arrival(backend: Backend) {
    let t = fresh(backend).await;
    let mut jobs = Vec::new();
    for priority in [3i16, 1, 2, 1] {
        let mut job = new_job("noop", "default");
        job.priority = priority;
        jobs.push(job);
    }
    let ids: Vec<i64> = t
        .store
        .jobs_insert_many(&jobs)
        .await
        .expect("insert")
        .iter()
        .map(|e| e.id)
        .collect();
    let order: Vec<i64> = fetch(&t.store, "default", 10, "w")
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[2], ids[0]]);
    t.cleanup().await;
}

async fn a_fetch_from_a_cursor_takes_only_jobs_after_it(backend: Backend) {
    use steward::store::FetchCursor;
    let t = fresh(backend).await;
    let jobs: Vec<_> = (0..4)
        .map(|_| {
            let mut job = new_job("noop", "default");
            job.priority = 2;
            job
        })
        .collect();
    t.store.jobs_insert_many(&jobs).await.expect("insert");
    let first = fetch(&t.store, "default", 2, "w").await;
    let cursor = FetchCursor::of(first.last().expect("two jobs"));
    // A job of a higher priority (ahead of the cursor in fetch order) arrives.
    let mut urgent = new_job("noop", "default");
    urgent.priority = 0;
    let urgent = t.store.jobs_insert_many(&[urgent]).await.expect("insert")[0].id;
    let from_cursor = |after| {
        let store = t.store.clone();
        async move {
            store
                .jobs_fetch_available(FetchParams {
                    queue: "default",
                    limit: 1,
                    worker: "w",
                    lease_for: Duration::from_secs(30),
                    after,
                })
                .await
                .expect("fetch")
        }
    };
    let next = from_cursor(Some(cursor)).await;
    assert_eq!(next.len(), 1);
    assert!(next[0].id > cursor.id && next[0].priority == 2, "{next:?}");
    // From the head, the job behind the cursor comes first.
    let head = from_cursor(None).await;
    assert_eq!(head.iter().map(|j| j.id).collect::<Vec<_>>(), [urgent]);
    t.cleanup().await;
}

async fn one_tenants_flood_does_not_delay_another_tenant(backend: Backend) {
    let t = fresh(backend).await;
    let flood: Vec<_> = (0..1000)
        .map(|_| {
            let mut job = new_job("noop", "default");
            job.tenant = "flood".into();
            job
        })
        .collect();
    for _ in 0..100 {
        t.store.jobs_insert_many(&flood).await.expect("flood");
    }
    // A worker is already draining the flood when the other tenant's job arrives.
    let first = fetch(&t.store, "default", 1000, "w").await;
    assert!(first.iter().all(|j| j.tenant == "flood"));
    let mut single = new_job("noop", "default");
    single.tenant = "quiet".into();
    let quiet = t.store.jobs_insert_many(&[single]).await.expect("single")[0].id;
    let next = fetch(&t.store, "default", 1000, "w").await;
    assert!(
        next.iter().any(|j| j.id == quiet),
        "the quiet tenant's job must come in the very next fetch, behind 99,000 flood jobs"
    );
    // The same inside one batch: a flood and another tenant's single job enqueued together.
    let mut mixed = flood.clone();
    let mut other = new_job("noop", "default");
    other.tenant = "other".into();
    mixed.push(other);
    let ids = t.store.jobs_insert_many(&mixed).await.expect("mixed batch");
    let other_id = ids.last().expect("ids").id;
    let next = fetch(&t.store, "default", 1000, "w").await;
    assert!(
        next.iter().any(|j| j.id == other_id),
        "a tenant's job at the end of a batch behind another tenant's 1,000 comes in the next fetch"
    );
    t.cleanup().await;
}

async fn scheduled_jobs_wait_for_their_time(backend: Backend) {
    let t = fresh(backend).await;
    let mut later = new_job("noop", "default");
    later.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    let mut soon = new_job("noop", "default");
    soon.run_at = Some(Utc::now() + chrono::Duration::milliseconds(50));
    let ids = t
        .store
        .jobs_insert_many(&[later, soon])
        .await
        .expect("insert");
    assert_eq!(
        t.store.job_get(ids[0].id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    assert!(
        fetch(&t.store, "default", 10, "w").await.is_empty(),
        "nothing is due yet"
    );
    // Stage until the near one is due (a state wait, bounded), never the far one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while t.store.jobs_stage_due(100).await.expect("stage").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the due job was never staged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetched = fetch(&t.store, "default", 10, "w").await;
    assert_eq!(
        fetched.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[1].id]
    );
    assert_eq!(
        t.store.job_get(ids[0].id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    t.cleanup().await;
}

/// Expire a job's lease and rescue it (bounded wait on the state, no fixed sleep).
async fn rescue(t: &common::TestStore, id: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // (Nothing else writes here: the writer is never waited for as long as a minute.)
        let rescued = t
            .store
            .jobs_rescue_expired(100, Duration::from_secs(60))
            .await
            .expect("rescue");
        assert!(matches!(rescued, Rescue::Rescued(_)), "{rescued:?}");
        if t.store.job_get(id).await.unwrap().unwrap().state != JobState::Running {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// While something else holds the database's writer (SQLite: another process's step holds
/// the file's one writer lock; PostgreSQL: the bookkeeping pool has no free connection), live
/// workers cannot extend their leases: a rescue that had to wait that long for the writer
/// rescues nothing and says so, and the next one, not kept waiting, rescues.
async fn a_rescue_that_waited_for_the_writer_rescues_nothing(backend: Backend) {
    let t = fresh(backend).await;
    t.store
        .jobs_insert_many(&[new_job("noop", "default")])
        .await
        .unwrap();
    let id = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "default",
            limit: 1,
            worker: "live",
            lease_for: Duration::ZERO,
            after: None,
        })
        .await
        .unwrap()
        .remove(0)
        .id;
    let hold = Duration::from_millis(600);
    let released = match (&t.pg, &t.url) {
        (Some(pg), _) => {
            let pool = pg.service_pool().clone();
            let mut held = Vec::new();
            for _ in 0..pool.options().get_max_connections() {
                held.push(pool.acquire().await.unwrap());
            }
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                drop(held);
            })
        }
        (None, url) => {
            // A second store on the same file is another process as far as SQLite knows.
            let other = steward::store::sqlite::SqliteStore::connect(url)
                .await
                .unwrap();
            let tx = other.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                tx.commit().await.unwrap();
            })
        }
    };
    let outcome = t
        .store
        .jobs_rescue_expired(100, Duration::from_millis(200))
        .await
        .unwrap();
    released.await.unwrap();
    let Rescue::WriterStalled { waited } = outcome else {
        panic!("rescued while the writer was held: {outcome:?}");
    };
    assert!(waited > Duration::from_millis(200), "{waited:?}");
    assert_eq!(
        t.store.job_get(id).await.unwrap().unwrap().state,
        JobState::Running
    );
    rescue(&t, id).await;
    assert_eq!(
        t.store.job_get(id).await.unwrap().unwrap().state,
        JobState::Available
    );
    t.cleanup().await;
}

async fn stale_worker_cannot_complete_fail_or_heartbeat(backend: Backend) {
    let t = fresh(backend).await;
    let id = t
        .store
        .jobs_insert_many(&[new_job("noop", "default")])
        .await
        .unwrap()[0]
        .id;
    let stale = t
        .store
        .jobs_fetch_available(FetchParams {
            queue: "default",
            limit: 1,
            worker: "stale",
            lease_for: Duration::ZERO,
            after: None,
        })
        .await
        .unwrap()
        .remove(0);
    rescue(&t, id).await;
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Available);
    assert!(
        record.attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("lease expired")
    );
    let fresh_job = fetch(&t.store, "default", 1, "fresh").await.remove(0);
    assert_eq!(fresh_job.attempt, 2);

    let now = Utc::now();
    let stale_outcomes = [
        Outcome::Completed {
            lease: stale.lease(),
            finished_at: now,
        },
        Outcome::Failed {
            lease: stale.lease(),
            error: "late".into(),
            started_at: now,
            finished_at: now,
            retry_at: None,
        },
    ];
    for outcome in &stale_outcomes {
        let applied = t
            .store
            .jobs_apply_outcomes("stale", std::slice::from_ref(outcome))
            .await
            .unwrap();
        assert!(
            applied.is_empty(),
            "a stale worker's outcome must change nothing"
        );
    }
    // Same worker name with the old attempt number is stale too: the lease is (attempt, worker).
    let old_attempt = Lease { id, attempt: 1 };
    assert!(
        t.store
            .jobs_apply_outcomes(
                "fresh",
                &[Outcome::Completed {
                    lease: old_attempt,
                    finished_at: now
                }]
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        t.store
            .jobs_heartbeat_many("stale", &[stale.lease()], Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.attempt, record.leased_by.as_deref()),
        (JobState::Running, 2, Some("fresh"))
    );

    assert_eq!(
        t.store
            .jobs_heartbeat_many("fresh", &[fresh_job.lease()], Duration::from_secs(30))
            .await
            .unwrap(),
        vec![fresh_job.lease()]
    );
    let applied = t
        .store
        .jobs_apply_outcomes(
            "fresh",
            &[Outcome::Completed {
                lease: fresh_job.lease(),
                finished_at: now,
            }],
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![fresh_job.lease()]);
    assert_eq!(
        t.store.job_get(id).await.unwrap().unwrap().state,
        JobState::Completed
    );
    t.cleanup().await;
}

async fn failures_back_off_then_dead_letter_with_every_attempt(backend: Backend) {
    let t = fresh(backend).await;
    let mut job = new_job("fail", "default");
    job.max_attempts = 2;
    let id = t.store.jobs_insert_many(&[job]).await.unwrap()[0].id;
    let first = fetch(&t.store, "default", 1, "w1").await.remove(0);
    let started = Utc::now();
    let retry_at = started + chrono::Duration::seconds(30);
    let applied = t
        .store
        .jobs_apply_outcomes(
            "w1",
            &[Outcome::Failed {
                lease: first.lease(),
                error: "boom 1".into(),
                started_at: started,
                finished_at: started,
                retry_at: Some(retry_at),
            }],
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Retryable);
    assert!(
        (record.run_at - retry_at).num_milliseconds().abs() <= 1,
        "backoff is persisted in run_at"
    );
    assert!(
        t.store.jobs_stage_due(10).await.unwrap().is_empty(),
        "not due before its backoff"
    );
    // Operator retry makes it available now (as the stager would once due).
    t.store
        .jobs_retry(&JobFilter {
            ids: vec![id],
            ..Default::default()
        })
        .await
        .unwrap();
    let second = fetch(&t.store, "default", 1, "w2").await.remove(0);
    assert_eq!(second.attempt, 2);
    let ended = Utc::now();
    t.store
        .jobs_apply_outcomes(
            "w2",
            &[Outcome::Failed {
                lease: second.lease(),
                error: "boom 2".into(),
                started_at: ended,
                finished_at: ended,
                retry_at: None,
            }],
        )
        .await
        .unwrap();
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Dead);
    assert!(record.finished_at.is_some());
    let errors: Vec<_> = record
        .attempts
        .iter()
        .map(|a| (a.attempt, a.worker.clone(), a.error.clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, Some("w1".into()), Some("boom 1".into())),
            (2, Some("w2".into()), Some("boom 2".into()))
        ]
    );
    assert!(
        record
            .attempts
            .iter()
            .all(|a| a.started_at.is_some() && a.finished_at.is_some())
    );
    let dlq = t
        .store
        .jobs_list(&JobFilter {
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dlq.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    t.cleanup().await;
}

async fn released_jobs_do_not_use_an_attempt(backend: Backend) {
    let t = fresh(backend).await;
    let id = t
        .store
        .jobs_insert_many(&[new_job("noop", "default")])
        .await
        .unwrap()[0]
        .id;
    let job = fetch(&t.store, "default", 1, "w").await.remove(0);
    assert_eq!(
        t.store
            .jobs_apply_outcomes(
                "w",
                &[Outcome::Released {
                    lease: job.lease(),
                    retry_at: None
                }]
            )
            .await
            .unwrap(),
        vec![job.lease()]
    );
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Available, 0));
    let job = fetch(&t.store, "default", 1, "w").await.remove(0);
    assert_eq!(job.attempt, 1);
    // Released for later (a kind this worker has no handler for): scheduled, still unused.
    let later = chrono::Utc::now() + chrono::Duration::seconds(30);
    let outcome = Outcome::Released {
        lease: job.lease(),
        retry_at: Some(later),
    };
    t.store.jobs_apply_outcomes("w", &[outcome]).await.unwrap();
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Scheduled, 0));
    // Stored to the microsecond (PostgreSQL) or the millisecond rounded up (SQLite, so that
    // it is never due before the time asked).
    let late_by = (record.run_at - later).num_microseconds().unwrap();
    assert!(
        (-1..1000).contains(&late_by),
        "{} for {later}",
        record.run_at
    );
    assert!(fetch(&t.store, "default", 1, "w").await.is_empty());
    t.cleanup().await;
}

async fn duplicate_unique_enqueue_returns_the_existing_job(backend: Backend) {
    let t = fresh(backend).await;
    let mut job = new_job("noop", "default");
    job.unique_key = Some("provision:acme:chat".into());
    let first = t.store.jobs_insert_many(&[job.clone()]).await.unwrap()[0];
    assert!(first.inserted);
    // Twice in one batch, plus once more later, plus a keyless job in the same batch.
    let again = t
        .store
        .jobs_insert_many(&[job.clone(), new_job("noop", "default"), job.clone()])
        .await
        .unwrap();
    assert_eq!((again[0].id, again[0].inserted), (first.id, false));
    assert!(again[1].inserted && again[1].id != first.id);
    assert_eq!((again[2].id, again[2].inserted), (first.id, false));
    // Cancelling frees the key.
    t.store
        .jobs_cancel(&JobFilter {
            ids: vec![first.id],
            ..Default::default()
        })
        .await
        .unwrap();
    let after_cancel = t.store.jobs_insert_many(&[job.clone()]).await.unwrap()[0];
    assert!(after_cancel.inserted && after_cancel.id != first.id);
    // Retrying the cancelled one now would make two live jobs with one key: refused.
    let err = t
        .store
        .jobs_retry(&JobFilter {
            ids: vec![first.id],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, steward::store::StoreError::Conflict(_)),
        "{err}"
    );
    t.cleanup().await;
}

async fn uniqueness_holds_under_50_concurrent_enqueuers(backend: Backend) {
    let t = fresh(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut job = new_job("noop", "default");
            job.unique_key = Some("only-one".into());
            store
                .jobs_insert_many(&[job])
                .await
                .expect("enqueue never errors on a duplicate")[0]
        }));
    }
    let mut ids = HashSet::new();
    let mut inserted = 0;
    for task in tasks {
        let done = task.await.unwrap();
        ids.insert(done.id);
        inserted += usize::from(done.inserted);
    }
    assert_eq!(ids.len(), 1, "every enqueuer gets the same job");
    assert_eq!(inserted, 1);
    assert_eq!(
        t.store
            .jobs_list(&JobFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    t.cleanup().await;
}

async fn transactional_enqueue_follows_the_transaction(backend: Backend) {
    let t = fresh(backend).await;
    let client = Client::new(t.store.clone(), common::repo_kinds());
    async fn enqueue_in<C: TransactionalEnqueue + ?Sized>(client: &Client, conn: &mut C) -> i64 {
        client
            .enqueue_in(conn, "noop", json!({}), EnqueueOptions::default())
            .await
            .expect("enqueue in tx")
            .id
    }
    let (rolled_back, committed) = match backend {
        Backend::Postgres => {
            let pool = t.pg.as_ref().unwrap().pool();
            let mut tx = pool.begin().await.unwrap();
            let a = enqueue_in(&client, &mut *tx).await;
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            let b = enqueue_in(&client, &mut *tx).await;
            tx.commit().await.unwrap();
            (a, b)
        }
        Backend::Sqlite => {
            let pool = t.sqlite.as_ref().unwrap().pool();
            let mut tx = pool.begin().await.unwrap();
            let a = enqueue_in(&client, &mut *tx).await;
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            let b = enqueue_in(&client, &mut *tx).await;
            tx.commit().await.unwrap();
            (a, b)
        }
    };
    assert!(t.store.job_get(rolled_back).await.unwrap().is_none() || rolled_back == committed);
    let all: Vec<i64> = t
        .store
        .jobs_list(&JobFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        all,
        vec![committed],
        "only the committed transaction's job exists"
    );
    t.cleanup().await;
}

async fn operators_retry_discard_and_cancel(backend: Backend) {
    let t = fresh(backend).await;
    let mut jobs = vec![
        new_job("fail", "default"),
        new_job("fail", "default"),
        new_job("noop", "default"),
        new_job("sleep", "default"),
    ];
    for job in &mut jobs {
        job.max_attempts = 1;
    }
    let ids: Vec<i64> = t
        .store
        .jobs_insert_many(&jobs[..2])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let now = Utc::now();
    for job in fetch(&t.store, "default", 10, "w").await {
        t.store
            .jobs_apply_outcomes(
                "w",
                &[Outcome::Failed {
                    lease: job.lease(),
                    error: "no".into(),
                    started_at: now,
                    finished_at: now,
                    retry_at: None,
                }],
            )
            .await
            .unwrap();
    }
    // Bulk retry of the dead-letter queue.
    let retried = t
        .store
        .jobs_retry(&JobFilter {
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(retried.count, 2);
    let again = fetch(&t.store, "default", 10, "w").await;
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|j| j.attempt == 2 && j.max_attempts == 2),
        "a retry grants one more attempt"
    );
    for job in &again {
        t.store
            .jobs_apply_outcomes(
                "w",
                &[Outcome::Failed {
                    lease: job.lease(),
                    error: "still no".into(),
                    started_at: now,
                    finished_at: now,
                    retry_at: None,
                }],
            )
            .await
            .unwrap();
    }
    // Discard one dead job: out of the dead-letter queue, kept as cancelled.
    assert_eq!(
        t.store
            .jobs_discard(&JobFilter {
                ids: vec![ids[0]],
                ..Default::default()
            })
            .await
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        t.store.job_get(ids[0]).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        t.store.job_get(ids[1]).await.unwrap().unwrap().state,
        JobState::Dead
    );
    // Cancel a queued job and a running one; the running one's worker loses its lease.
    let more: Vec<i64> = t
        .store
        .jobs_insert_many(&jobs[2..])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let running = fetch(&t.store, "default", 1, "w").await.remove(0);
    let cancelled = t
        .store
        .jobs_cancel(&JobFilter {
            ids: more.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.count, 2);
    assert!(
        t.store
            .jobs_heartbeat_many("w", &[running.lease()], Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        t.store
            .jobs_apply_outcomes(
                "w",
                &[Outcome::Completed {
                    lease: running.lease(),
                    finished_at: now
                }]
            )
            .await
            .unwrap()
            .is_empty()
    );
    let record = t.store.job_get(running.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert!(
        record
            .attempts
            .last()
            .and_then(|a| a.error.clone())
            .unwrap_or_default()
            .contains("cancelled")
    );
    // Completed jobs cannot be cancelled or retried.
    assert_eq!(
        t.store
            .jobs_cancel(&JobFilter {
                ids: vec![ids[1]],
                state: Some(JobState::Completed),
                ..Default::default()
            })
            .await
            .unwrap()
            .count,
        0
    );
    t.cleanup().await;
}

async fn pruning_removes_finished_jobs_after_retention(backend: Backend) {
    let t = fresh(backend).await;
    let ids: Vec<i64> = t
        .store
        .jobs_insert_many(&[new_job("noop", "default"), new_job("fail", "default")])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let jobs = fetch(&t.store, "default", 10, "w").await;
    let now = Utc::now();
    t.store
        .jobs_apply_outcomes(
            "w",
            &[
                Outcome::Completed {
                    lease: jobs[0].lease(),
                    finished_at: now,
                },
                Outcome::Failed {
                    lease: jobs[1].lease(),
                    error: "x".into(),
                    started_at: now,
                    finished_at: now,
                    retry_at: None,
                },
            ],
        )
        .await
        .unwrap();
    let past = now - chrono::Duration::hours(1);
    assert_eq!(
        t.store.jobs_prune(past, past).await.unwrap(),
        0,
        "younger than retention: kept"
    );
    let future = now + chrono::Duration::seconds(1);
    assert_eq!(
        t.store.jobs_prune(future, past).await.unwrap(),
        1,
        "completed pruned, dead kept"
    );
    assert!(t.store.job_get(ids[0]).await.unwrap().is_none());
    assert!(t.store.job_get(ids[1]).await.unwrap().is_some());
    assert_eq!(t.store.jobs_prune(future, future).await.unwrap(), 1);
    assert!(t.store.job_get(ids[1]).await.unwrap().is_none());
    t.cleanup().await;
}

/// One round of 25,000 jobs through the hot table: enqueued, cancelled (an update), pruned
/// (a delete), as many dead row versions as a second of full-speed execution leaves.
async fn churn_jobs(store: &steward::store::SharedStore) {
    let jobs: Vec<_> = (0..5_000).map(|_| new_job("noop", "churn")).collect();
    for _ in 0..5 {
        store.jobs_insert_many(&jobs).await.unwrap();
    }
    store
        .jobs_cancel(&JobFilter {
            queue: Some("churn".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let future = Utc::now() + chrono::Duration::seconds(1);
    while store.jobs_prune(future, future).await.unwrap() > 0 {}
}

/// The hot table's size in bytes (PostgreSQL: heap; SQLite: pages in use by the whole file).
async fn hot_table_bytes(t: &common::TestStore) -> i64 {
    match (&t.pg, &t.sqlite) {
        (Some(pg), _) => sqlx::query_scalar("SELECT pg_relation_size('steward_jobs')")
            .fetch_one(pg.pool())
            .await
            .unwrap(),
        (_, Some(sqlite)) => {
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(sqlite.pool())
                .await
                .unwrap();
            let size: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(sqlite.pool())
                .await
                .unwrap();
            pages * size
        }
        _ => unreachable!("a test store has a backend"),
    }
}

/// With the vacuumer at its defaults, rounds of jobs reuse the space of the rounds before
/// (PostgreSQL: once the dead versions pass the threshold the table is vacuumed; SQLite: freed
/// pages are reused and there is nothing to vacuum).
async fn vacuum_keeps_the_hot_table_from_growing_over_rounds_of_jobs(backend: Backend) {
    use steward::maintenance::{MaintenanceConfig, Vacuumer};
    let t = fresh(backend).await;
    assert!(
        MaintenanceConfig::default()
            .services()
            .iter()
            .any(|s| s.name() == "vacuumer"),
        "the vacuumer is a default service"
    );
    // What the vacuumer's round does, at its default threshold.
    let round = async || t.store.tables_vacuum(Vacuumer::MIN_DEAD).await.unwrap();
    let vacuum = async || {
        if backend == Backend::Sqlite {
            assert_eq!(round().await, 0);
            return;
        }
        // The dead versions show in the statistics once the backends that made them report
        // (at most a second after their transactions): round until the vacuumer sees them.
        // A vacuum removes only versions no open transaction may still see, and other tests
        // share the database: round again until what it left is under the threshold.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut vacuumed = 0;
        loop {
            vacuumed += round().await;
            let dead: i64 = sqlx::query_scalar(
                "SELECT n_dead_tup FROM pg_stat_user_tables \
                 WHERE schemaname = current_schema() AND relname = 'steward_jobs'",
            )
            .fetch_one(t.pg.as_ref().unwrap().pool())
            .await
            .unwrap();
            if vacuumed > 0 && dead < 20_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{dead} dead row versions left after {vacuumed} vacuums"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    churn_jobs(&t.store).await;
    vacuum().await;
    let after_one = hot_table_bytes(&t).await;
    for _ in 0..2 {
        churn_jobs(&t.store).await;
        vacuum().await;
    }
    let after_three = hot_table_bytes(&t).await;
    assert!(
        after_three <= after_one + after_one / 5,
        "the hot table grew from {after_one} to {after_three} bytes over two more rounds"
    );
    t.cleanup().await;
}

async fn listing_filters_and_counts(backend: Backend) {
    let t = fresh(backend).await;
    let mut a = new_job("noop", "q1");
    a.tenant = "t1".into();
    let mut b = new_job("sleep", "q2");
    b.tenant = "t2".into();
    let ids: Vec<i64> = t
        .store
        .jobs_insert_many(&[a, b.clone(), b])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let by_tenant = t
        .store
        .jobs_list(&JobFilter {
            tenant: Some("t2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_tenant.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[1..].to_vec()
    );
    let by_kind = t
        .store
        .jobs_list(&JobFilter {
            kind: Some("noop".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_kind.len(), 1);
    let page = t
        .store
        .jobs_list(&JobFilter {
            after_id: Some(ids[0]),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1]]);
    let job = fetch(&t.store, "q1", 1, "w").await.remove(0);
    t.store
        .jobs_apply_outcomes(
            "w",
            &[Outcome::Completed {
                lease: job.lease(),
                finished_at: Utc::now(),
            }],
        )
        .await
        .unwrap();
    let counts = t.store.jobs_count_by_state().await.unwrap();
    let get = |queue: &str, state: JobState| {
        counts
            .iter()
            .find(|c| c.queue == queue && c.state == state)
            .map(|c| c.count)
    };
    assert_eq!(get("q1", JobState::Completed), Some(1));
    assert_eq!(get("q2", JobState::Available), Some(2));
    let completed = t
        .store
        .jobs_list(&JobFilter {
            state: Some(JobState::Completed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        completed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    t.cleanup().await;
}

async fn an_error_message_with_nul_bytes_is_stored(backend: Backend) {
    let t = fresh(backend).await;
    let id = t
        .store
        .jobs_insert_many(&[new_job("fail", "default"), new_job("noop", "default")])
        .await
        .unwrap()[0]
        .id;
    let jobs = fetch(&t.store, "default", 10, "w").await;
    let now = Utc::now();
    let applied = t
        .store
        .jobs_apply_outcomes(
            "w",
            &[
                Outcome::Failed {
                    lease: jobs[0].lease(),
                    error: "bad\0byte".into(),
                    started_at: now,
                    finished_at: now,
                    retry_at: None,
                },
                Outcome::Completed {
                    lease: jobs[1].lease(),
                    finished_at: now,
                },
            ],
        )
        .await
        .expect("a NUL in a handler's message must not fail the batch");
    assert_eq!(applied.len(), 2);
    let record = t.store.job_get(id).await.unwrap().unwrap();
    assert!(
        record.attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("bad")
    );
    t.cleanup().await;
}

async fn jobs_without_a_tenant_are_first_in_first_out(backend: Backend) {
    let t = fresh(backend).await;
    let ids = |done: Vec<steward::types::Enqueued>| done.iter().map(|e| e.id).collect::<Vec<_>>();
    let first = ids(t
        .store
        .jobs_insert_many(&vec![new_job("noop", "default"); 3])
        .await
        .unwrap());
    assert_eq!(fetch(&t.store, "default", 1, "w").await[0].id, first[0]);
    let second = ids(t
        .store
        .jobs_insert_many(&vec![new_job("noop", "default"); 2])
        .await
        .unwrap());
    let mut tenant_job = new_job("noop", "default");
    tenant_job.tenant = "acme".into();
    let tenant = ids(t.store.jobs_insert_many(&[tenant_job]).await.unwrap());
    let order: Vec<i64> = fetch(&t.store, "default", 10, "w")
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    // Jobs without a tenant keep arrival order across batches; a tenant's job is served
    // fairly: it starts one step behind the head of the queue (ties go by id).
    let tenantless: Vec<i64> = order
        .iter()
        .copied()
        .filter(|id| *id != tenant[0])
        .collect();
    assert_eq!(tenantless, vec![first[1], first[2], second[0], second[1]]);
    let position = order
        .iter()
        .position(|id| *id == tenant[0])
        .expect("fetched");
    assert!(
        position <= 2,
        "the tenant's job is not queued behind the backlog: {order:?}"
    );
    t.cleanup().await;
}

async fn the_schema_version_is_this_builds_once_migrated(backend: Backend) {
    let t = fresh(backend).await;
    assert_eq!(
        t.store.schema_version().await.unwrap(),
        steward::store::SCHEMA_VERSION
    );
    // A database never migrated has none.
    let dir = tempfile::tempdir().unwrap();
    let blank: steward::store::SharedStore = match backend {
        Backend::Postgres => std::sync::Arc::new(
            steward::store::postgres::PgStore::connect(
                &t.url,
                Some(&format!("{}_blank", t.schema.as_deref().unwrap())),
            )
            .await
            .unwrap(),
        ),
        Backend::Sqlite => std::sync::Arc::new(
            steward::store::sqlite::SqliteStore::connect(&format!(
                "sqlite://{}",
                dir.path().join("blank.db").display()
            ))
            .await
            .unwrap(),
        ),
    };
    assert_eq!(blank.schema_version().await.unwrap(), 0);
    t.cleanup().await;
}

async fn runtime_gauges_show_queue_latency_workers_and_the_leader(backend: Backend) {
    let t = fresh(backend).await;
    let empty = t.store.runtime_gauges().await.unwrap();
    assert_eq!(empty, Default::default());
    let mut old = new_job("noop", "slow");
    old.run_at = Some(Utc::now() - chrono::Duration::seconds(90));
    t.store
        .jobs_insert_many(&[old, new_job("noop", "busy"), new_job("noop", "busy")])
        .await
        .unwrap();
    assert_eq!(fetch(&t.store, "busy", 1, "w1").await.len(), 1);
    assert!(
        t.store
            .leader_elect("steward", "w1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let gauges = t.store.runtime_gauges().await.unwrap();
    let age = |queue: &str| {
        gauges
            .oldest_available_ms
            .iter()
            .find(|(q, _)| q == queue)
            .map(|(_, ms)| *ms)
    };
    let slow = age("slow").expect("the slow queue has an available job");
    assert!((89_000..200_000).contains(&slow), "{gauges:?}");
    assert!(age("busy").is_some_and(|ms| ms < 60_000), "{gauges:?}");
    assert_eq!(gauges.running_by_worker, [("w1".to_string(), 1)]);
    assert_eq!(gauges.leaders, [("steward".to_string(), "w1".to_string())]);
    t.cleanup().await;
}

async fn one_holder_leads_until_it_resigns_or_its_lease_runs_out(backend: Backend) {
    let t = fresh(backend).await;
    let s = &t.store;
    let long = Duration::from_secs(60);
    assert!(s.leader_elect("steward", "a", long).await.unwrap());
    assert!(
        !s.leader_elect("steward", "b", long).await.unwrap(),
        "a leads"
    );
    assert!(
        s.leader_elect("steward", "a", long).await.unwrap(),
        "a renews"
    );
    assert!(
        s.leader_elect("other", "b", long).await.unwrap(),
        "names are apart"
    );
    s.leader_resign("steward", "b").await.unwrap();
    assert!(
        !s.leader_elect("steward", "b", long).await.unwrap(),
        "only a resigns a"
    );
    s.leader_resign("steward", "a").await.unwrap();
    assert!(
        s.leader_elect("steward", "b", long).await.unwrap(),
        "b after a resigned"
    );
    // A lease that runs out: another holder takes over.
    assert!(
        s.leader_elect("short", "a", Duration::from_millis(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        s.leader_elect("short", "c", long).await.unwrap(),
        "a's lease ran out"
    );
    t.cleanup().await;
}

/// Failures recorded at the same moment by many steps (a storage that goes down fails every
/// step in flight) each count, also before the circuit has a row: none is lost to another.
async fn failures_recorded_at_once_are_each_counted(backend: Backend) {
    use steward::store::limits::BreakerOutcome;
    let t = fresh(backend).await;
    let calls = (0..8_i64).map(|job_id| {
        let store = t.store.clone();
        async move {
            store
                .breaker_record(&BreakerOutcome {
                    key: "breaker:storage:at-once",
                    job_id,
                    ok: false,
                    failures_to_open: 100,
                    open_for: Duration::from_secs(30),
                })
                .await
                .unwrap()
        }
    });
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    for handle in handles {
        assert_eq!(handle.await.unwrap(), None, "below the threshold: closed");
    }
    let listed = t.store.breakers_list().await.unwrap();
    assert_eq!(
        (listed[0].state.as_str(), listed[0].failures),
        ("closed", 8)
    );
    t.cleanup().await;
}

async fn a_circuit_opens_at_its_threshold_and_lets_one_probe_through(backend: Backend) {
    use steward::store::limits::{Admission, BreakerOutcome, LimitAsk};
    let t = fresh(backend).await;
    let key = "breaker:call:host";
    let open_for = Duration::from_millis(300);
    let fail = |job_id: i64| BreakerOutcome {
        key,
        job_id,
        ok: false,
        failures_to_open: 2,
        open_for,
    };
    let fetched = jobs_of(&t, "br", 3).await;
    let ask = |job: &FetchedJob| LimitAsk {
        lease: job.lease(),
        rate: None,
        concurrency: None,
        breaker: Some((key.to_string(), Duration::from_secs(60))),
        last_attempt: false,
    };
    let horizon = Duration::from_millis(500);
    // Closed (never failed): everyone passes.
    assert_eq!(
        starts(
            &t.store
                .limits_admit(&[ask(&fetched[0])], horizon)
                .await
                .unwrap()
        ),
        vec![Some(0)]
    );
    assert_eq!(
        t.store.breaker_record(&fail(1)).await.unwrap(),
        None,
        "one failure: closed"
    );
    let until = t
        .store
        .breaker_record(&fail(2))
        .await
        .unwrap()
        .expect("opened at two");
    let listed = t.store.breakers_list().await.unwrap();
    assert_eq!((listed[0].state.as_str(), listed[0].failures), ("open", 2));
    // Open: nobody passes until the period is over.
    let open = t
        .store
        .limits_admit(&[ask(&fetched[1])], horizon)
        .await
        .unwrap();
    assert_eq!(open.each, vec![Admission::Open { until }]);
    tokio::time::sleep(open_for).await;
    // A job on its last attempt is never the probe (a failed probe would kill it).
    let last = LimitAsk {
        last_attempt: true,
        ..ask(&fetched[2])
    };
    assert!(matches!(
        t.store.limits_admit(&[last], horizon).await.unwrap().each[0],
        Admission::Open { .. }
    ));
    // Half-open: one probe passes, the next waits for it.
    let probe = t
        .store
        .limits_admit(&[ask(&fetched[1]), ask(&fetched[2])], horizon)
        .await
        .unwrap();
    assert_eq!(starts(&probe)[0], Some(0));
    // The other looks again within seconds, not at the probe's 60 s deadline.
    match probe.each[1] {
        Admission::Open { until } => assert!(
            until > probe.now && until <= probe.now + chrono::Duration::seconds(5),
            "{:?}",
            probe.each
        ),
        ref other => panic!("the next waits for the probe: {other:?}"),
    }
    assert_eq!(t.store.breakers_list().await.unwrap()[0].state, "half_open");
    // The probe fails: open again for another period.
    let again = t
        .store
        .breaker_record(&fail(fetched[1].id))
        .await
        .unwrap()
        .expect("open");
    assert!(again > until);
    assert!(matches!(
        t.store
            .limits_admit(&[ask(&fetched[2])], horizon)
            .await
            .unwrap()
            .each[0],
        Admission::Open { .. }
    ));
    // A success closes it.
    let ok = BreakerOutcome {
        ok: true,
        ..fail(fetched[2].id)
    };
    assert_eq!(t.store.breaker_record(&ok).await.unwrap(), None);
    assert_eq!(
        (t.store.breakers_list().await.unwrap()[0].state.as_str()),
        "closed"
    );
    assert_eq!(
        starts(
            &t.store
                .limits_admit(&[ask(&fetched[2])], horizon)
                .await
                .unwrap()
        ),
        vec![Some(0)]
    );
    t.cleanup().await;
}
