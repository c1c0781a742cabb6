//! Snapshots: one directory per layer, named by the layer's chain ID and
//! shared by every image that has it; and the per-container upper/work dirs
//! and overlay mount on top of them.

use std::path::{Path, PathBuf};

use super::content::io_err;
use super::{ImageError, RootfsMount};

/// Snapshot and container directories under the store root.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    snapshots: PathBuf,
    containers: PathBuf,
}

impl SnapshotStore {
    pub fn new(root: &Path) -> Self {
        Self {
            snapshots: root.join("snapshots"),
            containers: root.join("containers"),
        }
    }

    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    pub fn containers_dir(&self) -> &Path {
        &self.containers
    }

    /// The directory of the snapshot `chain_id`.
    pub fn path(&self, chain_id: &str) -> PathBuf {
        self.snapshots.join(chain_id.trim_start_matches("sha256:"))
    }

    pub fn exists(&self, chain_id: &str) -> bool {
        self.path(chain_id).is_dir()
    }

    /// The directory of one container's rootfs state.
    pub fn container_path(&self, container_id: &str) -> Result<PathBuf, ImageError> {
        let ok = !container_id.is_empty()
            && container_id.len() <= 128
            && container_id != "."
            && container_id != ".."
            && container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(ImageError::InvalidReference {
                reference: container_id.to_owned(),
                reason: "container id must be 1-128 characters of [A-Za-z0-9_.-]".into(),
            });
        }
        Ok(self.containers.join(container_id))
    }

    /// Creates upper/work for `container_id` over `chain_ids` (bottom first).
    pub fn prepare(
        &self,
        container_id: &str,
        chain_ids: &[String],
    ) -> Result<RootfsMount, ImageError> {
        let dir = self.container_path(container_id)?;
        let upper = dir.join("upper");
        let work = dir.join("work");
        std::fs::create_dir_all(&upper).map_err(io_err(format!("create {}", upper.display())))?;
        std::fs::create_dir_all(&work).map_err(io_err(format!("create {}", work.display())))?;
        let mut lower_dirs: Vec<PathBuf> = chain_ids.iter().rev().map(|c| self.path(c)).collect();
        if lower_dirs.is_empty() {
            // overlayfs needs one lower dir; an image without layers gets an empty one.
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty)
                .map_err(io_err(format!("create {}", empty.display())))?;
            lower_dirs.push(empty);
        }
        Ok(RootfsMount {
            lower_dirs,
            upper_dir: upper,
            work_dir: work,
        })
    }

    /// Removes a container's upper/work. Idempotent.
    pub fn remove(&self, container_id: &str) -> Result<(), ImageError> {
        let dir = self.container_path(container_id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::Io {
                context: format!("remove {}", dir.display()),
                source: e,
            }),
        }
    }
}

impl RootfsMount {
    /// The classic `lowerdir=...,upperdir=...,workdir=...` option string
    /// (the shim mounts it with `runtime::overlay`, any number of layers).
    pub fn options(&self) -> String {
        let lower: Vec<String> = self
            .lower_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper_dir.display(),
            self.work_dir.display()
        )
    }
}
