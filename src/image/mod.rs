//! Registry client, content store, unpack and snapshots (overlay layers).
//!
//! [`ImageStore`] is what the rest of berthd uses: the CRI ImageService
//! adapter (`cri/`) and, later, container creation (rootfs mounts).
//!
//! Layout under the store root:
//!
//! ```text
//! metadata.redb          images, refs, snapshots, blobs, container holds
//! blobs/sha256/<hex>     the content store (manifests, configs, layers)
//! snapshots/<chain hex>  one unpacked layer each, shared between images
//! containers/<id>/       upper/ and work/ of one container's rootfs
//! tmp/                   ingests and unpacks in progress (wiped at open)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod content;
mod error;
mod gc;
mod layer;
pub mod manifest;
mod metadata;
mod pull;
pub mod reference;
pub mod registries_conf;
mod registry;
mod snapshots;
pub mod unpack;

pub use error::ImageError;

use content::{ContentStore, io_err};
use metadata::{ContainerHold, Metadata};
use snapshots::SnapshotStore;

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
    /// A layer whose uncompressed content exceeds this many bytes is refused
    /// (decompression bombs).
    pub max_layer_bytes: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            registries_config: PathBuf::from("/etc/containers/registries.conf"),
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
            max_layer_bytes: 64 << 30,
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
pub struct ImageStore {
    root: PathBuf,
    config: ImageConfig,
    client: registry::RegistryClient,
    meta: Arc<Metadata>,
    content: ContentStore,
    snapshots: SnapshotStore,
    inflight: Arc<tokio::sync::Mutex<pull::InFlight>>,
    layer_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    gc_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_full_id(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| format!("sha256:{hex}"))
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` (berthd's
    /// `--root`/images), recovering from an unclean stop.
    pub async fn open(root: &Path, config: &ImageConfig) -> Result<Self> {
        for d in ["blobs/sha256", "snapshots", "containers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
        }
        let db_path = root.join("metadata.redb");
        let meta = tokio::task::spawn_blocking(move || Metadata::open(&db_path))
            .await
            .map_err(|e| ImageError::Database(e.to_string()))??;
        // Fail early on a broken registries.conf.
        registries_conf::RegistriesConf::load(&config.registries_config)?;
        let store = Self {
            root: root.to_owned(),
            config: config.clone(),
            client: registry::RegistryClient::new(std::time::Duration::from_secs(
                config.stall_timeout_secs.max(1),
            ))?,
            meta: Arc::new(meta),
            content: ContentStore::new(root),
            snapshots: SnapshotStore::new(root),
            inflight: Arc::default(),
            layer_locks: Default::default(),
            gc_lock: Default::default(),
        };
        store.recover()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pulls `reference` (Docker-style name, normalised), verifies and unpacks
    /// it, and records it. Returns the stored image.
    pub async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageRecord> {
        use tracing::Instrument;
        let span = tracing::info_span!("pull", image = %reference);
        let started = std::time::Instant::now();
        let result = self.pull_impl(reference, auth).instrument(span).await;
        crate::metrics::global().record_pull(result.is_ok(), started.elapsed());
        result
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut v: Vec<ImageRecord> = self.meta.images()?.into_iter().map(|s| s.record).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// The id of the image `reference_or_id` names, if any.
    fn resolve(&self, reference_or_id: &str) -> Result<Option<String>> {
        if let Some(id) = is_full_id(reference_or_id)
            && self.meta.image(&id)?.is_some()
        {
            return Ok(Some(id));
        }
        if let Ok(parsed) = reference::parse(reference_or_id) {
            // Unqualified names: each search registry in order, as pulls do.
            let registries = match &parsed.registry {
                Some(r) => vec![r.clone()],
                None => self.search_registries(),
            };
            for registry in registries {
                if let Some(id) = self
                    .meta
                    .resolve_ref(&parsed.qualify(&registry).to_string())?
                {
                    return Ok(Some(id));
                }
            }
        }
        // A unique prefix of an id (as `crictl` shows them).
        let prefix = reference_or_id
            .strip_prefix("sha256:")
            .unwrap_or(reference_or_id);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<String> = self
                .meta
                .images()?
                .into_iter()
                .map(|s| s.record.id)
                .filter(|id| id["sha256:".len()..].starts_with(prefix))
                .collect();
            if matches.len() == 1 {
                return Ok(matches.into_iter().next());
            }
        }
        Ok(None)
    }

    /// The image a reference, an image id or a digest reference names.
    pub fn get(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        match self.resolve(reference_or_id)? {
            Some(id) => Ok(self.meta.image(&id)?.map(|s| s.record)),
            None => Ok(None),
        }
    }

    /// Removes a tag (the image stays while other tags reference it) or, given
    /// an id or digest, the image with all its tags. Removing an unknown image
    /// is not an error (CRI semantics). Unreferenced content is collected.
    pub async fn remove(&self, reference_or_id: &str) -> Result<()> {
        let tag = reference::parse(reference_or_id)
            .ok()
            .filter(|p| p.digest.is_none())
            .and_then(|p| {
                let registries = match &p.registry {
                    Some(r) => vec![r.clone()],
                    None => self.search_registries(),
                };
                registries
                    .into_iter()
                    .map(|r| p.qualify(&r).to_string())
                    .find(|t| self.meta.resolve_ref(t).ok().flatten().is_some())
            });
        let changed = match tag {
            Some(t) if is_full_id(reference_or_id).is_none() => self.meta.untag(&t)?,
            _ => match self.resolve(reference_or_id)? {
                Some(id) => self.meta.delete_image(&id)?,
                None => false,
            },
        };
        if changed {
            tracing::info!(image = %reference_or_id, "image removed");
            self.gc().await?;
        }
        Ok(())
    }

    /// Usage of the image filesystem.
    pub fn fs_usage(&self) -> Result<FsUsage> {
        self.fs_usage_impl()
    }

    /// Removes blobs and snapshots no image references.
    pub async fn gc(&self) -> Result<GcStats> {
        self.gc_impl().await
    }

    /// Prepares a fresh upper/work dir for container `container_id` on top of
    /// the image's snapshots.
    pub fn prepare_rootfs(&self, image_id: &str, container_id: &str) -> Result<RootfsMount> {
        self.snapshots.container_path(container_id)?;
        let chain_ids = self.hold(container_id, image_id)?;
        match self.snapshots.prepare(container_id, &chain_ids) {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = self.snapshots.remove(container_id);
                let _ = self.meta.release(container_id);
                Err(e)
            }
        }
    }

    /// Holds image `image_id`'s layers for `holder` (an image volume: GC
    /// keeps them while held, as it keeps a container's) and returns their
    /// directories, top-most first; empty for an image without layers.
    pub fn hold_image_layers(&self, holder: &str, image_id: &str) -> Result<Vec<PathBuf>> {
        let chain_ids = self.hold(holder, image_id)?;
        Ok(chain_ids
            .iter()
            .rev()
            .map(|c| self.snapshots.path(c))
            .collect())
    }

    /// Holds image `image_id`'s layers for `holder` (a container or an
    /// image volume: GC keeps them while held) and returns their chain ids,
    /// bottom-most first.
    fn hold(&self, holder: &str, image_id: &str) -> Result<Vec<String>> {
        let id = self
            .resolve(image_id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_owned()))?;
        let image = self
            .meta
            .image(&id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_owned()))?;
        let chain_ids = image.record.chain_ids.clone();
        self.meta.hold(
            holder,
            &ContainerHold {
                image_id: id,
                chain_ids: chain_ids.clone(),
            },
        )?;
        Ok(chain_ids)
    }

    /// Drops what [`ImageStore::hold_image_layers`] held. Idempotent.
    pub fn release_image_layers(&self, holder: &str) -> Result<()> {
        self.meta.release(holder)
    }

    /// Removes what [`ImageStore::prepare_rootfs`] made. Idempotent.
    pub fn remove_rootfs(&self, container_id: &str) -> Result<()> {
        self.meta.release(container_id)?;
        self.snapshots.remove(container_id)
    }

    /// Loads registries.conf as the next pull will (SIGHUP's check):
    /// its path, the number of `[[registry]]` tables and of unqualified
    /// search registries.
    pub fn check_registries_conf(&self) -> Result<(PathBuf, usize, usize)> {
        let conf = registries_conf::RegistriesConf::load(&self.config.registries_config)?;
        Ok((
            self.config.registries_config.clone(),
            conf.registries.len(),
            conf.unqualified_search_registries.len(),
        ))
    }

    fn search_registries(&self) -> Vec<String> {
        registries_conf::RegistriesConf::load(&self.config.registries_config)
            .map(|c| c.search_registries())
            .unwrap_or_else(|_| vec![reference::DOCKER_HUB.to_owned()])
    }

    /// The directory of one snapshot (an unpacked layer), by chain ID.
    pub fn snapshot_path(&self, chain_id: &str) -> PathBuf {
        self.snapshots.path(chain_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The CRI server spawns these futures on a multi-threaded runtime.
    #[tokio::test]
    async fn store_futures_are_send() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ImageConfig {
            registries_config: tmp.path().join("none.conf"),
            ..ImageConfig::default()
        };
        let store = ImageStore::open(&tmp.path().join("s"), &cfg).await.unwrap();
        assert_send(&store.pull("127.0.0.1:1/x:1", None));
        assert_send(&store.remove("x"));
        assert_send(&store.gc());
        fn sync_send<T: Send + Sync>() {}
        sync_send::<ImageStore>();
    }
}
