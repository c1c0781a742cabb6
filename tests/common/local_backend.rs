//! A real [`StreamBackend`] for the streaming tests that needs no pods:
//! exec runs a host process (pipes, or a pty from openpty for tty), attach
//! runs the "container's" registered command the same way, and port-forward
//! dials 127.0.0.1:port inside a network namespace the test made, from a
//! thread that setns()'d into it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use berth::stream::{BoxFuture, SessionIo, StreamBackend, StreamError, TerminalSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

#[derive(Default)]
pub struct LocalProcessBackend {
    /// Attach targets: container id → the command standing in for its process.
    pub containers: Mutex<HashMap<String, Vec<String>>>,
    /// Port-forward targets: pod id → netns path.
    pub pods: Mutex<HashMap<String, PathBuf>>,
    /// Pids of every process started, in order.
    pub pids: Mutex<Vec<u32>>,
    /// Terminal sizes applied to ptys, in order.
    pub resizes: Mutex<Vec<TerminalSize>>,
    pub resized: Notify,
    pub started: Notify,
}

impl LocalProcessBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits until a resize to `size` was applied to a pty.
    pub async fn wait_resize(&self, size: TerminalSize) {
        loop {
            let notified = self.resized.notified();
            if self.resizes.lock().unwrap().contains(&size) {
                return;
            }
            notified.await;
        }
    }

    async fn run(&self, cmd: Vec<String>, io: SessionIo) -> Result<i32, StreamError> {
        if cmd.is_empty() {
            return Err(StreamError::Backend("empty command".into()));
        }
        if io.tty {
            self.run_tty(cmd, io).await
        } else {
            self.run_pipes(cmd, io).await
        }
    }

    async fn run_pipes(&self, cmd: Vec<String>, io: SessionIo) -> Result<i32, StreamError> {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(if io.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if io.stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if io.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let child = c
            .spawn()
            .map_err(|e| StreamError::Backend(format!("spawn {}: {e}", cmd[0])))?;
        let mut child = Reaped(Some(child));
        let ch = child.0.as_mut().unwrap();
        self.pids.lock().unwrap().push(ch.id().unwrap_or(0));
        self.started.notify_waiters();
        let stdin_task = match (io.stdin, ch.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(AbortOnDrop(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }))),
            _ => None,
        };
        let out = copy_opt(ch.stdout.take(), io.stdout);
        let err = copy_opt(ch.stderr.take(), io.stderr);
        let (status, (), ()) = tokio::join!(ch.wait(), out, err);
        drop(stdin_task);
        let status = status.map_err(|e| StreamError::Backend(e.to_string()))?;
        child.0 = None;
        Ok(status.code().unwrap_or(128 + 9))
    }

    async fn run_tty(&self, cmd: Vec<String>, io: SessionIo) -> Result<i32, StreamError> {
        let pty = nix::pty::openpty(None, None).map_err(|e| StreamError::Backend(e.to_string()))?;
        let slave: OwnedFd = pty.slave;
        let master: OwnedFd = pty.master;
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: setsid and ioctl are async-signal-safe syscalls; nothing
        // else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c
            .spawn()
            .map_err(|e| StreamError::Backend(format!("spawn {}: {e}", cmd[0])))?;
        // The Command keeps its Stdio (slave copies) open until dropped;
        // the master only reads EOF (EIO) once every slave fd is closed.
        drop(c);
        drop(slave);
        let mut child = Reaped(Some(child));
        let ch = child.0.as_mut().unwrap();
        self.pids.lock().unwrap().push(ch.id().unwrap_or(0));
        self.started.notify_waiters();
        let master_read =
            tokio::fs::File::from_std(std::fs::File::from(master.try_clone().unwrap()));
        let master_write =
            tokio::fs::File::from_std(std::fs::File::from(master.try_clone().unwrap()));
        let resize_fd = master;
        let stdin_task = io.stdin.map(|mut from| {
            let mut to = master_write;
            AbortOnDrop(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }))
        });
        let resize_task = io.resize.map(|mut sizes| {
            let fd = resize_fd.try_clone().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<TerminalSize>(4);
            let t = AbortOnDrop(tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let ws = libc::winsize {
                        ws_row: size.height,
                        ws_col: size.width,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                    if rc == 0 && tx.send(size).await.is_err() {
                        return;
                    }
                }
            }));
            (t, async move {
                while let Some(size) = rx.recv().await {
                    self.resizes.lock().unwrap().push(size);
                    self.resized.notify_waiters();
                }
            })
        });
        let (resize_guard, resize_record) = match resize_task {
            Some((g, f)) => (Some(g), Some(f)),
            None => (None, None),
        };
        let record = async {
            if let Some(f) = resize_record {
                f.await;
            }
        };
        let out = async {
            if let Some(mut to) = io.stdout {
                let mut from = master_read;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    // EIO once the last slave fd closed (the process exited).
                    match from.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to.shutdown().await;
            }
        };
        let run = async {
            let (status, ()) = tokio::join!(ch.wait(), out);
            status
        };
        let status = tokio::select! {
            s = run => s,
            () = async { record.await; std::future::pending::<()>().await } => unreachable!(),
        };
        drop(stdin_task);
        drop(resize_guard);
        let status = status.map_err(|e| StreamError::Backend(e.to_string()))?;
        child.0 = None;
        Ok(status.code().unwrap_or(128 + 9))
    }
}

async fn copy_opt<R, W>(from: Option<R>, to: Option<Box<W>>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    if let (Some(mut from), Some(mut to)) = (from, to) {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
    }
}

/// Kills and reaps the child if the session is dropped before it exited.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.start_kill();
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to 127.0.0.1:`port` inside the netns at `netns` (a socket keeps
/// the namespace it was made in, so the thread can end afterwards).
pub fn connect_in_netns(
    netns: &std::path::Path,
    port: u16,
) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns)?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        std::net::TcpStream::connect(("127.0.0.1", port))
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}

impl StreamBackend for LocalProcessBackend {
    fn exec(
        &self,
        _container_id: String,
        cmd: Vec<String>,
        io: SessionIo,
    ) -> BoxFuture<'_, Result<i32, StreamError>> {
        Box::pin(self.run(cmd, io))
    }

    fn attach(
        &self,
        container_id: String,
        io: SessionIo,
    ) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let cmd = self
                .containers
                .lock()
                .unwrap()
                .get(&container_id)
                .cloned()
                .ok_or_else(|| {
                    StreamError::Backend(format!("container {container_id} not found"))
                })?;
            self.run(cmd, io).await.map(|_| ())
        })
    }

    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        mut stream: DuplexStream,
    ) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let netns = self
                .pods
                .lock()
                .unwrap()
                .get(&pod_sandbox_id)
                .cloned()
                .ok_or_else(|| StreamError::Backend(format!("pod {pod_sandbox_id} not found")))?;
            let tcp = tokio::task::spawn_blocking(move || connect_in_netns(&netns, port))
                .await
                .map_err(|e| StreamError::Backend(e.to_string()))?
                .map_err(|e| StreamError::Backend(format!("connect 127.0.0.1:{port}: {e}")))?;
            tcp.set_nonblocking(true)
                .map_err(|e| StreamError::Backend(e.to_string()))?;
            let mut tcp = tokio::net::TcpStream::from_std(tcp)
                .map_err(|e| StreamError::Backend(e.to_string()))?;
            let r = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
            if std::env::var_os("BERTH_STREAM_DEBUG").is_some() {
                eprintln!("port_forward {port}: {r:?}");
            }
            r.map(|_| ())
                .map_err(|e| StreamError::Backend(e.to_string()))
        })
    }
}
