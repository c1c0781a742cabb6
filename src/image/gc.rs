//! Garbage collection and recovery: blobs and snapshots no image (and no
//! container rootfs, and no pull in progress) references are removed; files
//! the database does not know (an unclean stop before a commit) too.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{FsUsage, GcStats, ImageError, ImageStore, Result};

impl ImageStore {
    pub(super) async fn gc_impl(&self) -> Result<GcStats> {
        let _gc = self.gc_lock.lock().await;
        // Holding the in-flight lock keeps new pulls from claiming content
        // while it is being removed.
        let inflight = self.inflight.lock().await;
        let images = self.meta.images()?;
        let holds = self.meta.containers()?;
        let mut keep_blobs: HashSet<String> = inflight.blobs.iter().cloned().collect();
        let mut keep_snaps: HashSet<String> = inflight.snapshots.iter().cloned().collect();
        for img in &images {
            keep_blobs.extend(img.blobs.iter().cloned());
            keep_snaps.extend(img.record.chain_ids.iter().cloned());
        }
        for (_, h) in &holds {
            keep_snaps.extend(h.chain_ids.iter().cloned());
        }
        let dead_blobs: Vec<(String, u64)> = self
            .meta
            .blobs()?
            .into_iter()
            .filter(|(d, _)| !keep_blobs.contains(d))
            .collect();
        let dead_snaps: Vec<String> = self
            .meta
            .snapshots()?
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| !keep_snaps.contains(c))
            .collect();
        let names: Vec<String> = dead_blobs.iter().map(|(d, _)| d.clone()).collect();
        self.meta.forget(&names, &dead_snaps)?;

        let content = self.content.clone();
        let snapshots = self.snapshots.clone();
        let known_blobs: HashSet<String> = self.meta.blobs()?.into_iter().map(|(d, _)| d).collect();
        let known_snaps: HashSet<String> =
            self.meta.snapshots()?.into_iter().map(|(c, _)| c).collect();
        let stats = tokio::task::spawn_blocking(move || {
            let mut stats = GcStats::default();
            // Everything on disk that the database does not know and nothing holds.
            for (name, path) in list_dir(content.dir()) {
                let digest = format!("sha256:{}", name.to_string_lossy());
                if !known_blobs.contains(&digest) && !keep_blobs.contains(&digest) {
                    let size = std::fs::symlink_metadata(&path)
                        .map(|m| m.len())
                        .unwrap_or(0);
                    if std::fs::remove_file(&path).is_ok() {
                        stats.blobs_removed += 1;
                        stats.bytes_freed += size;
                    }
                }
            }
            for (name, path) in list_dir(snapshots.snapshots_dir()) {
                let chain = format!("sha256:{}", name.to_string_lossy());
                if !known_snaps.contains(&chain) && !keep_snaps.contains(&chain) {
                    let usage = usage_of(&path);
                    if std::fs::remove_dir_all(&path).is_ok() {
                        stats.snapshots_removed += 1;
                        stats.bytes_freed += usage.used_bytes;
                    }
                }
            }
            stats
        })
        .await
        .map_err(|e| ImageError::Io {
            context: "gc".into(),
            source: std::io::Error::other(e),
        })?;
        drop(inflight);
        if stats.blobs_removed + stats.snapshots_removed > 0 {
            tracing::info!(
                blobs = stats.blobs_removed,
                snapshots = stats.snapshots_removed,
                bytes = stats.bytes_freed,
                "image gc"
            );
        }
        Ok(stats)
    }

    /// At open: temp files of interrupted pulls, files never committed,
    /// container dirs without a hold.
    pub(super) fn recover(&self) -> Result<()> {
        for (_, path) in list_dir(&self.root.join("tmp")) {
            let r = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = r {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover temp file");
            }
        }
        let known_blobs: HashSet<String> = self.meta.blobs()?.into_iter().map(|(d, _)| d).collect();
        let known_snaps: HashSet<String> =
            self.meta.snapshots()?.into_iter().map(|(c, _)| c).collect();
        let holds: HashSet<OsString> = self
            .meta
            .containers()?
            .into_iter()
            .map(|(c, _)| c.into())
            .collect();
        let mut removed = 0;
        for (name, path) in list_dir(self.content.dir()) {
            if !known_blobs.contains(&format!("sha256:{}", name.to_string_lossy())) {
                removed += usize::from(std::fs::remove_file(&path).is_ok());
            }
        }
        for (name, path) in list_dir(self.snapshots.snapshots_dir()) {
            if !known_snaps.contains(&format!("sha256:{}", name.to_string_lossy())) {
                removed += usize::from(std::fs::remove_dir_all(&path).is_ok());
            }
        }
        for (name, path) in list_dir(self.snapshots.containers_dir()) {
            if !holds.contains(&name) {
                removed += usize::from(std::fs::remove_dir_all(&path).is_ok());
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "image store: removed content an unclean stop left uncommitted"
            );
        }
        Ok(())
    }

    pub(super) fn fs_usage_impl(&self) -> Result<FsUsage> {
        Ok(usage_of(&self.root))
    }
}

fn list_dir(dir: &Path) -> Vec<(OsString, std::path::PathBuf)> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| (e.file_name(), e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// Bytes (allocated blocks) and inodes under `path`, hard links counted once.
pub fn usage_of(path: &Path) -> FsUsage {
    let mut seen = HashSet::new();
    let mut usage = FsUsage::default();
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes_used += 1;
        usage.used_bytes += meta.blocks() * 512;
        if meta.is_dir() {
            stack.extend(list_dir(&p).into_iter().map(|(_, c)| c));
        }
    }
    usage
}
