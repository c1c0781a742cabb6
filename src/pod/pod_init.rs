//! The pod's tiny init: pid 1 of a pod's shared pid namespace
//! (shareProcessNamespace), so that no pause image is needed.
//!
//! berthd runs its own executable as `berthd pod-init <pod id>` (a fresh,
//! single-threaded process, started before any runtime): it unshares a pid
//! namespace, forks the init (pid 1 inside), prints the init's host pid and
//! exits. The init reaps every orphan of the pod and exits on SIGTERM or
//! SIGKILL (which ends every process of the namespace). It is started in its
//! own process group, so it outlives berthd like the shims do.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use super::{PodError, Result};

/// The argument that selects this mode of the berthd executable.
pub const POD_INIT_ARG: &str = "pod-init";

/// Entry point of `berthd pod-init <pod id>`; never returns. Must run before
/// any other thread exists.
pub fn main() -> ! {
    let code = match start_init() {
        Ok(pid) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{pid}");
            let _ = out.flush();
            0
        }
        Err(e) => {
            eprintln!("berthd pod-init: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn start_init() -> std::result::Result<i32, String> {
    // `pod-init <pod id> [<user namespace>]`: a user-namespaced pod's pid
    // namespace is owned by its user namespace (or its containers could
    // not mount /proc).
    if let Some(userns) = std::env::args().nth(3) {
        let fd = nix::fcntl::open(
            userns.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open user namespace {userns}: {e}"))?;
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("join user namespace {userns}: {e}"))?;
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    // SAFETY: this process is single-threaded (pod-init runs before any
    // thread is started), so the child may run any code after fork.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => init_loop(),
    }
}

/// pid 1: reap children until SIGTERM.
fn init_loop() -> ! {
    // Release the pipes berthd reads the pid from, so its read ends.
    for fd in 0..3 {
        // SAFETY: closing the standard fds of this process; nothing else in
        // this single-threaded process uses them afterwards.
        unsafe { libc::close(fd) };
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let _ = set.thread_block();
    // Leave the daemon's cwd so no mount is held busy.
    let _ = std::env::set_current_dir("/");
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Ok(_) => std::process::exit(0),
            Err(_) => {}
        }
    }
}

/// berthd's own executable, open since start-up: the file this process
/// runs, also after a package upgrade or a rebuild renamed another file over
/// its path (then `/proc/self/exe` reads `.../berthd (deleted)`, a path
/// that no longer exists). Close-on-exec: no child inherits it.
static OWN_EXE: OnceLock<OwnedFd> = OnceLock::new();

/// Opens berthd's own executable for [`spawn`]; call it once at start-up.
/// Later calls (and a [`spawn`] without it) reuse the first handle.
pub fn open_own_executable() -> Result<()> {
    own_executable().map(drop)
}

fn own_executable() -> Result<&'static OwnedFd> {
    if let Some(fd) = OWN_EXE.get() {
        return Ok(fd);
    }
    // Opening the magic link opens the running file itself, deleted or not.
    let file = std::fs::File::open("/proc/self/exe")
        .map_err(|e| PodError::io("open /proc/self/exe", e))?;
    Ok(OWN_EXE.get_or_init(|| OwnedFd::from(file)))
}

/// Starts the init of pod `pod_id` (inside the user namespace pinned at
/// `userns`, if any); returns its host pid.
pub fn spawn(pod_id: &str, userns: Option<&Path>) -> Result<i32> {
    // Executed through the open handle (execve of /proc/self/fd/N: the fd
    // is close-on-exec, so it is still open in the child until the exec
    // succeeds, and the new program does not inherit it).
    let exe = format!("/proc/self/fd/{}", own_executable()?.as_raw_fd());
    let mut cmd = Command::new(&exe);
    std::os::unix::process::CommandExt::arg0(&mut cmd, "berthd");
    cmd.args([POD_INIT_ARG, pod_id]);
    if let Some(u) = userns {
        cmd.arg(u);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let out = cmd
        .output()
        .map_err(|e| PodError::io(format!("run berthd {POD_INIT_ARG} (from {exe})"), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<i32>() {
        Ok(pid) if out.status.success() && pid > 0 => Ok(pid),
        _ => Err(PodError::Namespace(format!(
            "pod init failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Whether `pid` is still the running init of pod `pod_id` (not a
/// zombie, nor a reused pid).
pub fn is_alive(pid: i32, pod_id: &str) -> bool {
    let cmdline =
        std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(POD_INIT_ARG) && cmdline.contains(pod_id) && !crate::runtime::has_exited(pid)
}

/// Kills the init `pid` of pod `pod_id` (and so every process of the pod's
/// pid namespace) if it is still that init. Idempotent.
pub fn kill(pid: i32, pod_id: &str) {
    let cmdline =
        std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains(POD_INIT_ARG) && cmdline.contains(pod_id) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        // Our child's child: reparented to pid 1, which may reap it late;
        // a zombie has exited (and its pid namespace with it).
        for _ in 0..500 {
            if crate::runtime::has_exited(pid) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}
