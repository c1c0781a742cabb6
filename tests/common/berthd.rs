//! Starts the built berthd binary on a temp socket/root/state and connects
//! the `k8s-cri` clients to it over the unix socket.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Upper bound for waiting on a process to come up or go down: only there
/// to turn a hang into a failure, never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The berthd binary cargo built for this test run, or the one
/// `BERTH_BERTHD_BIN` names (e.g. a release build; its shim next to it).
pub fn berthd_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BERTH_BERTHD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_berthd").into())
    })
}

/// A temp directory holding one berthd instance's root, state and socket;
/// several `Berthd` processes can use it one after another.
pub struct BerthdDirs {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl BerthdDirs {
    pub fn new(test: &str) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!(
                "{}-",
                super::unique_tag(&format!("daemon-{test}"))
            ))
            .tempdir_in("/tmp")?;
        Ok(Self {
            root: tmp.path().join("root"),
            state: tmp.path().join("state"),
            socket: tmp.path().join("run/berth.sock"),
            tmp,
        })
    }

    /// The flags that point berthd at these directories.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--address".into(),
            self.socket.display().to_string(),
        ]
    }
}

/// A running berthd; SIGKILLed in Drop if the test did not stop it.
pub struct Berthd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Berthd {
    /// Starts berthd on `dirs` and waits until its socket accepts connections.
    pub fn start(dirs: &BerthdDirs) -> Result<Self> {
        Self::start_with(dirs, dirs.args(), &dirs.socket)
    }

    /// Starts berthd with exactly `args`, expecting it to listen on `socket`.
    pub fn start_with(dirs: &BerthdDirs, args: Vec<String>, socket: &Path) -> Result<Self> {
        Self::start_logged(dirs, args, socket, "debug")
    }

    /// As [`Berthd::start_with`], logging at `level` (the benches use `info`,
    /// as containerd runs beside them).
    pub fn start_logged(
        dirs: &BerthdDirs,
        args: Vec<String>,
        socket: &Path,
        level: &str,
    ) -> Result<Self> {
        Self::start_logged_env(dirs, args, socket, level, &[])
    }

    /// As [`Berthd::start_logged`], with extra environment variables (berthd
    /// passes its environment on to the shims it starts).
    pub fn start_logged_env(
        dirs: &BerthdDirs,
        args: Vec<String>,
        socket: &Path,
        level: &str,
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_binary_env(Path::new(berthd_bin()), dirs, args, socket, level, envs)
    }

    /// As [`Berthd::start_logged`], running the berthd executable at `bin`
    /// (a copy the test may replace on disk).
    pub fn start_binary(
        bin: &Path,
        dirs: &BerthdDirs,
        args: Vec<String>,
        socket: &Path,
        level: &str,
    ) -> Result<Self> {
        Self::start_binary_env(bin, dirs, args, socket, level, &[])
    }

    /// As [`Berthd::start_binary`], with extra environment variables.
    pub fn start_binary_env(
        bin: &Path,
        dirs: &BerthdDirs,
        args: Vec<String>,
        socket: &Path,
        level: &str,
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .envs(envs.iter().copied())
            .arg("--log-level")
            .arg(level);
        Self::spawn(cmd, dirs, socket)
    }

    /// As [`Berthd::start_with`], without `--log-level` and without
    /// RUST_LOG: the log level is the config file's (SIGHUP reloads it).
    pub fn start_file_logged(dirs: &BerthdDirs, args: Vec<String>, socket: &Path) -> Result<Self> {
        let mut cmd = Command::new(berthd_bin());
        cmd.args(&args).env_remove("RUST_LOG");
        Self::spawn(cmd, dirs, socket)
    }

    /// Starts `cmd` with its stderr in a new log file under `dirs` and
    /// waits until it serves on `socket`.
    fn spawn(mut cmd: Command, dirs: &BerthdDirs, socket: &Path) -> Result<Self> {
        let log = next_log_path(dirs.tmp.path());
        let stderr = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn berthd")?;
        let mut berthd = Berthd {
            child: Some(child),
            socket: socket.to_owned(),
            log,
        };
        berthd.wait_ready()?;
        Ok(berthd)
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("berthd running").id() as i32)
    }

    fn wait_ready(&mut self) -> Result<()> {
        // In the VM lane (software emulation, the debug binary read over
        // virtio-9p) a start alone took over a minute on a loaded host.
        let patience = if std::env::var_os("BERTH_IN_VM").is_some() {
            PATIENCE * 5
        } else {
            PATIENCE
        };
        let deadline = Instant::now() + patience;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("berthd running");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "berthd exited with {status} before serving; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "berthd did not serve on {} in time; log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a line of berthd's log satisfies `pred`.
    pub fn wait_for_log(&self, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.log_text().lines().any(&pred) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "berthd never logged the expected line; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for berthd to exit.
    pub fn stop(&mut self, signal: Signal) -> Result<ExitStatus> {
        self.signal(signal)?;
        self.wait_exit()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid(), signal)?;
        Ok(())
    }

    /// Waits for berthd to exit (after a signal sent earlier).
    pub fn wait_exit(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("berthd already stopped")?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("berthd did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn channel(&self) -> Result<Channel> {
        connect(&self.socket).await
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// One Version call: berthd answers CRI on its socket.
    pub async fn serves(&self) -> Result<()> {
        self.runtime()
            .await?
            .version(k8s_cri::v1::VersionRequest::default())
            .await?;
        Ok(())
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn next_log_path(dir: &Path) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("berthd-{n}.log")))
        .find(|p| !p.exists())
        .expect("a free log name")
}

/// A gRPC channel to a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_owned();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connect to berthd")?;
    Ok(channel)
}

/// Runs `berthd ARGS` to completion (for the CLI tests).
pub fn run_cli(args: &[&str]) -> Result<std::process::Output> {
    Command::new(berthd_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run berthd")
}
