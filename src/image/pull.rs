//! Pulling an image: resolve the reference through registries.conf, fetch
//! and verify manifest and config, run the layer pipelines concurrently,
//! move verified content into place, then commit the metadata.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::content::{io_err, sha256_digest, verify};
use super::layer::{LayerJob, UnpackedLayer};
use super::manifest::{self, Descriptor, Parsed};
use super::metadata::{SnapshotInfo, StoredImage};
use super::reference::{self, ImageRef};
use super::registries_conf::{Endpoint, RegistriesConf};
use super::registry::Session;
use super::{ImageError, ImageRecord, ImageStore, RegistryAuth, Result};

/// Blobs and snapshots that pulls in progress rely on (GC leaves them alone).
#[derive(Debug, Default)]
pub struct InFlight {
    pub blobs: Vec<String>,
    pub snapshots: Vec<String>,
}

/// Removes a pull's entries from the in-flight lists when dropped.
struct InFlightGuard {
    store: Arc<tokio::sync::Mutex<InFlight>>,
    blobs: Vec<String>,
    snapshots: Vec<String>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let store = self.store.clone();
        let blobs = std::mem::take(&mut self.blobs);
        let snapshots = std::mem::take(&mut self.snapshots);
        let release = move |f: &mut InFlight| {
            for b in &blobs {
                if let Some(i) = f.blobs.iter().position(|x| x == b) {
                    f.blobs.swap_remove(i);
                }
            }
            for s in &snapshots {
                if let Some(i) = f.snapshots.iter().position(|x| x == s) {
                    f.snapshots.swap_remove(i);
                }
            }
        };
        let locked = store.try_lock().ok().map(|mut f| release(&mut f)).is_some();
        if !locked {
            {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move { release(&mut *store.lock().await) });
                }
            }
        }
    }
}

impl ImageStore {
    pub(super) async fn pull_impl(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageRecord> {
        let parsed = reference::parse(reference)?;
        let conf = RegistriesConf::load(&self.config.registries_config)?;
        let candidates: Vec<ImageRef> = match &parsed.registry {
            Some(r) => vec![parsed.qualify(r)],
            None => conf
                .search_registries()
                .iter()
                .map(|r| parsed.qualify(r))
                .collect(),
        };
        let mut primary_err: Option<ImageError> = None;
        let mut mirror_err: Option<ImageError> = None;
        for image in &candidates {
            let resolution = conf.resolve(image);
            if resolution.blocked {
                tracing::warn!(image = %image, "registry blocked by registries.conf");
                primary_err = Some(ImageError::Blocked(image.registry.clone()));
                continue;
            }
            for endpoint in &resolution.endpoints {
                match self.pull_from(image, endpoint, auth).await {
                    Ok(record) => return Ok(record),
                    Err(e) => {
                        tracing::warn!(image = %image, endpoint = %endpoint.host, mirror = endpoint.mirror, error = %e, "pull attempt failed");
                        if endpoint.mirror {
                            mirror_err = Some(e);
                        } else {
                            primary_err = Some(e);
                        }
                    }
                }
            }
        }
        Err(primary_err
            .or(mirror_err)
            .unwrap_or_else(|| ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason: "no registry to pull from".into(),
            }))
    }

    async fn pull_from(
        &self,
        image: &ImageRef,
        endpoint: &Endpoint,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageRecord> {
        let started = Instant::now();
        let session = Arc::new(self.client.session(endpoint, auth));
        let mut blobs: Vec<(String, u64)> = Vec::new();

        // Manifest (through an index if need be), every byte verified.
        let top = session.manifest(image.object()).await?;
        let top_digest = match &image.digest {
            Some(d) => {
                verify(&top.bytes, d, None)?;
                d.clone()
            }
            None => {
                let d = sha256_digest(&top.bytes);
                if let Some(h) = &top.header_digest
                    && *h != d
                {
                    return Err(ImageError::Verification {
                        digest: h.clone(),
                        reason: format!("manifest content has digest {d}"),
                    });
                }
                d
            }
        };
        let mut small: Vec<(String, Bytes)> = vec![(top_digest.clone(), top.bytes.clone())];
        let (config_desc, layers) = match manifest::parse(&top.bytes, &top.media_type)
            .map_err(|e| with_registry(e, &session))?
        {
            Parsed::Image { config, layers } => (config, layers),
            Parsed::Index(list) => {
                let chosen =
                    manifest::select_platform(&list).ok_or_else(|| ImageError::Registry {
                        registry: session.registry.clone(),
                        message: format!(
                            "{image}: no manifest for platform {}/{}",
                            manifest::host_platform().0,
                            manifest::host_platform().1
                        ),
                    })?;
                let chosen_digest = chosen.digest().to_string();
                let m = session.manifest(&chosen_digest).await?;
                verify(&m.bytes, &chosen_digest, Some(chosen.size()))?;
                small.push((chosen_digest, m.bytes.clone()));
                match manifest::parse(&m.bytes, &m.media_type)
                    .map_err(|e| with_registry(e, &session))?
                {
                    Parsed::Image { config, layers } => (config, layers),
                    Parsed::Index(_) => {
                        return Err(ImageError::Registry {
                            registry: session.registry.clone(),
                            message: "nested image index".into(),
                        });
                    }
                }
            }
        };
        let config_digest = config_desc.digest().to_string();
        let config_bytes = session.small_blob(&config_digest).await?;
        verify(&config_bytes, &config_digest, Some(config_desc.size()))?;
        let config: manifest::ImageConfigBlob =
            serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Verification {
                digest: config_digest.clone(),
                reason: format!("image config does not parse: {e}"),
            })?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(ImageError::Verification {
                digest: config_digest.clone(),
                reason: format!(
                    "config lists {} diff IDs for {} layers",
                    config.rootfs.diff_ids.len(),
                    layers.len()
                ),
            });
        }
        for d in &config.rootfs.diff_ids {
            reference::validate_digest(d).map_err(|reason| ImageError::Verification {
                digest: config_digest.clone(),
                reason,
            })?;
        }
        small.push((config_digest.clone(), config_bytes.clone()));
        let chain_ids = manifest::chain_ids(&config.rootfs.diff_ids);

        // Hold everything this image needs against a concurrent GC.
        let all_blobs: Vec<String> = small
            .iter()
            .map(|(d, _)| d.clone())
            .chain(layers.iter().map(|l| l.digest().to_string()))
            .collect();
        let _guard = {
            let mut f = self.inflight.lock().await;
            f.blobs.extend(all_blobs.iter().cloned());
            f.snapshots.extend(chain_ids.iter().cloned());
            InFlightGuard {
                store: self.inflight.clone(),
                blobs: all_blobs.clone(),
                snapshots: chain_ids.clone(),
            }
        };

        // Layers: concurrently, each unpacked while it downloads.
        let progress = Arc::new(Progress::default());
        let total: u64 = layers.iter().map(Descriptor::size).sum();
        let ticker = {
            let p = progress.clone();
            let img = image.to_string();
            let n = layers.len();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    tracing::info!(image = %img, bytes = p.bytes.load(Ordering::Relaxed), total_bytes = total, layers_done = p.layers.load(Ordering::Relaxed), layers = n, "pull progress");
                }
            })
        };
        let _ticker = AbortOnDrop(ticker);
        // Owned inputs, so that the pull future stays `Send` for any caller.
        let work: Vec<(Descriptor, String, String)> = layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .zip(chain_ids.iter().cloned())
            .map(|((l, d), c)| (l, d, c))
            .collect();
        let jobs = work.into_iter().map(|(layer, diff_id, chain_id)| {
            let session = session.clone();
            let progress = progress.clone();
            async move {
                self.fetch_layer(&session, &layer, &diff_id, &chain_id, &progress)
                    .await
            }
        });
        let mut results = futures::stream::iter(jobs)
            .buffer_unordered(self.config.max_concurrent_downloads.max(1));
        let mut snapshots: Vec<(String, SnapshotInfo)> = Vec::new();
        let mut implicit: Vec<(String, Vec<std::path::PathBuf>)> = Vec::new();
        let mut failure = None;
        while let Some(r) = results.next().await {
            match r {
                Ok(Some((chain, info, blob_size, dirs))) => {
                    if !dirs.is_empty() {
                        implicit.push((chain.clone(), dirs));
                    }
                    blobs.push((info.layer_digest.clone(), blob_size));
                    snapshots.push((chain, info));
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(results);
        if let Some(e) = failure {
            self.remove_uncommitted(&chain_ids, &all_blobs).await;
            return Err(e);
        }

        // Now that every layer is in place: parents a tar left out take the
        // attributes of the lower layers' directories.
        for (chain, dirs) in &implicit {
            let i = chain_ids.iter().position(|c| c == chain).unwrap_or(0);
            let lowers: Vec<std::path::PathBuf> = chain_ids[..i]
                .iter()
                .rev()
                .map(|c| self.snapshots.path(c))
                .collect();
            super::unpack::inherit_dir_attrs(&self.snapshots.path(chain), dirs, &lowers);
        }
        for (d, b) in &small {
            self.content.put(d, b)?;
            blobs.push((d.clone(), b.len() as u64));
        }
        // Everything the metadata will name is on disk; make it durable, then commit.
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let fd = std::fs::File::open(root)?;
            rustix::fs::syncfs(&fd)?;
            Ok(())
        })
        .await
        .map_err(|e| ImageError::Io {
            context: "sync".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io_err("syncfs image store"))?;

        let size = small
            .iter()
            .skip(1)
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>()
            + top.bytes.len() as u64
            + total;
        let record = ImageRecord {
            id: config_digest.clone(),
            repo_tags: image.tag.iter().map(|_| image.to_string()).collect(),
            repo_digests: vec![image.with_digest(&top_digest)],
            size,
            config_json: config_bytes.to_vec(),
            chain_ids: chain_ids.clone(),
            pinned: false,
        };
        let meta = self.meta.clone();
        let stored = StoredImage {
            record,
            blobs: all_blobs,
        };
        let record =
            tokio::task::spawn_blocking(move || meta.commit_pull(stored, &blobs, &snapshots))
                .await
                .map_err(|e| ImageError::Database(e.to_string()))??;
        tracing::info!(
            image = %image,
            id = %record.id,
            layers = layers.len(),
            bytes = progress.bytes.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(record)
    }

    /// Downloads and unpacks one layer unless its snapshot exists. Returns
    /// what to record for a new snapshot.
    async fn fetch_layer(
        &self,
        session: &Session,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        progress: &Progress,
    ) -> Result<Option<(String, SnapshotInfo, u64, Vec<std::path::PathBuf>)>> {
        let lock = {
            let mut locks = self.layer_locks.lock().await;
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(chain_id.to_owned()).or_default().clone()
        };
        let _held = lock.lock().await;
        if self.snapshots.exists(chain_id) {
            progress.layers.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        // A decompression bomb stops where the disk would be full, not
        // only at the configured bound (64 GiB by default).
        let free = free_bytes(&self.root);
        let digest = layer.digest().to_string();
        let job = LayerJob {
            digest: digest.clone(),
            size: layer.size(),
            media_type: layer.media_type().to_string(),
            diff_id: diff_id.to_owned(),
            max_uncompressed: self.config.max_layer_bytes.min(free),
            limited_by_free_space: free < self.config.max_layer_bytes,
        };
        let blob = self.content.temp_file()?;
        let dir = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("create temp snapshot"))?;
        // The layer root is a directory like any other (tempdir makes it 0700).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(io_err("chmod temp snapshot"))?;
        // A short queue: hyper hands over chunks of up to a few hundred KB,
        // and a long queue per layer is what dominates peak memory.
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let worker = {
            let job = job.clone();
            let path = dir.path().to_owned();
            tokio::task::spawn_blocking(move || super::layer::run(&job, rx, blob, &path))
        };
        let downloaded = async {
            let mut stream = session.blob(&digest).await?;
            while let Some(chunk) = session.next_chunk(&mut stream, &digest).await? {
                progress
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                crate::metrics::global().add_pull_bytes(chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break; // the worker stopped; its error says why
                }
            }
            Ok::<(), ImageError>(())
        }
        .await;
        drop(tx);
        let worked = worker.await.map_err(|e| ImageError::Io {
            context: format!("layer {digest}"),
            source: std::io::Error::other(e),
        });
        downloaded?;
        let UnpackedLayer { blob, stats } = worked??;
        self.content.commit(blob, &digest)?;
        let target = self.snapshots.path(chain_id);
        let tmp_path = dir.keep();
        if let Err(e) = std::fs::rename(&tmp_path, &target) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            if !target.is_dir() {
                return Err(ImageError::Io {
                    context: format!("move snapshot {chain_id} into place"),
                    source: e,
                });
            }
        }
        let done = progress.layers.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(layer = %digest, bytes = layer.size(), files = stats.entries, layers_done = done, downloaded = progress.bytes.load(Ordering::Relaxed), "layer done");
        Ok(Some((
            chain_id.to_owned(),
            SnapshotInfo {
                diff_id: diff_id.to_owned(),
                layer_digest: digest,
                unpacked_bytes: stats.bytes,
            },
            layer.size(),
            stats.implicit_dirs,
        )))
    }

    /// After a failed pull: remove the snapshots and blobs it moved into
    /// place that no committed image (or other pull) uses.
    async fn remove_uncommitted(&self, chain_ids: &[String], blobs: &[String]) {
        let inflight = self.inflight.lock().await;
        let known_snaps: HashSet<String> = match self.meta.snapshots() {
            Ok(s) => s.into_iter().map(|(c, _)| c).collect(),
            Err(_) => return,
        };
        let known_blobs: HashSet<String> = match self.meta.blobs() {
            Ok(b) => b.into_iter().map(|(d, _)| d).collect(),
            Err(_) => return,
        };
        // Our own guard is still held, so count others' holds: entries that
        // appear more than once in the in-flight lists.
        let count = |list: &[String], x: &str| list.iter().filter(|y| *y == x).count();
        for c in chain_ids {
            if !known_snaps.contains(c) && count(&inflight.snapshots, c) <= 1 {
                let _ = std::fs::remove_dir_all(self.snapshots.path(c));
            }
        }
        for b in blobs {
            if !known_blobs.contains(b) && count(&inflight.blobs, b) <= 1 {
                let _ = std::fs::remove_file(self.content.path(b));
            }
        }
    }
}

fn with_registry(e: ImageError, session: &Session) -> ImageError {
    match e {
        ImageError::Registry { registry, message } if registry.is_empty() => ImageError::Registry {
            registry: session.registry.clone(),
            message,
        },
        other => other,
    }
}

#[derive(Debug, Default)]
struct Progress {
    bytes: AtomicU64,
    layers: AtomicU64,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`
/// (u64::MAX when that cannot be read).
fn free_bytes(dir: &std::path::Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
        Err(_) => u64::MAX,
    }
}
