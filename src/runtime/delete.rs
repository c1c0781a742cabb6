//! `Container::delete`: kill what is left, remove the cgroup and the state files.

use super::cgroups::CgroupManager;
use super::{Container, Result, state, sys};

pub fn delete(c: &Container) -> Result<()> {
    if state::is_same_process(&c.state_dir, c.pid) {
        let _ = sys::kill(c.pid, libc::SIGKILL);
    }
    CgroupManager::new(&c.cgroup_path)?.destroy()?;
    state::remove(&c.state_dir);
    Ok(())
}
