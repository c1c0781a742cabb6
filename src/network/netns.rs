//! Pinned network namespaces: create one bound to a file, run code or open
//! netlink sockets inside one, remove one.
//!
//! A namespace is created by `unshare(CLONE_NEWNET)` in a short-lived thread
//! (never the async runtime's threads: a thread's namespace sticks to it) and
//! pinned by bind-mounting `/proc/thread-self/ns/net` on a file, the way
//! `ip netns add` does. Netlink sockets keep the namespace they were opened
//! in, so a socket opened by a thread that `setns`'d into the pod's namespace
//! configures the pod from the daemon's own runtime.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::error::NetworkError;

fn netns_err(path: &Path, msg: impl Into<String>) -> NetworkError {
    NetworkError::Netns {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Creates a new network namespace pinned at `path` (its parent is created).
/// Fails if `path` exists; leaves nothing behind on failure.
pub fn create_netns(path: &Path) -> Result<(), NetworkError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| NetworkError::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| NetworkError::io(format!("create netns file {}", path.display()), e))?;
    let target: PathBuf = path.to_path_buf();
    let res = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("netns thread panicked".into()));
    if let Err(msg) = res {
        let _ = std::fs::remove_file(path);
        return Err(netns_err(path, msg));
    }
    Ok(())
}

/// Unpins and removes a namespace file. Idempotent: a missing file, or one
/// that is no longer a mount point, is fine.
pub fn remove_netns(path: &Path) -> Result<(), NetworkError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(netns_err(path, format!("umount: {e}"))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io(format!("remove {}", path.display()), e)),
    }
}

/// Whether `path` is a pinned network namespace.
pub fn is_netns(path: &Path) -> bool {
    // nsfs files have inode numbers but the filesystem magic tells them apart.
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Opens the namespace file, with a clear error when it is gone.
pub(crate) fn open_netns(path: &Path) -> Result<File, NetworkError> {
    if !is_netns(path) {
        return Err(netns_err(
            path,
            "not a network namespace (missing or not pinned)",
        ));
    }
    File::open(path).map_err(|e| NetworkError::io(format!("open netns {}", path.display()), e))
}

/// Runs `f` on a fresh thread that has joined the namespace at `path`.
pub fn run_in_netns<F, R>(path: &Path, f: F) -> Result<R, NetworkError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ns = open_netns(path)?;
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<R, NetworkError> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| netns_err(&p, format!("setns: {e}")))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| Err(netns_err(path, "netns thread panicked")))
}

/// A netlink handle whose socket lives in the namespace at `path`; its
/// connection runs on the caller's tokio runtime.
pub(crate) fn netlink_in(path: &Path) -> Result<rtnetlink::Handle, NetworkError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = run_in_netns(path, move || {
        let _guard = rt.enter();
        rtnetlink::new_connection()
    })?
    .map_err(|e| NetworkError::io("netlink socket in pod netns", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle in the daemon's own namespace.
pub(crate) fn netlink_host() -> Result<rtnetlink::Handle, NetworkError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::io("netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}
