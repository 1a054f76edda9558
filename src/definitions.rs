//! What job-kind (`jobs/`) and workflow (`workflows/`) definitions share: reading a directory
//! of TOML files in a stable order, and turning byte offsets into line numbers for errors.

use std::path::{Path, PathBuf};

/// Every `*.toml` file of a directory with its text, sorted by path. The error names the
/// path that could not be read.
pub(crate) fn read_toml_dir(
    dir: &Path,
) -> Result<Vec<(PathBuf, String)>, (PathBuf, std::io::Error)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| (dir.to_path_buf(), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(e) => Err((path, e)),
        })
        .collect()
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
