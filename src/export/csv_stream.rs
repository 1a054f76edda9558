//! A tenant's rows of a module table, streamed as CSV into an [`Upload`] and verified.
//!
//! The store reads rows in batches into a bounded channel; the writer turns them into CSV
//! (header: the table's columns; NULL is an empty field) and hands the storage a part each
//! time [`PART_BYTES`] are ready. At most a few batches and one part are in memory, whatever
//! the row count. Once the object is whole, it is read back from the storage and its size and
//! SHA-256 compared with what was written: only a verified export counts.

use super::{DigestWriter, ExportError, ExportStorage, ObjectDigest, PART_BYTES, Upload};
use crate::domain::ident::ModuleTable;
use crate::store::StoreError;
use crate::store::data::{DataStore, RowBatch};
use crate::store::domain::TenantId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// A verified export of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub key: String,
    pub rows: u64,
    #[serde(flatten)]
    pub digest: ObjectDigest,
}

/// Why an export did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExportFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] ExportError),
    #[error("cannot write CSV: {0}")]
    Csv(String),
}

/// The bytes the CSV writer produced and the export has not handed over yet.
#[derive(Clone, Default)]
struct PendingBytes(Arc<Mutex<Vec<u8>>>);

impl PendingBytes {
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for PendingBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn csv_error(e: impl std::fmt::Display) -> ExportFailure {
    ExportFailure::Csv(e.to_string())
}

/// Export a tenant's rows of `table` created before `before` (all of them with `None`) to
/// `key`, verified. `on_part` hears the bytes handed over so far after each part.
pub async fn export_rows(
    store: &dyn DataStore,
    storage: &dyn ExportStorage,
    table: &ModuleTable,
    tenant: TenantId,
    before: Option<DateTime<Utc>>,
    key: &str,
    on_part: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExportReport, ExportFailure> {
    let columns = store.module_table_columns(table).await?;
    let mut upload = storage.upload(key).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<RowBatch>(4);
    let reader = async {
        store
            .module_rows_export(table, tenant, before, sender)
            .await
            .map_err(ExportFailure::from)
    };
    let writer = write_csv(&columns, receiver, upload.as_mut(), on_part);
    let (rows, written) = match tokio::try_join!(reader, writer) {
        Ok(done) => done,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    upload.finish().await?;
    let stored = storage.digest(key).await?;
    if stored != written {
        return Err(ExportError::Mismatch(format!(
            "{key}: wrote {} bytes (sha256 {}), the storage holds {} bytes (sha256 {})",
            written.size, written.sha256, stored.size, stored.sha256
        ))
        .into());
    }
    Ok(ExportReport {
        key: key.to_string(),
        rows,
        digest: written,
    })
}

async fn write_csv(
    columns: &[String],
    mut rows: tokio::sync::mpsc::Receiver<RowBatch>,
    upload: &mut dyn Upload,
    on_part: &(dyn Fn(u64) + Send + Sync),
) -> Result<ObjectDigest, ExportFailure> {
    let pending = PendingBytes::default();
    let mut csv = csv::Writer::from_writer(pending.clone());
    let mut digest = DigestWriter::default();
    let mut handed = 0u64;
    csv.write_record(columns).map_err(csv_error)?;
    while let Some(batch) = rows.recv().await {
        for row in &batch {
            csv.write_record(row.iter().map(|v| v.as_deref().unwrap_or("")))
                .map_err(csv_error)?;
        }
        if pending.len() >= PART_BYTES {
            csv.flush().map_err(csv_error)?;
            let part = pending.take();
            digest.update(&part);
            handed += part.len() as u64;
            upload.part(part).await?;
            on_part(handed);
        }
    }
    csv.flush().map_err(csv_error)?;
    let last = pending.take();
    digest.update(&last);
    handed += last.len() as u64;
    upload.part(last).await?;
    on_part(handed);
    Ok(digest.finish())
}
