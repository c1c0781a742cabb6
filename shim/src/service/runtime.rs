//! The seam between the Task service and the container runtime: what the
//! service asks of a runtime, as rust-extensions' runc-shim asks its
//! `Container`/`ProcessFactory` and runwasi's `Local` its `Instance`.
//! berth's in-process runtime implements it below; the unit tests
//! (`tests.rs`) implement it with a stub that records the calls, so the
//! service's state machine runs without root, cgroups or processes.

use std::os::fd::OwnedFd;
use std::path::Path;

use berth::runtime::cgroups::OomCounts;
use berth::runtime::{CreateOptions, ExecProcess, Stats, Stdio};
use oci_spec::runtime::{LinuxResources, Process};

use crate::error::{Result, ShimError};

/// Creates containers.
pub trait Runtime: Send + Sync + 'static {
    type Container: RuntimeContainer;

    /// Creates the container (its init waits for `start`); the pty master
    /// when the init asked for a terminal.
    fn create(&self, opts: CreateOptions<'_>) -> Result<(Self::Container, Option<OwnedFd>)>;

    /// Restores the container from the CRIU images in `images` (the tree
    /// waits, stopped, for `start`); helper processes are run by `run`.
    fn restore(
        &self,
        opts: CreateOptions<'_>,
        images: &Path,
        run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<Self::Container> {
        let _ = (opts, images, run);
        Err(ShimError::Unimplemented(
            "this runtime cannot restore checkpoints".into(),
        ))
    }
}

/// One created container.
pub trait RuntimeContainer: Clone + Send + Sync + 'static {
    /// Pid of the container's init (the shim's pid namespace).
    fn pid(&self) -> i32;
    /// Lets the init exec the container's process.
    fn start(&self) -> Result<()>;
    /// Signals the init, or every process of the container with `all`.
    fn kill(&self, signal: i32, all: bool) -> Result<()>;
    /// Signals one exec'd process of the container.
    fn kill_exec(&self, pid: i32, signal: i32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| ShimError::InvalidArgument(format!("signal {signal}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(ShimError::sys(format!("kill exec pid {pid}")))
    }
    /// Starts `process` in the running container.
    fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess>;
    fn pause(&self) -> Result<()>;
    fn resume(&self) -> Result<()>;
    fn update(&self, resources: &LinuxResources) -> Result<()>;
    /// Every pid in the container.
    fn pids(&self) -> Result<Vec<i32>>;
    fn stats(&self) -> Result<Stats>;
    /// A non-blocking fd that becomes readable on an OOM event.
    fn oom_notifier(&self) -> Result<OwnedFd>;
    /// The OOM kill counters of the container's cgroup and its parent.
    fn oom_counts(&self) -> Result<OomCounts>;
    /// Kills what is left and removes the container's resources.
    fn delete(&self) -> Result<()>;
    /// Keeps the container's record in `bundle` for `delete` after a crash.
    fn persist(&self, bundle: &Path) -> Result<()>;
    /// Dumps the running container into `images` (work files and log in
    /// `work`), leaving it running; helper processes are run by `run`.
    fn checkpoint(
        &self,
        images: &Path,
        work: &Path,
        run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<()>;
}

/// berth's in-process runtime.
#[derive(Clone, Copy, Default)]
pub struct Berth;

impl Runtime for Berth {
    type Container = berth::runtime::Container;

    fn create(&self, opts: CreateOptions<'_>) -> Result<(Self::Container, Option<OwnedFd>)> {
        Ok(berth::runtime::Container::create(opts)?)
    }

    fn restore(
        &self,
        opts: CreateOptions<'_>,
        images: &Path,
        run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<Self::Container> {
        Ok(berth::runtime::Container::restore(opts, images, run)?)
    }
}

impl RuntimeContainer for berth::runtime::Container {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn start(&self) -> Result<()> {
        Ok(berth::runtime::Container::start(self)?)
    }
    fn kill(&self, signal: i32, all: bool) -> Result<()> {
        Ok(berth::runtime::Container::kill(self, signal, all)?)
    }
    fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess> {
        Ok(berth::runtime::Container::exec(self, process, stdio)?)
    }
    fn pause(&self) -> Result<()> {
        Ok(berth::runtime::Container::pause(self)?)
    }
    fn resume(&self) -> Result<()> {
        Ok(berth::runtime::Container::resume(self)?)
    }
    fn update(&self, resources: &LinuxResources) -> Result<()> {
        Ok(berth::runtime::Container::update(self, resources)?)
    }
    fn pids(&self) -> Result<Vec<i32>> {
        Ok(berth::runtime::Container::pids(self)?)
    }
    fn stats(&self) -> Result<Stats> {
        Ok(berth::runtime::Container::stats(self)?)
    }
    fn oom_notifier(&self) -> Result<OwnedFd> {
        Ok(berth::runtime::Container::oom_notifier(self)?)
    }
    fn oom_counts(&self) -> Result<OomCounts> {
        Ok(berth::runtime::Container::oom_counts(self)?)
    }
    fn delete(&self) -> Result<()> {
        Ok(berth::runtime::Container::delete(self)?)
    }
    fn persist(&self, bundle: &Path) -> Result<()> {
        super::state_file::write(bundle, self)
    }
    fn checkpoint(
        &self,
        images: &Path,
        work: &Path,
        run: &berth::runtime::checkpoint::Runner<'_>,
    ) -> Result<()> {
        Ok(berth::runtime::checkpoint::dump(
            self.pid, images, work, true, run,
        )?)
    }
}
