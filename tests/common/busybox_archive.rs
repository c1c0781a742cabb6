#![allow(dead_code)]
//! An OCI image archive (oci-layout + index.json + blobs, as a tar) built
//! from Debian's busybox-static, for `ctr images import`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
/// The name the archive gives its image.
pub const IMAGE_REF: &str = "docker.io/berth-test/busybox:shim";

/// Applets the tests use, linked to /bin/busybox.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "true", "false", "sleep", "id", "hostname", "pwd", "env", "touch", "ls",
    "head", "tail", "dd", "yes", "tr", "wc", "stty", "printf", "ps", "mkdir", "rm", "grep", "sed",
    "awk", "seq", "tty", "kill", "uname",
];

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn append(tar: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

fn append_dir(tar: &mut tar::Builder<impl Write>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// The single layer: /bin/busybox, its applet links, and the usual empty dirs.
fn layer() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "home"] {
        append_dir(&mut tar, d)?;
    }
    append(&mut tar, "bin/busybox", &busybox, 0o755)?;
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Symlink);
        tar.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    append(
        &mut tar,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n",
        0o644,
    )?;
    append(
        &mut tar,
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    Ok(tar.into_inner()?)
}

/// Writes the archive to `path`.
pub fn write_archive(path: &Path) -> Result<()> {
    let layer = layer()?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer.len(),
        }],
    }))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": IMAGE_REF,
                "org.opencontainers.image.ref.name": "shim",
            },
        }],
    }))?;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut tar = tar::Builder::new(file);
    append(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append(&mut tar, "index.json", &index, 0o644)?;
    append_dir(&mut tar, "blobs")?;
    append_dir(&mut tar, "blobs/sha256")?;
    for (d, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = d.trim_start_matches("sha256:");
        append(&mut tar, &format!("blobs/sha256/{hex}"), bytes, 0o644)?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// The same busybox tree unpacked into `dir` (for specs with their own root).
pub fn write_rootfs(dir: &Path) -> Result<()> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "home"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).with_context(|| format!("copy {BUSYBOX}"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a))?;
    }
    Ok(())
}
