//! The Task service: containerd's shim v2 API over berth's in-process runtime.
//! One service (one shim) may hold several containers: a pod's.

use crate::sync::Lock;
use std::collections::HashMap;
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth::runtime::{Container, CreateOptions};
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

use crate::error::{Result, ShimError};
use crate::events::{EventSender, now};
use crate::process::Process;
use crate::reaper::{Reaper, signal_exit_code};
use crate::stdio::{self, StdioPaths};
use crate::{metrics, rootfs};

/// File in the bundle where the shim keeps the runtime's container record,
/// so that `delete` can clean up after a shim that is gone.
pub const STATE_FILE: &str = "berth-container.json";
/// How long Delete lets a terminal's output drain into its fifo.
const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long Delete waits for a killed, never-started init to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// One container of this shim.
pub struct ContainerEntry {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Container,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Where the shim mounted containerd's rootfs mounts, if it did.
    pub rootfs: Option<PathBuf>,
    /// Set before the cgroup goes away so the OOM watcher knows to stop.
    pub oom_stop: Arc<AtomicBool>,
    /// OOM kills already reported (watcher and Delete share it).
    pub oom_reported: Arc<AtomicU64>,
}

impl ContainerEntry {
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

struct Inner {
    namespace: String,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
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

/// The ttrpc Task service.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl TaskService {
    /// Creates the service and starts its reaper.
    pub fn new(namespace: &str, events: EventSender, exit: Arc<ExitSignal>) -> Result<Self> {
        let inner = Arc::new(Inner {
            namespace: namespace.to_string(),
            containers: Mutex::new(HashMap::new()),
            pids: Mutex::new(HashMap::new()),
            create_lock: Mutex::new(()),
            events,
            reaper: OnceLock::new(),
            exit,
        });
        let weak = Arc::downgrade(&inner);
        let reaper = Reaper::start(move |pid, status| {
            if let Some(inner) = weak.upgrade() {
                inner.on_exit(pid, status);
            }
        })?;
        let _ = inner.reaper.set(reaper);
        Ok(TaskService { inner })
    }
}

impl Inner {
    fn children_added(&self) {
        if let Some(r) = self.reaper.get() {
            r.children_added();
        }
    }

    fn container(&self, id: &str) -> Result<Arc<ContainerEntry>> {
        self.containers
            .locked()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    /// Runs on the reaper thread for every reaped child.
    fn on_exit(&self, pid: i32, status: u32) {
        let mut pids = self.pids.locked();
        let Some(p) = pids.remove(&pid) else {
            if !crate::helper_run::exited(pid, status) {
                tracing::debug!(pid, status, "reaped a process the shim does not track");
            }
            return;
        };
        let at = now();
        p.set_exited(status, at.clone());
        tracing::info!(container = %p.container_id, exec = %p.exec_id, pid, status, "process exited");
        if let Some(c) = &p.kill_all_on_exit
            && let Err(e) = c.kill(libc::SIGKILL, true)
        {
            tracing::warn!(container = %p.container_id, error = %e, "kill the rest of the container");
        }
        // Still under the pids lock: TaskStart/TaskExecStarted are queued first.
        self.events.send(TaskExit {
            container_id: p.container_id.clone(),
            id: p.event_id().to_string(),
            pid: pid as u32,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        });
    }

    fn create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let _serial = self.create_lock.locked();
        if req.id.is_empty() {
            return Err(ShimError::InvalidArgument("container id is empty".into()));
        }
        if self.containers.locked().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by berth".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            ShimError::InvalidArgument(format!("read {}/config.json: {e}", req.bundle))
        })?;
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle.join("rootfs");
            std::fs::create_dir_all(&target)
                .map_err(ShimError::io(format!("create {}", target.display())))?;
            // A user-namespaced container sees the image layers through
            // idmapped mounts of its user namespace (the layers stay as they are).
            let userns = berth::runtime::idmap::spec_userns(&spec)
                .map_err(|e| ShimError::InvalidArgument(format!("user namespace: {e}")))?;
            rootfs::mount_all(&req.rootfs, &target, userns.as_ref().map(|f| f.as_fd()))?;
            Some(target)
        };
        let undo_mount = |e: ShimError| {
            if let Some(t) = &rootfs {
                rootfs::unmount_all(t);
            }
            e
        };
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (stdio, io) = stdio::open(&paths).map_err(undo_mount)?;
        let state_dir = bundle.join("berth");
        std::fs::create_dir_all(&state_dir)
            .map_err(ShimError::io(format!("create {}", state_dir.display())))
            .map_err(undo_mount)?;

        let systemd_cgroup = systemd_cgroup_option(req.options.as_ref()).map_err(undo_mount)?;
        let mut pids = self.pids.locked();
        #[cfg(debug_assertions)]
        test_panic_hook(&spec);
        let created = Container::create(CreateOptions {
            id: &req.id,
            bundle: &bundle,
            spec: &spec,
            stdio,
            state_dir: &state_dir,
            systemd_cgroup,
        });
        self.children_added();
        let (container, master) = created.map_err(|e| undo_mount(e.into()))?;
        if let Some(master) = master {
            io.attach_pty(master).map_err(undo_mount)?;
        }
        if let Some(hub) = io.attach_hub() {
            crate::attach::register(&req.id, hub);
        }
        let mut init = Process::new(&req.id, "", paths.clone());
        if !has_own_pid_namespace(&spec) {
            init.kill_all_on_exit = Some(container.clone());
        }
        init.set_pid(container.pid);
        *init.io.locked() = Some(Arc::new(io));
        let init = Arc::new(init);
        pids.insert(container.pid, init.clone());

        if let Err(e) = write_state(&bundle, &container) {
            tracing::warn!(container = %req.id, error = %e, "persist container state");
        }
        let entry = Arc::new(ContainerEntry {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runtime: container.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
            rootfs,
            oom_stop: Arc::new(AtomicBool::new(false)),
            oom_reported: Arc::new(AtomicU64::new(0)),
        });
        self.containers
            .locked()
            .insert(req.id.clone(), entry.clone());
        drop(pids);
        self.watch_oom(&entry);

        tracing::info!(container = %req.id, pid = container.pid, "created");
        self.events.send(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: container.pid as u32,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid: container.pid as u32,
            ..Default::default()
        })
    }

    /// Publishes TaskOOM whenever the container's cgroup records an OOM kill.
    fn watch_oom(&self, c: &Arc<ContainerEntry>) {
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

    fn start(&self, req: &StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "{} is {:?}, not created",
                p.event_id(),
                p.status()
            )));
        }
        if req.exec_id.is_empty() {
            let pids = self.pids.locked();
            c.runtime.start()?;
            if !p.set_running(c.runtime.pid) {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} exited before it started",
                    c.id
                )));
            }
            self.events.send(TaskStart {
                container_id: c.id.clone(),
                pid: c.runtime.pid as u32,
                ..Default::default()
            });
            drop(pids);
            tracing::info!(container = %c.id, pid = c.runtime.pid, "started");
            return Ok(StartResponse {
                pid: c.runtime.pid as u32,
                ..Default::default()
            });
        }
        if c.init.status() == Status::STOPPED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let spec = p
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec has no process spec".into()))?;
        let (stdio, io) = stdio::open(&p.stdio)?;
        let mut pids = self.pids.locked();
        let execed = c.runtime.exec(spec, stdio);
        self.children_added();
        let exec = execed?;
        if let Some(master) = exec.pty_master {
            io.attach_pty(master)?;
        }
        *p.io.locked() = Some(Arc::new(io));
        p.set_running(exec.pid);
        pids.insert(exec.pid, p.clone());
        self.events.send(TaskExecStarted {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: exec.pid as u32,
            ..Default::default()
        });
        drop(pids);
        tracing::info!(container = %c.id, exec = %req.exec_id, pid = exec.pid, "exec started");
        Ok(StartResponse {
            pid: exec.pid as u32,
            ..Default::default()
        })
    }

    fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if matches!(p.status(), Status::RUNNING | Status::PAUSED) {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} is running",
                    req.exec_id
                )));
            }
            c.execs.locked().remove(&req.exec_id);
            if let Some(io) = p.io() {
                io.shutdown(IO_DRAIN);
            }
            let exit = p.exit();
            return Ok(DeleteResponse {
                pid: p.pid() as u32,
                exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                ..Default::default()
            });
        }
        let init = &c.init;
        if matches!(init.status(), Status::RUNNING | Status::PAUSED) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is running: kill it first",
                c.id
            )));
        }
        // An OOM the watcher has not got to yet must not vanish with the cgroup.
        if let Ok(stats) = c.runtime.stats()
            && stats.oom_kills > c.oom_reported.fetch_max(stats.oom_kills, Ordering::SeqCst)
        {
            tracing::info!(container = %c.id, "OOM");
            self.events.send(TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            });
        }
        c.oom_stop.store(true, Ordering::SeqCst);
        if let Err(e) = c.runtime.delete() {
            tracing::warn!(container = %c.id, error = %e, "runtime delete");
        }
        let exit = match init.exit() {
            Some(e) => e,
            // Created but never started: the runtime killed it; take the exit.
            None => init.wait_timeout(REAP_GRACE).unwrap_or_else(|| {
                self.pids.locked().remove(&init.pid());
                crate::process::Exit {
                    status: signal_exit_code(libc::SIGKILL),
                    at: now(),
                }
            }),
        };
        let execs: Vec<_> = c.execs.locked().drain().collect();
        for (_, p) in &execs {
            if let Some(io) = p.io() {
                io.shutdown(Duration::ZERO);
            }
        }
        if let Some(io) = init.io() {
            io.shutdown(IO_DRAIN);
        }
        if let Some(t) = &c.rootfs {
            rootfs::detach_all(t);
        }
        let _ = std::fs::remove_file(c.bundle.join(STATE_FILE));
        self.containers.locked().remove(&c.id);
        tracing::info!(container = %c.id, status = exit.status, "deleted");
        self.events.send(TaskDelete {
            container_id: c.id.clone(),
            pid: init.pid() as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid: init.pid() as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        if c.init.status() == Status::STOPPED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
        let mut p = Process::new(
            &c.id,
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = Some(process);
        {
            let mut execs = c.execs.locked();
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!("exec {}", req.exec_id)));
            }
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.events.send(TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn kill(&self, req: &KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .map_err(|_| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        if req.exec_id.is_empty() {
            if p.status() == Status::STOPPED && !req.all {
                return Err(ShimError::NotFound(format!(
                    "container {}: process already finished",
                    c.id
                )));
            }
            c.runtime.kill(signal, req.all)?;
            return Ok(());
        }
        match p.status() {
            Status::STOPPED => Err(ShimError::NotFound(format!(
                "exec {}: process already finished",
                req.exec_id
            ))),
            Status::CREATED => Err(ShimError::FailedPrecondition(format!(
                "exec {} is not started",
                req.exec_id
            ))),
            _ => {
                let sig = nix::sys::signal::Signal::try_from(signal)
                    .map_err(|_| ShimError::InvalidArgument(format!("signal {signal}")))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), sig)
                    .map_err(ShimError::sys(format!("kill exec {}", req.exec_id)))
            }
        }
    }

    fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid() as u32,
            status: p.status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.container(&req.id)?;
        let execs: HashMap<i32, String> = c
            .execs
            .locked()
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let mut processes = Vec::new();
        for pid in c.runtime.pids()? {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some(exec_id) = execs.get(&pid) {
                let details = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = MessageField::some(Any {
                    type_url: "containerd.runc.v1.ProcessDetails".into(),
                    value: details.write_to_bytes().unwrap_or_default(),
                    ..Default::default()
                });
            }
            processes.push(info);
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Task Checkpoint: CRIU dumps the container's process tree into
    /// `req.path` (its log in `<path>.work/dump.log`) and leaves it
    /// running, as Kubernetes' forensic checkpoints want (containerd's CRI
    /// asks runc the same: `Exit: false`).
    fn checkpoint(&self, req: &CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is {:?}, not running: only running containers can be checkpointed",
                c.id,
                c.init.status()
            )));
        }
        let images = std::path::Path::new(&req.path);
        if !images.is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "checkpoint path {:?} must be absolute",
                req.path
            )));
        }
        let work = std::path::PathBuf::from(format!("{}.work", req.path));
        let run = |cmd: &mut std::process::Command| {
            crate::helper_run::output(cmd, &|| self.children_added())
        };
        berth::runtime::checkpoint::dump(c.init.pid(), images, &work, true, &run)?;
        Ok(())
    }

    fn pause(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is {:?}, not running",
                c.init.status()
            )));
        }
        c.runtime.pause()?;
        c.init.set_paused(true);
        self.events.send(TaskPaused {
            container_id: id.to_string(),
            ..Default::default()
        });
        Ok(())
    }

    fn resume(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.init.status() != Status::PAUSED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is {:?}, not paused",
                c.init.status()
            )));
        }
        c.runtime.resume()?;
        c.init.set_paused(false);
        self.events.send(TaskResumed {
            container_id: id.to_string(),
            ..Default::default()
        });
        Ok(())
    }

    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))?;
        c.runtime.update(&resources)?;
        Ok(())
    }

    fn close_io(&self, req: &CloseIORequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.io()
        {
            io.close_stdin();
        }
        Ok(())
    }

    fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        match p.io() {
            Some(io) => io.resize(req.width, req.height),
            None => Ok(()),
        }
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

fn write_state(bundle: &Path, c: &Container) -> Result<()> {
    let json = serde_json::to_vec(c)
        .map_err(|e| ShimError::InvalidArgument(format!("encode container state: {e}")))?;
    std::fs::write(bundle.join(STATE_FILE), json).map_err(ShimError::io(format!(
        "write {}",
        bundle.join(STATE_FILE).display()
    )))
}

/// Reads the container record `create` left in the bundle.
pub fn read_state(bundle: &Path) -> Option<Container> {
    let data = std::fs::read(bundle.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Test builds only (debug assertions): a Create whose command line holds
/// the word in `BERTH_SHIM_TEST_PANIC` panics while it holds the `pids`
/// lock, so that the tests can check that a panicking RPC neither poisons
/// the shim nor stops its reaper. Release builds have no such hook.
#[cfg(debug_assertions)]
fn test_panic_hook(spec: &Spec) {
    let Ok(word) = std::env::var("BERTH_SHIM_TEST_PANIC") else {
        return;
    };
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    if !word.is_empty() && args.iter().any(|a| a.contains(&word)) {
        panic!("test hook: Create panics holding the pids lock ({word})");
    }
}

/// Runs one RPC: a panic becomes an Internal error instead of a request
/// containerd waits on forever; failures are logged.
fn rpc<T>(rpc: &str, id: &str, f: impl FnOnce() -> Result<T>) -> TtrpcResult<T> {
    let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!(rpc, container = %id, panic = %msg, "rpc panicked");
            return Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
                containerd_shim::protos::ttrpc::get_status(
                    containerd_shim::protos::ttrpc::Code::INTERNAL,
                    format!("{rpc} panicked: {msg}"),
                ),
            ));
        }
    };
    if let Err(e) = &r {
        tracing::warn!(rpc, container = %id, error = %e, "rpc failed");
    }
    r.map_err(Into::into)
}

/// Gives the heap's free pages back to the kernel. A shim idles for its
/// containers' whole life after Start; what parsing the spec and setting up
/// the container allocated is free by then but still resident.
fn release_free_heap() {
    // SAFETY: malloc_trim only hands free allocator memory back to the kernel.
    unsafe { libc::malloc_trim(0) };
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        rpc("Create", &req.id, || self.inner.create(&req))
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let r = rpc("Start", &req.id, || self.inner.start(&req));
        release_free_heap();
        r
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let r = rpc("Delete", &req.id, || self.inner.delete(&req));
        release_free_heap();
        r
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        rpc("Exec", &req.id, || {
            self.inner.exec(&req).map(|()| Empty::new())
        })
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        rpc("ResizePty", &req.id, || {
            self.inner.resize_pty(&req).map(|()| Empty::new())
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        rpc("CloseIO", &req.id, || {
            self.inner.close_io(&req).map(|()| Empty::new())
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        rpc("Kill", &req.id, || {
            self.inner.kill(&req).map(|()| Empty::new())
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        rpc("Pids", &req.id, || self.inner.pids(&req))
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        rpc("State", &req.id, || self.inner.state(&req))
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        rpc("Pause", &req.id, || {
            self.inner.pause(&req.id).map(|()| Empty::new())
        })
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        rpc("Resume", &req.id, || {
            self.inner.resume(&req.id).map(|()| Empty::new())
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        rpc("Update", &req.id, || {
            self.inner.update(&req).map(|()| Empty::new())
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        rpc("Wait", &req.id, || {
            let p = self.inner.container(&req.id)?.process(&req.exec_id)?;
            let exit = p.wait();
            if let Some(io) = p.io() {
                io.drain_output(IO_DRAIN);
            }
            Ok(WaitResponse {
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            })
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        rpc("Stats", &req.id, || {
            let stats = self.inner.container(&req.id)?.runtime.stats()?;
            Ok(StatsResponse {
                stats: MessageField::some(metrics::to_any(&stats)?),
                ..Default::default()
            })
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.runtime.pid as u32)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: berth::VERSION.to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let left = self.inner.containers.locked().len();
        if left == 0 || req.now {
            tracing::info!(namespace = %self.inner.namespace, "shutting down");
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        rpc("Checkpoint", &req.id, || {
            self.inner.checkpoint(&req).map(|()| Empty::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_namespace_detection() {
        let mut spec = Spec::default();
        assert!(has_own_pid_namespace(&spec));
        let linux = spec.linux().clone().map(|mut l| {
            l.set_namespaces(Some(vec![]));
            l
        });
        spec.set_linux(linux);
        assert!(!has_own_pid_namespace(&spec));
    }

    #[test]
    fn unknown_containers_are_not_found() {
        let svc =
            TaskService::new("t", EventSender::discard(), Arc::new(ExitSignal::default())).unwrap();
        let err = svc
            .inner
            .state(&StateRequest {
                id: "nope".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), containerd_shim::protos::ttrpc::Code::NOT_FOUND);
    }
}

/// Type URL of runc's shim options (containerd's `options.Options`).
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// runc's `SystemdCgroup` option from a create request's options (as
/// containerd sends them for `[...runtimes.<name>.options]`); other option
/// types say nothing about the driver.
pub fn systemd_cgroup_option(options: Option<&Any>) -> Result<bool> {
    let Some(any) = options.filter(|a| a.type_url.ends_with(RUNC_OPTIONS_TYPE_URL)) else {
        return Ok(false);
    };
    let o = containerd_shim::protos::shim::oci::Options::parse_from_bytes(&any.value)
        .map_err(|e| ShimError::InvalidArgument(format!("runc options: {e}")))?;
    Ok(o.systemd_cgroup)
}

#[cfg(test)]
mod systemd_option_tests {
    use super::*;

    #[test]
    fn runc_options_say_systemd_cgroup() {
        let o = containerd_shim::protos::shim::oci::Options {
            systemd_cgroup: true,
            ..Default::default()
        };
        let any = Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE_URL}"),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert!(systemd_cgroup_option(Some(&any)).unwrap());
        let any = Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: containerd_shim::protos::shim::oci::Options::default()
                .write_to_bytes()
                .unwrap(),
            ..Default::default()
        };
        assert!(!systemd_cgroup_option(Some(&any)).unwrap());
        let other = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert!(!systemd_cgroup_option(Some(&other)).unwrap());
        assert!(!systemd_cgroup_option(None).unwrap());
        let bad = Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: vec![0xff],
            ..Default::default()
        };
        assert!(systemd_cgroup_option(Some(&bad)).is_err());
    }
}
