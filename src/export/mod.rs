//! Export storage: where tenant data goes before it is deleted (purge-and-export, archive).
//!
//! One trait, [`ExportStorage`], with two implementations: [`local::LocalStorage`] (a
//! directory, the embedded default) and [`s3::S3Storage`] (any S3-compatible service through
//! `aws-sdk-s3`). An object is written as a stream of parts ([`Upload`]) so memory stays flat
//! however large it is, and is only visible under its key once [`Upload::finish`] succeeded.
//! [`ExportStorage::digest`] reads an object back and measures it: the purge deletes rows only
//! after the object read back from the storage has the size and SHA-256 the writer computed.
//!
//! [`csv_stream::export_rows`] streams a module table's rows as CSV into an upload.

pub mod csv_stream;
pub mod local;
pub mod s3;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Errors of the export storage. Every one is worth retrying later except [`ExportError::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The storage could not be reached or refused the request.
    #[error("export storage unavailable: {0}")]
    Unavailable(String),
    /// The object read back differs from what was written.
    #[error("export verification failed: {0}")]
    Mismatch(String),
    /// The object does not exist.
    #[error("no object at {0}")]
    NotFound(String),
    /// A key or configuration that can never work.
    #[error("{0}")]
    Invalid(String),
}

/// The size and SHA-256 of an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectDigest {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Measures bytes as they pass: the writer's side of [`ObjectDigest`].
#[derive(Default)]
pub struct DigestWriter {
    size: u64,
    hasher: Sha256,
}

impl DigestWriter {
    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.hasher.update(bytes);
    }

    pub fn finish(self) -> ObjectDigest {
        ObjectDigest {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// An object being written, part by part (each part but the last at least
/// [`MIN_PART_BYTES`]). Dropped without [`Upload::finish`], nothing appears under the key.
#[async_trait]
pub trait Upload: Send {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), ExportError>;
    /// Make the object visible under its key, whole.
    async fn finish(self: Box<Self>) -> Result<(), ExportError>;
    /// Give up: free what the storage holds for the unfinished object (best effort).
    async fn abort(self: Box<Self>);
}

/// S3's smallest part but the last; the CSV writer hands over parts of [`PART_BYTES`].
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// The part size the exports write.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Where exports are written.
#[async_trait]
pub trait ExportStorage: Send + Sync {
    /// Start writing the object `key` (an existing object is replaced when this one finishes).
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, ExportError>;
    /// Read the object back and measure it.
    async fn digest(&self, key: &str) -> Result<ObjectDigest, ExportError>;
    /// The object's bytes (for tools and tests; exports are read back through `digest`).
    async fn read(&self, key: &str) -> Result<Vec<u8>, ExportError>;
    /// Can the storage be reached (for `/health`)?
    async fn check(&self) -> Result<(), ExportError>;
    /// Where the objects are, for messages (`file:///…`, `s3://bucket`).
    fn location(&self) -> String;
}

/// The export storage as the rest of steward holds it.
pub type SharedExports = Arc<dyn ExportStorage>;

/// Upload a local file to `key` in parts of [`PART_BYTES`] and verify it: the object read
/// back must have the file's size and SHA-256. Returns that digest.
pub async fn upload_file(
    storage: &dyn ExportStorage,
    key: &str,
    path: &std::path::Path,
) -> Result<ObjectDigest, ExportError> {
    use tokio::io::AsyncReadExt;
    let unavailable =
        |e: std::io::Error| ExportError::Unavailable(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(unavailable)?;
    let mut upload = storage.upload(key).await?;
    let mut digest = DigestWriter::default();
    loop {
        let mut part = Vec::with_capacity(PART_BYTES);
        let read = (&mut file)
            .take(PART_BYTES as u64)
            .read_to_end(&mut part)
            .await;
        let part = match read {
            Ok(0) if digest.size > 0 => break,
            Ok(_) => part,
            Err(e) => {
                upload.abort().await;
                return Err(unavailable(e));
            }
        };
        digest.update(&part);
        let last = part.len() < PART_BYTES;
        if let Err(e) = upload.part(part).await {
            upload.abort().await;
            return Err(e);
        }
        if last {
            break;
        }
    }
    upload.finish().await?;
    let written = digest.finish();
    let stored = storage.digest(key).await?;
    if stored != written {
        return Err(ExportError::Mismatch(format!(
            "{key}: wrote {} bytes (sha256 {}), the storage holds {} bytes (sha256 {})",
            written.size, written.sha256, stored.size, stored.sha256
        )));
    }
    Ok(written)
}

/// The object key of a table's export: `tenant_exports/<tenant>/<module>/<table>/<date>.csv`
/// (`suffix` tells apart exports of the same day, e.g. an archive after a purge).
pub fn object_key(
    tenant: i64,
    module: &crate::domain::ident::Slug,
    table: &str,
    date: chrono::NaiveDate,
    suffix: Option<&str>,
) -> String {
    let suffix = suffix.map(|s| format!("-{s}")).unwrap_or_default();
    format!(
        "tenant_exports/{tenant}/{}/{table}/{}{suffix}.csv",
        module.as_str(),
        date.format("%Y-%m-%d")
    )
}

/// Reject keys that could escape a directory or confuse a storage.
pub(crate) fn check_key(key: &str) -> Result<(), ExportError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(ExportError::Invalid(format!("invalid object key `{key}`")))
    }
}

/// Export storage settings (see `Settings`): S3 when a bucket is named, else a local directory.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    pub dir: std::path::PathBuf,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_path_style: bool,
}

/// Open the configured export storage.
pub fn open(config: &StorageConfig) -> SharedExports {
    match &config.s3_bucket {
        Some(bucket) => Arc::new(s3::S3Storage::from_env(
            bucket,
            config.s3_endpoint.as_deref(),
            &config.s3_region,
            config.s3_path_style,
        )),
        None => Arc::new(local::LocalStorage::new(config.dir.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_storage() {
        assert!(
            check_key("tenant_exports/1/inventory/tenant_inventory_items/2026-11-30.csv").is_ok()
        );
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a/\u{e9}",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn digest_measures_every_byte() {
        let mut d = DigestWriter::default();
        d.update(b"ab");
        d.update(b"c");
        let out = d.finish();
        assert_eq!(out.size, 3);
        assert_eq!(
            out.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
