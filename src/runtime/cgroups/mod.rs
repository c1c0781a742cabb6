//! Cgroups for containers, v1 and v2, through cgroups-rs.
//!
//! One [`CgroupManager`] per container; callers never know which hierarchy
//! they are on. The container's init helper joins the cgroup *before* it
//! clones the container process, so the process is born inside it.
//!
//! Status: CONTRACT — bodies are being filled in by the cgroups work; keep the
//! signatures stable, or change them together with `runtime/`.

use std::os::fd::OwnedFd;

use oci_spec::runtime::LinuxResources;

use super::Stats;

mod error;
pub use error::CgroupError;

/// Result of cgroup operations.
pub type Result<T> = std::result::Result<T, CgroupError>;

/// The cgroup of one container.
#[derive(Debug)]
pub struct CgroupManager {
    /// Path relative to the hierarchy roots, without a leading slash.
    path: String,
}

impl CgroupManager {
    /// A manager for the cgroup at `path` (an OCI `linux.cgroupsPath` in
    /// cgroupfs form, e.g. `/kubepods/pod1/ctr1`). Detects v1 / v2. Does not
    /// create anything.
    pub fn new(path: &str) -> Result<Self> {
        Ok(Self {
            path: path.trim_start_matches('/').to_owned(),
        })
    }

    /// The path relative to the hierarchy roots.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Creates the cgroup (every controller on v1) and applies `resources`.
    pub fn create(&self, _resources: Option<&LinuxResources>) -> Result<()> {
        todo!("cgroups: create")
    }

    /// Moves the process `pid` (all its threads) into the cgroup.
    pub fn add_process(&self, _pid: i32) -> Result<()> {
        todo!("cgroups: add_process")
    }

    /// Applies new limits to the existing cgroup (update of a running container).
    pub fn apply(&self, _resources: &LinuxResources) -> Result<()> {
        todo!("cgroups: apply")
    }

    /// Freezes every process in the cgroup; returns once they are frozen.
    pub fn freeze(&self) -> Result<()> {
        todo!("cgroups: freeze")
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<()> {
        todo!("cgroups: thaw")
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        todo!("cgroups: pids")
    }

    /// Statistics (cpu, memory, pids, oom kills).
    pub fn stats(&self) -> Result<Stats> {
        todo!("cgroups: stats")
    }

    /// An fd that becomes readable on each OOM kill in the cgroup
    /// (v1: eventfd registered on memory.oom_control; v2: inotify on memory.events).
    pub fn oom_notifier(&self) -> Result<OwnedFd> {
        todo!("cgroups: oom notifier")
    }

    /// Kills every process left (SIGKILL; thawing first if frozen), then
    /// removes the cgroup from every hierarchy. Idempotent.
    pub fn destroy(&self) -> Result<()> {
        todo!("cgroups: destroy")
    }
}
