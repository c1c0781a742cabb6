//! OCI / Docker images built in tests from busybox-static: layers (gzip,
//! zstd or plain tar, with whiteouts and opaque dirs), configs, manifests,
//! multi-platform indexes, and pushing them to a [`super::registry::Registry`].

#![allow(dead_code)]

use std::io::Write;

use anyhow::Result;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::registry::Pusher;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// One layer, built and compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
}

/// Builds a layer tar.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    /// `.wh.<name>` next to `path`'s file name: deletes `path` from lower layers.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }

    /// `<dir>/.wh..wh..opq`: hides everything lower layers have in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// bin/busybox (from /bin/busybox) with sh, ls, cat, echo, sleep links.
    pub fn busybox(self) -> Self {
        let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let mut s = self.dir("bin").file("bin/busybox", &bb, 0o755);
        for tool in ["sh", "ls", "cat", "echo", "sleep", "true", "test"] {
            s = s.symlink(&format!("bin/{tool}"), "busybox");
        }
        s.dir("etc")
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
            .file("etc/group", b"root:x:0:\n", 0o644)
            .dir("tmp")
    }

    pub fn finish(self, compression: Compression) -> Layer {
        let tar = self.tar.into_inner().unwrap();
        let diff_id = sha256(&tar);
        let (blob, media_type) = match compression {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                (
                    gz.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        Layer {
            digest: sha256(&blob),
            blob,
            diff_id,
            media_type: media_type.to_owned(),
        }
    }
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// A built image: layers, config, manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub architecture: String,
}

/// The running machine's GOARCH.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn image(layers: Vec<Layer>, format: Format, architecture: &str) -> Image {
    image_with_config(
        layers,
        format,
        architecture,
        json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
    )
}

pub fn image_with_config(
    layers: Vec<Layer>,
    format: Format,
    architecture: &str,
    config: serde_json::Value,
) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": [],
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let (mt, config_mt) = match format {
        Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
        Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    };
    let layer_mt = |l: &Layer| match format {
        Format::Oci => l.media_type.clone(),
        Format::Docker if l.media_type.ends_with("gzip") => {
            "application/vnd.docker.image.rootfs.diff.tar.gzip".to_owned()
        }
        Format::Docker => l.media_type.clone(),
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": layer_mt(l), "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    Image {
        manifest_digest: sha256(&manifest),
        manifest,
        manifest_media_type: mt.to_owned(),
        config_digest,
        config,
        layers,
        architecture: architecture.to_owned(),
    }
}

/// An OCI index over `images` (their architectures as platforms).
pub fn index(images: &[&Image]) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": images.iter().map(|i| json!({
            "mediaType": i.manifest_media_type,
            "digest": i.manifest_digest,
            "size": i.manifest.len(),
            "platform": {"architecture": i.architecture, "os": "linux"},
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = sha256(&bytes);
    (bytes, digest)
}

/// Pushes layers, config and manifest; tags the manifest `tag` (or pushes it
/// by digest only when `tag` is None).
pub async fn push(pusher: &Pusher, repo: &str, tag: Option<&str>, image: &Image) -> Result<()> {
    for l in &image.layers {
        pusher.push_blob(repo, &l.digest, &l.blob).await?;
    }
    pusher
        .push_blob(repo, &image.config_digest, &image.config)
        .await?;
    pusher
        .push_manifest(
            repo,
            tag.unwrap_or(&image.manifest_digest),
            &image.manifest_media_type,
            &image.manifest,
        )
        .await
}

/// Pushes every image by digest and an index over them as `tag`.
pub async fn push_index(
    pusher: &Pusher,
    repo: &str,
    tag: &str,
    images: &[&Image],
) -> Result<String> {
    for i in images {
        push(pusher, repo, None, i).await?;
    }
    let (bytes, digest) = index(images);
    pusher.push_manifest(repo, tag, OCI_INDEX, &bytes).await?;
    Ok(digest)
}
