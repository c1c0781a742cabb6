//! Cgroups for containers, v1 and v2.
//!
//! One [`CgroupManager`] per container; callers never know which hierarchy
//! they are on. The container's init helper joins the cgroup *before* it
//! clones the container process, so the process is born inside it.
//!
//! The hierarchy comes from the host's cgroup mounts (`hierarchy.rs`, over
//! the one mountinfo parser); berth writes the cgroup files itself rather
//! than through cgroups-rs, which pins v2 to /sys/fs/cgroup (so the v2 logic
//! could not be tested on a v1 machine), drops cpuset set-up errors, and has
//! no fd-based OOM notifier. The translation of OCI resources into file writes (`plan`)
//! and the parsing of stat files (`stats`) are pure and unit-tested
//! against temp directories laid out like both hierarchies.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use super::Stats;

mod devices;
mod error;
mod freezer;
mod fsio;
mod hierarchy;
pub mod mountinfo;
mod oom;
mod plan;
mod stats;
pub mod systemd;

pub use error::CgroupError;
pub use hierarchy::{CGROUP_MOUNT_ROOT, CGROUP2_ROOT_ENV, CgroupFeatures, Hierarchy, host_mounts};
pub use oom::OomCounts;

/// Result of cgroup operations.
pub type Result<T> = std::result::Result<T, CgroupError>;

/// The cgroup of one container.
#[derive(Debug)]
pub struct CgroupManager {
    /// Path relative to the hierarchy roots, without a leading slash.
    path: String,
    hierarchy: Hierarchy,
    /// The systemd unit of the cgroup (systemd driver), `None` for cgroupfs.
    unit: Option<systemd::SystemdUnit>,
}

impl CgroupManager {
    /// A manager for the cgroup at `path`, an OCI `linux.cgroupsPath` in
    /// cgroupfs form (`/kubepods/pod1/ctr1`) or in systemd form
    /// (`slice:prefix:name`, or a bare `name.slice`: the systemd driver, see
    /// [`systemd`]). Detects v1 / v2. Does not create anything.
    pub fn new(path: &str) -> Result<Self> {
        Self::with_hierarchy(path, Hierarchy::detect())
    }

    /// A manager for `path` in an explicitly given hierarchy.
    pub fn with_hierarchy(path: &str, hierarchy: Hierarchy) -> Result<Self> {
        if systemd::is_systemd_path(path) {
            let unit = systemd::SystemdUnit::parse(path)?;
            let mut m = Self::with_hierarchy(&unit.cgroup, hierarchy)?;
            m.unit = Some(unit);
            return Ok(m);
        }
        let rel = path.trim_start_matches('/').trim_end_matches('/');
        let valid = !rel.is_empty()
            && rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !valid {
            return Err(CgroupError::InvalidPath(path.to_owned()));
        }
        Ok(Self {
            path: rel.to_owned(),
            hierarchy,
            unit: None,
        })
    }

    /// Whether the cgroup exists (any of its directories).
    pub fn exists(&self) -> bool {
        self.existing_dirs().is_ok()
    }

    /// The systemd unit of the cgroup, when the systemd driver manages it.
    pub fn unit(&self) -> Option<&systemd::SystemdUnit> {
        self.unit.as_ref()
    }

    /// The path relative to the hierarchy roots.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The hierarchy this cgroup lives in.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The directory of `controller` (v1) or the cgroup directory (v2).
    pub fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.hierarchy.dir(controller, &self.path)
    }

    /// Creates the cgroup as a parent of containers (a pod's cgroup): the
    /// directories only, with no device rules of its own, so that a
    /// privileged container below it can still be given every device (on v1
    /// a child can never allow more devices than its parent; kubelet's pod
    /// cgroups restrict none either). On failure, whatever this call created
    /// is removed again.
    pub fn create_parent(&self) -> Result<()> {
        if let Some(unit) = &self.unit {
            return self.start_unit(unit, None, None);
        }
        let mut created = Vec::new();
        let result = self.make_dirs(&mut created);
        if result.is_err() {
            for dir in created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        result
    }

    /// Creates the cgroup (every controller on v1) and applies `resources`.
    /// On failure, whatever this call created is removed again. The systemd
    /// driver's scopes start with a process: see [`Self::create_with`].
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<()> {
        self.create_with(resources, None)
    }

    /// [`Self::create`]; under the systemd driver the unit is started with
    /// `pid` in it (a scope needs one), and that process is then in the
    /// cgroup. cgroupfs ignores `pid`.
    pub fn create_with(&self, resources: Option<&LinuxResources>, pid: Option<i32>) -> Result<()> {
        let started = std::time::Instant::now();
        if let Some(unit) = &self.unit {
            let r = self.start_unit(unit, pid, resources);
            if r.is_err() {
                let _ = self.destroy();
            }
            return r;
        }
        let mut created = Vec::new();
        let result = self.make_dirs(&mut created).and_then(|()| {
            let none = LinuxResources::default();
            self.apply_resources(resources.unwrap_or(&none), true)
        });
        if let Err(e) = result {
            for dir in created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
        tracing::debug!(
            cgroup = %self.path,
            v2 = self.hierarchy.is_v2(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "cgroup created"
        );
        Ok(())
    }

    /// What a single-threaded helper needs to put the process it clones in
    /// this cgroup, without the kernel's global threadgroup lock.
    ///
    /// Moving a process by writing its pid to `cgroup.procs` takes that lock
    /// for writing, and it waits for an RCU grace period: 10-15 ms here on
    /// every container create and exec. Instead:
    /// - v1: the `tasks` file of each controller, opened for writing: a
    ///   thread that writes `0` to one moves only itself, which skips the
    ///   lock (Linux 6.2+; older kernels just take it); the helper does this
    ///   ([`join_self`]) before it clones.
    /// - v2: the cgroup's directory, opened: the helper clones straight into
    ///   it (`CLONE_INTO_CGROUP`) and never moves itself.
    pub fn admit_helper(&self) -> Result<HelperJoin> {
        let dirs = self.existing_dirs()?;
        if self.hierarchy.is_v2() {
            let dir = &dirs[0].1;
            let fd = std::fs::File::open(dir)
                .map(OwnedFd::from)
                .map_err(|e| fsio::io_err(dir, e))?;
            return Ok(HelperJoin::CloneInto(fd));
        }
        dirs.into_iter()
            .map(|(_, dir)| {
                let path = dir.join("tasks");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| fsio::io_err(&path, e))
            })
            .collect::<Result<_>>()
            .map(HelperJoin::Tasks)
    }

    /// `cgroup.procs` of every hierarchy of the cgroup, opened for
    /// writing: a process writing `0` to each moves itself in.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>> {
        self.existing_dirs()?
            .into_iter()
            .map(|(_, dir)| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| fsio::io_err(&path, e))
            })
            .collect()
    }

    /// Moves the process `pid` (all its threads) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            return Err(CgroupError::InvalidResources(format!("invalid pid {pid}")));
        }
        for (_, dir) in self.existing_dirs()? {
            fsio::write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Applies new limits to the existing cgroup (update of a running container).
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        self.existing_dirs()?;
        if let Some(unit) = &self.unit {
            let props = systemd::resource_properties(resources, self.hierarchy.is_v2())?;
            systemd::with_bus(|bus| bus.set_unit_properties(&unit.name, &props))?;
        }
        self.apply_resources(resources, false)
    }

    /// systemd driver: starts the unit (its cgroup directory is then there,
    /// with `pid` in it for a scope), then writes the resources to the
    /// cgroup files as cgroupfs does (runc's systemd driver does both).
    fn start_unit(
        &self,
        unit: &systemd::SystemdUnit,
        pid: Option<i32>,
        resources: Option<&LinuxResources>,
    ) -> Result<()> {
        let v2 = self.hierarchy.is_v2();
        let what = if unit.is_slice() {
            "berth pod"
        } else {
            "berth container"
        };
        let props =
            systemd::unit_properties(unit, &format!("{what} {}", unit.name), pid, resources, v2)?;
        systemd::with_bus(|bus| bus.start_transient_unit(&unit.name, &props))?;
        // v1: systemd makes the unit's directory in the hierarchies it
        // manages; the others (and any it left out) are made here.
        if v2 {
            self.existing_dirs()?;
        } else {
            self.make_dirs(&mut Vec::new())?;
        }
        let none = LinuxResources::default();
        self.apply_resources(resources.unwrap_or(&none), !unit.is_slice())?;
        tracing::debug!(unit = %unit.name, cgroup = %self.path, v2, "systemd unit ready");
        Ok(())
    }

    fn apply_resources(&self, resources: &LinuxResources, creating: bool) -> Result<()> {
        let steps = plan::plan(&self.hierarchy, &self.path, resources, creating)?;
        plan::execute(&self.hierarchy, &self.path, &steps)?;
        // v2's device controller is an eBPF program (v1's are file writes
        // in the plan).
        if self.hierarchy.is_v2()
            && (creating || resources.devices().is_some())
            && let Some(dir) = self.dir("devices")
        {
            let spec = resources.devices().as_deref().unwrap_or_default();
            devices::apply_v2(&dir, spec)?;
        }
        Ok(())
    }

    /// Freezes every process in the cgroup; returns once they are frozen.
    pub fn freeze(&self) -> Result<()> {
        self.existing_dirs()?;
        freezer::freeze(&self.hierarchy, &self.path)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<()> {
        self.existing_dirs()?;
        freezer::thaw(&self.hierarchy, &self.path)
    }

    /// Pids of every process in the cgroup (and its sub-cgroups).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dirs = self.existing_dirs()?;
        let dir = ["pids", "freezer", "memory", ""]
            .iter()
            .find_map(|c| self.dir(c).filter(|d| d.is_dir()))
            .unwrap_or_else(|| dirs[0].1.clone());
        let mut pids = Vec::new();
        collect_procs(&dir, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Statistics (cpu, memory, pids, oom kills). Unlimited limits ("max",
    /// v1's page-rounded i64::MAX) read as `u64::MAX`; controllers that are
    /// not there read as zeros. v1 swap is memsw usage minus memory usage.
    pub fn stats(&self) -> Result<Stats> {
        self.existing_dirs()?;
        stats::read(&self.hierarchy, &self.path)
    }

    /// An fd that becomes readable on each OOM kill in the cgroup
    /// (v1: eventfd registered on memory.oom_control; v2: inotify on memory.events).
    /// Non-blocking and close-on-exec. It may also fire without a kill (v1:
    /// once when the cgroup is removed; v2: on any memory.events change):
    /// drain it, then compare [`Stats::oom_kills`].
    pub fn oom_notifier(&self) -> Result<OwnedFd> {
        self.existing_dirs()?;
        oom::notifier(&self.hierarchy, &self.path)
    }

    /// The cgroup's OOM kill counters, and on v2 its parent's; `own` is
    /// `None` once the cgroup is gone (see [`OomCounts`]).
    pub fn oom_counts(&self) -> Result<OomCounts> {
        oom::counts(&self.hierarchy, &self.path)
    }

    /// Kills every process left (SIGKILL; thawing first if frozen), then
    /// removes the cgroup from every hierarchy. Idempotent.
    pub fn destroy(&self) -> Result<()> {
        let r = self.destroy_dirs();
        if let Some(unit) = &self.unit {
            // A scope whose processes are gone stops by itself; what is
            // left (a slice, a failed scope) is stopped and reset here.
            systemd::with_bus(|bus| bus.stop_unit(&unit.name))?;
            if r.is_err()
                && self
                    .hierarchy
                    .dirs(&self.path)
                    .iter()
                    .all(|(_, d)| !d.is_dir())
            {
                return Ok(());
            }
        }
        r
    }

    fn destroy_dirs(&self) -> Result<()> {
        let dirs: Vec<PathBuf> = self
            .hierarchy
            .dirs(&self.path)
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.is_dir())
            .collect();
        if dirs.is_empty() {
            return Ok(());
        }
        if let Err(e) = freezer::thaw_if_frozen(&self.hierarchy, &self.path) {
            tracing::warn!(cgroup = %self.path, error = %e, "thaw before destroy failed");
        }
        if self.hierarchy.is_v2() {
            // Kills the whole subtree at once where the kernel has it (5.14+).
            let _ = fsio::write(&dirs[0], "cgroup.kill", "1");
        }
        let mut delay = Duration::from_micros(200);
        let mut left = Vec::new();
        for _ in 0..70 {
            left.clear();
            for d in &dirs {
                collect_procs(d, &mut left)?;
            }
            if left.is_empty() {
                break;
            }
            for pid in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        if !left.is_empty() {
            left.sort_unstable();
            left.dedup();
            return Err(CgroupError::Backend {
                path: self.path.clone(),
                message: format!("processes {left:?} still in the cgroup after SIGKILL"),
            });
        }
        for d in &dirs {
            remove_tree(d)?;
        }
        tracing::debug!(cgroup = %self.path, "cgroup destroyed");
        Ok(())
    }

    /// The directories of the cgroup; `NotFound` when none exists.
    fn existing_dirs(&self) -> Result<Vec<(String, PathBuf)>> {
        let dirs: Vec<_> = self
            .hierarchy
            .dirs(&self.path)
            .into_iter()
            .filter(|(_, d)| d.is_dir())
            .collect();
        if dirs.is_empty() {
            return Err(CgroupError::NotFound(self.path.clone()));
        }
        Ok(dirs)
    }

    /// Creates the cgroup's directories, recording each one it made.
    fn make_dirs(&self, created: &mut Vec<PathBuf>) -> Result<()> {
        for (controller, _) in self.hierarchy.dirs(&self.path) {
            let Some(mount) = self.hierarchy.mount(&controller) else {
                continue;
            };
            let mount = mount.to_owned();
            let mut cur = mount.clone();
            for comp in Path::new(&self.path).components() {
                let parent = cur.clone();
                cur.push(comp);
                if self.hierarchy.is_v2() {
                    enable_v2_controllers(&parent)?;
                }
                match std::fs::create_dir(&cur) {
                    Ok(()) => created.push(cur.clone()),
                    // Made before, or just now by a sibling container.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(fsio::io_err(&cur, e)),
                }
                if controller == "cpuset" {
                    // A v1 cpuset takes no task until cpus and mems are set:
                    // every level left empty inherits them from its parent.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        if fsio::read(&cur, file)?.trim().is_empty() {
                            let value = fsio::read(&parent, file)?;
                            fsio::write(&cur, file, value.trim())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// v2: delegates every controller the parent has to its children.
fn enable_v2_controllers(parent: &Path) -> Result<()> {
    let Some(available) = fsio::read_opt(parent, "cgroup.controllers")? else {
        return Ok(());
    };
    let enabled = fsio::read_opt(parent, "cgroup.subtree_control")?.unwrap_or_default();
    let missing: Vec<String> = available
        .split_whitespace()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty()
        || fsio::write(parent, "cgroup.subtree_control", &missing.join(" ")).is_ok()
    {
        return Ok(());
    }
    // One controller the kernel refuses (e.g. a domain controller in a
    // cgroup with processes) must not cost the others: one at a time.
    for c in &missing {
        if let Err(e) = fsio::write(parent, "cgroup.subtree_control", c) {
            tracing::debug!(parent = %parent.display(), controller = %c, error = %e,
                "controller not delegated");
        }
    }
    Ok(())
}

/// How a helper gets what it clones into a container's cgroup (from
/// [`CgroupManager::admit_helper`]).
#[derive(Debug)]
pub enum HelperJoin {
    /// v1: the `tasks` files to move itself in with ([`join_self`]).
    Tasks(Vec<OwnedFd>),
    /// v2: the cgroup directory to clone into.
    CloneInto(OwnedFd),
}

/// Moves the calling thread into the cgroups whose `tasks` files
/// [`CgroupManager::admit_helper`] opened. Only for a single-threaded process:
/// its other threads would stay behind.
pub fn join_self(tasks: &[OwnedFd]) -> std::io::Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "{threads} threads: only a single-threaded process can move itself"
        )));
    }
    for fd in tasks {
        nix::unistd::write(fd, b"0")?;
    }
    Ok(())
}

/// Appends the pids in `dir/cgroup.procs` and in every sub-cgroup.
fn collect_procs(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let Some(procs) = fsio::read_opt(dir, "cgroup.procs")? else {
        return Ok(());
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    for sub in subdirs(dir)? {
        collect_procs(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fsio::io_err(dir, e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect())
}

/// rmdir of a cgroup and its sub-cgroups, deepest first; retries while the
/// kernel still reports it busy (tasks exiting).
fn remove_tree(dir: &Path) -> Result<()> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    let mut delay = Duration::from_millis(1);
    for attempt in 0.. {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 30 => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(fsio::io_err(dir, e)),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests;
