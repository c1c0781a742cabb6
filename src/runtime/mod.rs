//! The in-process runtime: an OCI runtime spec plus a rootfs and stdio become a
//! running, contained process.
//!
//! This is the contract the shim (and later berthd's tests) code against. The
//! runtime knows nothing of CRI, gRPC or images.
//!
//! Process model: the caller (the shim, a multi-threaded process) never forks
//! to set up a container. It starts its own executable again as a
//! single-threaded *init helper* (see [`run_helper_if_requested`]) and talks
//! to it over a socket pair. The helper joins/creates the namespaces, sets up
//! the rootfs and the process, reports the container pid, and waits for
//! `start`. The caller is expected to be a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`) and to reap every child itself: the runtime never
//! waits for a container or exec process it started, so the caller's reaper
//! owns all exit statuses.
//!
//! In detail:
//! - The helper is a sealed memfd copy of `/proc/self/exe` (made once per
//!   process), started with `_BERTH_RUNTIME_INIT_HELPER=1` and its socket at
//!   fd 3; it closes every other inherited fd and is non-dumpable.
//! - The helper joins the spec's namespaces given by path (user first), then
//!   `clone(CLONE_PARENT | CLONE_NEW*)`: the container init is a child of the
//!   *caller*, born inside the cgroup (the caller moved the helper there) and
//!   its pid is reported in the caller's pid namespace. The helper then exits;
//!   the runtime reaps it itself (a caller reaping with `waitpid(-1)` may get
//!   it first and must ignore pids it does not know).
//! - The init sets up mounts, devices, `pivot_root`, masked/read-only paths,
//!   hostname, sysctls, rlimits, user, capabilities, no_new_privs, umask and
//!   the pty, sends `Ready`, and blocks on `<state_dir>/exec.fifo` until
//!   [`Container::start`] writes to it. Every fd >= 3 is close-on-exec at exec.
//! - Errors travel back over the socket with their context and become
//!   [`RuntimeError::Setup`]; a failed create leaves nothing behind (process
//!   killed and reaped, cgroup destroyed, state files removed).
//! - Exec into a paused container is refused (its helper would freeze).
//! - Seccomp (`seccomp/`, libseccomp): the caller compiles the profile to
//!   BPF (cached per process) and sends it to the helper; the container
//!   process installs it right before `execve` (before dropping capabilities
//!   without no_new_privs). Exec'd processes get the container's profile too
//!   (kept in `<state_dir>/seccomp.json`).
//! - User namespaces and idmapped mounts (`idmap.rs`): bind mounts with
//!   uid/gid mappings are idmapped by the helper before it joins the user
//!   namespace and attached by the init; `rro` is mount_setattr
//!   MOUNT_ATTR_RDONLY with AT_RECURSIVE.
//! - Not implemented: OCI hooks, seccomp notify, AppArmor /
//!   SELinux labels (absent on the target machines).
//!
//! Binaries that create containers call [`run_helper_if_requested`] first in
//! `main`. Integration tests therefore use `harness = false` test binaries
//! (see `tests/runtime_containers.rs`).
//!
//! Layout: one file per operation (`create.rs`, `start.rs`, `kill.rs`,
//! `exec.rs`, `delete.rs`, `checkpoint.rs` and `restore.rs` with CRIU); the helper side in `helper.rs` (namespaces,
//! clone) and `init.rs` (the container process' own set-up), the filesystem
//! in `rootfs/` (`mounts.rs`, `cgroupfs.rs`, `devices.rs`, `pivot.rs`), pure
//! spec translations in `namespaces.rs`, `mount_options.rs`,
//! `process_spec.rs`, `path.rs`; raw syscalls in `sys.rs`. The kernel seam
//! `syscall/` (a `Syscall` trait, the real `LinuxSyscall`, a recording fake
//! for tests) carries every kernel call of the init and the rootfs set-up,
//! so their sequencing is unit-tested without root (`rootfs/tests.rs`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};

mod apparmor;
mod bpf;
pub mod cgroups;
pub mod checkpoint;
mod create;
mod delete;
mod error;
mod exec;
pub mod features;
mod helper;
pub mod idmap;
mod init;
mod kill;
mod mount_api;
pub mod mount_options;
mod namespaces;
pub mod ns_pin;
pub mod overlay;
mod path;
mod process_spec;
mod protocol;
pub mod restore;
mod rootfs;
pub mod seccomp;
mod start;
mod state;
mod sys;
mod syscall;
pub use error::RuntimeError;
pub use state::has_exited;
pub use sys::malloc_mmap_threshold;

/// Result of runtime operations.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Must be the first thing `main()` does in any binary that creates
/// containers (the shim; test helpers). If this process was started as the
/// runtime's init helper, it runs the helper and never returns; otherwise it
/// returns at once.
///
/// The helper is recognized by an environment variable set when the runtime
/// starts it; it finds its socket at fd 3.
pub fn run_helper_if_requested() {
    helper::run_if_requested()
}

/// The stdio a container or exec process gets.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Becomes fd 0 of the process; `None` means /dev/null.
    pub stdin: Option<OwnedFd>,
    /// Becomes fd 1; `None` means /dev/null.
    pub stdout: Option<OwnedFd>,
    /// Becomes fd 2; `None` means /dev/null.
    pub stderr: Option<OwnedFd>,
    /// Allocate a pty inside the container (the spec's `process.terminal`);
    /// the master comes back to the caller. The fds above are then ignored.
    pub terminal: bool,
}

/// What [`Container::create`] needs.
#[derive(Debug)]
pub struct CreateOptions<'a> {
    /// Container id; also names the cgroup leaf when the spec gives no path.
    pub id: &'a str,
    /// The bundle directory (holds config.json); a relative `root.path` is
    /// resolved against it. The rootfs is already mounted there by the caller.
    pub bundle: &'a Path,
    /// The OCI runtime spec to run.
    pub spec: &'a Spec,
    /// The process' stdio.
    pub stdio: Stdio,
    /// Directory where the runtime may keep this container's state files.
    pub state_dir: &'a Path,
    /// The systemd cgroup driver (runc's `--systemd-cgroup`, containerd's
    /// runc option `SystemdCgroup`): `linux.cgroupsPath` is
    /// `slice:prefix:name` and the cgroup a transient scope.
    pub systemd_cgroup: bool,
}

/// A container that was created (its init is waiting for `start`) or started.
/// Serializable so a restarted shim can find it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    /// Pid of the container's init process (as seen from the caller's pid namespace).
    pub pid: i32,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    /// Cgroup path (relative to the hierarchy roots) the container lives in.
    pub cgroup_path: String,
}

/// A process started inside a running container by [`Container::exec`].
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    /// The pty master when the process asked for a terminal.
    pub pty_master: Option<OwnedFd>,
}

/// Resource usage of a container, read from its cgroup (v1 or v2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_time_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    /// usage minus inactive file pages, as kubelet computes it.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
    pub memory_cache_bytes: u64,
    pub memory_swap_bytes: u64,
    pub memory_failcnt: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    /// What only cgroup v2 reports (`None` on v1): the shim's
    /// `io.containerd.cgroups.v2.Metrics` is made from it.
    pub v2: Option<StatsV2>,
}

/// The cgroup v2 files as they are, for containerd's v2 metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsV2 {
    /// memory.stat (anon, file, inactive_file, pgfault, ...).
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    /// memory.events (low, high, max, oom, oom_kill, oom_group_kill).
    pub memory_events: std::collections::BTreeMap<String, u64>,
    /// cpu.stat (usage_usec, nr_periods, nr_bursts, burst_usec, ...).
    pub cpu_stat: std::collections::BTreeMap<String, u64>,
    /// memory.swap.max (u64::MAX: unlimited).
    pub memory_swap_limit_bytes: u64,
    /// memory.peak and memory.swap.peak where the kernel has them (5.19+).
    pub memory_peak_bytes: u64,
    pub memory_swap_peak_bytes: u64,
    /// io.stat, one entry per device.
    pub io: Vec<IoUsage>,
    /// `hugetlb.<size>.current` / .max / .events (max).
    pub hugetlb: Vec<HugetlbUsage>,
    /// Pressure stall information (cpu.pressure, memory.pressure,
    /// io.pressure) where the kernel has PSI.
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

/// One device of io.stat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoUsage {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// One hugepage size of the hugetlb controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugetlbUsage {
    /// As the kernel names it: "2MB", "1GB".
    pub pagesize: String,
    pub current: u64,
    pub max: u64,
    pub failcnt: u64,
}

/// A PSI file: the `some` and `full` lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub some: PressureLine,
    pub full: PressureLine,
}

/// `avg10=0.00 avg60=0.00 avg300=0.00 total=0` (total in µs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total: u64,
}

impl Container {
    fn cgroup(&self) -> Result<cgroups::CgroupManager> {
        Ok(cgroups::CgroupManager::new(&self.cgroup_path)?)
    }

    /// Creates the container: namespaces, cgroup, rootfs, process set-up, all
    /// but the final exec. Returns the container and, when `stdio.terminal`,
    /// the pty master.
    pub fn create(opts: CreateOptions<'_>) -> Result<(Container, Option<OwnedFd>)> {
        create::create(opts)
    }

    /// Restores a container from CRIU images (see `restore.rs`) instead
    /// of creating a new init: the tree waits, stopped, for [`Self::start`].
    pub fn restore(
        opts: CreateOptions<'_>,
        images_dir: &Path,
        run: &checkpoint::Runner<'_>,
    ) -> Result<Container> {
        restore::restore(opts, images_dir, run)
    }

    /// Lets the created init exec the user process (a restored tree
    /// continues).
    pub fn start(&self) -> Result<()> {
        if restore::continue_restored(self)? {
            return Ok(());
        }
        start::start(self)
    }

    /// Sends `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        kill::kill(self, signal, all)
    }

    /// Runs another process in the running container (all its namespaces,
    /// cgroup, capabilities, user, env, terminal). Returns once it has exec'd.
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess> {
        exec::exec(self, process, stdio)
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        Ok(self.cgroup()?.freeze()?)
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<()> {
        Ok(self.cgroup()?.thaw()?)
    }

    /// Applies new resource limits to the running container.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        Ok(self.cgroup()?.apply(resources)?)
    }

    /// Pids of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self.cgroup()?.pids()?)
    }

    /// Cgroup statistics.
    pub fn stats(&self) -> Result<Stats> {
        Ok(self.cgroup()?.stats()?)
    }

    /// An fd that becomes readable each time the container hits an OOM kill
    /// (v1: eventfd on memory.oom_control; v2: inotify on memory.events).
    /// Read it to clear; then check [`Stats::oom_kills`].
    pub fn oom_notifier(&self) -> Result<OwnedFd> {
        Ok(self.cgroup()?.oom_notifier()?)
    }

    /// The OOM kill counters of the container's cgroup and, on v2, of its
    /// parent: what tells an OOM kill from another SIGKILL once systemd has
    /// removed the container's scope (see [`cgroups::OomCounts`]).
    pub fn oom_counts(&self) -> Result<cgroups::OomCounts> {
        Ok(self.cgroup()?.oom_counts()?)
    }

    /// Removes everything the runtime created for the container (cgroup,
    /// state). Kills what is left first. Idempotent.
    pub fn delete(&self) -> Result<()> {
        delete::delete(self)
    }
}
