//! The local file system as export storage (the embedded default): an object is a file under
//! the root, written beside its final name and renamed into place once synced to disk.

use super::{DigestWriter, ExportError, ExportStorage, ObjectDigest, Upload, check_key};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Objects as files under `root`.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf, ExportError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn unavailable(path: &Path, e: std::io::Error) -> ExportError {
    ExportError::Unavailable(format!("{}: {e}", path.display()))
}

struct LocalUpload {
    file: tokio::fs::File,
    partial: PathBuf,
    target: PathBuf,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), ExportError> {
        self.file
            .write_all(&bytes)
            .await
            .map_err(|e| unavailable(&self.partial, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        let fail = |e| unavailable(&self.partial, e);
        self.file.flush().await.map_err(fail)?;
        self.file.sync_all().await.map_err(fail)?;
        tokio::fs::rename(&self.partial, &self.target)
            .await
            .map_err(fail)?;
        // The rename is durable once the directory is synced.
        if let Some(dir) = self.target.parent() {
            let dir = tokio::fs::File::open(dir)
                .await
                .map_err(|e| unavailable(dir, e))?;
            dir.sync_all()
                .await
                .map_err(|e| unavailable(&self.target, e))?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

#[async_trait]
impl ExportStorage for LocalStorage {
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, ExportError> {
        let target = self.path(key)?;
        let dir = target
            .parent()
            .ok_or_else(|| ExportError::Invalid(format!("invalid object key `{key}`")))?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| match e.kind() {
                // The root (or a folder in it) is a file: a configuration that never works.
                std::io::ErrorKind::NotADirectory => {
                    ExportError::Invalid(format!("export directory {}: {e}", self.root.display()))
                }
                _ => unavailable(dir, e),
            })?;
        let partial = target.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| unavailable(&partial, e))?;
        Ok(Box::new(LocalUpload {
            file,
            partial,
            target,
        }))
    }

    async fn digest(&self, key: &str) -> Result<ObjectDigest, ExportError> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ExportError::NotFound(key.to_string()));
            }
            Err(e) => return Err(unavailable(&path, e)),
        };
        let mut digest = DigestWriter::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| unavailable(&path, e))?;
            if n == 0 {
                return Ok(digest.finish());
            }
            digest.update(&buf[..n]);
        }
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, ExportError> {
        let path = self.path(key)?;
        tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ExportError::NotFound(key.to_string()),
            _ => unavailable(&path, e),
        })
    }

    async fn check(&self) -> Result<(), ExportError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| unavailable(&self.root, e))
    }

    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
