//! The enqueue's reconciliation, written once for both backends: each backend inserts a batch
//! in its own dialect (one statement that skips jobs whose unique key is taken) and looks up
//! the holders of taken keys; this matches the answers back to the input, in input order.

use super::{StoreError, StoreResult};
use crate::types::{Enqueued, NewJob};
use async_trait::async_trait;
use std::collections::HashMap;

/// One row the insert wrote.
pub(crate) struct Inserted {
    pub id: i64,
    pub unique_key: Option<String>,
    /// Its queue, when the job is available now (its producers are to be woken).
    pub available_in: Option<String>,
}

impl Inserted {
    /// From the insert statement's answer row: `(id, unique_key, state, queue)`.
    pub fn from_row((id, unique_key, state, queue): (i64, Option<String>, String, String)) -> Self {
        let available_in = (state == "available").then_some(queue);
        Self {
            id,
            unique_key,
            available_in,
        }
    }
}

/// What a backend does in one round of an enqueue, on its connection.
#[async_trait]
pub(crate) trait InsertRound: Send {
    /// Insert `jobs` in input order (ids drawn in that order), skipping those whose unique
    /// key a live job holds.
    async fn insert(&mut self, jobs: &[&NewJob]) -> StoreResult<Vec<Inserted>>;

    /// The live (not cancelled) jobs holding `keys`: (key, id).
    async fn holders(&mut self, keys: &[String]) -> StoreResult<Vec<(String, i64)>>;
}

/// Insert `jobs`, returning the results in input order (a duplicate's result is its holder,
/// `inserted: false`) and the queues that got available jobs, each once.
pub(crate) async fn insert_reconciled(
    round: &mut impl InsertRound,
    jobs: &[NewJob],
) -> StoreResult<(Vec<Enqueued>, Vec<String>)> {
    let mut woken: Vec<String> = Vec::new();
    let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    // A duplicate's holder can complete (leave the table) between our insert and our lookup;
    // then the key is free and the next round inserts. Three rounds settle any such race.
    for _round in 0..3 {
        if pending.is_empty() {
            break;
        }
        let batch: Vec<&NewJob> = pending.iter().map(|&i| &jobs[i]).collect();
        // Ids are drawn in insertion order, so the keyless rows match the keyless inputs in
        // order; keyed rows match by key.
        let mut keyless: Vec<i64> = Vec::new();
        let mut keyed: HashMap<String, i64> = HashMap::new();
        for row in round.insert(&batch).await? {
            woken.extend(row.available_in);
            match row.unique_key {
                Some(key) => {
                    keyed.insert(key, row.id);
                }
                None => keyless.push(row.id),
            }
        }
        keyless.sort_unstable();
        let mut keyless = keyless.into_iter();
        let mut duplicates: Vec<usize> = Vec::new();
        for &index in &pending {
            match &jobs[index].unique_key {
                None => {
                    let id = keyless.next().ok_or_else(|| {
                        StoreError::Corrupt("insert returned fewer rows than expected".into())
                    })?;
                    results[index] = Some(Enqueued { id, inserted: true });
                }
                Some(key) => match keyed.remove(key) {
                    Some(id) => results[index] = Some(Enqueued { id, inserted: true }),
                    None => duplicates.push(index),
                },
            }
        }
        if duplicates.is_empty() {
            pending.clear();
            break;
        }
        // Inserted in this very batch under the same key, or held by an existing live job.
        let keys: Vec<String> = duplicates
            .iter()
            .filter_map(|&i| jobs[i].unique_key.clone())
            .collect();
        let holders: HashMap<String, i64> = round.holders(&keys).await?.into_iter().collect();
        let mut next_pending = Vec::new();
        for index in duplicates {
            let key = jobs[index].unique_key.as_deref().unwrap_or_default();
            match holders.get(key) {
                Some(&id) => {
                    results[index] = Some(Enqueued {
                        id,
                        inserted: false,
                    })
                }
                None => next_pending.push(index),
            }
        }
        pending = next_pending;
    }
    if !pending.is_empty() {
        return Err(StoreError::Conflict(
            "a unique key kept changing hands while enqueuing; try again".into(),
        ));
    }
    let results = results
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Corrupt("enqueue result missing".into())))
        .collect::<StoreResult<Vec<_>>>()?;
    woken.sort();
    woken.dedup();
    Ok((results, woken))
}
