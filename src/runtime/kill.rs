//! `Container::kill`: a signal to the init, or to every process of the cgroup.

use nix::errno::Errno;

use super::cgroups::CgroupManager;
use super::{Container, Result, RuntimeError, state, sys};

pub fn kill(c: &Container, signal: i32, all: bool) -> Result<()> {
    if !(0..=64).contains(&signal) {
        return Err(RuntimeError::InvalidSpec(format!(
            "invalid signal {signal}"
        )));
    }
    if all {
        let cg = CgroupManager::new(&c.cgroup_path)?;
        for pid in cg.pids()? {
            match sys::kill(pid, signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    return Err(RuntimeError::Sys {
                        context: format!("kill {pid} with signal {signal}"),
                        source: e,
                    });
                }
            }
        }
        return Ok(());
    }
    if !state::is_same_process(&c.state_dir, c.pid) {
        return Err(RuntimeError::NotFound(format!(
            "container {}: init process {} is gone",
            c.id, c.pid
        )));
    }
    match sys::kill(c.pid, signal) {
        Ok(()) => Ok(()),
        Err(Errno::ESRCH) => Err(RuntimeError::NotFound(format!(
            "container {}: init process {} is gone",
            c.id, c.pid
        ))),
        Err(e) => Err(RuntimeError::Sys {
            context: format!("kill {} with signal {signal}", c.pid),
            source: e,
        }),
    }
}
