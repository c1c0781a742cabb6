//! Pinned network namespaces: create one bound to a file, run code or open
//! netlink sockets inside one, remove one.
//!
//! A namespace is created and pinned by [`crate::runtime::ns_pin`] (the pod's
//! other namespaces use it too): `unshare(CLONE_NEWNET)` in a short-lived
//! thread, `/proc/thread-self/ns/net` bind-mounted on a file, the way
//! `ip netns add` does. Netlink sockets keep the namespace they were opened
//! in, so a socket opened by a thread that `setns`'d into the pod's namespace
//! configures the pod from the daemon's own runtime.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::runtime::ns_pin::{self, PinError};

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
    ns_pin::create_pinned(&[(CloneFlags::CLONE_NEWNET, path.to_path_buf())], || Ok(()))
        .map_err(|e| pin_error(path, e))
}

fn pin_error(path: &Path, e: PinError) -> NetworkError {
    match e {
        PinError::File { what, source } => NetworkError::io(what, source),
        PinError::Kernel(msg) => netns_err(path, msg),
    }
}

/// Unpins and removes a namespace file. Idempotent: a missing file, or one
/// that is no longer a mount point, is fine.
pub fn remove_netns(path: &Path) -> Result<(), NetworkError> {
    ns_pin::unpin(path).map_err(|e| pin_error(path, e))
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
