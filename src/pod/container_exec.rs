//! ExecSync: Task.Exec with stdout/stderr fifos that berthd reads, a timeout,
//! and the exit code.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::Spec;

use super::{PodError, PodManager, Result, new_id};
use crate::store::ContainerState;

/// At most this much of each stream is kept (as containerd's 16 MiB cap).
const MAX_OUTPUT: u64 = 16 << 20;

/// What ExecSync returns.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| PodError::io(format!("mkfifo {}", path.display()), e.into()))
}

/// Opens a fifo's read end without waiting for a writer, and reads it on a
/// thread until EOF, or, once `done` is set (the process was reaped), until
/// nothing is left.
fn reader(path: &Path, done: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<Vec<u8>>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| PodError::io(format!("open {}", path.display()), e))?;
    Ok(std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let mut seen_writer = false;
        loop {
            let finished = done.load(Ordering::Acquire);
            match f.read(&mut buf) {
                Ok(0) if seen_writer || finished => break,
                Ok(n) if n > 0 => {
                    seen_writer = true;
                    // Exactly up to the cap: a push past it would double
                    // the buffer's capacity to 32 MiB.
                    let room = (MAX_OUTPUT as usize).saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    seen_writer = true;
                    if finished {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
                Ok(_) => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    }))
}

impl PodManager {
    /// Runs `cmd` in the container and returns its output and exit code.
    /// `timeout` 0 means no limit.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let c = self
            .resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        if c.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let spec = Spec::load(c.bundle.join("config.json"))
            .map_err(|e| PodError::Shim(format!("read the container's config.json: {e}")))?;
        let process = crate::spec::exec_process(&spec, &cmd, false)?;
        let exec_id = format!("exec-{}", &new_id()?[..16]);
        let dir = c.bundle.join("execs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| PodError::io(format!("create {}", dir.display()), e))?;
        let out_path = dir.join(format!("{exec_id}.stdout"));
        let err_path = dir.join(format!("{exec_id}.stderr"));
        let result = self
            .run_exec(
                &c.pod_id, &c.id, &exec_id, process, &out_path, &err_path, timeout,
            )
            .await;
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_exec(
        &self,
        pod_id: &str,
        id: &str,
        exec_id: &str,
        process: oci_spec::runtime::Process,
        out_path: &Path,
        err_path: &Path,
        timeout: i64,
    ) -> Result<ExecOutput> {
        mkfifo(out_path)?;
        mkfifo(err_path)?;
        let done = Arc::new(AtomicBool::new(false));
        let out_reader = reader(out_path, done.clone())?;
        let err_reader = reader(err_path, done.clone())?;
        // However this ends, the readers stop once the process is gone.
        struct Finish(Arc<AtomicBool>);
        impl Drop for Finish {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let finish = Finish(done);
        let json = serde_json::to_vec(&process).map_err(|e| PodError::Shim(e.to_string()))?;
        let req = api::ExecProcessRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            terminal: false,
            stdout: out_path.display().to_string(),
            stderr: err_path.display().to_string(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: json,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let shim = self.shim_of(pod_id).await?;
        shim.exec(&req).await?;
        shim.start(id, exec_id).await?;
        let wait = shim.wait(id, exec_id, 0);
        let waited = if timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await {
                Ok(w) => w,
                Err(_) => {
                    let _ = shim.kill(id, exec_id, libc::SIGKILL as u32, false).await;
                    let _ = shim.wait(id, exec_id, 30_000_000_000).await;
                    let _ = shim.delete(id, exec_id).await;
                    return Err(PodError::Timeout(format!(
                        "command {:?} did not finish within {timeout}s",
                        process.args().clone().unwrap_or_default()
                    )));
                }
            }
        } else {
            wait.await
        };
        let (status, _) = waited?;
        let _ = shim.delete(id, exec_id).await;
        drop(finish);
        // The readers end within a poll step of `finish`.
        let stdout = tokio::task::spawn_blocking(move || out_reader.join().unwrap_or_default())
            .await
            .unwrap_or_default();
        let stderr = tokio::task::spawn_blocking(move || err_reader.join().unwrap_or_default())
            .await
            .unwrap_or_default();
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: status as i32,
        })
    }
}
