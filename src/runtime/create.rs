//! `Container::create`: validate the spec, make the cgroup, start the init
//! helper, hand it the request and stdio, and wait until the container init
//! reports `Ready` (or an error, after which nothing is left behind).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::LinuxNamespaceType;

use super::cgroups::CgroupManager;
use super::helper::Helper;
use super::namespaces;
use super::protocol::{self, CreateRequest, Report, Request};
use super::state;
use super::{Container, CreateOptions, Result, RuntimeError, Stdio, sys};

/// The cgroup path of a container whose spec names none: `/berth/<id>`
/// under cgroupfs; under the systemd driver the scope `berth-<id>.scope` in
/// `system.slice` (a delegated unit of its own, as containerd and runc
/// place containers without a parent), never at the v2 root outside it.
pub fn default_cgroup_path(id: &str, systemd: bool) -> String {
    if systemd {
        format!("{}:berth:{id}", super::cgroups::systemd::DEFAULT_SLICE)
    } else {
        format!("/berth/{id}")
    }
}

/// The spec's cgroups path checked against the driver (runc's rules): the
/// systemd driver takes only `slice:prefix:name`. That form is the systemd
/// driver's also when the caller did not say so: containerd's CRI writes it
/// whenever the pod's parent is a `.slice` (kubelet's systemd driver), and
/// its runc options (`SystemdCgroup`) reach only runtimes of type runc.
pub fn cgroups_path_for_driver(spec_path: Option<&str>, id: &str, systemd: bool) -> Result<String> {
    let Some(path) = spec_path.filter(|p| !p.is_empty()) else {
        return Ok(default_cgroup_path(id, systemd));
    };
    if systemd && !path.contains(':') {
        return Err(RuntimeError::InvalidSpec(format!(
            "the systemd cgroup driver expects linux.cgroupsPath as \"slice:prefix:name\", got {path:?}"
        )));
    }
    Ok(path.to_owned())
}

/// Checks the id: it names files and cgroups, so only a safe subset.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "invalid container id {id:?} (letters, digits, - _ . + only)"
        )))
    }
}

/// Opens /dev/null for a missing stdio stream.
pub fn dev_null() -> Result<OwnedFd> {
    nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
        RuntimeError::Sys {
            context: "open /dev/null".into(),
            source: e,
        }
    })
}

/// The three stdio fds to send (missing ones become /dev/null).
pub fn stdio_fds(stdio: Stdio) -> Result<Vec<OwnedFd>> {
    [stdio.stdin, stdio.stdout, stdio.stderr]
        .into_iter()
        .map(|fd| match fd {
            Some(fd) => Ok(fd),
            None => dev_null(),
        })
        .collect()
}

/// Undoes a failed create.
struct Cleanup<'a> {
    pid: Option<i32>,
    cgroup: Option<&'a CgroupManager>,
    state_dir: &'a Path,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = sys::kill(pid, libc::SIGKILL);
            sys::reap_failed_child(pid);
        }
        if let Some(cg) = self.cgroup
            && let Err(e) = cg.destroy()
        {
            tracing::warn!(cgroup = cg.path(), error = %e, "cleanup of failed create: destroy cgroup");
        }
        state::remove(self.state_dir);
    }
}

pub fn create(opts: CreateOptions<'_>) -> Result<(Container, Option<OwnedFd>)> {
    validate_id(opts.id)?;
    let started = std::time::Instant::now();
    let spec_in = opts.spec;
    let process = spec_in
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::InvalidSpec("spec has no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::InvalidSpec("process.args is empty".into()));
    }
    let rootfs = bundle_rootfs(spec_in, opts.bundle)?;
    let rootfs = rootfs.canonicalize().map_err(|e| RuntimeError::Io {
        context: format!("rootfs {}", rootfs.display()),
        source: e,
    })?;
    let linux = spec_in.linux().as_ref();
    let plan = namespaces::plan(linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]))
        .map_err(RuntimeError::InvalidSpec)?;
    if !plan.creates(LinuxNamespaceType::Mount) {
        return Err(RuntimeError::InvalidSpec(
            "the spec must ask for a new mount namespace".into(),
        ));
    }
    let spec_cgroup = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup_path =
        cgroups_path_for_driver(spec_cgroup.as_deref(), opts.id, opts.systemd_cgroup)?;
    if spec_in.hooks().is_some() {
        tracing::warn!(container = opts.id, "OCI hooks are not supported; ignored");
    }
    let terminal = opts.stdio.terminal || process.terminal().unwrap_or(false);
    let mut spec = spec_in.clone();
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(terminal));
    }

    std::fs::create_dir_all(opts.state_dir).map_err(|e| RuntimeError::Io {
        context: format!("create state dir {}", opts.state_dir.display()),
        source: e,
    })?;
    let exec_fifo = state::make_exec_fifo(opts.state_dir)?;
    let cgroup = CgroupManager::new(&cgroup_path)?;
    // Never share (and, on failure, destroy) the cgroup of a live container.
    if cgroup.pids().is_ok_and(|p| !p.is_empty()) {
        return Err(RuntimeError::InvalidSpec(format!(
            "cgroup {cgroup_path} already holds processes"
        )));
    }
    let mut cleanup = Cleanup {
        pid: None,
        cgroup: None,
        state_dir: opts.state_dir,
        armed: true,
    };
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => {
            // Compiled here (cached per process) for a clear error; the
            // helper gets the BPF program.
            let program = super::seccomp::prepare_cached(profile)?;
            state::save_seccomp(opts.state_dir, profile)?;
            Some(program)
        }
        None => None,
    };
    let stdio = stdio_fds(opts.stdio)?;
    // The helper starts, parses the request and joins namespaces while the
    // cgroup is made; it clones the container only after `Proceed`.
    let helper = Helper::spawn()?;
    let hpid = helper.child.id() as i32;
    let abort = |helper: Helper| {
        let _ = sys::kill(hpid, libc::SIGKILL);
        helper.reap();
    };
    let req = Request::Create(Box::new(CreateRequest {
        spec,
        rootfs,
        exec_fifo,
        cgroup_path: format!("/{}", cgroup.path()),
        seccomp,
    }));
    let raw: Vec<i32> = stdio.iter().map(|f| f.as_raw_fd()).collect();
    if let Err(e) = protocol::send(helper.sock.as_fd(), &req, &raw) {
        abort(helper);
        return Err(RuntimeError::Io {
            context: "send request to the init helper".into(),
            source: e,
        });
    }
    let t_cg = std::time::Instant::now();
    // Destroyed on failure even if only part of it was made (destroy is idempotent).
    cleanup.cgroup = Some(&cgroup);
    let r = cgroup
        .create_with(linux.and_then(|l| l.resources().as_ref()), Some(hpid))
        .and_then(|()| cgroup.admit_helper());
    let cgroup_ms = t_cg.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = r
        .map_err(RuntimeError::from)
        .and_then(|join| helper.proceed(join, "init"))
    {
        abort(helper);
        return Err(e);
    }
    drop(stdio);
    let outcome = read_reports(&helper.sock, opts.id, terminal);
    let sock_pid = outcome.pid;
    cleanup.pid = sock_pid;
    helper.reap();
    let (pid, pty) = match (outcome.error, outcome.ready, sock_pid) {
        (None, true, Some(pid)) => (pid, outcome.pty),
        (Some(e), _, _) => return Err(RuntimeError::Setup(e)),
        _ => {
            return Err(RuntimeError::Setup(
                "the container init exited before it was set up".into(),
            ));
        }
    };
    if terminal && pty.is_none() {
        return Err(RuntimeError::Setup("no pty master came back".into()));
    }
    state::record_start_time(opts.state_dir, pid);
    cleanup.armed = false;
    tracing::debug!(
        container = opts.id,
        pid,
        cgroup_ms,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "container created"
    );
    Ok((
        Container {
            id: opts.id.to_owned(),
            pid,
            bundle: opts.bundle.to_owned(),
            state_dir: opts.state_dir.to_owned(),
            cgroup_path,
        },
        pty,
    ))
}

/// What the helper and the process it cloned reported.
#[derive(Default)]
pub struct Outcome {
    pub pid: Option<i32>,
    pub pty: Option<OwnedFd>,
    pub ready: bool,
    pub error: Option<String>,
}

/// Reads reports until `Ready` (with a pid), an error, or the end of the stream.
pub fn read_reports(sock: &OwnedFd, id: &str, want_ready: bool) -> Outcome {
    let _ = want_ready;
    let mut out = Outcome::default();
    loop {
        match protocol::recv::<Report>(sock.as_fd()) {
            Ok(Some((msg, mut fds))) => match msg {
                Report::Pid(p) => out.pid = Some(p),
                Report::Warning(w) => tracing::warn!(container = id, "{w}"),
                Report::PtyMaster => out.pty = fds.pop(),
                Report::Ready => out.ready = true,
                Report::Error(e) => {
                    // The first error is the cause; keep reading for the pid.
                    out.error.get_or_insert(e);
                }
            },
            Ok(None) => return out,
            Err(e) => {
                out.error
                    .get_or_insert(format!("reading from the init helper: {e}"));
                return out;
            }
        }
        if out.ready && out.pid.is_some() {
            return out;
        }
    }
}

/// The spec's root path, relative paths taken from the bundle (OCI).
pub(crate) fn bundle_rootfs(
    spec: &oci_spec::runtime::Spec,
    bundle: &Path,
) -> std::result::Result<PathBuf, RuntimeError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| RuntimeError::InvalidSpec("spec has no root".into()))?;
    Ok(if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    })
}
