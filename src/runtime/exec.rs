//! `Container::exec`: a new helper joins the init's namespaces and cgroup
//! and clones the process (a child of the caller), which sets itself up and
//! execs. Returns once it has exec'd (the socket closes on exec).

use std::os::fd::{AsFd, AsRawFd};

use oci_spec::runtime::Process;

use super::cgroups::CgroupManager;
use super::create::{read_reports, stdio_fds};
use super::helper::Helper;
use super::protocol::{self, ExecRequest, Request};
use super::{Container, ExecProcess, Result, RuntimeError, Stdio, state, sys};

pub fn exec(c: &Container, process: &Process, stdio: Stdio) -> Result<ExecProcess> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::InvalidSpec("process.args is empty".into()));
    }
    if !state::is_same_process(&c.state_dir, c.pid) {
        return Err(RuntimeError::NotFound(format!(
            "container {}: init process {} is gone",
            c.id, c.pid
        )));
    }
    let terminal = stdio.terminal || process.terminal().unwrap_or(false);
    let mut process = process.clone();
    process.set_terminal(Some(terminal));
    let fds = stdio_fds(stdio)?;
    let seccomp = state::load_seccomp(&c.state_dir)?
        .map(|p| super::seccomp::prepare_cached(&p))
        .transpose()?;
    let cg = CgroupManager::new(&c.cgroup_path)?;
    if is_frozen(&cg) {
        // The helper would freeze as soon as it joined the cgroup.
        return Err(RuntimeError::InvalidSpec(format!(
            "container {} is paused; resume it before exec",
            c.id
        )));
    }
    let helper = Helper::spawn()?;
    let hpid = helper.child.id() as i32;
    let abort = |helper: Helper| {
        let _ = sys::kill(hpid, libc::SIGKILL);
        helper.reap();
    };
    let req = Request::Exec(Box::new(ExecRequest {
        process,
        init_pid: c.pid,
        seccomp,
    }));
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    if let Err(e) = protocol::send(helper.sock.as_fd(), &req, &raw) {
        abort(helper);
        return Err(RuntimeError::Io {
            context: "send request to the exec helper".into(),
            source: e,
        });
    }
    // Into the container's cgroup before it clones the process.
    if let Err(e) = cg
        .admit_helper()
        .map_err(RuntimeError::from)
        .and_then(|join| helper.proceed(join, "exec"))
    {
        abort(helper);
        return Err(e);
    }
    drop(fds);
    // No `Ready` for exec: the stream ends when the process execs.
    let out = read_reports(&helper.sock, &c.id, false);
    helper.reap();
    match (out.error, out.pid) {
        (None, Some(pid)) => {
            if terminal && out.pty.is_none() {
                let _ = sys::kill(pid, libc::SIGKILL);
                sys::reap_failed_child(pid);
                return Err(RuntimeError::Setup("no pty master came back".into()));
            }
            Ok(ExecProcess {
                pid,
                pty_master: out.pty,
            })
        }
        (Some(e), pid) => {
            if let Some(pid) = pid {
                let _ = sys::kill(pid, libc::SIGKILL);
                sys::reap_failed_child(pid);
            }
            Err(RuntimeError::Setup(e))
        }
        (None, None) => Err(RuntimeError::Setup(
            "the exec helper exited without starting the process".into(),
        )),
    }
}

/// Whether the cgroup is frozen (or freezing).
fn is_frozen(cg: &CgroupManager) -> bool {
    if cg.hierarchy().is_v2() {
        cg.dir("")
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.freeze")).ok())
            .is_some_and(|s| s.trim() == "1")
    } else {
        cg.dir("freezer")
            .and_then(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
            .is_some_and(|s| s.trim() != "THAWED")
    }
}
