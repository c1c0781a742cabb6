//! The few system calls the runtime needs that have no safe wrapper in `nix`
//! or `std`. With `mount_api.rs`, `protocol.rs` (fd passing) and
//! `seccomp/sys.rs`, this is the runtime's syscall layer: its `unsafe` blocks
//! live in these files, each with a `// SAFETY:` line.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;

/// Result of a raw `clone`: which side of it we are on.
pub enum CloneResult {
    /// In the parent; the new child's pid (in the parent's active pid namespace).
    Parent(i32),
    /// In the child.
    Child,
}

/// A fork-like `clone(2)` (no new stack: the child gets a copy-on-write copy
/// of the caller's memory, exactly as with `fork`) with namespace and
/// `CLONE_PARENT` flags. The exit signal is SIGCHLD.
///
/// Only call from a single-threaded process (the init helper).
pub fn clone_fork(flags: libc::c_int) -> nix::Result<CloneResult> {
    // SAFETY: raw clone without CLONE_VM and with a NULL stack behaves like
    // fork(2); the helper that calls this is single-threaded, so the child
    // may go on running ordinary Rust code (no lock can be held by another
    // thread).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match Errno::result(ret)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as i32)),
    }
}

/// `CLONE_INTO_CGROUP` (Linux 5.7+): clone3 puts the child in the cgroup
/// whose directory fd is `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), up to its `cgroup` field (version 2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// [`clone_fork`], with the child born in the cgroup v2 directory `cgroup`
/// (clone3 with `CLONE_INTO_CGROUP`): no process is moved, so the kernel's
/// global threadgroup lock and its RCU grace period are never taken.
/// ENOSYS or E2BIG: a kernel older than 5.7.
///
/// Only call from a single-threaded process (the init helper).
pub fn clone_into_cgroup(flags: libc::c_int, cgroup: BorrowedFd<'_>) -> nix::Result<CloneResult> {
    let args = CloneArgs {
        flags: (flags as u32 as u64) | CLONE_INTO_CGROUP,
        // clone3 refuses an exit signal with CLONE_PARENT: the child then
        // gets the caller's own (SIGCHLD, as the helper's parent made it).
        exit_signal: if flags & libc::CLONE_PARENT != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: as with `clone_fork`: no CLONE_VM and no stack, so the child
    // runs on a copy-on-write copy of this (single-threaded) process; `args`
    // outlives the call and its size is passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(ret)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as i32)),
    }
}

/// Marks every fd from `first` upward close-on-exec (CVE-2024-21626 class:
/// nothing of the runtime may leak into the container).
pub fn cloexec_from(first: RawFd) -> nix::Result<()> {
    // SAFETY: close_range only changes fd flags; no memory is involved.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(ret) {
        Ok(_) => Ok(()),
        // A seccomp profile may refuse close_range: one fd at a time then.
        Err(_) => cloexec_each(first),
    }
}

fn cloexec_each(first: RawFd) -> nix::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only changes the flags of the descriptor (the one
        // of the read_dir above is already closed: EBADF is ignored).
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        if r < 0 && Errno::last() != Errno::EBADF {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Closes every fd from `first` upward.
pub fn close_from(first: RawFd) -> nix::Result<()> {
    // SAFETY: closing fds we do not own would be a problem for Rust code
    // holding them; this is only called at the very start of the init helper,
    // before anything in this process opened an fd above `first`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    Errno::result(ret).map(drop)
}

/// `dup2(old, new)`; the new fd is not close-on-exec.
pub fn dup2_raw(old: BorrowedFd<'_>, new: RawFd) -> nix::Result<()> {
    // SAFETY: dup2 on a valid fd; `new` is one of the standard fds, which
    // Rust does not track as owned.
    Errno::result(unsafe { libc::dup2(old.as_raw_fd(), new) }).map(drop)
}

/// Takes ownership of an fd inherited at a fixed number.
///
/// # Panics
/// Never; returns `None` when `fd` is not open.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open, was inherited by contract for this purpose, and
    // nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on an open fd we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(owned)
}

/// Makes `fd` become fd `target` (not close-on-exec) in the process `cmd`
/// starts.
pub fn pass_fd_as(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs between fork and exec in the child; it only
    // calls dup2/fcntl, which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the process `cmd` starts write `0` to `fd` (a cgroup's
/// `cgroup.procs`, open for writing) before it execs: it joins that cgroup
/// itself, so everything it forks is born inside (runc puts CRIU into the
/// container's cgroup the same way before a restore).
pub fn join_cgroup_at_exec(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec in the child; it only
    // calls write(2) on an open fd with a static buffer (async-signal-safe,
    // no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// prctl(PR_SET_DUMPABLE, value).
pub fn set_dumpable(dumpable: bool) -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(dumpable)
}

/// prctl(PR_SET_NO_NEW_PRIVS, 1).
pub fn set_no_new_privs() -> nix::Result<()> {
    nix::sys::prctl::set_no_new_privs()
}

/// prctl(PR_SET_KEEPCAPS, value).
pub fn set_keepcaps(keep: bool) -> nix::Result<()> {
    nix::sys::prctl::set_keepcaps(keep)
}

/// setrlimit(resource, soft, hard).
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> nix::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    Errno::result(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
}

/// getrlimit(resource) -> (soft, hard).
pub fn getrlimit(resource: libc::c_int) -> nix::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    Errno::result(unsafe { libc::getrlimit(resource as _, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Makes the terminal `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no memory.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// Unlocks a pty master and returns the number of its slave.
pub fn unlock_pty(master: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the valid pointer.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to the valid pointer.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// umask(mask).
pub fn umask(mask: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// Sends `sig` to `pid` (0 checks existence).
pub fn kill(pid: i32, sig: i32) -> nix::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    Errno::result(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// setgroups(2) that also works for an empty list.
pub fn setgroups(gids: &[u32]) -> nix::Result<()> {
    // SAFETY: the pointer and length describe a valid slice of gid_t.
    Errno::result(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map(drop)
}

/// execve(path, argv, envp); returns only on failure.
pub fn execve(path: &CString, argv: &[CString], env: &[CString]) -> Errno {
    match nix::unistd::execve(path, argv, env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Exits the process at once, without running destructors or atexit
/// handlers (the state is a copy of the helper's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Resets every signal disposition to its default and unblocks all signals
/// (the caller may ignore SIGPIPE, as Rust programs do; a container process
/// must not inherit that).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty set, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Reaps `pid`, a child of this process that the runtime itself made fail
/// (an exec or create that never reached the user's program). A caller
/// that reaps every child may have got it first: ECHILD is fine.
pub fn reap_failed_child(pid: i32) {
    loop {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::__WALL),
        ) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Sets the window size of a terminal.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// A child process in a new user namespace, made by `spawn_userns_child`.
/// Dropping it ends the child (it holds nothing once its namespaces are
/// pinned or opened).
pub struct UsernsChild {
    /// The child's pid (its `/proc/<pid>/ns/*` are the new namespaces).
    pub pid: i32,
    go: Option<OwnedFd>,
    ack: OwnedFd,
}

/// Forks a child in a new user namespace. Safe in a multi-threaded process:
/// between the clone and its exit the child only makes raw system calls
/// (close, prctl, read, unshare, sethostname, write, _exit) and touches no
/// lock or allocator.
///
/// The child waits for [`UsernsChild::proceed`] (the caller writes the uid
/// and gid maps before), then unshares `then_flags` (namespaces owned by the
/// new user namespace), sets `hostname` when it is not empty, reports, and
/// waits until it is dropped.
pub fn spawn_userns_child(then_flags: libc::c_int, hostname: &[u8]) -> nix::Result<UsernsChild> {
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ack_r, ack_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_r_fd, go_w_fd, ack_r_fd, ack_w_fd) = (
        go_r.as_raw_fd(),
        go_w.as_raw_fd(),
        ack_r.as_raw_fd(),
        ack_w.as_raw_fd(),
    );
    let host_ptr = hostname.as_ptr();
    let host_len = hostname.len();
    // SAFETY: raw clone without CLONE_VM and with a NULL stack behaves like
    // fork(2). The child runs only the async-signal-safe system calls below
    // on memory that existed before the clone (its own copy), and leaves by
    // _exit, so no lock held by another thread of the caller is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match Errno::result(ret)? {
        // SAFETY: see above; every call is a raw syscall on plain integers
        // or on memory the child owns (its copy of `hostname`).
        0 => unsafe {
            libc::close(go_w_fd);
            libc::close(ack_r_fd);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut b = [0u8; 1];
            if libc::read(go_r_fd, b.as_mut_ptr().cast(), 1) != 1 {
                libc::_exit(1);
            }
            let mut status: u8 = 0;
            if then_flags != 0 && libc::unshare(then_flags) != 0 {
                status = *libc::__errno_location() as u8;
            }
            if status == 0 && host_len > 0 && libc::sethostname(host_ptr.cast(), host_len) != 0 {
                status = *libc::__errno_location() as u8;
            }
            b[0] = status;
            libc::write(ack_w_fd, b.as_ptr().cast(), 1);
            // Wait for the caller to drop us (EOF), then leave.
            libc::read(go_r_fd, b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        },
        pid => Ok(UsernsChild {
            pid: pid as i32,
            go: Some(go_w),
            ack: ack_r,
        }),
    }
}

impl UsernsChild {
    /// Lets the child go on (its maps are written) and waits for its
    /// report: the errno of its unshare or sethostname, if one failed.
    pub fn proceed(&self) -> nix::Result<()> {
        let go = self.go.as_ref().ok_or(Errno::EBADF)?;
        nix::unistd::write(go, b"1")?;
        let mut b = [0u8; 1];
        loop {
            match nix::unistd::read(&self.ack, &mut b) {
                Ok(1) if b[0] == 0 => return Ok(()),
                Ok(1) => return Err(Errno::from_raw(b[0] as i32)),
                Ok(_) => return Err(Errno::ECHILD),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        self.go = None;
        let _ = kill(self.pid, libc::SIGKILL);
        reap_failed_child(self.pid);
    }
}

/// Makes glibc's malloc serve every allocation of `bytes` or more with its
/// own mmap, so that freeing it returns the memory to the kernel at once.
/// glibc otherwise raises this threshold to the largest block freed so far
/// (up to 32 MiB), after which such blocks come from the per-thread arenas
/// and stay resident there once freed. Returns whether malloc took it.
pub fn malloc_mmap_threshold(bytes: usize) -> bool {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}
