//! The streaming server's backend for berthd's pods: exec through the pod's
//! shim (Task.Exec with fifos berthd creates and copies to and from the
//! session's pipes), attach through the shim's attach socket
//! (`container_attach.rs`), port-forward by dialling 127.0.0.1 inside the
//! pod's pinned network namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::Spec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::unix::pipe;

use super::shim_client::ShimClient;
use super::{PodError, PodManager, Result, new_id};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::stream::{BoxFuture, SessionIo, StreamBackend, StreamError};

/// [`StreamBackend`] over a [`PodManager`].
#[derive(Debug, Clone)]
pub struct PodStreamBackend {
    pods: Arc<PodManager>,
}

impl PodStreamBackend {
    pub fn new(pods: Arc<PodManager>) -> Self {
        Self { pods }
    }
}

fn backend_err(e: PodError) -> StreamError {
    StreamError::Backend(e.to_string())
}

impl StreamBackend for PodStreamBackend {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: SessionIo,
    ) -> BoxFuture<'_, std::result::Result<i32, StreamError>> {
        Box::pin(async move {
            self.pods
                .stream_exec(&container_id, cmd, io)
                .await
                .map_err(backend_err)
        })
    }

    fn attach(
        &self,
        container_id: String,
        io: SessionIo,
    ) -> BoxFuture<'_, std::result::Result<(), StreamError>> {
        Box::pin(async move {
            self.pods
                .stream_attach(&container_id, io)
                .await
                .map_err(backend_err)
        })
    }

    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: DuplexStream,
    ) -> BoxFuture<'_, std::result::Result<(), StreamError>> {
        Box::pin(async move {
            self.pods
                .stream_port_forward(&pod_sandbox_id, port, stream)
                .await
                .map_err(backend_err)
        })
    }
}

/// Removes the session's fifos however the session ends.
struct Fifos(Vec<PathBuf>);

impl Drop for Fifos {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Kills and deletes the exec process unless the session finished normally
/// (the client vanished and the session future was dropped).
struct ExecGuard {
    shim: Arc<ShimClient>,
    container: String,
    exec_id: String,
    /// Whether Start succeeded, sent by the Start task itself: a session
    /// dropped while Start is in flight (the task runs on) must still learn
    /// that the process started, and kill it.
    started: Option<tokio::sync::oneshot::Receiver<bool>>,
    armed: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (shim, cid, eid, started) = (
            self.shim.clone(),
            self.container.clone(),
            self.exec_id.clone(),
            self.started.take(),
        );
        tracing::debug!(container = %cid, exec = %eid, "exec session dropped: killing the process");
        // Not during the runtime's own shutdown: the shim then outlives it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            // Waits for an in-flight Start to return.
            let started = match started {
                Some(rx) => rx.await.unwrap_or(false),
                None => false,
            };
            if started {
                let _ = shim.kill(&cid, &eid, libc::SIGKILL as u32, false).await;
                let _ = shim.wait(&cid, &eid, 30_000_000_000).await;
            }
            let _ = shim.delete(&cid, &eid).await;
        });
    }
}

/// Makes a FIFO (0600) at `path`.
pub(super) fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| PodError::io(format!("mkfifo {}", path.display()), e.into()))
}

/// Opens an output fifo's read end, plus a write end berthd holds until the
/// process has started (so the reader sees EOF only once the process and
/// the shim closed theirs, not before they opened them).
fn open_output(path: &Path) -> Result<(pipe::Receiver, pipe::Sender)> {
    let rx = pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| PodError::io(format!("open {}", path.display()), e))?;
    let tx = pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(|e| PodError::io(format!("open {}", path.display()), e))?;
    Ok((rx, tx))
}

async fn copy_out(
    mut from: pipe::Receiver,
    mut to: Box<dyn AsyncWrite + Send + Unpin>,
) -> std::io::Result<u64> {
    let n = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
    n
}

async fn copy_in(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    mut to: pipe::Sender,
) -> std::io::Result<u64> {
    tokio::io::copy(&mut from, &mut to).await
    // Dropping `to` closes the fifo: the process reads EOF.
}

impl PodManager {
    /// The container with `id` (or a unique prefix), which must be running.
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        let c = self
            .resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        if c.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    /// The pod with `id` (or a unique prefix), which must be ready.
    pub fn ready_pod(&self, id: &str) -> Result<PodRecord> {
        let p = self
            .resolve_pod(id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id}")))?;
        if p.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                p.id
            )));
        }
        Ok(p)
    }

    /// Runs `cmd` in the container with the session's stdio; the exit code.
    pub async fn stream_exec(&self, id: &str, cmd: Vec<String>, io: SessionIo) -> Result<i32> {
        let c = self.running_container(id)?;
        let spec = Spec::load(c.bundle.join("config.json"))
            .map_err(|e| PodError::Shim(format!("read the container's config.json: {e}")))?;
        let process = crate::spec::exec_process(&spec, &cmd, io.tty)?;
        let exec_id = format!("exec-{}", &new_id()?[..16]);
        let dir = c.bundle.join("execs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| PodError::io(format!("create {}", dir.display()), e))?;
        let SessionIo {
            tty,
            stdin,
            stdout,
            stderr,
            resize,
        } = io;
        let stderr = if tty { None } else { stderr };
        let path = |s: &str| dir.join(format!("{exec_id}.{s}"));
        let mut fifos = Fifos(Vec::new());
        let mut fifo = |name: &str, want: bool| -> Result<Option<PathBuf>> {
            if !want {
                return Ok(None);
            }
            let p = path(name);
            mkfifo(&p)?;
            fifos.0.push(p.clone());
            Ok(Some(p))
        };
        let stdin_path = fifo("stdin", stdin.is_some())?;
        let stdout_path = fifo("stdout", stdout.is_some())?;
        let stderr_path = fifo("stderr", stderr.is_some())?;
        let out = stdout_path.as_deref().map(open_output).transpose()?;
        let err = stderr_path.as_deref().map(open_output).transpose()?;

        let show = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let json = serde_json::to_vec(&process).map_err(|e| PodError::Shim(e.to_string()))?;
        let req = api::ExecProcessRequest {
            id: c.id.clone(),
            exec_id: exec_id.clone(),
            terminal: tty,
            stdin: show(&stdin_path),
            stdout: show(&stdout_path),
            stderr: show(&stderr_path),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: json,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let shim = self.shim_of(&c.pod_id).await?;
        shim.exec(&req).await?;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let mut guard = ExecGuard {
            shim: shim.clone(),
            container: c.id.clone(),
            exec_id: exec_id.clone(),
            started: Some(started_rx),
            armed: true,
        };
        let (s, cid, eid) = (shim.clone(), c.id.clone(), exec_id.clone());
        // On its own task: it completes (and tells the guard) even when
        // this session is dropped meanwhile.
        tokio::spawn(async move {
            let r = s.start(&cid, &eid).await;
            let _ = started_tx.send(r.is_ok());
            r
        })
        .await
        .map_err(|e| PodError::Shim(e.to_string()))??;
        // The shim opens the stdio fifos at Start: now the stdin write end
        // can open (a fifo's write end needs a reader).
        let stdin_tx = match &stdin_path {
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .open_sender(p)
                    .map_err(|e| PodError::io(format!("open {}", p.display()), e))?,
            ),
            None => None,
        };
        tracing::debug!(container = %c.id, exec = %exec_id, tty, "exec session started");

        let (out_rx, out_hold) = out.unzip();
        let (err_rx, err_hold) = err.unzip();
        drop((out_hold, err_hold));

        let wait = shim.wait(&c.id, &exec_id, 0);
        let outputs = async {
            let o = async {
                if let (Some(rx), Some(to)) = (out_rx, stdout) {
                    let _ = copy_out(rx, to).await;
                }
            };
            let e = async {
                if let (Some(rx), Some(to)) = (err_rx, stderr) {
                    let _ = copy_out(rx, to).await;
                }
            };
            tokio::join!(o, e);
        };
        let main = async {
            let (status, ()) = tokio::join!(wait, outputs);
            status
        };
        let background = async {
            let input = async {
                if let (Some(from), Some(to)) = (stdin, stdin_tx) {
                    let _ = copy_in(from, to).await;
                }
            };
            let resizes = async {
                let Some(mut rx) = resize else { return };
                while let Some(size) = rx.recv().await {
                    let r = shim
                        .resize_pty(&c.id, &exec_id, size.width.into(), size.height.into())
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "resize failed");
                    }
                }
            };
            tokio::join!(input, resizes);
            std::future::pending::<()>().await
        };
        let status = tokio::select! {
            biased;
            s = main => s,
            () = background => unreachable!("pending never completes"),
        };
        guard.armed = false;
        let _ = shim.delete(&c.id, &exec_id).await;
        drop(fifos);
        let (status, _) = status?;
        Ok(status as i32)
    }

    /// Copies `stream` to and from TCP `port` on the pod's loopback.
    pub async fn stream_port_forward(
        &self,
        pod_id: &str,
        port: u16,
        mut stream: DuplexStream,
    ) -> Result<()> {
        let pod = self.ready_pod(pod_id)?;
        let sock = match pod.netns.clone() {
            Some(netns) => connect_in_netns(netns, port).await?,
            None => std::net::TcpStream::connect(("127.0.0.1", port))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| PodError::io(format!("connect to 127.0.0.1:{port}"), e))?,
        };
        let mut sock = tokio::net::TcpStream::from_std(sock)
            .map_err(|e| PodError::io("register the forwarded socket", e))?;
        tracing::debug!(pod = %pod.id, port, "port-forward connected");
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut sock).await;
        Ok(())
    }
}

/// Connects to 127.0.0.1:`port` inside the network namespace pinned at
/// `netns`, from a dedicated thread that enters it (a socket keeps the
/// namespace it was created in; the thread ends right after).
async fn connect_in_netns(netns: PathBuf, port: u16) -> Result<std::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let r = (|| -> Result<std::net::TcpStream> {
                let f = std::fs::File::open(&netns)
                    .map_err(|e| PodError::io(format!("open {}", netns.display()), e))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| PodError::io(format!("enter {}", netns.display()), e.into()))?;
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| {
                    PodError::io(format!("connect to 127.0.0.1:{port} in the pod"), e)
                })?;
                s.set_nonblocking(true)
                    .map_err(|e| PodError::io("set the socket non-blocking", e))?;
                Ok(s)
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| PodError::io("spawn the netns dial thread", e))?;
    rx.await
        .map_err(|_| PodError::Shim("the netns dial thread died".into()))?
}
