//! The pod's pinned namespaces: created once by a short-lived thread that
//! unshares them, and kept alive by bind-mounting the thread's nsfs files
//! under the pod's state directory ([`crate::runtime::ns_pin`], shared with
//! the network namespaces). Containers join them by path; no pause process
//! holds them. Also the pod's /dev/shm.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

use crate::runtime::ns_pin::{self, PinError};

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
}

/// Creates new namespaces of `kinds` in one thread and pins each at the path
/// given with it ([`crate::runtime::ns_pin`]). With a UTS namespace,
/// `hostname` is set inside it. Leaves nothing behind on failure.
pub fn pin_namespaces(kinds: &[(NsKind, PathBuf)], hostname: &str) -> Result<(), PodError> {
    let pins: Vec<(CloneFlags, PathBuf)> =
        kinds.iter().map(|(k, p)| (k.flag(), p.clone())).collect();
    let set_hostname = kinds.iter().any(|(k, _)| *k == NsKind::Uts) && !hostname.is_empty();
    let hostname = hostname.to_owned();
    ns_pin::create_pinned(&pins, move || {
        if set_hostname {
            nix::unistd::sethostname(&hostname).map_err(|e| format!("sethostname: {e}"))?;
        }
        Ok(())
    })
    .map_err(pin_error)
}

fn pin_error(e: PinError) -> PodError {
    match e {
        PinError::File { what, source } => PodError::io(what, source),
        PinError::Kernel(msg) => PodError::Namespace(msg),
    }
}

/// Pins the namespace file `source` (e.g. `/proc/<pid>/ns/pid`) at `target`.
pub fn pin_path(source: &str, target: &Path) -> Result<(), PodError> {
    ns_pin::pin_path(source, target).map_err(pin_error)
}

/// Unpins and removes a namespace file; idempotent.
pub fn unpin(path: &Path) -> Result<(), PodError> {
    ns_pin::unpin(path).map_err(pin_error)
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
