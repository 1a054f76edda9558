//! [`ControlStore`] written once, for every [`SqlStore`].

use crate::store::StoreResult;
use crate::store::control::{
    ControlStore, QueueChange, QueueState, WorkerBeat, WorkerQueue, WorkerRecord,
};
use crate::store::sql::{SqlStore, corrupt, sql};
use async_trait::async_trait;

#[async_trait]
impl<S: SqlStore> ControlStore for S {
    async fn queue_set_paused(
        &self,
        queue: &str,
        paused: bool,
        by: &str,
    ) -> StoreResult<QueueChange> {
        let mut tx = self.write().await?;
        // Versions are taken one caller at a time, so a worker that applied version V has
        // seen every change up to V.
        let lock = tx.dialect().pick(
            "LOCK TABLE steward_queue_states IN SHARE ROW EXCLUSIVE MODE",
            "SELECT 1",
        );
        tx.execute(sql!(lock)).await?;
        let current = tx
            .fetch_optional(sql!(
                "SELECT paused, version FROM steward_queue_states WHERE queue = $1",
                queue
            ))
            .await?;
        // Already so (a queue never paused is running): nothing changes.
        let unchanged = match &current {
            Some(row) => (row.flag("paused")? == paused).then(|| row.int("version")),
            None => (!paused).then_some(Ok(0)),
        };
        if let Some(version) = unchanged {
            let version = version?;
            tx.commit().await?;
            return Ok(QueueChange {
                version,
                changed: false,
            });
        }
        let version = tx
            .fetch_one(sql!(
                "SELECT CAST(coalesce(max(version), 0) + 1 AS BIGINT) AS v FROM steward_queue_states"
            ))
            .await?
            .int("v")?;
        tx.execute(sql!(
            "INSERT INTO steward_queue_states (queue, paused, changed_by, changed_at, version) \
             VALUES ($1, $2, $3, {now}, $4) \
             ON CONFLICT (queue) DO UPDATE SET paused = EXCLUDED.paused, \
                 changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at, \
                 version = EXCLUDED.version",
            queue,
            paused,
            by,
            version
        ))
        .await?;
        tx.commit().await?;
        Ok(QueueChange {
            version,
            changed: true,
        })
    }

    async fn queue_states(&self) -> StoreResult<Vec<QueueState>> {
        let mut conn = self.read().await?;
        conn.fetch_all(sql!(
            "SELECT queue, paused, changed_by, changed_at, version FROM steward_queue_states \
             ORDER BY queue"
        ))
        .await?
        .iter()
        .map(|row| {
            Ok(QueueState {
                queue: row.text("queue")?,
                paused: row.flag("paused")?,
                changed_by: row.text("changed_by")?,
                changed_at: row.time("changed_at")?,
                version: row.int("version")?,
            })
        })
        .collect()
    }

    async fn worker_beat(&self, beat: &WorkerBeat<'_>) -> StoreResult<()> {
        let mut tx = self.write_service().await?;
        let queues = serde_json::to_value(beat.queues).map_err(corrupt)?;
        tx.execute(sql!(
            "INSERT INTO steward_workers \
                 (id, host, pid, queues, started_at, heartbeat_at, expires_at, running, control_seen) \
             VALUES ($1, $2, $3, $4, {now}, {now}, {now} + $7, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, \
                 queues = EXCLUDED.queues, heartbeat_at = EXCLUDED.heartbeat_at, \
                 expires_at = EXCLUDED.expires_at, running = EXCLUDED.running, \
                 control_seen = EXCLUDED.control_seen",
            beat.id,
            beat.host,
            i64::from(beat.pid),
            queues,
            i64::try_from(beat.running).unwrap_or(i64::MAX),
            beat.control_seen,
            beat.ttl
        ))
        .await?;
        tx.commit().await
    }

    async fn worker_leave(&self, id: &str) -> StoreResult<()> {
        let mut tx = self.write_service().await?;
        // (Workers that vanished without leaving are forgotten a day after they expired.)
        tx.execute(sql!(
            "DELETE FROM steward_workers WHERE id = $1 OR expires_at < {now} - $2",
            id,
            std::time::Duration::from_secs(24 * 60 * 60)
        ))
        .await?;
        tx.commit().await
    }

    async fn workers_list(&self) -> StoreResult<Vec<WorkerRecord>> {
        let mut conn = self.read().await?;
        conn.fetch_all(sql!(
            "SELECT id, host, pid, queues, started_at, heartbeat_at, running, control_seen, \
                 CASE WHEN expires_at > {now} THEN 1 ELSE 0 END AS alive \
             FROM steward_workers ORDER BY alive DESC, id"
        ))
        .await?
        .iter()
        .map(|row| {
            let queues: Vec<WorkerQueue> =
                serde_json::from_value(row.json("queues")?).map_err(corrupt)?;
            Ok(WorkerRecord {
                id: row.text("id")?,
                host: row.text("host")?,
                pid: row.int("pid")?,
                queues,
                started_at: row.time("started_at")?,
                heartbeat_at: row.time("heartbeat_at")?,
                alive: row.int32("alive")? == 1,
                running: row.int("running")?,
                control_seen: row.int("control_seen")?,
            })
        })
        .collect()
    }
}
