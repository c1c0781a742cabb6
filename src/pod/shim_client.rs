//! berthd as a shim v2 client: starting a pod's `containerd-shim-berth-v2`
//! with the shim `start` protocol, the ttrpc Task client, and the ttrpc
//! Events endpoint the shims publish to.
//!
//! The client is ttrpc's async one: a call is a future on berthd's runtime
//! (no thread per call, none per container), and every call but Wait has a
//! deadline, so a shim that does not answer delays only its own pod.
//!
//! Exits are learnt two ways, whichever comes first: `Task.Wait` per started
//! container (a pending call on the shim's one connection, repeated after a
//! berthd restart), and the `TaskExit` events the shims publish to the
//! Events endpoint (a shim reconnects to it on its next event after berthd
//! restarted). Exits that happened while berthd was down are read from the
//! shims at start-up. The endpoint also records `TaskOOM` events so that a
//! container killed by the OOM killer is reported with reason `OOMKilled`.
//!
//! A shim that dies is noticed as containerd notices it: its ttrpc
//! connection closes ([`ShimClient::closed`]); the pod manager then cleans
//! up after it (`pod/dead_shim.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Events, TaskClient, create_events};
use containerd_shim_protos::ttrpc::{self, context};

use super::{PodError, Result};

/// The shim binary's name.
pub const SHIM_BINARY: &str = "containerd-shim-berth-v2";
/// The containerd namespace berthd's shims run in.
pub const SHIM_NAMESPACE: &str = "k8s.io";
/// The events socket under the state dir.
pub const EVENTS_SOCKET: &str = "events.sock";
/// Deadline of a shim call (all but Wait): a shim that does not answer in
/// this time fails the call of its own pod, and nothing else waits for it.
const CALL_TIMEOUT_NS: i64 = 30_000_000_000;
/// Deadline of connecting to a shim and of its Connect call.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// What the shims publish that berthd records at once: init-process exits
/// (`TaskExit`; the per-container Task.Wait learns the same exits, whichever
/// comes first wins) and OOM kills (`TaskOOM`, which may come after the exit).
#[derive(Debug)]
pub enum ShimEvent {
    /// An init process exited.
    Exit(TaskExit),
    /// The OOM killer hit the container with this id.
    Oom(String),
}

/// Where the events endpoint sends [`ShimEvent`]s.
pub type ExitSender = tokio::sync::mpsc::UnboundedSender<ShimEvent>;

struct EventSink {
    oom: OomSet,
    exits: ExitSender,
}

#[async_trait::async_trait]
impl Events for EventSink {
    async fn forward(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        if let Some(env) = req.envelope.as_ref() {
            tracing::debug!(topic = %env.topic, "shim event");
            if env.topic == "/tasks/oom"
                && let Some(any) = env.event.as_ref()
                && let Ok(ev) = TaskOOM::parse_from_bytes(&any.value)
            {
                tracing::info!(container = %ev.container_id, "OOM kill reported");
                self.oom
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(ev.container_id.clone());
                // The exit may have been recorded already (the shim's OOM
                // watcher and its reaper race): the recorder fixes the reason.
                let _ = self.exits.send(ShimEvent::Oom(ev.container_id));
            } else if env.topic == "/tasks/exit"
                && let Some(any) = env.event.as_ref()
                && let Ok(ev) = TaskExit::parse_from_bytes(&any.value)
                && ev.id == ev.container_id
            {
                let _ = self.exits.send(ShimEvent::Exit(ev));
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
pub async fn serve_events(state: &Path, oom: OomSet, exits: ExitSender) -> Result<EventsSocket> {
    std::fs::create_dir_all(state)
        .map_err(|e| PodError::io(format!("create {}", state.display()), e))?;
    let path = state.join(EVENTS_SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PodError::io(format!("remove {}", path.display()), e)),
    }
    let addr = path.display().to_string();
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{addr}"))
        .map(|s| s.register_service(create_events(Arc::new(EventSink { oom, exits }))))
        .map_err(|e| PodError::Shim(format!("serve the events endpoint {addr}: {e}")))?;
    server
        .start()
        .await
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
pub async fn start_shim(pod_id: &str, dir: &Path, events_address: &str) -> Result<String> {
    let result = run_shim_start(pod_id, dir, events_address).await;
    crate::metrics::global().record_shim_start(result.is_ok());
    result
}

async fn run_shim_start(pod_id: &str, dir: &Path, events_address: &str) -> Result<String> {
    let bin = shim_binary()?;
    let out = tokio::process::Command::new(&bin)
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
        .kill_on_drop(true)
        .output()
        .await
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
        // Blocking D-Bus calls (a few ms): off the async workers.
        let (pod_id, dir) = (pod_id.to_owned(), dir.to_owned());
        let _ = tokio::task::spawn_blocking(move || shim_scope(&pod_id, &dir)).await;
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
    /// Becomes true when the connection closed (the shim exited or died).
    closed: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
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
        if s.code() == ttrpc::Code::INVALID_ARGUMENT {
            return PodError::InvalidArgument(format!("shim {call}: {}", s.message()));
        }
        if s.code() == ttrpc::Code::FAILED_PRECONDITION {
            return PodError::FailedPrecondition(format!("shim {call}: {}", s.message()));
        }
        return PodError::Shim(format!("{call}: {}", s.message()));
    }
    PodError::Shim(format!("{call}: {e}"))
}

/// The shim's unix socket, read by ttrpc; reports when the connection
/// closes (end of stream, an error, or the connection dropped), which is
/// how a dead shim is noticed (containerd's ttrpc `WithOnClose`).
struct WatchedStream {
    inner: tokio::net::UnixStream,
    closed: tokio::sync::watch::Sender<bool>,
}

impl WatchedStream {
    fn close(&self) {
        self.closed.send_replace(true);
    }
}

impl Drop for WatchedStream {
    fn drop(&mut self) {
        self.close();
    }
}

impl tokio::io::AsyncRead for WatchedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => self.close(),
            std::task::Poll::Ready(Err(_)) => self.close(),
            _ => {}
        }
        r
    }
}

impl tokio::io::AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ShimClient {
    /// Connects to the shim at `address` (bounded by a deadline).
    pub async fn connect(address: &str) -> Result<Self> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| PodError::Timeout(format!("connect to shim {address}")))?
            .map_err(|e| PodError::Shim(format!("connect to shim {address}: {e}")))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let socket = ttrpc::asynchronous::transport::Socket::new(WatchedStream {
            inner: stream,
            closed: tx,
        });
        let client = ttrpc::asynchronous::Client::new(socket);
        Ok(Self {
            address: address.to_owned(),
            task: TaskClient::new(client),
            closed: rx,
        })
    }

    /// Connects to the shim at `address` and checks that it answers.
    pub async fn connect_alive(address: &str) -> Result<Self> {
        let c = Self::connect(address).await?;
        c.shim_pid()
            .await
            .ok_or_else(|| PodError::Shim(format!("shim {address} does not answer")))?;
        Ok(c)
    }

    /// Resolves once the connection to the shim closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the connection to the shim closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub async fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        self.task
            .create(ctx(), req)
            .await
            .map(|r| r.pid)
            .map_err(|e| shim_err("Create", e))
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .start(ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| shim_err("Start", e))
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.task
            .kill(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("Kill", e))
    }

    /// Waits for the process to exit (`timeout_ns` 0: no limit); returns
    /// (exit status, exited at in ns). A pending Wait is a future on the
    /// shim's connection, not a thread; it fails when the connection closes.
    pub async fn wait(&self, id: &str, exec_id: &str, timeout_ns: i64) -> Result<(u32, i64)> {
        let req = api::WaitRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .wait(context::with_timeout(timeout_ns), &req)
            .await
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

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .state(ctx(), &req)
            .await
            .map_err(|e| shim_err("State", e))
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .delete(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("Delete", e))
    }

    pub async fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        self.task
            .exec(ctx(), req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("Exec", e))
    }

    /// Sets the terminal size of a process started with a terminal.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.task
            .resize_pty(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("ResizePty", e))
    }

    pub async fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        self.task
            .update(ctx(), req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("Update", e))
    }

    pub async fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        let req = api::StatsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.task
            .stats(ctx(), &req)
            .await
            .map_err(|e| shim_err("Stats", e))
    }

    /// Task Checkpoint: CRIU images of container `id` into `path` (the
    /// container keeps running).
    pub async fn checkpoint(&self, id: &str, path: &str) -> Result<()> {
        let req = api::CheckpointTaskRequest {
            id: id.to_owned(),
            path: path.to_owned(),
            ..Default::default()
        };
        self.task
            .checkpoint(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| shim_err("Checkpoint", e))
    }

    /// Asks the shim to exit (it does once it serves no container).
    pub async fn shutdown(&self) -> Result<()> {
        let req = api::ShutdownRequest {
            now: true,
            ..Default::default()
        };
        // The shim exits while answering: a closed connection is success.
        match self.task.shutdown(ctx(), &req).await {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) => {
                Err(PodError::Shim(format!("Shutdown: {}", s.message())))
            }
            Err(_) => Ok(()),
        }
    }

    /// The shim's pid (from Connect), if it answers in time.
    pub async fn shim_pid(&self) -> Option<u32> {
        let req = api::ConnectRequest::new();
        self.task
            .connect(
                context::with_timeout(CONNECT_TIMEOUT.as_nanos() as i64),
                &req,
            )
            .await
            .ok()
            .map(|r| r.shim_pid)
    }
}

/// What the shim binary's `delete` action (run for a container whose shim
/// is gone, as containerd runs it after a dead shim) reported: the
/// container's exit status and when. It kills what is left of the container
/// through its cgroup, removes the cgroup, unmounts the rootfs and removes
/// the dead shim's sockets.
pub async fn delete_after_dead_shim(container_id: &str, bundle: &Path) -> Result<(u32, i64)> {
    let bin = shim_binary()?;
    let out = tokio::time::timeout(
        std::time::Duration::from_nanos(CALL_TIMEOUT_NS as u64),
        tokio::process::Command::new(&bin)
            .args([
                "-namespace",
                SHIM_NAMESPACE,
                "-id",
                container_id,
                "-bundle",
                &bundle.display().to_string(),
                "delete",
            ])
            .current_dir(bundle)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| PodError::Timeout(format!("{} delete of {container_id}", bin.display())))?
    .map_err(|e| PodError::io(format!("run {} delete", bin.display()), e))?;
    if !out.status.success() {
        return Err(PodError::Shim(format!(
            "{} delete of {container_id} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let resp = api::DeleteResponse::parse_from_bytes(&out.stdout)
        .map_err(|e| PodError::Shim(format!("shim delete answer: {e}")))?;
    let at = resp
        .exited_at
        .as_ref()
        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .unwrap_or_else(super::now_ns);
    Ok((resp.exit_status, at))
}
