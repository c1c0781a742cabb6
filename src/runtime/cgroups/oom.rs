//! OOM notification fds: v1 eventfd registered on memory.oom_control through
//! cgroup.event_control; v2 inotify on memory.events.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::hierarchy::Hierarchy;
use super::{CgroupError, Result, fsio};

/// A non-blocking, close-on-exec fd that becomes readable when the cgroup
/// hits an OOM. v1: an eventfd (8-byte counter) signalled on each OOM and
/// once more when the cgroup is removed. v2: an inotify fd signalled on
/// every change of memory.events (which holds oom_kill). Either way the
/// reader drains it and compares `oom_kills` in the stats.
pub(crate) fn notifier(h: &Hierarchy, path: &str) -> Result<OwnedFd> {
    let dir = h.dir("memory", path).ok_or_else(|| CgroupError::Backend {
        path: path.to_owned(),
        message: "no memory controller is mounted".into(),
    })?;
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
            Ok(ino.into())
        }
    }
}
