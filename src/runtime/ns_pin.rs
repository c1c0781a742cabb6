//! Pinned namespaces, the one mechanism for the pod's network, IPC, UTS,
//! PID and user namespaces: a namespace is kept alive by bind-mounting its
//! nsfs file on a file, as `ip netns add` does; containers join it by path
//! and no process has to hold it.
//!
//! New namespaces are made by `unshare` in a short-lived thread of their own
//! (a thread's namespaces stick to it: never the async runtime's threads),
//! which then pins `/proc/thread-self/ns/<name>`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Why a pin failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The file to pin on could not be made or removed.
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// unshare, the set-up inside, the bind mount or the unmount failed.
    #[error("{0}")]
    Kernel(String),
}

fn create_file(path: &Path) -> Result<(), PinError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
        .map_err(|source| PinError::File {
            what: format!("create {}", path.display()),
            source,
        })
}

/// The `/proc/<pid>/ns/` name of a single CLONE_NEW* flag.
fn ns_name(flag: CloneFlags) -> Option<&'static str> {
    Some(match flag {
        CloneFlags::CLONE_NEWNET => "net",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        CloneFlags::CLONE_NEWUSER => "user",
        _ => return None,
    })
}

/// Creates one new namespace per `(flag, path)` in one thread and pins each
/// at its path (a new file). `inside` runs in that thread after the
/// unshare, before the pins (e.g. sethostname in the new UTS namespace).
/// Leaves nothing pinned on failure.
pub fn create_pinned(
    pins: &[(CloneFlags, PathBuf)],
    inside: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), PinError> {
    if pins.is_empty() {
        return Ok(());
    }
    for (_, path) in pins {
        create_file(path)?;
    }
    let targets = pins.to_vec();
    let res = std::thread::spawn(move || -> Result<(), String> {
        let flags = targets.iter().fold(CloneFlags::empty(), |f, (k, _)| f | *k);
        unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
        inside()?;
        for (k, target) in &targets {
            let name = ns_name(*k).ok_or_else(|| format!("no namespace file for {k:?}"))?;
            let src = format!("/proc/thread-self/ns/{name}");
            bind(&src, target)?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("namespace thread panicked".into()));
    if let Err(msg) = res {
        for (_, path) in pins {
            let _ = unpin(path);
        }
        return Err(PinError::Kernel(msg));
    }
    Ok(())
}

fn bind(source: &str, target: &Path) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind mount {source} on {}: {e}", target.display()))
}

/// Pins the namespace file `source` (e.g. `/proc/<pid>/ns/pid`) at `target`
/// (a new file, removed again on failure).
pub fn pin_path(source: &str, target: &Path) -> Result<(), PinError> {
    create_file(target)?;
    bind(source, target).map_err(|msg| {
        let _ = std::fs::remove_file(target);
        PinError::Kernel(msg)
    })
}

/// Unpins and removes a namespace file. Idempotent: a missing file, or one
/// that is no longer a mount point, is fine.
pub fn unpin(path: &Path) -> Result<(), PinError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(PinError::Kernel(format!("umount {}: {e}", path.display()))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PinError::File {
            what: format!("remove {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinnable_flag_has_its_namespace_file() {
        for (flag, name) in [
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWPID, "pid"),
            (CloneFlags::CLONE_NEWUSER, "user"),
        ] {
            assert_eq!(ns_name(flag), Some(name));
            assert!(Path::new("/proc/self/ns").join(name).exists());
        }
        assert_eq!(
            ns_name(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC),
            None
        );
    }

    #[test]
    fn unpin_of_nothing_is_fine_and_pin_of_a_taken_path_fails() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: unpin calls umount2, which needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns");
        unpin(&p).unwrap();
        std::fs::write(&p, "").unwrap();
        assert!(matches!(
            pin_path("/proc/self/ns/net", &p),
            Err(PinError::File { .. })
        ));
        unpin(&p).unwrap();
        assert!(!p.exists());
    }
}
