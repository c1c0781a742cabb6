//! The OOM watcher: TaskOOM whenever the container's cgroup records an OOM
//! kill.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use containerd_shim::protos::events::task::TaskOOM;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::runtime::{Runtime, RuntimeContainer};
use super::{ContainerEntry, Inner};

impl<R: Runtime> Inner<R> {
    /// Publishes TaskOOM whenever the container's cgroup records an OOM kill.
    pub(super) fn watch_oom(&self, c: &Arc<ContainerEntry<R::Container>>) {
        let fd = match c.runtime.oom_notifier() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "no OOM notifications");
                return;
            }
        };
        let runtime = c.runtime.clone();
        let stop = c.oom_stop.clone();
        let reported = c.oom_reported.clone();
        let events = self.events.clone();
        let id = c.id.clone();
        let spawned = std::thread::Builder::new()
            .name("oom".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                reported.fetch_max(
                    runtime.stats().map(|s| s.oom_kills).unwrap_or(0),
                    Ordering::SeqCst,
                );
                let mut buf = [0u8; 4096];
                loop {
                    // The notifier is non-blocking: wait for it, then drain it.
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                    }
                    match nix::unistd::read(fd.as_fd(), &mut buf) {
                        Ok(0) => return,
                        Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return,
                    }
                    // v1 signals OOMs and the cgroup's removal; v2 signals
                    // every memory.events change: count the kills.
                    let stopping = stop.load(Ordering::SeqCst);
                    let oom = match runtime.stats().map(|s| s.oom_kills) {
                        Ok(k) => k > reported.fetch_max(k, Ordering::SeqCst),
                        // No counter to read: on v1 a signal is an OOM.
                        Err(_) => !stopping,
                    };
                    if oom {
                        tracing::info!(container = %id, "OOM");
                        events.send(TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        });
                    }
                    if stopping {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(container = %c.id, error = %e, "spawn OOM watcher");
        }
    }
}
