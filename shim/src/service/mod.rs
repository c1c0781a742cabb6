//! The Task service: containerd's shim v2 API over a container runtime.
//! One service (one shim) may hold several containers: a pod's.
//!
//! `TaskService<R>` is generic over [`runtime::Runtime`] (berth's in-process
//! runtime in the binary, a recording stub in the unit tests), as
//! rust-extensions' runc-shim `TaskService<F, C>` and runwasi's
//! `Local<I: Instance>`. One file per operation: `create.rs`, `start.rs`,
//! `exec.rs`, `kill.rs`, `delete.rs`, `control.rs` (pause, resume,
//! update), `checkpoint.rs` (CRIU), `query.rs` (state, pids), `io.rs` (close_io, resize_pty),
//! `exit.rs` (the reaper's exits), `oom.rs` (the OOM watcher); `ttrpc.rs`
//! maps the ttrpc `Task` trait onto them.
//!
//! The process state machine: CREATED → RUNNING (↔ PAUSED) → STOPPED. A
//! TaskStart or TaskExecStarted is queued under the `pids` lock that the
//! exit dispatch also takes, so it always precedes the process' TaskExit.

mod checkpoint;
mod control;
mod create;
mod delete;
mod exec;
mod exit;
mod io;
mod kill;
mod oom;
mod query;
pub mod runtime;
mod start;
pub mod state_file;
#[cfg(test)]
mod tests;
mod ttrpc;

use crate::sync::Lock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use containerd_shim::ExitSignal;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Result, ShimError};
use crate::events::EventSender;
use crate::process::Process;
use crate::reaper::Reaper;

pub use runtime::Berth;

/// How long Delete lets a terminal's output drain into its fifo.
const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long Delete waits for a killed, never-started init to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// One container of this shim.
pub struct ContainerEntry<C> {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: C,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Where the shim mounted containerd's rootfs mounts, if it did.
    pub rootfs: Option<PathBuf>,
    /// Set before the cgroup goes away so the OOM watcher knows to stop.
    pub oom_stop: Arc<AtomicBool>,
    /// The OOM kills seen so far (the watcher, the init's exit and Delete
    /// share it).
    pub oom: Arc<Mutex<oom::OomTracker>>,
}

impl<C> ContainerEntry<C> {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .locked()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} in {}", self.id)))
    }
}

struct Inner<R: runtime::Runtime> {
    runtime: R,
    namespace: String,
    containers: Mutex<HashMap<String, Arc<ContainerEntry<R::Container>>>>,
    /// pid → process. Held while a process is being created and registered,
    /// and while an exit is dispatched: an exit can never be reported before
    /// its process is registered. Lock order: `pids` before `containers`.
    pids: Mutex<HashMap<i32, Arc<Process>>>,
    /// Serializes Create so one id cannot be created twice at once.
    create_lock: Mutex<()>,
    events: EventSender,
    reaper: OnceLock<Reaper>,
    exit: Arc<ExitSignal>,
}

/// The ttrpc Task service over runtime `R`.
pub struct TaskService<R: runtime::Runtime = Berth> {
    inner: Arc<Inner<R>>,
}

impl<R: runtime::Runtime> Clone for TaskService<R> {
    fn clone(&self) -> Self {
        TaskService {
            inner: self.inner.clone(),
        }
    }
}

impl<R: runtime::Runtime> TaskService<R> {
    /// Creates the service and starts its reaper.
    pub fn new(
        runtime: R,
        namespace: &str,
        events: EventSender,
        exit: Arc<ExitSignal>,
    ) -> Result<Self> {
        let svc = Self::without_reaper(runtime, namespace, events, exit);
        let weak = Arc::downgrade(&svc.inner);
        let reaper = Reaper::start(move |pid, status| {
            if let Some(inner) = weak.upgrade() {
                inner.on_exit(pid, status);
            }
        })?;
        let _ = svc.inner.reaper.set(reaper);
        Ok(svc)
    }

    /// The service without a reaper: exits come only through `on_exit`
    /// (the unit tests, whose processes are not the shim's children).
    fn without_reaper(
        runtime: R,
        namespace: &str,
        events: EventSender,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                runtime,
                namespace: namespace.to_string(),
                containers: Mutex::new(HashMap::new()),
                pids: Mutex::new(HashMap::new()),
                create_lock: Mutex::new(()),
                events,
                reaper: OnceLock::new(),
                exit,
            }),
        }
    }
}

impl<R: runtime::Runtime> Inner<R> {
    fn children_added(&self) {
        if let Some(r) = self.reaper.get() {
            r.children_added();
        }
    }

    fn container(&self, id: &str) -> Result<Arc<ContainerEntry<R::Container>>> {
        self.containers
            .locked()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }
}

fn has_own_pid_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        })
}
