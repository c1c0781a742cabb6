//! Image volumes (`Mount.image`, KEP-4639): an image kubelet pulled is
//! mounted read-only at a container path.
//!
//! As containerd 2.1 (`internal/cri/server/container_image_mount.go`): the
//! image is mounted once per pod at `<pod dir>/image-volumes/<image id>`
//! (a read-only overlay of its layers; a read-only bind of the one layer
//! of a single-layer image, which overlayfs cannot take without an upper
//! dir), and each container's mount becomes a read-only bind of that
//! directory. The layers are held in the image store while mounted, so
//! RemoveImage and GC keep them. berth counts the containers that use a
//! volume: the last one removed unmounts it; RemovePodSandbox unmounts
//! whatever is left (also after a crash).

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use nix::mount::{MsFlags, mount};

use super::namespaces::unmount_dir;
use super::{PodError, PodManager, Result};
use crate::runtime::idmap::OverlayLayers;
use crate::store::{ContainerRecord, PodRecord};

const DIR: &str = "image-volumes";

/// The directory of the pod's image volumes.
pub(crate) fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join(DIR)
}

/// The image store's hold of one pod's volume of one image.
fn holder(pod_id: &str, name: &str) -> String {
    format!("image-volume:{pod_id}:{name}")
}

/// Whether something is mounted at exactly `path` (mountinfo's 5th field;
/// octal escapes as the kernel writes them).
fn is_mount_point(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

fn mount_err(target: &Path, what: &str, e: impl std::fmt::Display) -> PodError {
    PodError::ImageVolume(format!("{what} at {}: {e}", target.display()))
}

/// Mounts `layers` (top-most first) read-only at `target`.
fn mount_layers(layers: &[PathBuf], target: &Path, empty: &Path) -> Result<()> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if layers.len() >= 2 {
        let l = OverlayLayers {
            lower: layers.to_vec(),
            ..Default::default()
        };
        return crate::runtime::overlay::mount_overlay(&l, ro, target)
            .map_err(|e| mount_err(target, "overlay of the image's layers", e));
    }
    // One layer (or none: an empty directory): a read-only bind.
    let source = match layers.first() {
        Some(l) => l.clone(),
        None => {
            std::fs::create_dir_all(empty)
                .map_err(|e| PodError::io(format!("create {}", empty.display()), e))?;
            empty.to_path_buf()
        }
    };
    mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| mount_err(target, "bind of the image's layer", e))?;
    if let Err(e) = mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
        None::<&str>,
    ) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(mount_err(target, "read-only remount", e));
    }
    Ok(())
}

impl PodManager {
    /// Resolves the image mounts of `config`: each image is mounted for the
    /// pod (once) and the mount becomes a read-only bind of it. Returns the
    /// config to build the spec from; `record.image_volumes` names the
    /// volumes used (saved before any is mounted, so a failed create and
    /// RemovePodSandbox find them).
    pub(crate) async fn resolve_image_volumes(
        &self,
        pod: &PodRecord,
        config: &cri::ContainerConfig,
        record: &mut ContainerRecord,
    ) -> Result<Option<cri::ContainerConfig>> {
        let is_image = |m: &cri::Mount| m.image.as_ref().is_some_and(|i| !i.image.is_empty());
        if !config.mounts.iter().any(is_image) {
            return Ok(None);
        }
        let mut out = config.clone();
        for m in out.mounts.iter_mut().filter(|m| is_image(m)) {
            let reference = m
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            if !m.host_path.is_empty() {
                return Err(PodError::InvalidArgument(format!(
                    "image volume at {}: the host path must be empty when an image is mounted",
                    m.container_path
                )));
            }
            let image = self.images.get(&reference)?.ok_or_else(|| {
                PodError::NotFound(format!(
                    "image volume at {}: image {reference:?} (kubelet pulls it first)",
                    m.container_path
                ))
            })?;
            let name = image.id.trim_start_matches("sha256:").to_owned();
            let target = volumes_dir(&pod.dir).join(&name);
            if !record.image_volumes.contains(&name) {
                record.image_volumes.push(name.clone());
                self.store.put_container(record)?;
            }
            let _serial = self
                .locks
                .exclusive(&format!("image-volume/{}/{name}", pod.id))
                .await;
            if !is_mount_point(&target) {
                let layers = self
                    .images
                    .hold_image_layers(&holder(&pod.id, &name), &image.id)?;
                std::fs::create_dir_all(&target)
                    .map_err(|e| PodError::io(format!("create {}", target.display()), e))?;
                let empty = volumes_dir(&pod.dir).join(format!(".empty-{name}"));
                let t = target.clone();
                tokio::task::spawn_blocking(move || mount_layers(&layers, &t, &empty))
                    .await
                    .map_err(|e| PodError::ImageVolume(e.to_string()))??;
                tracing::info!(pod = %pod.id, image = %image.id, target = %target.display(), "image volume mounted");
            }
            m.host_path = target.display().to_string();
            m.image = None;
            // Per KEP-4639 every image volume is read-only, whatever was asked.
            m.readonly = true;
        }
        Ok(Some(out))
    }

    /// Unmounts the image volumes of container `c` that no other container
    /// of its pod uses (`c` itself is being removed).
    pub(crate) async fn release_image_volumes(&self, c: &ContainerRecord) -> Result<()> {
        if c.image_volumes.is_empty() {
            return Ok(());
        }
        let Some(pod) = self.store.pod(&c.pod_id)? else {
            return Ok(());
        };
        let others = self.store.containers_of(&c.pod_id)?;
        for name in &c.image_volumes {
            let used = others
                .iter()
                .any(|o| o.pod_id == c.pod_id && o.id != c.id && o.image_volumes.contains(name));
            if used {
                continue;
            }
            let _serial = self
                .locks
                .exclusive(&format!("image-volume/{}/{name}", pod.id))
                .await;
            self.unmount_image_volume(&pod, name)?;
        }
        Ok(())
    }

    fn unmount_image_volume(&self, pod: &PodRecord, name: &str) -> Result<()> {
        let dir = volumes_dir(&pod.dir);
        unmount_dir(&dir.join(name))?;
        let _ = std::fs::remove_dir(dir.join(format!(".empty-{name}")));
        self.images.release_image_layers(&holder(&pod.id, name))?;
        tracing::info!(pod = %pod.id, volume = %name, "image volume unmounted");
        Ok(())
    }

    /// Unmounts every image volume of the pod (RemovePodSandbox). Idempotent.
    pub(crate) fn remove_image_volumes(&self, pod: &PodRecord) -> Result<()> {
        let dir = volumes_dir(&pod.dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PodError::io(format!("read {}", dir.display()), e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".empty-") {
                let _ = std::fs::remove_dir(e.path());
                continue;
            }
            self.unmount_image_volume(pod, &name)?;
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PodError::io(format!("remove {}", dir.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_in_mountinfo() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self")));
    }

    #[test]
    fn holders_name_the_pod_and_the_image() {
        assert_eq!(holder("p1", "abc"), "image-volume:p1:abc");
        assert_eq!(
            volumes_dir(Path::new("/s/pods/p1")),
            Path::new("/s/pods/p1/image-volumes")
        );
    }
}
