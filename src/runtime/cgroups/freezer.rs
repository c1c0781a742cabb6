//! Freeze / thaw: v1 freezer.state, v2 cgroup.freeze + cgroup.events.

use std::time::Duration;

use super::hierarchy::Hierarchy;
use super::{CgroupError, Result, fsio};

/// How many times the state is polled before giving up (with a backoff up
/// to 10 ms, about 10 s in all).
const POLLS: u32 = 1000;

/// Freezes the cgroup and waits until the kernel reports it frozen. On
/// failure the cgroup is thawed again.
pub(crate) fn freeze(h: &Hierarchy, path: &str) -> Result<()> {
    let result = match h {
        Hierarchy::V1 { .. } => {
            let dir = v1_dir(h, path)?;
            wait(|| {
                // Re-asking helps when tasks were in the middle of a fork.
                fsio::write(&dir, "freezer.state", "FROZEN")?;
                Ok(fsio::read(&dir, "freezer.state")?.trim() == "FROZEN")
            })
        }
        Hierarchy::V2 { .. } => {
            let dir = h.dir("", path).expect("v2 has a directory");
            fsio::write(&dir, "cgroup.freeze", "1")?;
            wait(|| Ok(v2_frozen(&fsio::read(&dir, "cgroup.events")?)))
        }
    };
    if let Err(e) = result {
        let _ = thaw(h, path);
        return Err(e);
    }
    Ok(())
}

/// Thaws the cgroup and waits until the kernel reports it thawed.
pub(crate) fn thaw(h: &Hierarchy, path: &str) -> Result<()> {
    match h {
        Hierarchy::V1 { .. } => {
            let dir = v1_dir(h, path)?;
            wait(|| {
                fsio::write(&dir, "freezer.state", "THAWED")?;
                Ok(fsio::read(&dir, "freezer.state")?.trim() == "THAWED")
            })
        }
        Hierarchy::V2 { .. } => {
            let dir = h.dir("", path).expect("v2 has a directory");
            fsio::write(&dir, "cgroup.freeze", "0")?;
            wait(|| Ok(!v2_frozen(&fsio::read(&dir, "cgroup.events")?)))
        }
    }
}

/// Thaws only when frozen (or freezing); no freezer is not an error.
pub(crate) fn thaw_if_frozen(h: &Hierarchy, path: &str) -> Result<()> {
    let frozen = match h {
        Hierarchy::V1 { .. } => match h.dir("freezer", path) {
            Some(dir) => {
                fsio::read_opt(&dir, "freezer.state")?.is_some_and(|s| s.trim() != "THAWED")
            }
            None => false,
        },
        Hierarchy::V2 { .. } => {
            let dir = h.dir("", path).expect("v2 has a directory");
            fsio::read_opt(&dir, "cgroup.freeze")?.is_some_and(|s| s.trim() == "1")
        }
    };
    if frozen { thaw(h, path) } else { Ok(()) }
}

/// Whether a v2 cgroup.events content says `frozen 1`.
pub(crate) fn v2_frozen(events: &str) -> bool {
    events
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"])
}

fn v1_dir(h: &Hierarchy, path: &str) -> Result<std::path::PathBuf> {
    h.dir("freezer", path).ok_or_else(|| CgroupError::Backend {
        path: path.to_owned(),
        message: "no v1 freezer controller is mounted".into(),
    })
}

fn wait(mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let mut delay = Duration::from_micros(100);
    for _ in 0..POLLS {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
    Err(CgroupError::Backend {
        path: String::new(),
        message: "the freezer did not reach the requested state".into(),
    })
}
