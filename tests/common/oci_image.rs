//! OCI images built from Debian's busybox-static (`/bin/busybox`) for the
//! tests to push: a busybox layer plus a small layer that makes each image
//! distinct, a config with the node's platform, an OCI manifest.

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::Write;

pub const BUSYBOX: &str = "/bin/busybox";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Some content with its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Self {
        Self {
            digest: sha256(&bytes),
            bytes,
            media_type: media_type.to_owned(),
        }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A built image, ready to push.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
    pub manifest_media_type: String,
}

impl TestImage {
    /// The image id berth must report: the digest of the config blob.
    pub fn id(&self) -> &str {
        &self.config.digest
    }
}

/// How to build a test image.
#[derive(Debug, Clone)]
pub struct ImageSpec<'a> {
    /// `config.User` of the image.
    pub user: &'a str,
    /// Written to /etc/berth-test-image in the top layer; makes ids distinct.
    pub marker: &'a str,
    /// Store layers uncompressed (`tar`) instead of gzip.
    pub uncompressed: bool,
}

impl Default for ImageSpec<'_> {
    fn default() -> Self {
        Self {
            user: "",
            marker: "default",
            uncompressed: false,
        }
    }
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn tar_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder.append_data(&mut header, path, data)?;
    Ok(())
}

fn tar_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    builder.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

fn tar_symlink(builder: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    builder.append_link(&mut header, path, target)?;
    Ok(())
}

/// The busybox layer as an uncompressed tar.
pub fn busybox_layer_tar() -> Result<Vec<u8>> {
    let busybox =
        std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX} (busybox-static)"))?;
    let mut b = tar::Builder::new(Vec::new());
    tar_dir(&mut b, "bin")?;
    tar_file(&mut b, "bin/busybox", 0o755, &busybox)?;
    for applet in ["sh", "ls", "cat", "echo", "sleep", "true", "id"] {
        tar_symlink(&mut b, &format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}

/// A small layer holding /etc/berth-test-image with `marker`.
pub fn marker_layer_tar(marker: &str) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    tar_dir(&mut b, "etc")?;
    tar_file(
        &mut b,
        "etc/berth-test-image",
        0o644,
        format!("{marker}\n").as_bytes(),
    )?;
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Builds a two-layer busybox image.
pub fn busybox_image(spec: &ImageSpec<'_>) -> Result<TestImage> {
    let tars = [busybox_layer_tar()?, marker_layer_tar(spec.marker)?];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let layers: Vec<Blob> = tars
        .into_iter()
        .map(|t| {
            Ok(if spec.uncompressed {
                Blob::new(t, LAYER_TAR)
            } else {
                Blob::new(gzip(&t)?, LAYER_GZIP)
            })
        })
        .collect::<Result<_>>()?;
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "User": spec.user,
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"berth.test/marker": spec.marker},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": "berth test: busybox"},
            {"created_by": format!("berth test: marker {}", spec.marker)},
        ],
    });
    let config = Blob::new(serde_json::to_vec(&config)?, CONFIG_MEDIA_TYPE);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config.digest,
            "size": config.bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.bytes.len(),
        })).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest)?, MANIFEST_MEDIA_TYPE);
    Ok(TestImage {
        layers,
        config,
        manifest,
        manifest_media_type: MANIFEST_MEDIA_TYPE.to_owned(),
    })
}
