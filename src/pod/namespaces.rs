//! The pod's pinned namespaces: created once by a short-lived thread that
//! unshares them, and kept alive by bind-mounting the thread's nsfs files
//! under the pod's state directory, as `ip netns add` does. Containers join
//! them by path; no pause process holds them.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::PodError;

/// A namespace kind the pod may pin besides the network one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    Ipc,
    Uts,
}

impl NsKind {
    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
    fn proc_name(self) -> &'static str {
        match self {
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }
}

/// Creates new namespaces of `kinds` in one thread and pins each at the path
/// given with it. With a UTS namespace, `hostname` is set inside it. Leaves
/// nothing behind on failure.
pub fn pin_namespaces(kinds: &[(NsKind, PathBuf)], hostname: &str) -> Result<(), PodError> {
    if kinds.is_empty() {
        return Ok(());
    }
    for (_, path) in kinds {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| PodError::io(format!("create {}", path.display()), e))?;
    }
    let targets: Vec<(NsKind, PathBuf)> = kinds.to_vec();
    let hostname = hostname.to_owned();
    let res = std::thread::spawn(move || -> Result<(), String> {
        let flags = targets
            .iter()
            .fold(CloneFlags::empty(), |f, (k, _)| f | k.flag());
        unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
        if targets.iter().any(|(k, _)| *k == NsKind::Uts) && !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).map_err(|e| format!("sethostname: {e}"))?;
        }
        for (k, target) in &targets {
            let src = format!("/proc/thread-self/ns/{}", k.proc_name());
            mount(
                Some(src.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind mount {src} on {}: {e}", target.display()))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("namespace thread panicked".into()));
    if let Err(msg) = res {
        for (_, path) in kinds {
            let _ = unpin(path);
        }
        return Err(PodError::Namespace(msg));
    }
    Ok(())
}

/// Pins the namespace file `source` (e.g. `/proc/<pid>/ns/pid`) at `target`.
pub fn pin_path(source: &str, target: &Path) -> Result<(), PodError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| PodError::io(format!("create {}", target.display()), e))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(target);
        PodError::Namespace(format!("bind mount {source} on {}: {e}", target.display()))
    })
}

/// Unpins and removes a namespace file; idempotent.
pub fn unpin(path: &Path) -> Result<(), PodError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(PodError::Namespace(format!(
                "umount {}: {e}",
                path.display()
            )));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("remove {}", path.display()), e)),
    }
}

/// Mounts the pod's /dev/shm tmpfs at `path` (created). `owner`: the host
/// uid and gid of a user-namespaced pod's root, so that its /dev/shm is
/// root's inside, as it is in any other pod.
pub fn mount_shm(path: &Path, size_bytes: u64, owner: Option<(u32, u32)>) -> Result<(), PodError> {
    std::fs::create_dir_all(path)
        .map_err(|e| PodError::io(format!("create {}", path.display()), e))?;
    let mut data = format!("mode=1777,size={size_bytes}");
    if let Some((uid, gid)) = owner {
        data.push_str(&format!(",uid={uid},gid={gid}"));
    }
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| PodError::Namespace(format!("mount shm tmpfs on {}: {e}", path.display())))
}

/// Unmounts (lazily) whatever is mounted at `path` and removes the directory;
/// idempotent.
pub fn unmount_dir(path: &Path) -> Result<(), PodError> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(PodError::Namespace(format!(
                    "umount {}: {e}",
                    path.display()
                )));
            }
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("remove {}", path.display()), e)),
    }
}
