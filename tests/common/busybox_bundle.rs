//! Test fixture: an OCI bundle whose rootfs is Debian's static busybox, and
//! a runner that creates, starts, reaps and deletes a container with the
//! in-process runtime, capturing its output through pipes.
//!
//! The test process must call `berth::runtime::run_helper_if_requested()`
//! first in `main` (harness = false) and be a child subreaper.

#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use berth::runtime::{Container, CreateOptions, Stdio};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

/// Busybox applets the rootfs gets as symlinks.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "sleep", "hostname", "touch", "mkdir", "grep", "true",
    "false", "env", "pwd", "wc", "head", "readlink", "stat", "test", "mount", "ps", "kill",
    "umask", "printf", "tr", "sed", "awk", "ulimit", "dd", "rm", "sort", "cut", "uname", "stty",
];

/// A bundle in a temp dir; removed on drop.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
}

impl Bundle {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A fresh busybox bundle.
pub fn busybox_bundle() -> Result<Bundle> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("berth-runtime-test-{}-", std::process::id()))
        .tempdir()?;
    let rootfs = dir.path().join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copy /bin/busybox")?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )?;
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    Ok(Bundle { dir, rootfs })
}

/// Whether the tests run the systemd cgroup driver
/// (`BERTH_TEST_CGROUP_DRIVER=systemd`, set by the VM lane): the containers'
/// cgroups are then transient scopes in system.slice.
pub fn systemd_driver() -> bool {
    std::env::var("BERTH_TEST_CGROUP_DRIVER").is_ok_and(|d| d == "systemd")
}

/// The cgroups path [`spec`] gives container `id`, in the driver's form.
pub fn cgroup_path(id: &str) -> String {
    if systemd_driver() {
        format!("system.slice:berth-test:{id}")
    } else {
        format!("/{id}")
    }
}

/// Whether the cgroup [`spec`] gives container `id` exists (v1: its pids
/// directory; v2: its directory). Panics when the hierarchy it would be in
/// is not there, so that a "left behind" check never passes by reading
/// nothing.
pub fn cgroup_exists(id: &str) -> bool {
    let m = berth::runtime::cgroups::CgroupManager::new(&cgroup_path(id)).expect("cgroup path");
    let mount = m
        .hierarchy()
        .mount("pids")
        .expect("no pids cgroup controller (v1) or cgroup2 tree on this machine");
    assert!(
        mount.is_dir(),
        "cgroup mount {} is not there",
        mount.display()
    );
    m.dir("pids").expect("pids directory").is_dir()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique container id / cgroup name for this test process.
pub fn unique_id(what: &str) -> String {
    format!(
        "berth-test-runtime-{}-{}-{what}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The default spec (runc-like) running `args` in the bundle's rootfs, with
/// a unique cgroup path.
pub fn spec(bundle: &Bundle, id: &str, args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut root = spec.root().clone().unwrap();
    root.set_path(bundle.rootfs.clone());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(cgroup_path(id))));
    spec.set_linux(Some(linux));
    spec
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Reads a pipe to its end in a thread.
pub fn drain(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    })
}

/// Waits for `pid` (a child of this process) and returns its exit code, or
/// 128 + signal.
pub fn wait_exit(pid: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waitpid {pid}: {e}"),
        }
    }
}

/// What a finished container left.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A created container that is deleted (and its state removed) on drop.
pub struct Running {
    pub container: Container,
    pub state: tempfile::TempDir,
    reaped: bool,
}

impl Running {
    pub fn wait(&mut self) -> Result<i32> {
        let code = wait_exit(self.container.pid)?;
        self.reaped = true;
        Ok(code)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.container.delete() {
            eprintln!("delete {}: {e}", self.container.id);
        }
        if !self.reaped {
            let _ = wait_exit(self.container.pid);
        }
    }
}

/// Creates a container with the given stdio.
pub fn create(bundle: &Bundle, id: &str, spec: &Spec, stdio: Stdio) -> Result<Running> {
    let state = tempfile::Builder::new()
        .prefix(&format!("berth-runtime-state-{}-", std::process::id()))
        .tempdir()?;
    let (container, _pty) = Container::create(CreateOptions {
        id,
        bundle: bundle.path(),
        spec,
        stdio,
        state_dir: state.path(),
        systemd_cgroup: systemd_driver(),
    })?;
    Ok(Running {
        container,
        state,
        reaped: false,
    })
}

/// Creates and starts a container, collects its output and exit code, deletes it.
pub fn run(bundle: &Bundle, id: &str, spec: &Spec) -> Result<Output> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut c = create(
        bundle,
        id,
        spec,
        Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
            terminal: false,
        },
    )?;
    let out = drain(out_r);
    let err = drain(err_r);
    c.container.start()?;
    let code = c.wait()?;
    drop(c);
    Ok(Output {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// Runs `args` (no shell) in a default busybox container.
pub fn run_args(args: &[&str]) -> Result<Output> {
    let bundle = busybox_bundle()?;
    let id = unique_id("args");
    let spec = spec(&bundle, &id, args);
    run(&bundle, &id, &spec)
}

/// Runs `sh -c script` in a default busybox container.
pub fn run_sh(script: &str) -> Result<Output> {
    let bundle = busybox_bundle()?;
    let id = unique_id("sh");
    let spec = spec(&bundle, &id, &["sh", "-c", script]);
    run(&bundle, &id, &spec)
}

/// Runs `spec` in the bundle with Debian's runc (`runc run`, the benches'
/// reference), stdio to /dev/null but stderr; returns the wall time.
pub fn runc_run(
    bundle: &Bundle,
    root: &Path,
    id: &str,
    spec: &Spec,
) -> Result<std::time::Duration> {
    use std::process::{Command, Stdio as PStdio};
    std::fs::write(bundle.path().join("config.json"), serde_json::to_vec(spec)?)?;
    let t = std::time::Instant::now();
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(id)
        .stdin(PStdio::null())
        .stdout(PStdio::null())
        .stderr(PStdio::inherit())
        .status()
        .context("run runc")?;
    let d = t.elapsed();
    if !st.success() {
        bail!("runc run: {st}");
    }
    Ok(d)
}
