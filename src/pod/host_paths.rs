//! Host paths of a container's bind mounts that do not exist yet.
//!
//! kubelet creates a hostPath volume's directory only for the
//! `DirectoryOrCreate` type; a plain hostPath (type "") relies on the
//! runtime, and containerd creates a missing source as a directory
//! (`internal/cri/opts/spec_linux.go` WithMounts: `MkdirAll(src, 0755)`), as
//! docker did before it. berth does the same before the spec is generated.

use std::path::Path;

use k8s_cri::v1 as cri;

use super::{PodError, Result};

/// Creates (mode 0755, with its parents) every missing host path of
/// `mounts`; image volumes and paths the spec refuses anyway (relative,
/// empty, with a NUL) are left to the spec's validation.
pub(crate) fn create_missing_host_paths(mounts: &[cri::Mount]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for m in mounts {
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty())
            || !m.host_path.starts_with('/')
            || m.host_path.contains('\0')
        {
            continue;
        }
        let path = Path::new(&m.host_path);
        match std::fs::symlink_metadata(path) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodError::io(format!("stat {}", path.display()), e)),
        }
        // A dangling symlink is not "missing": its target is the user's.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| PodError::io(format!("create host path {}", path.display()), e))?;
        tracing::info!(host_path = %path.display(), container_path = %m.container_path, "created the missing host path of a mount as a directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &str) -> cri::Mount {
        cri::Mount {
            container_path: "/data".into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn missing_paths_become_directories_existing_ones_stay() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        let mut image = mount("");
        image.image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        create_missing_host_paths(&[
            mount(missing.to_str().unwrap()),
            mount(file.to_str().unwrap()),
            mount(link.to_str().unwrap()),
            mount("relative/path"),
            image,
        ])
        .unwrap();
        let m = std::fs::metadata(&missing).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o777 & !umask(), 0o755 & !umask());
        assert!(std::fs::metadata(&file).unwrap().is_file());
        assert!(
            !dir.path().join("nowhere").exists(),
            "a symlink is not followed"
        );
        assert!(!Path::new("relative").exists());
    }

    fn umask() -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }
}
