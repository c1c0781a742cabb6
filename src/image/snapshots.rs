//! Snapshots: one directory per layer, named by the layer's chain ID and
//! shared by every image that has it; and the per-container upper/work dirs
//! and overlay mount on top of them.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

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
    /// The classic `lowerdir=...,upperdir=...,workdir=...` option string.
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

    /// Mounts the overlay on `target`. Lower dirs are passed one at a time
    /// (`lowerdir+`, new mount API), so any number of layers fits; kernels
    /// without it get the classic option string, which must fit in a page.
    pub fn mount(&self, target: &Path) -> Result<(), ImageError> {
        match self.mount_fsconfig(target) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::INVAL => {
                tracing::debug!(error = %e, "new mount API unusable for overlay, using mount(2)");
                self.mount_classic(target)
            }
            Err(e) => Err(ImageError::Io {
                context: format!("mount overlay on {}", target.display()),
                source: e.into(),
            }),
        }
    }

    fn mount_fsconfig(&self, target: &Path) -> rustix::io::Result<()> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for lower in &self.lower_dirs {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_path())?;
        }
        rustix::mount::fsconfig_set_string(&fs, "upperdir", self.upper_dir.as_path())?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", self.work_dir.as_path())?;
        rustix::mount::fsconfig_create(&fs)?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
    }

    fn mount_classic(&self, target: &Path) -> Result<(), ImageError> {
        let options = self.options();
        let page = 4096; // one page of mount options
        if options.len() >= page {
            return Err(ImageError::Io {
                context: format!(
                    "mount overlay on {}: {} lower dirs need {} bytes of options (limit {page}) and this kernel has no lowerdir+",
                    target.display(),
                    self.lower_dirs.len(),
                    options.len()
                ),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let data = CString::new(options).map_err(|e| ImageError::Io {
            context: "overlay options".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| ImageError::Io {
            context: format!("mount overlay on {}", target.display()),
            source: e.into(),
        })
    }

    /// Unmounts what [`RootfsMount::mount`] mounted on `target`.
    pub fn unmount(target: &Path) -> Result<(), ImageError> {
        rustix::mount::unmount(target, UnmountFlags::empty()).map_err(|e| ImageError::Io {
            context: format!("unmount {}", target.display()),
            source: e.into(),
        })
    }
}
