//! Reaping: the shim is a child subreaper and collects every child's exit
//! status itself (the runtime never calls `waitpid`).
//!
//! One thread blocks in `waitpid(-1)`. When the shim has no child it parks
//! until [`Reaper::children_added`] says a child may exist again: a process
//! with no children has no descendants, so nothing can be reparented to it
//! in the meantime.
//!
//! The reaper can never die: a panic while an exit is dispatched (in
//! `on_exit`) is caught and logged, and the loop goes on with the next
//! child; its locks do not poison (`sync.rs`).

use crate::sync::Lock;
use std::sync::{Arc, Condvar, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::error::{Result, ShimError};

/// Exit code of a process killed by `signal`, as shells and containerd report it.
pub fn signal_exit_code(signal: i32) -> u32 {
    128 + signal as u32
}

/// Marks the shim as a child subreaper: orphans of its containers come back to it.
pub fn set_subreaper() -> Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(ShimError::Io {
            context: "prctl(PR_SET_CHILD_SUBREAPER)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Handle of the reaper thread.
#[derive(Clone)]
pub struct Reaper {
    generation: Arc<(Mutex<u64>, Condvar)>,
}

impl Reaper {
    /// Starts the reaper thread. `on_exit(pid, exit_code)` runs on it for every
    /// reaped child.
    pub fn start(on_exit: impl Fn(i32, u32) + Send + 'static) -> Result<Reaper> {
        let generation = Arc::new((Mutex::new(0u64), Condvar::new()));
        let g = generation.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(128 * 1024)
            .spawn(move || reap_forever(&g, on_exit))
            .map_err(ShimError::io("spawn reaper thread"))?;
        Ok(Reaper { generation })
    }

    /// Call after anything that may have created a child process.
    pub fn children_added(&self) {
        let (lock, cv) = &*self.generation;
        *lock.locked() += 1;
        cv.notify_all();
    }
}

fn reap_forever(generation: &(Mutex<u64>, Condvar), on_exit: impl Fn(i32, u32)) {
    let (lock, cv) = generation;
    loop {
        let seen = *lock.locked();
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) => dispatch(&on_exit, pid.as_raw(), code as u32),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                dispatch(&on_exit, pid.as_raw(), signal_exit_code(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                let mut g = lock.locked();
                while *g == seen {
                    g = crate::sync::wait(cv, g);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Runs `on_exit` for one reaped child; a panic in it is logged, never the
/// end of the reaper.
fn dispatch(on_exit: &impl Fn(i32, u32), pid: i32, status: u32) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_exit(pid, status)));
    if let Err(panic) = r {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        tracing::error!(pid, status, panic = %msg, "dispatching an exit panicked; the reaper goes on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while one exit is dispatched is caught: the next exit is
    /// still dispatched. (The reaper itself waits for any child of the
    /// process, so it is not started in a unit test, where it would reap
    /// other tests' children; the shim's integration test makes an RPC
    /// panic in a real shim.)
    #[test]
    fn a_panicking_exit_dispatch_is_caught() {
        let seen = Mutex::new(Vec::new());
        let on_exit = |pid: i32, status: u32| {
            if pid == 1 {
                panic!("test: this exit panics");
            }
            seen.locked().push((pid, status));
        };
        dispatch(&on_exit, 1, 0);
        dispatch(&on_exit, 2, 3);
        assert_eq!(*seen.locked(), vec![(2, 3)]);
    }
}
