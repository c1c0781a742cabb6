//! OOM kills: the watcher that publishes TaskOOM whenever the container's
//! cgroup counts one, and the check at the init's exit that catches a kill
//! whose cgroup is already gone (systemd removes an empty scope at once).

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use berth::runtime::cgroups::OomCounts;
use containerd_shim::protos::events::task::TaskOOM;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::runtime::{Runtime, RuntimeContainer};
use super::{ContainerEntry, Inner};
use crate::events::EventSender;
use crate::sync::Lock;

/// What the shim has seen of a container's OOM kill counters.
#[derive(Debug, Default)]
pub struct OomTracker {
    /// The container's own count, reported up to here.
    own: u64,
    /// The parent's count, read with the last reading that still found the
    /// container's cgroup.
    parent: Option<u64>,
    /// Whether a TaskOOM was published for the container.
    reported: bool,
}

impl OomTracker {
    /// Starts from a first reading (taken before the container starts):
    /// kills counted before it are not the container's.
    pub fn new(first: Option<OomCounts>) -> OomTracker {
        let first = first.unwrap_or_default();
        OomTracker {
            own: first.own.unwrap_or(0),
            parent: first.parent,
            reported: false,
        }
    }

    /// A reading while the container may still run: true when it shows a
    /// kill not reported yet.
    pub fn observe(&mut self, c: &OomCounts) -> bool {
        let Some(own) = c.own else {
            return false;
        };
        if c.parent.is_some() {
            self.parent = c.parent;
        }
        let new = own > self.own;
        self.own = self.own.max(own);
        self.reported |= new;
        new
    }

    /// A reading when the init has exited with `status` (128 + signal for a
    /// signal): as [`Self::observe`] while the cgroup is there. Once it is
    /// gone, an init killed by SIGKILL was OOM-killed when the parent, which
    /// counts every kill below it, counted one since the last reading that
    /// still found the cgroup (the kernel counts a kill in the cgroup before
    /// its parent, and the reading takes the parent first, so such a kill
    /// cannot be one the cgroup's own count already showed).
    pub fn observe_exit(&mut self, c: &OomCounts, status: u32) -> bool {
        if c.own.is_some() {
            return self.observe(c);
        }
        let sigkill = status == 128 + libc::SIGKILL as u32;
        let parent_counted = matches!((self.parent, c.parent), (Some(was), Some(now)) if now > was);
        if self.reported || !sigkill || !parent_counted {
            return false;
        }
        self.parent = c.parent;
        self.reported = true;
        true
    }
}

/// Takes a reading into `tracker` (as the init's exit with `exit_status`,
/// or while it may still run) and publishes TaskOOM for `id` when it shows
/// a new kill. The one place a TaskOOM is sent: it is queued under the
/// tracker's lock, so a TaskOOM the watcher, the init's exit or Delete
/// sends is always queued before the init's TaskExit.
pub(super) fn report(
    tracker: &Mutex<OomTracker>,
    counts: &OomCounts,
    exit_status: Option<u32>,
    events: &EventSender,
    id: &str,
) {
    let mut t = tracker.locked();
    let new = match exit_status {
        Some(status) => t.observe_exit(counts, status),
        None => t.observe(counts),
    };
    if new {
        publish(events, id);
    }
}

fn publish(events: &EventSender, id: &str) {
    tracing::info!(container = %id, "OOM");
    events.send(TaskOOM {
        container_id: id.to_owned(),
        ..Default::default()
    });
}

/// The check at the init's exit, run on the reaper thread before its
/// TaskExit is queued, so that TaskOOM comes first (as containerd's runc
/// shim orders them).
pub(super) fn exit_check<C: RuntimeContainer>(
    runtime: C,
    tracker: Arc<Mutex<OomTracker>>,
    events: EventSender,
    id: String,
) -> crate::process::ExitHook {
    Box::new(move |status| {
        if let Ok(counts) = runtime.oom_counts() {
            report(&tracker, &counts, Some(status), &events, &id);
        }
    })
}

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
        let tracker = c.oom.clone();
        let events = self.events.clone();
        let id = c.id.clone();
        let spawned = std::thread::Builder::new()
            .name("oom".into())
            .stack_size(128 * 1024)
            .spawn(move || {
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
                    // every memory.events change, the parent's too: count
                    // the kills.
                    let stopping = stop.load(Ordering::SeqCst);
                    let gone = match runtime.oom_counts() {
                        Ok(counts) => {
                            report(&tracker, &counts, None, &events, &id);
                            counts.own.is_none()
                        }
                        // No counter to read: on v1 a signal is an OOM.
                        Err(_) => {
                            if !stopping {
                                let _ordered = tracker.locked();
                                publish(&events, &id);
                            }
                            false
                        }
                    };
                    // Once the cgroup is gone the init's exit check has the
                    // last word.
                    if stopping || gone {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(container = %c.id, error = %e, "spawn OOM watcher");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGKILLED: u32 = 128 + 9;

    fn counts(own: Option<u64>, parent: Option<u64>) -> OomCounts {
        OomCounts { own, parent }
    }

    #[test]
    fn a_kill_in_the_cgroup_is_reported_once() {
        let mut t = OomTracker::new(Some(counts(Some(0), Some(3))));
        assert!(!t.observe(&counts(Some(0), Some(3))));
        assert!(t.observe(&counts(Some(1), Some(4))));
        assert!(!t.observe(&counts(Some(1), Some(4))));
        // Seen by the watcher: the exit check adds nothing.
        assert!(!t.observe_exit(&counts(None, Some(4)), SIGKILLED));
    }

    #[test]
    fn kills_before_the_first_reading_are_not_the_containers() {
        let mut t = OomTracker::new(Some(counts(Some(2), Some(7))));
        assert!(!t.observe(&counts(Some(2), Some(7))));
        assert!(!t.observe_exit(&counts(None, Some(7)), SIGKILLED));
    }

    #[test]
    fn a_sigkilled_init_whose_cgroup_vanished_after_a_parent_kill_was_oom_killed() {
        let mut t = OomTracker::new(Some(counts(Some(0), Some(5))));
        // The scope is gone before anyone read its count; the pod's slice
        // counted the kill.
        assert!(!t.observe(&counts(None, Some(6))));
        assert!(t.observe_exit(&counts(None, Some(6)), SIGKILLED));
        assert!(!t.observe_exit(&counts(None, Some(6)), SIGKILLED));
    }

    #[test]
    fn a_sibling_kill_seen_while_the_cgroup_lived_is_not_this_containers() {
        let mut t = OomTracker::new(Some(counts(Some(0), Some(0))));
        // A sibling was OOM-killed: the parent moved, this cgroup did not.
        assert!(!t.observe(&counts(Some(0), Some(1))));
        // Later this init is killed by someone's SIGKILL.
        assert!(!t.observe_exit(&counts(None, Some(1)), SIGKILLED));
    }

    #[test]
    fn only_a_sigkill_can_be_an_oom_kill() {
        let mut t = OomTracker::new(Some(counts(Some(0), Some(0))));
        assert!(!t.observe_exit(&counts(None, Some(1)), 1));
        assert!(!t.observe_exit(&counts(None, Some(1)), 128 + 15));
    }

    #[test]
    fn without_a_parent_count_a_vanished_cgroup_says_nothing() {
        // v1, or a cgroup at the root.
        let mut t = OomTracker::new(Some(counts(Some(0), None)));
        assert!(!t.observe_exit(&counts(None, None), SIGKILLED));
    }

    #[test]
    fn the_exit_reading_of_a_live_cgroup_counts_its_own_kill() {
        let mut t = OomTracker::new(Some(counts(Some(0), Some(0))));
        assert!(t.observe_exit(&counts(Some(1), Some(1)), SIGKILLED));
    }
}
