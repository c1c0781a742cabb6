//! Reading and writing cgroup files, with errors that name the file.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::{CgroupError, Result};

/// Writes `value` to the existing file `dir/file` in one write(2), as the
/// kernel expects (never creates the file).
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| io_err(&path, e))
}

/// Reads `dir/file`.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
}

/// Reads `dir/file`, `None` when it does not exist.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, e)),
    }
}

/// Reads a file holding one unsigned number ("max" reads as u64::MAX).
pub(crate) fn read_u64(dir: &Path, file: &str) -> Result<Option<u64>> {
    match read_opt(dir, file)? {
        None => Ok(None),
        Some(s) => parse_u64(s.trim())
            .map(Some)
            .ok_or_else(|| CgroupError::Backend {
                path: dir.join(file).display().to_string(),
                message: format!("not a number: {:?}", s.trim()),
            }),
    }
}

/// "max" → u64::MAX, else the number; negative numbers (v1 "-1") → u64::MAX.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s == "max" {
        return Some(u64::MAX);
    }
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    s.parse::<i64>().ok().filter(|v| *v < 0).map(|_| u64::MAX)
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The raw OS error of a [`CgroupError::Io`].
pub(crate) fn errno(e: &CgroupError) -> Option<i32> {
    match e {
        CgroupError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}
