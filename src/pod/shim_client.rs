//! berthd as a shim v2 client: starting a pod's `containerd-shim-berth-v2`
//! with the shim `start` protocol, the ttrpc Task client, and the ttrpc
//! Events endpoint the shims publish to.
//!
//! Exits are learnt two ways, whichever comes first: `Task.Wait` per started
//! container (a blocked call on a thread, repeated after a berthd restart),
//! and the `TaskExit` events the shims publish to the Events endpoint (a
//! shim reconnects to it on its next event after berthd restarted). Exits
//! that happened while berthd was down are read from the shims at start-up.
//! The endpoint also records `TaskOOM` events so that a container killed by
//! the OOM killer is reported with reason `OOMKilled`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::ttrpc::{self, context};
use containerd_shim_protos::{Events, TaskClient, create_events};

use super::{PodError, Result};

/// The shim binary's name.
pub const SHIM_BINARY: &str = "containerd-shim-berth-v2";
/// The containerd namespace berthd's shims run in.
pub const SHIM_NAMESPACE: &str = "k8s.io";
/// The events socket under the state dir.
pub const EVENTS_SOCKET: &str = "events.sock";
/// Timeout of short shim calls.
const CALL_TIMEOUT_NS: i64 = 30_000_000_000;

/// Containers the OOM killer hit, by id (from TaskOOM events).
pub type OomSet = Arc<Mutex<HashSet<String>>>;

/// Where the shim binary is: next to berthd's own executable, else on PATH.
pub fn shim_binary() -> Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(SHIM_BINARY);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(SHIM_BINARY);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(PodError::Shim(format!(
        "{SHIM_BINARY} is neither next to berthd nor on PATH; install it (see deploy/)"
    )))
}

/// Init-process exits the shims published (`TaskExit`), for berthd to
/// record at once; the per-container Task.Wait threads learn the same exits,
/// whichever comes first wins.
pub type ExitSender = tokio::sync::mpsc::UnboundedSender<TaskExit>;

struct EventSink {
    oom: OomSet,
    exits: ExitSender,
}

impl Events for EventSink {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        if let Some(env) = req.envelope.as_ref() {
            tracing::debug!(topic = %env.topic, "shim event");
            if env.topic == "/tasks/oom"
                && let Some(any) = env.event.as_ref()
                && let Ok(ev) = TaskOOM::parse_from_bytes(&any.value)
            {
                tracing::info!(container = %ev.container_id, "OOM kill reported");
                self.oom.lock().expect("oom lock").insert(ev.container_id);
            } else if env.topic == "/tasks/exit"
                && let Some(any) = env.event.as_ref()
                && let Ok(ev) = TaskExit::parse_from_bytes(&any.value)
                && ev.id == ev.container_id
            {
                let _ = self.exits.send(ev);
            }
        }
        Ok(Default::default())
    }
}

/// The Events endpoint's socket file.
#[derive(Debug)]
pub struct EventsSocket {
    /// Its path: what the shims get as TTRPC_ADDRESS.
    pub address: String,
    /// (device, inode) of the file this process bound.
    identity: Option<(u64, u64)>,
}

impl EventsSocket {
    /// Removes the socket file at shutdown, if it is still the one this
    /// process bound. The shims keep running and reconnect to the next
    /// berthd (they retry on every event).
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.address) {
            Ok(m) if Some((m.dev(), m.ino())) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.address) {
                    tracing::warn!(socket = %self.address, error = %e, "cannot remove the events socket");
                }
            }
            _ => {}
        }
    }
}

/// Serves the Events endpoint at `<state>/events.sock`. The server lives as
/// long as berthd.
pub fn serve_events(state: &Path, oom: OomSet, exits: ExitSender) -> Result<EventsSocket> {
    std::fs::create_dir_all(state)
        .map_err(|e| PodError::io(format!("create {}", state.display()), e))?;
    let path = state.join(EVENTS_SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PodError::io(format!("remove {}", path.display()), e)),
    }
    let addr = path.display().to_string();
    let server = ttrpc::Server::new()
        .bind(&format!("unix://{addr}"))
        .and_then(|s| {
            let mut s = s.register_service(create_events(Arc::new(EventSink { oom, exits })));
            s.start().map(|()| s)
        })
        .map_err(|e| PodError::Shim(format!("serve the events endpoint {addr}: {e}")))?;
    // The endpoint serves until berthd exits.
    Box::leak(Box::new(server));
    let identity = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    Ok(EventsSocket {
        address: addr,
        identity,
    })
}

/// Runs `containerd-shim-berth-v2 start` for `pod_id` in `dir` and returns
/// the address of the shim that serves the pod.
pub fn start_shim(pod_id: &str, dir: &Path, events_address: &str) -> Result<String> {
    let bin = shim_binary()?;
    let out = Command::new(&bin)
        .args([
            "-namespace",
            SHIM_NAMESPACE,
            "-id",
            pod_id,
            "-address",
            events_address,
            "-publish-binary",
            "",
            "start",
        ])
        .current_dir(dir)
        .env("TTRPC_ADDRESS", events_address)
        // The node's compiled seccomp profiles, shared by every shim:
        // `<state>/seccomp-cache` (the pod dir is `<state>/pods/<id>`).
        .envs(dir.parent().and_then(Path::parent).map(|state| {
            (
                crate::runtime::seccomp::disk_cache::CACHE_DIR_ENV,
                state.join("seccomp-cache"),
            )
        }))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PodError::io(format!("run {} start", bin.display()), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || stdout.is_empty() {
        return Err(PodError::Shim(format!(
            "{} start failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if crate::runtime::cgroups::systemd::booted() {
        shim_scope(pod_id, dir);
    }
    Ok(stdout)
}

/// The systemd scope a pod's shim runs in.
pub fn shim_scope_name(pod_id: &str) -> String {
    let id: String = pod_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("berth-shim-{id}.scope")
}

/// Moves the shim daemon `start` spawned (its pid is in `<dir>/shim.pid`)
/// into a transient scope of its own, so that it (and every container it
/// holds) is not in berthd's service: `systemctl stop/restart berthd` then
/// never touches a pod, whatever the service's KillMode. As CRI-O does for
/// conmon. A failure is logged: the shim still serves, it only shares
/// berthd's cgroup (deploy/berthd.service's `KillMode=process` keeps it).
fn shim_scope(pod_id: &str, dir: &Path) {
    use crate::runtime::cgroups::systemd::{DEFAULT_SLICE, PropValue, with_bus};
    let Some(pid) = std::fs::read_to_string(dir.join("shim.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let name = shim_scope_name(pod_id);
    let props = [
        (
            "Description",
            PropValue::Str(format!("berth shim of pod {pod_id}")),
        ),
        ("Slice", PropValue::Str(DEFAULT_SLICE.to_owned())),
        ("PIDs", PropValue::U32s(vec![pid])),
        // The shim may manage cgroups below its own.
        ("Delegate", PropValue::Bool(true)),
        // Gone as soon as the shim is, also when it failed.
        (
            "CollectMode",
            PropValue::Str("inactive-or-failed".to_owned()),
        ),
    ];
    let started = std::time::Instant::now();
    let r = with_bus(|bus| {
        // The pod's shim was already running (and moved) before.
        if bus.unit_exists(&name)? && bus.active_state(&name)? == "active" {
            return Ok(false);
        }
        bus.start_transient_unit(&name, &props).map(|()| true)
    });
    match r {
        Ok(moved) => tracing::debug!(
            pod = %pod_id, pid, scope = %name, moved,
            scope_ms = started.elapsed().as_secs_f64() * 1e3,
            "shim in its own scope"
        ),
        Err(e) => tracing::warn!(
            pod = %pod_id, pid, scope = %name, error = %e,
            "cannot move the shim into a scope of its own; it stays in berthd's cgroup"
        ),
    }
}

/// A connection to one pod's shim.
#[derive(Clone)]
pub struct ShimClient {
    pub address: String,
    task: TaskClient,
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT_NS)
}

/// Maps a ttrpc error to a pod error (NotFound stays NotFound).
fn shim_err(call: &str, e: ttrpc::Error) -> PodError {
    if let ttrpc::Error::RpcStatus(s) = &e {
        if s.code() == ttrpc::Code::NOT_FOUND {
            return PodError::NotFound(format!("shim {call}: {}", s.message()));
        }
        if s.code() == ttrpc::Code::DEADLINE_EXCEEDED {
            return PodError::Timeout(format!("shim {call}: {}", s.message()));
        }
        return PodError::Shim(format!("{call}: {}", s.message()));
    }
    PodError::Shim(format!("{call}: {e}"))
}

impl ShimClient {
    /// Connects to the shim at `address`.
    pub fn connect(address: &str) -> Result<Self> {
        let client = ttrpc::Client::connect(address)
            .map_err(|e| PodError::Shim(format!("connect to shim {address}: {e}")))?;
        Ok(Self {
            address: address.to_owned(),
            task: TaskClient::new(client),
        })
    }

    /// Whether the shim answers.
    pub fn alive(&self) -> bool {
        let req = api::ConnectRequest::new();
        self.task
            .connect(context::with_timeout(2_000_000_000), &req)
            .is_ok()
    }

    pub fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        self.task
            .create(ctx(), req)
            .map(|r| r.pid)
            .map_err(|e| shim_err("Create", e))
    }

    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .start(ctx(), &req)
            .map(|r| r.pid)
            .map_err(|e| shim_err("Start", e))
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.task
            .kill(ctx(), &req)
            .map(|_| ())
            .map_err(|e| shim_err("Kill", e))
    }

    /// Waits for the process to exit (`timeout_ns` 0: no limit); returns
    /// (exit status, exited at in ns).
    pub fn wait(&self, id: &str, exec_id: &str, timeout_ns: i64) -> Result<(u32, i64)> {
        let req = api::WaitRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .wait(context::with_timeout(timeout_ns), &req)
            .map(|r| {
                let at = r
                    .exited_at
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                    .unwrap_or_else(super::now_ns);
                (r.exit_status, at)
            })
            .map_err(|e| shim_err("Wait", e))
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .state(ctx(), &req)
            .map_err(|e| shim_err("State", e))
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .delete(ctx(), &req)
            .map(|_| ())
            .map_err(|e| shim_err("Delete", e))
    }

    pub fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        self.task
            .exec(ctx(), req)
            .map(|_| ())
            .map_err(|e| shim_err("Exec", e))
    }

    /// Sets the terminal size of a process started with a terminal.
    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.task
            .resize_pty(ctx(), &req)
            .map(|_| ())
            .map_err(|e| shim_err("ResizePty", e))
    }

    pub fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        self.task
            .update(ctx(), req)
            .map(|_| ())
            .map_err(|e| shim_err("Update", e))
    }

    pub fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        let req = api::StatsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.task
            .stats(ctx(), &req)
            .map_err(|e| shim_err("Stats", e))
    }

    /// Asks the shim to exit (it does once it serves no container).
    pub fn shutdown(&self) -> Result<()> {
        let req = api::ShutdownRequest {
            now: true,
            ..Default::default()
        };
        // The shim exits while answering: a closed connection is success.
        match self.task.shutdown(ctx(), &req) {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) => {
                Err(PodError::Shim(format!("Shutdown: {}", s.message())))
            }
            Err(_) => Ok(()),
        }
    }

    /// The shim's pid (from Connect), if it answers.
    pub fn shim_pid(&self) -> Option<u32> {
        let req = api::ConnectRequest::new();
        self.task
            .connect(context::with_timeout(2_000_000_000), &req)
            .ok()
            .map(|r| r.shim_pid)
    }
}
