//! OOM notification fds (v1 eventfd registered on memory.oom_control through
//! cgroup.event_control; v2 inotify on memory.events) and the OOM kill
//! counters they announce.
//!
//! Under the systemd driver a container's scope cgroup is removed by
//! systemd as soon as its last process exits, which for an OOM-killed init
//! can be before anyone read the scope's oom_kill (the kernel throttles
//! memory.events notifications to one per 10 ms, and drops a pending one
//! with the file). v2 counts every kill in the parent's memory.events too,
//! and the parent (the pod's slice) stays: [`OomCounts::parent`] lets the
//! shim tell an OOM kill from another SIGKILL after the scope is gone.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::hierarchy::Hierarchy;
use super::{CgroupError, Result, fsio, stats};

/// The OOM kill counters of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomCounts {
    /// The cgroup's own count (v2: oom_kill of memory.events, which includes
    /// the cgroups below it; v1: oom_kill of memory.oom_control). `None`
    /// once the cgroup is gone.
    pub own: Option<u64>,
    /// v2 only: the parent cgroup's oom_kill, read *before* `own` (the kernel
    /// counts a kill in the cgroup first, then in each ancestor, so a kill
    /// `own` missed is always in a later `parent`). `None` on v1, for a
    /// cgroup at the root, or when the parent has no memory.events.
    pub parent: Option<u64>,
}

/// The memory controller's directory of the cgroup at `path`.
fn memory_dir(h: &Hierarchy, path: &str) -> Result<std::path::PathBuf> {
    h.dir("memory", path).ok_or_else(|| CgroupError::Backend {
        path: path.to_owned(),
        message: "no memory controller is mounted".into(),
    })
}

/// The parent of the relative cgroup `path`, `None` at the root.
fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/')
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty())
}

/// Reads the `oom_kill` key of `file` in `dir`: `None` when the file (or
/// the cgroup) is gone, including a cgroup removed while it was read.
fn oom_kill(dir: &std::path::Path, file: &str) -> Result<Option<u64>> {
    match fsio::read_opt(dir, file) {
        Ok(Some(text)) => Ok(Some(
            stats::parse_keyed(&text)
                .get("oom_kill")
                .copied()
                .unwrap_or(0),
        )),
        Ok(None) => Ok(None),
        Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads the OOM kill counters of the cgroup at `path` (see [`OomCounts`]).
pub(crate) fn counts(h: &Hierarchy, path: &str) -> Result<OomCounts> {
    let dir = memory_dir(h, path)?;
    match h {
        Hierarchy::V1 { .. } => Ok(OomCounts {
            own: oom_kill(&dir, "memory.oom_control")?,
            parent: None,
        }),
        Hierarchy::V2 { .. } => {
            let parent = match parent_of(path).and_then(|p| h.dir("memory", p)) {
                Some(p) => oom_kill(&p, "memory.events").ok().flatten(),
                None => None,
            };
            Ok(OomCounts {
                own: oom_kill(&dir, "memory.events")?,
                parent,
            })
        }
    }
}

/// A non-blocking, close-on-exec fd that becomes readable when the cgroup
/// hits an OOM. v1: an eventfd (8-byte counter) signalled on each OOM and
/// once more when the cgroup is removed. v2: an inotify fd signalled on
/// every change of the cgroup's memory.events (which holds oom_kill) and of
/// its parent's. Either way the reader drains it and compares [`counts`].
pub(crate) fn notifier(h: &Hierarchy, path: &str) -> Result<OwnedFd> {
    let dir = memory_dir(h, path)?;
    let sys = |what: &str, e: nix::Error| CgroupError::Io {
        path: dir.join(what).display().to_string(),
        source: std::io::Error::from(e),
    };
    match h {
        Hierarchy::V1 { .. } => {
            let efd =
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| sys("eventfd", e))?;
            let control_path = dir.join("memory.oom_control");
            let control =
                std::fs::File::open(&control_path).map_err(|e| fsio::io_err(&control_path, e))?;
            // The kernel keeps its own reference: `control` may close after this.
            fsio::write(
                &dir,
                "cgroup.event_control",
                &format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
            )?;
            Ok(efd.into())
        }
        Hierarchy::V2 { .. } => {
            let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                .map_err(|e| sys("inotify", e))?;
            let events = dir.join("memory.events");
            ino.add_watch(&events, AddWatchFlags::IN_MODIFY)
                .map_err(|e| sys("memory.events", e))?;
            // The parent's counter moves with every kill below it: waking on
            // it keeps the reader's view of the parent fresh.
            if let Some(parent) = parent_of(path).and_then(|p| h.dir("memory", p)) {
                let _ = ino.add_watch(&parent.join("memory.events"), AddWatchFlags::IN_MODIFY);
            }
            Ok(ino.into())
        }
    }
}
