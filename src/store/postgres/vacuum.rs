//! Steward's own vacuum of its tables. Each job leaves two dead row versions in
//! `steward_jobs` (its fetch's update and its acknowledgement's delete), 40,000 a second at full
//! speed, and each pruned job one in `steward_jobs_completed`. Until a vacuum marks their space
//! free the heap and its indexes only grow, and every scan wades through them. Autovacuum may
//! be off on the server (it is on the CI machine's) or, at its defaults, throttled below that
//! rate, so the leader's [`crate::maintenance::Vacuumer`] does it: a table is vacuumed when
//! its dead versions pass a threshold, `SKIP_LOCKED` so that a vacuum already running on it
//! (autovacuum's, another node's during a hand-over) is left alone rather than waited for.
//! Without truncation: giving the empty pages at the end of a table back to the file system
//! takes an `ACCESS EXCLUSIVE` lock on it, which stops every fetch, enqueue and
//! acknowledgement while it lasts, and the next inserts would only extend the file again.

use super::PgStore;
use crate::domain::ident::validate_identifier;
use crate::store::StoreResult;
use sqlx::Executor;

impl PgStore {
    /// See [`crate::store::JobAdmin::tables_vacuum`].
    pub(super) async fn vacuum_tables(&self, min_dead: u64) -> StoreResult<u64> {
        let min_dead = i64::try_from(min_dead).unwrap_or(i64::MAX);
        // The statistics are the cumulative ones every backend reports at the end of its
        // transactions (at most a second late), so no table is scanned to decide.
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT schemaname::text, relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname LIKE 'steward\\_%' \
               AND n_dead_tup >= $1 AND n_dead_tup >= n_live_tup / 10 \
             ORDER BY n_dead_tup DESC",
        )
        .bind(min_dead)
        .fetch_all(self.pool())
        .await?;
        let mut vacuumed = 0;
        for (schema, table) in due {
            let statement = format!(
                "VACUUM (SKIP_LOCKED, ANALYZE, TRUNCATE false) \"{}\".\"{}\"",
                validate_identifier(&schema)?,
                validate_identifier(&table)?
            );
            self.pool().execute(statement.as_str()).await?;
            vacuumed += 1;
        }
        Ok(vacuumed)
    }
}
