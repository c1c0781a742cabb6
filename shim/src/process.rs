//! A process the shim tracks: a container's init or an exec, with its state,
//! exit status and stdio.

use crate::sync::Lock;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;

use crate::stdio::{ProcessIo, StdioPaths};

/// Kills every process left in a container.
pub type KillAll = Box<dyn Fn() -> crate::error::Result<()> + Send + Sync>;

/// Runs on the reaper thread with the exit status before the process's
/// TaskExit is queued.
pub type ExitHook = Box<dyn Fn(u32) + Send + Sync>;

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

#[derive(Debug)]
struct State {
    status: Status,
    pid: i32,
    exit: Option<Exit>,
}

/// One process of a container.
pub struct Process {
    pub container_id: String,
    /// The exec id; empty for the init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI process of an exec (the init's is in the container's spec).
    pub spec: Option<oci_spec::runtime::Process>,
    /// The init of a container without its own pid namespace: on its exit
    /// the rest of the container is killed with this (runc's behaviour).
    pub kill_all_on_exit: Option<KillAll>,
    /// The init's OOM check (see `service::oom::exit_check`).
    pub before_exit_event: Option<ExitHook>,
    pub io: Mutex<Option<Arc<ProcessIo>>>,
    state: Mutex<State>,
    exited: Condvar,
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            spec: None,
            kill_all_on_exit: None,
            before_exit_event: None,
            io: Mutex::new(None),
            state: Mutex::new(State {
                status: Status::CREATED,
                pid: 0,
                exit: None,
            }),
            exited: Condvar::new(),
        }
    }

    /// The id events carry: the exec id, or the container id for the init.
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn pid(&self) -> i32 {
        self.state.locked().pid
    }

    pub fn status(&self) -> Status {
        self.state.locked().status
    }

    pub fn exit(&self) -> Option<Exit> {
        self.state.locked().exit.clone()
    }

    pub fn set_pid(&self, pid: i32) {
        self.state.locked().pid = pid;
    }

    /// Created → Running. False when the process is no longer Created.
    pub fn set_running(&self, pid: i32) -> bool {
        let mut s = self.state.locked();
        if s.status != Status::CREATED {
            return false;
        }
        s.status = Status::RUNNING;
        s.pid = pid;
        true
    }

    /// Running ↔ Paused.
    pub fn set_paused(&self, paused: bool) {
        let mut s = self.state.locked();
        if s.exit.is_none() {
            s.status = if paused {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
    }

    /// Records the exit and wakes every Wait.
    pub fn set_exited(&self, status: u32, at: Timestamp) {
        let mut s = self.state.locked();
        s.status = Status::STOPPED;
        s.exit = Some(Exit { status, at });
        self.exited.notify_all();
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut s = self.state.locked();
        loop {
            if let Some(e) = &s.exit {
                return e.clone();
            }
            s = crate::sync::wait(&self.exited, s);
        }
    }

    /// Waits at most `timeout` for the exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let s = self.state.locked();
        let (s, _) = self
            .exited
            .wait_timeout_while(s, timeout, |s| s.exit.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.exit.clone()
    }

    pub fn io(&self) -> Option<Arc<ProcessIo>> {
        self.io.locked().clone()
    }
}
