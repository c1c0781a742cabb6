//! CheckpointContainer (Kubernetes' forensic container checkpointing,
//! KEP-2008): CRIU dumps the running container, which keeps running, and
//! berthd writes the archive kubelet's `/checkpoint` API hands out, laid out
//! as containerd's and CRI-O's (checkpointctl reads all three):
//!
//! ```text
//! checkpoint/        CRIU's images (inventory.img, pstree.img, ...)
//! config.dump        id, name, rootfsImage(Ref/Name), runtime, createdTime, checkpointedAt
//! spec.dump          the OCI runtime spec (the bundle's config.json)
//! status.dump        the CRI ContainerStatus fields checkpointctl shows
//! rootfs-diff.tar    the writable layer (overlay upper dir, whiteouts as they are)
//! container.log      the container's log so far
//! dump.log           CRIU's log
//! ```
//!
//! Restoring (CreateContainer whose image is such an archive, as
//! containerd's `CRImportCheckpoint` and CRI-O's `CRImportCheckpoint`
//! accept): the archive's config.dump names the original image and its
//! spec.dump the process (command, cwd, env) and the bind mounts; the new
//! container is made from that image, in the pod the request names, with
//! rootfs-diff.tar unpacked into its writable layer, and its task is
//! created from the archive's CRIU images (CreateTaskRequest.checkpoint):
//! the shim's runtime runs `criu restore` and the tree continues on
//! StartContainer. A damaged archive is InvalidArgument.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{PodError, PodManager, Result};
use crate::store::{ContainerRecord, ContainerState};

pub(crate) const CHECKPOINT_DIR: &str = "checkpoint";
pub(crate) const CONFIG_DUMP: &str = "config.dump";
pub(crate) const SPEC_DUMP: &str = "spec.dump";
pub(crate) const STATUS_DUMP: &str = "status.dump";
pub(crate) const ROOTFS_DIFF: &str = "rootfs-diff.tar";

/// RFC 3339 (UTC, nanoseconds) of `ns` since the epoch, as Go's
/// `time.Time` marshals (checkpointctl reads these).
pub(crate) fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// config.dump: checkpointctl's `ContainerConfig`.
pub(crate) fn config_dump(c: &ContainerRecord, checkpointed_at: i64) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "rootfsImage": c.image,
        "rootfsImageRef": c.image_ref,
        "rootfsImageName": c.image,
        "runtime": "berth",
        "createdTime": rfc3339(c.created_at),
        "checkpointedAt": rfc3339(checkpointed_at),
        "restoredAt": rfc3339(0),
        "restored": false,
    })
}

/// status.dump: the CRI ContainerStatus fields (as protojson names them).
pub(crate) fn status_dump(c: &ContainerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "metadata": {"name": c.name, "attempt": c.attempt},
        "state": "CONTAINER_RUNNING",
        "createdAt": c.created_at.to_string(),
        "startedAt": c.started_at.to_string(),
        "image": {"image": c.image},
        "imageRef": c.image_ref,
        "imageId": c.image_id,
        "labels": c.labels,
        "annotations": c.annotations,
        "logPath": c.log_path,
    })
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> PodError {
    let context = format!("{what} {}", p.display());
    move |e| PodError::io(context, e)
}

/// Appends every entry of `dir` under its relative name (no `./` prefix:
/// containerd's import filters names by prefix).
fn append_tree<W: Write>(b: &mut tar::Builder<W>, dir: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if e.file_type()?.is_dir() {
            b.append_dir_all(&name, e.path())?;
        } else {
            b.append_path_with_name(e.path(), &name)?;
        }
    }
    Ok(())
}

/// Tars the writable layer `upper` (not following symlinks; overlay
/// whiteouts, which are 0:0 character devices, stay as they are).
pub(crate) fn write_rootfs_diff(upper: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).map_err(io("create", out))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    if upper.is_dir() {
        append_tree(&mut b, upper).map_err(io("tar", upper))?;
    }
    b.into_inner()
        .and_then(|mut f| f.flush())
        .map_err(io("write", out))
}

/// Tars the checkpoint directory `dir` into the archive at `location`.
pub(crate) fn write_archive(dir: &Path, location: &Path) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.berth-tmp", location.display()));
    let f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    let result = append_tree(&mut b, dir)
        .and_then(|()| b.into_inner())
        .and_then(|f| f.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(PodError::io(format!("write {}", location.display()), e));
    }
    std::fs::rename(&tmp, location).map_err(io("rename to", location))
}

/// Whether `image` names a checkpoint archive (a file holding config.dump
/// and spec.dump), as containerd's CRImportCheckpoint accepts one.
pub(crate) fn is_checkpoint_archive(image: &str) -> bool {
    let p = Path::new(image);
    if !p.is_absolute() || !p.is_file() {
        return false;
    }
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    let mut a = tar::Archive::new(f);
    let Ok(entries) = a.entries() else {
        return false;
    };
    let (mut config, mut spec) = (false, false);
    for e in entries.flatten() {
        let Ok(path) = e.path() else { continue };
        let name = path.to_string_lossy().into_owned();
        config |= name == CONFIG_DUMP;
        spec |= name == SPEC_DUMP;
        if config && spec {
            return true;
        }
    }
    false
}

/// What CreateContainer takes from a checkpoint archive.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointSource {
    pub archive: PathBuf,
    /// The original container's image (config.dump `rootfsImageName`).
    pub image: String,
    /// Its digest reference (`rootfsImageRef`), tried when the name is unknown.
    pub image_ref: String,
    /// The original OCI spec (spec.dump).
    pub spec: oci_spec::runtime::Spec,
}

fn bad_archive(archive: &Path, why: impl std::fmt::Display) -> PodError {
    PodError::InvalidArgument(format!("checkpoint archive {}: {why}", archive.display()))
}

/// Reads config.dump and spec.dump from the archive at `archive`.
pub(crate) fn read_checkpoint_source(archive: &Path) -> Result<CheckpointSource> {
    let f = std::fs::File::open(archive).map_err(|e| bad_archive(archive, e))?;
    let mut a = tar::Archive::new(f);
    let (mut config, mut spec) = (None, None);
    for e in a.entries().map_err(|e| bad_archive(archive, e))? {
        let mut e = e.map_err(|e| bad_archive(archive, e))?;
        let name = e
            .path()
            .map_err(|e| bad_archive(archive, e))?
            .to_string_lossy()
            .into_owned();
        let slot = match name.as_str() {
            CONFIG_DUMP => &mut config,
            SPEC_DUMP => &mut spec,
            _ => continue,
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).map_err(|e| bad_archive(archive, e))?;
        *slot = Some(bytes);
    }
    let config: serde_json::Value =
        serde_json::from_slice(&config.ok_or_else(|| bad_archive(archive, "no config.dump"))?)
            .map_err(|e| bad_archive(archive, format!("config.dump: {e}")))?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&spec.ok_or_else(|| bad_archive(archive, "no spec.dump"))?)
            .map_err(|e| bad_archive(archive, format!("spec.dump: {e}")))?;
    let field = |k: &str| config[k].as_str().unwrap_or_default().to_owned();
    let image = field("rootfsImageName");
    let image_ref = field("rootfsImageRef");
    if image.is_empty() && image_ref.is_empty() {
        return Err(bad_archive(archive, "config.dump names no rootfs image"));
    }
    Ok(CheckpointSource {
        archive: archive.to_path_buf(),
        image,
        image_ref,
        spec,
    })
}

/// Container paths berth fills from the pod (not restored from the
/// checkpoint's binds: the new pod's own are bound).
const POD_PROVIDED: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/shm",
    "/dev/termination-log",
];

/// The CRI config of the restored container: the request's (name,
/// labels, annotations, log path, security, resources, mounts when given)
/// with the checkpointed process (command, cwd, env) and, when the request
/// has none, the checkpoint's bind mounts, as containerd's
/// CRImportCheckpoint fills the config from spec.dump.
pub(crate) fn restored_config(
    request: &k8s_cri::v1::ContainerConfig,
    src: &CheckpointSource,
) -> k8s_cri::v1::ContainerConfig {
    use k8s_cri::v1 as cri;
    let mut c = request.clone();
    c.image = Some(cri::ImageSpec {
        image: src.image.clone(),
        ..Default::default()
    });
    if let Some(p) = src.spec.process() {
        c.command = p.args().clone().unwrap_or_default();
        c.args = Vec::new();
        c.working_dir = p.cwd().display().to_string();
        c.envs = p
            .env()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| cri::KeyValue {
                key: k.to_owned(),
                value: v.to_owned(),
            })
            .collect();
    }
    if c.mounts.is_empty() {
        for m in src.spec.mounts().as_deref().unwrap_or(&[]) {
            let opts = m.options().clone().unwrap_or_default();
            let bind = m.typ().as_deref() == Some("bind")
                || opts.iter().any(|o| o == "bind" || o == "rbind");
            let dest = m.destination().display().to_string();
            let (true, Some(source)) = (bind, m.source()) else {
                continue;
            };
            if POD_PROVIDED.contains(&dest.as_str()) || dest.starts_with("/run/secrets") {
                continue;
            }
            c.mounts.push(cri::Mount {
                container_path: dest,
                host_path: source.display().to_string(),
                readonly: opts.iter().any(|o| o == "ro"),
                ..Default::default()
            });
        }
    }
    c
}

/// Unpacks the archive's CRIU images (`checkpoint/`) and rootfs-diff.tar
/// into `dir`; returns the images directory.
pub(crate) fn extract_for_restore(archive: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let f = std::fs::File::open(archive).map_err(|e| bad_archive(archive, e))?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    for e in a.entries().map_err(|e| bad_archive(archive, e))? {
        let mut e = e.map_err(|e| bad_archive(archive, e))?;
        let name = e
            .path()
            .map_err(|e| bad_archive(archive, e))?
            .to_string_lossy()
            .into_owned();
        let wanted = name == ROOTFS_DIFF || name.starts_with(&format!("{CHECKPOINT_DIR}/"));
        if !wanted || name.split('/').any(|c| c == "..") {
            continue;
        }
        // `unpack_in` refuses paths leaving `dir`.
        e.unpack_in(dir).map_err(|e| bad_archive(archive, e))?;
    }
    let images = dir.join(CHECKPOINT_DIR);
    if !images.join("inventory.img").is_file() {
        return Err(bad_archive(
            archive,
            "no CRIU images (checkpoint/inventory.img)",
        ));
    }
    Ok(images)
}

/// Applies the checkpoint's rootfs-diff.tar (from `dir`) to the new
/// container's writable layer, whiteouts included, with the image
/// unpacker's path checks.
pub(crate) fn apply_rootfs_diff(dir: &Path, upper: &Path) -> Result<()> {
    let diff = dir.join(ROOTFS_DIFF);
    let Ok(f) = std::fs::File::open(&diff) else {
        return Ok(()); // a container without a writable layer diff
    };
    crate::image::unpack::unpack(f, upper, ROOTFS_DIFF, u64::MAX)?;
    let _ = std::fs::remove_file(&diff);
    Ok(())
}

impl PodManager {
    /// CheckpointContainer: `location` receives the archive.
    pub async fn checkpoint_container(&self, id: &str, location: &str) -> Result<()> {
        let c = self
            .resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        let _guard = self.locks.exclusive(&c.id).await;
        let c = self
            .store
            .container(&c.id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        if c.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}: only running containers can be checkpointed",
                c.id, c.state
            )));
        }
        let location = Path::new(location);
        if !location.is_absolute() {
            return Err(PodError::InvalidArgument(format!(
                "checkpoint location {:?} must be an absolute path",
                location
            )));
        }
        if let Err(why) = tokio::task::spawn_blocking(crate::runtime::checkpoint::criu_check)
            .await
            .map_err(|e| PodError::Shim(e.to_string()))?
        {
            return Err(PodError::FailedPrecondition(format!(
                "CRIU cannot checkpoint on this host (`criu check`: {why}); checkpoints need Debian's criu package on a kernel it supports"
            )));
        }
        let work = c.bundle.join("checkpoint-work");
        let _ = super::remove_dir_all(&work);
        let result = self.checkpoint_into(&c, &work, location).await;
        let _ = super::remove_dir_all(&work);
        let _ = super::remove_dir_all(&PathBuf::from(format!(
            "{}.work",
            work.join(CHECKPOINT_DIR).display()
        )));
        result
    }

    async fn checkpoint_into(
        &self,
        c: &ContainerRecord,
        work: &Path,
        location: &Path,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(work).map_err(io("create", work))?;
        let images = work.join(CHECKPOINT_DIR);
        let shim = self.shim_of(&c.pod_id).await?;
        shim.checkpoint(&c.id, &images.display().to_string())
            .await?;
        let dump_ms = started.elapsed().as_secs_f64() * 1e3;
        let criu_log = PathBuf::from(format!("{}.work/dump.log", images.display()));
        let at = super::now_ns();
        let id = c.id.clone();
        let c = c.clone();
        let work = work.to_path_buf();
        let archive = location.display().to_string();
        let location = location.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let _ = std::fs::copy(&criu_log, work.join("dump.log"));
            let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
            let put = |name: &str, bytes: &[u8]| {
                let p = work.join(name);
                std::fs::write(&p, bytes).map_err(io("write", &p))
            };
            put(CONFIG_DUMP, &json(config_dump(&c, at)))?;
            put(STATUS_DUMP, &json(status_dump(&c)))?;
            let spec = c.bundle.join("config.json");
            std::fs::copy(&spec, work.join(SPEC_DUMP)).map_err(io("copy", &spec))?;
            if let Some(upper) = &c.upper_dir {
                write_rootfs_diff(upper, &work.join(ROOTFS_DIFF))?;
            }
            if !c.log_path.is_empty() {
                let _ = std::fs::copy(&c.log_path, work.join("container.log"));
            }
            write_archive(&work, &location)
        })
        .await
        .map_err(|e| PodError::Shim(e.to_string()))??;
        tracing::info!(container = %id, archive = %archive, dump_ms, total_ms = started.elapsed().as_secs_f64() * 1e3, "container checkpointed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_go_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn the_archive_has_the_layout_checkpointctl_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        std::fs::create_dir_all(dir.join(CHECKPOINT_DIR)).unwrap();
        std::fs::write(dir.join(CHECKPOINT_DIR).join("inventory.img"), b"x").unwrap();
        let c = ContainerRecord {
            id: "c1".into(),
            name: "web".into(),
            image: "registry/app:1".into(),
            image_ref: "registry/app@sha256:ab".into(),
            created_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        std::fs::write(
            dir.join(CONFIG_DUMP),
            serde_json::to_vec(&config_dump(&c, 5)).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(SPEC_DUMP), b"{}").unwrap();
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/new"), b"n").unwrap();
        write_rootfs_diff(&upper, &dir.join(ROOTFS_DIFF)).unwrap();
        let out = tmp.path().join("ck.tar");
        write_archive(&dir, &out).unwrap();
        assert!(is_checkpoint_archive(out.to_str().unwrap()));
        assert!(!is_checkpoint_archive("registry/app:1"));
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&out).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for want in [
            "checkpoint/inventory.img",
            CONFIG_DUMP,
            SPEC_DUMP,
            ROOTFS_DIFF,
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let diff: Vec<String> =
            tar::Archive::new(std::fs::File::open(dir.join(ROOTFS_DIFF)).unwrap())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
        assert!(diff.iter().any(|n| n.ends_with("etc/new")), "{diff:?}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(CONFIG_DUMP)).unwrap()).unwrap();
        assert_eq!(cfg["rootfsImageRef"], "registry/app@sha256:ab");
        assert_eq!(cfg["createdTime"], "2023-11-14T22:13:20.000000000Z");
    }
}
