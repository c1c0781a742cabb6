#![allow(dead_code)]
//! A real containerd, started by the test in a temp dir with its own root,
//! state, sockets and namespace, our shim on its PATH, and driven with
//! `ctr`. Torn down (by pid) in Drop.
//!
//! Which containerd: Debian 12's 1.6 in /usr/bin, or the one in the
//! directory `BERTH_CONTAINERD_BIN_DIR` names (containerd and ctr there):
//! tests/run-all.sh runs the shim tests again with containerd 2.x from
//! Debian's unstable archive (tests/setup-containerd2.sh).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";
/// Where tests/setup-containerd2.sh puts containerd 2.x's binaries.
pub const CONTAINERD2_BIN_DIR: &str = "/opt/berth-test/containerd2/usr/bin";
pub const BERTH_RUNTIME: &str = "io.containerd.berth.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub const SHIM_NAME: &str = "containerd-shim-berth-v2";
/// containerd 1.6 puts shim sockets here whatever its own state dir.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// cgroup v1 controllers whose leftovers the tests look for.
pub const CGROUP_CONTROLLERS: &[&str] = &[
    "memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "devices", "blkio",
];

/// The shim binary `cargo build --workspace` produced next to this test
/// (or the one `BERTH_SHIM_BIN` names, e.g. a release build for the bench).
pub fn shim_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_SHIM_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.exists(),
            "BERTH_SHIM_BIN={} does not exist",
            bin.display()
        );
        return std::fs::canonicalize(&bin).expect("canonical shim path");
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<shim>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(SHIM_NAME);
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p containerd-shim-berth-v2` \
         (`--release` for benches; tests/run-all.sh runs `cargo build --workspace` \
         before the tests)",
        bin.display()
    );
    bin
}

/// The containerd and ctr binaries the tests drive (see the module doc).
pub fn binaries() -> (PathBuf, PathBuf) {
    match std::env::var_os("BERTH_CONTAINERD_BIN_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            (dir.join("containerd"), dir.join("ctr"))
        }
        None => (PathBuf::from(CONTAINERD), PathBuf::from(CTR)),
    }
}

/// containerd 2.x's directory, if tests/setup-containerd2.sh made it
/// (`BERTH_CONTAINERD2_BIN_DIR` overrides where it is looked for).
pub fn containerd2_bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_CONTAINERD2_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONTAINERD2_BIN_DIR));
    dir.join("containerd").exists().then_some(dir)
}

/// The major version of the containerd binary at `containerd` (1 or 2).
pub fn major_version(containerd: &Path) -> Result<u32> {
    let out = Command::new(containerd).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "containerd github.com/containerd/containerd[/v2] 2.1.9+unknown ..."
    let v = text
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("containerd --version said {text:?}"))?;
    v.trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("containerd version {v:?}"))
}

/// Short, unique name: helper area, test pid, a counter.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "berth-shim-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns true or `limit` passes (waits for state, never times it).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Containerd {
    pub containerd: PathBuf,
    pub ctr_bin: PathBuf,
    /// 1 or 2.
    pub major: u32,
    pub dir: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with our shim on its PATH and waits until it answers.
    pub fn start() -> Result<Containerd> {
        let shim = shim_binary();
        let (containerd, ctr_bin) = binaries();
        for tool in [&containerd, &ctr_bin] {
            if !tool.exists() {
                bail!(
                    "{} is missing: install Debian's containerd, or run \
                     tests/setup-containerd2.sh for 2.x (tests/run-all.sh does both)",
                    tool.display()
                );
            }
        }
        let major = major_version(&containerd)?;
        let name = unique("ctd");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(dir.join("bin"))?;
        symlink(&shim, dir.join("bin").join(SHIM_NAME))?;
        let address = dir.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
  level = "{level}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = address.display(),
            dir = dir.display(),
            level = if std::env::var_os("BERTH_CONTAINERD_DEBUG").is_some() {
                "debug"
            } else {
                "info"
            },
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let mut c = Containerd {
            containerd,
            ctr_bin,
            major,
            dir,
            address,
            namespace: name,
            child: None,
        };
        c.launch()?;
        Ok(c)
    }

    /// Starts the containerd process (again) and waits until it answers.
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new(&self.containerd)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(30), || {
            self.address.exists()
                && self
                    .ctr(&["version"])
                    .map(|o| o.status.success())
                    .unwrap_or(false)
        });
        if !up {
            let status = self
                .child
                .as_mut()
                .and_then(|ch| ch.try_wait().ok().flatten());
            bail!(
                "containerd did not come up ({status:?}); log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Stops containerd (SIGTERM, by pid) and starts it again; shims and
    /// their containers live on.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, libc::SIGTERM);
            child.wait()?;
        }
        let _ = std::fs::remove_file(&self.address);
        self.launch()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A `ctr` command for this containerd and namespace.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr_bin);
        let (global, args): (Vec<&str>, &[&str]) = match args {
            ["--timeout", t, rest @ ..] => (vec!["--timeout", t], rest),
            _ => (vec![], args),
        };
        cmd.args(global)
            .arg("--address")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs ctr to completion; a hung shim fails the call (ctr's own
    /// deadline) instead of hanging the test.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["--timeout", "120s"];
        a.extend_from_slice(args);
        self.ctr_cmd(&a)
            .output()
            .with_context(|| format!("run ctr {args:?}"))
    }

    /// Runs ctr, fails unless it succeeded, returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports the busybox test image.
    pub fn import_busybox(&self) -> Result<()> {
        let archive = self.dir.join("busybox.tar");
        super::busybox_archive::write_archive(&archive)?;
        self.ctr_ok(&["images", "import", archive.to_str().unwrap()])?;
        Ok(())
    }

    /// Where containerd keeps a task's bundle.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// The ttrpc address of the shim serving `id` (from its bundle).
    pub fn task_address(&self, id: &str) -> Result<String> {
        let a = std::fs::read_to_string(self.bundle(id).join("address"))
            .with_context(|| format!("read address of {id}"))?;
        Ok(a.trim().to_string())
    }

    /// The socket a shim grouped under `grouping` listens on (containerd's naming).
    pub fn shim_socket(&self, grouping: &str) -> PathBuf {
        let key = format!("{}/{}/{}", self.address.display(), self.namespace, grouping);
        Path::new(SHIM_SOCKET_DIR).join(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Pids of shim processes (any runtime) serving this containerd's namespace.
    pub fn shim_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim-"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == "-namespace" && w[1] == self.namespace);
            if is_shim && ours {
                pids.push(pid);
            }
        }
        pids
    }

    /// The cgroup dirs ctr's default spec gives a container (`/<ns>/<id>`).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        CGROUP_CONTROLLERS
            .iter()
            .map(|c| {
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.namespace)
                    .join(id)
            })
            .collect()
    }

    /// Fails if anything of containers `ids` is left: mounts under our dir,
    /// cgroups, shim processes, shim sockets. Waits for the asynchronous parts
    /// (shim exit after Shutdown) to settle first.
    pub fn assert_no_leftovers(&self, ids: &[&str]) {
        let shims_gone = wait_until(Duration::from_secs(20), || self.shim_pids().is_empty());
        assert!(shims_gone, "shim processes left: {:?}", self.shim_pids());
        for id in ids {
            let sock = self.shim_socket(id);
            assert!(!sock.exists(), "shim socket left: {}", sock.display());
            for d in self.cgroup_dirs(id) {
                assert!(!d.exists(), "cgroup left: {}", d.display());
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let left: Vec<_> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(left.is_empty(), "mounts left:\n{}", left.join("\n"));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims (and so their containers) our containerd started, and the
        // sockets a killed shim cannot remove itself.
        for pid in self.shim_pids() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            kill(pid, libc::SIGKILL);
            if let Some(w) = args.windows(2).find(|w| w[0] == "-socket") {
                let path = w[1].trim_start_matches("unix://");
                if path.starts_with(SHIM_SOCKET_DIR) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, libc::SIGTERM);
            let stopped = wait_until(Duration::from_secs(10), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Container processes still in our namespace's cgroups, then the
        // cgroups, in every hierarchy (runc also uses name=systemd, unified).
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for h in hierarchies {
            remove_cgroup_tree(&h.join(&self.namespace));
        }
        // Anything still mounted under our dir (a failed test's rootfs).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut targets: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we started (or our containerd started).
    unsafe { libc::kill(pid, sig) };
}

fn remove_cgroup_tree(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            kill(pid, libc::SIGKILL);
        }
    }
    let _ = wait_until(Duration::from_secs(5), || {
        std::fs::remove_dir(dir).is_ok() || !dir.exists()
    });
}
