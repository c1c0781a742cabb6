//! Registry client, content store, unpack and snapshots (overlay layers).
//!
//! [`ImageStore`] is what the rest of berthd uses: the CRI ImageService
//! adapter (`cri/`) and, later, container creation (rootfs mounts).
//!
//! Status: CONTRACT — bodies are being filled in by the image work; keep the
//! signatures stable, or change them together with `cri/` and `config.rs`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod error;
pub use error::ImageError;

/// Result of image operations.
pub type Result<T> = std::result::Result<T, ImageError>;

/// The `[image]` table of berthd's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// containers-registries.conf(5) v2 file; a missing file means no mirrors.
    pub registries_config: PathBuf,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// A pull that receives no byte for this long fails.
    pub stall_timeout_secs: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            registries_config: PathBuf::from("/etc/containers/registries.conf"),
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
        }
    }
}

/// Credentials for one pull (the CRI `AuthConfig`, already decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// base64 "user:password" as in a Docker config's `auth`.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

/// An image as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the digest of its config blob, `sha256:<hex>`.
    pub id: String,
    /// Normalised tags, e.g. `docker.io/library/busybox:1.36`.
    pub repo_tags: Vec<String>,
    /// Normalised digest references, e.g. `docker.io/library/busybox@sha256:...`.
    pub repo_digests: Vec<String>,
    /// Compressed size of all layers plus config and manifest, in bytes.
    pub size: u64,
    /// The image config blob (OCI image configuration JSON), verbatim.
    pub config_json: Vec<u8>,
    /// Chain IDs of the layers, bottom first; each names one snapshot.
    pub chain_ids: Vec<String>,
    pub pinned: bool,
}

/// Bytes and inodes used by the image filesystem (ImageFsInfo).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// What a GC run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: u64,
    pub snapshots_removed: u64,
    pub bytes_freed: u64,
}

/// The overlay mount prepared for one container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// Lower dirs, top-most first (as overlayfs `lowerdir=` wants them).
    pub lower_dirs: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
}

/// Images, blobs and snapshots under one root directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` (berthd's
    /// `--root`/images), recovering from an unclean stop.
    pub async fn open(root: &Path, _config: &ImageConfig) -> Result<Self> {
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pulls `reference` (Docker-style name, normalised), verifies and unpacks
    /// it, and records it. Returns the stored image.
    pub async fn pull(&self, _reference: &str, _auth: Option<&RegistryAuth>) -> Result<ImageRecord> {
        todo!("image: pull")
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        todo!("image: list")
    }

    /// The image a reference, an image id or a digest reference names.
    pub fn get(&self, _reference_or_id: &str) -> Result<Option<ImageRecord>> {
        todo!("image: get")
    }

    /// Removes a tag (the image stays while other tags reference it) or, given
    /// an id or digest, the image with all its tags. Removing an unknown image
    /// is not an error (CRI semantics). Unreferenced content is collected.
    pub async fn remove(&self, _reference_or_id: &str) -> Result<()> {
        todo!("image: remove")
    }

    /// Usage of the image filesystem.
    pub fn fs_usage(&self) -> Result<FsUsage> {
        todo!("image: fs usage")
    }

    /// Removes blobs and snapshots no image references.
    pub async fn gc(&self) -> Result<GcStats> {
        todo!("image: gc")
    }

    /// Prepares a fresh upper/work dir for container `container_id` on top of
    /// the image's snapshots.
    pub fn prepare_rootfs(&self, _image_id: &str, _container_id: &str) -> Result<RootfsMount> {
        todo!("image: prepare rootfs")
    }

    /// Removes what [`ImageStore::prepare_rootfs`] made. Idempotent.
    pub fn remove_rootfs(&self, _container_id: &str) -> Result<()> {
        todo!("image: remove rootfs")
    }
}
