//! The content store: blobs by digest under `blobs/sha256/<hex>`, written
//! through a temp file in `tmp/` and renamed into place only when verified.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// Where blobs live.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
    tmp: PathBuf,
}

pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks `bytes` against a descriptor's digest and size.
pub fn verify(bytes: &[u8], digest: &str, size: Option<u64>) -> Result<(), ImageError> {
    if let Some(size) = size
        && size != bytes.len() as u64
    {
        return Err(ImageError::Verification {
            digest: digest.to_owned(),
            reason: format!("size {} but {size} expected", bytes.len()),
        });
    }
    let got = sha256_digest(bytes);
    if got != digest {
        return Err(ImageError::Verification {
            digest: digest.to_owned(),
            reason: format!("content has digest {got}"),
        });
    }
    Ok(())
}

impl ContentStore {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("blobs").join("sha256"),
            tmp: root.join("tmp"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a blob (whether or not it exists). `digest` must be valid.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.trim_start_matches("sha256:"))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).exists()
    }

    /// Stores already-verified bytes.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        if self.exists(digest) {
            return Ok(());
        }
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(io_err("create temp blob"))?;
        tmp.write_all(bytes).map_err(io_err("write temp blob"))?;
        tmp.as_file().sync_all().map_err(io_err("sync temp blob"))?;
        tmp.persist(self.path(digest)).map_err(|e| ImageError::Io {
            context: format!("store blob {digest}"),
            source: e.error,
        })?;
        Ok(())
    }

    /// Reads a stored blob.
    #[cfg(test)]
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        std::fs::read(self.path(digest)).map_err(io_err(format!("read blob {digest}")))
    }

    /// A new temp file for an ingest.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, ImageError> {
        tempfile::NamedTempFile::new_in(&self.tmp).map_err(io_err("create temp blob"))
    }

    /// Moves a verified temp file into place.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<(), ImageError> {
        if self.exists(digest) {
            return Ok(());
        }
        tmp.as_file().sync_all().map_err(io_err("sync blob"))?;
        tmp.persist(self.path(digest)).map_err(|e| ImageError::Io {
            context: format!("store blob {digest}"),
            source: e.error,
        })?;
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it, and refuses more
/// than `limit` bytes.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// Reads what is left (to finish the digest) and returns `(digest, size)`
    /// and the inner reader.
    pub fn finish(mut self) -> std::io::Result<(String, u64, R)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
            self.inner,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            return Err(std::io::Error::other(LimitExceeded(self.limit)));
        }
        Ok(n)
    }
}

/// The error a [`HashingReader`] returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes")]
pub struct LimitExceeded(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_checks_digest_and_size() {
        let d = sha256_digest(b"hello");
        assert!(verify(b"hello", &d, Some(5)).is_ok());
        assert!(verify(b"hello", &d, None).is_ok());
        assert!(matches!(
            verify(b"hello", &d, Some(6)),
            Err(ImageError::Verification { .. })
        ));
        assert!(matches!(
            verify(b"hellO", &d, Some(5)),
            Err(ImageError::Verification { .. })
        ));
    }

    #[test]
    fn hashing_reader_counts_and_limits() {
        let r = HashingReader::new(&b"hello"[..], 10);
        let (d, n, _) = r.finish().unwrap();
        assert_eq!((d, n), (sha256_digest(b"hello"), 5));
        let r = HashingReader::new(&b"hello"[..], 3);
        assert!(r.finish().is_err());
    }

    #[test]
    fn blobs_go_through_tmp() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        let cs = ContentStore::new(root.path());
        let d = sha256_digest(b"abc");
        cs.put(&d, b"abc").unwrap();
        assert_eq!(cs.get(&d).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
