//! The runtime's files in a container's state dir: the exec fifo `start`
//! writes to, and the init's start time (guards against pid reuse).

use std::path::{Path, PathBuf};

use super::{Result, RuntimeError};

const EXEC_FIFO: &str = "exec.fifo";
const INIT_START: &str = "init.start";
const SECCOMP: &str = "seccomp.json";

/// Keeps the container's seccomp profile for later execs.
pub fn save_seccomp(state_dir: &Path, profile: &oci_spec::runtime::LinuxSeccomp) -> Result<()> {
    let p = state_dir.join(SECCOMP);
    let data = serde_json::to_vec(profile).map_err(|e| RuntimeError::Io {
        context: "serialize seccomp profile".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&p, data).map_err(|e| RuntimeError::Io {
        context: format!("write {}", p.display()),
        source: e,
    })
}

/// The container's seccomp profile, if it has one.
pub fn load_seccomp(state_dir: &Path) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    let p = state_dir.join(SECCOMP);
    match std::fs::read(&p) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| RuntimeError::Io {
                context: format!("parse {}", p.display()),
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::Io {
            context: format!("read {}", p.display()),
            source: e,
        }),
    }
}

pub fn exec_fifo(state_dir: &Path) -> PathBuf {
    state_dir.join(EXEC_FIFO)
}

/// Creates a fresh exec fifo (mode 0600).
pub fn make_exec_fifo(state_dir: &Path) -> Result<PathBuf> {
    let p = exec_fifo(state_dir);
    let _ = std::fs::remove_file(&p);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
        RuntimeError::Sys {
            context: format!("mkfifo {}", p.display()),
            source: e,
        }
    })?;
    Ok(p)
}

/// The start time (clock ticks since boot) of `pid`, field 22 of /proc/<pid>/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a /proc/<pid>/stat line (the command may hold spaces and parens).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the command: field 3 (state) is the first; start time is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` has exited: gone, or a zombie that its parent has not
/// reaped yet (a daemonised shim is reparented to pid 1, which may reap late).
pub fn has_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_state(&stat).is_none_or(|s| s == 'Z' || s == 'X'),
        Err(_) => true,
    }
}

/// Field 3 (the state letter) of a /proc/<pid>/stat line.
pub fn parse_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

pub fn record_start_time(state_dir: &Path, pid: i32) {
    if let Some(t) = start_time(pid) {
        let _ = std::fs::write(state_dir.join(INIT_START), t.to_string());
    }
}

/// Whether `pid` still is the process the container was created with.
pub fn is_same_process(state_dir: &Path, pid: i32) -> bool {
    let Some(now) = start_time(pid) else {
        return false;
    };
    match std::fs::read_to_string(state_dir.join(INIT_START)) {
        Ok(s) => s.trim().parse::<u64>().ok() == Some(now),
        // Not recorded (older state): trust the pid.
        Err(_) => true,
    }
}

/// Removes the runtime's files (not the state dir, which the caller owns).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(exec_fifo(state_dir));
    let _ = std::fs::remove_file(state_dir.join(INIT_START));
    let _ = std::fs::remove_file(state_dir.join(SECCOMP));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letter_after_a_command_with_parens() {
        assert_eq!(parse_state("42 (a b) c) Z 1 42"), Some('Z'));
        assert_eq!(parse_state("7 (sleep) S 1 7"), Some('S'));
        assert_eq!(parse_state("garbage"), None);
        assert!(!has_exited(std::process::id() as i32));
    }

    #[test]
    fn start_time_after_a_command_with_spaces() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(line), Some(123456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id() as i32).is_some());
    }
}
