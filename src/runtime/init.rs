//! The container side: what the process cloned by the init helper does
//! before it becomes the user's process. Runs in a single-threaded process
//! that is a copy of the helper; every failure goes back to the caller over
//! the socket with its context, then the process exits.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::namespaces::NamespacePlan;
use super::process_spec;
use super::protocol::{self, CreateRequest, Report};
use super::rootfs::{self, RootfsContext, SetupResult};
use super::seccomp::{self, SeccompProgram};
use super::sys;
use super::syscall::{LinuxSyscall, Syscall};

fn errno_text(e: Errno) -> String {
    e.to_string()
}

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> SetupResult<T> {
    r.map_err(|e| format!("{}: {}", what(), errno_text(e)))
}

fn warn(sock: BorrowedFd<'_>, msg: String) {
    let _ = protocol::send(sock, &Report::Warning(msg), &[]);
}

fn fail(sock: BorrowedFd<'_>, msg: String) -> ! {
    let _ = protocol::send(sock, &Report::Error(msg), &[]);
    sys::exit_now(1)
}

/// What the container init needs from the helper.
pub struct InitContext<'a> {
    pub req: &'a CreateRequest,
    pub plan: &'a NamespacePlan,
    pub sock: OwnedFd,
    /// stdin, stdout, stderr.
    pub stdio: Vec<OwnedFd>,
    /// Readable once the helper has written the uid/gid maps (new user namespace).
    pub userns_sync: Option<OwnedFd>,
    pub cgroup_file: String,
    /// The spec's seccomp filter, compiled by the helper.
    pub seccomp: Option<&'a SeccompProgram>,
    /// Idmapped trees for the spec's mounts (see [`RootfsContext::idmapped`]).
    pub idmapped: &'a [Option<OwnedFd>],
}

/// The container init: sets everything up, reports `Ready`, waits for
/// `start`, then execs the user process. Never returns.
pub fn container_init(c: InitContext<'_>) -> ! {
    let sock = c.sock.as_fd();
    match setup_container(&c) {
        Ok(never) => match never {},
        Err(msg) => fail(sock, msg),
    }
}

enum Never {}

fn setup_container(c: &InitContext<'_>) -> SetupResult<Never> {
    let k: &dyn Syscall = &LinuxSyscall;
    let sock = c.sock.as_fd();
    let spec = &c.req.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| "spec has no process".to_string())?;
    sys::reset_signals();
    // Opened first: the fifo lives in the caller's state dir, which root of
    // a user namespace may not be able to open any more.
    let fifo = ctx(
        nix::fcntl::open(
            &c.req.exec_fifo,
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open exec fifo {}", c.req.exec_fifo.display()),
    )?;
    if let Some(sync) = &c.userns_sync {
        let mut b = [0u8; 1];
        let mut f = std::fs::File::from(ctx(nix::unistd::dup(sync), || "dup sync".into())?);
        match f.read(&mut b) {
            Ok(1) => {}
            _ => return Err("the helper did not write the user namespace maps".into()),
        }
        ctx(k.setresgid(Gid::from_raw(0)), || {
            "become root (gid 0) in the user namespace".into()
        })?;
        ctx(k.setresuid(Uid::from_raw(0)), || {
            "become root (uid 0) in the user namespace".into()
        })?;
    }
    let joined_userns = c
        .plan
        .join
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::User);
    if joined_userns {
        // Root of the joined user namespace (the caller's host uid is not
        // mapped in it: files it made in the container's own tmpfs mounts
        // would fail with EOVERFLOW). Host paths the set-up reads from must
        // be traversable by that uid (berthd keeps its state dir so).
        ctx(k.setresgid(Gid::from_raw(0)), || {
            "become root (gid 0) in the joined user namespace".into()
        })?;
        ctx(k.setresuid(Uid::from_raw(0)), || {
            "become root (uid 0) in the joined user namespace".into()
        })?;
    }
    ctx(nix::unistd::setsid(), || "setsid".into())?;
    let userns = c.plan.has(LinuxNamespaceType::User);
    if !c.plan.creates(LinuxNamespaceType::Mount) {
        return Err("the spec must ask for a new mount namespace".into());
    }
    rootfs::prepare(&RootfsContext {
        sys: k,
        spec,
        rootfs: &c.req.rootfs,
        userns,
        cgroup_file: &c.cgroup_file,
        idmapped: c.idmapped,
    })?;
    set_hostname(k, spec, c.plan)?;
    set_sysctls(spec, c.plan)?;
    set_oom_score_adj(sock, process)?;
    rootfs::pivot(k, &c.req.rootfs)?;
    rootfs::finish(k, spec, Path::new("/"))?;
    let tty = if process.terminal().unwrap_or(false) {
        Some(open_pty(sock, process)?)
    } else {
        None
    };
    let target = setup_process(k, sock, process, c.seccomp)?;
    install_stdio(tty.as_ref(), &c.stdio)?;
    protocol::send(sock, &Report::Ready, &[]).map_err(|e| format!("report ready: {e}"))?;
    // Block until `start` writes to the fifo.
    let mut b = [0u8; 1];
    let n = loop {
        match nix::unistd::read(&fifo, &mut b) {
            Err(Errno::EINTR) => continue,
            r => break r,
        }
    };
    if n != Ok(1) {
        sys::exit_now(1);
    }
    drop(fifo);
    exec(sock, &target)
}

/// What the exec child needs from the helper.
pub struct ExecContext<'a> {
    pub process: &'a Process,
    /// The container's seccomp filter, compiled (exec'd processes get it too).
    pub seccomp: Option<&'a SeccompProgram>,
    pub sock: OwnedFd,
    pub stdio: Vec<OwnedFd>,
}

/// A process exec'd into a running container (namespaces already joined by
/// the helper): process set-up, then exec. Never returns.
pub fn exec_init(c: ExecContext<'_>) -> ! {
    let sock = c.sock.as_fd();
    let r = (|| -> SetupResult<Never> {
        sys::reset_signals();
        ctx(nix::unistd::setsid(), || "setsid".into())?;
        set_oom_score_adj(sock, c.process)?;
        let tty = if c.process.terminal().unwrap_or(false) {
            Some(open_pty(sock, c.process)?)
        } else {
            None
        };
        let target = setup_process(&LinuxSyscall, sock, c.process, c.seccomp)?;
        install_stdio(tty.as_ref(), &c.stdio)?;
        exec(sock, &target)
    })();
    match r {
        Ok(never) => match never {},
        Err(msg) => fail(sock, msg),
    }
}

fn set_hostname(k: &dyn Syscall, spec: &Spec, plan: &NamespacePlan) -> SetupResult<()> {
    let uts = plan.has(LinuxNamespaceType::Uts);
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !uts {
            return Err("hostname set but the container has no UTS namespace".into());
        }
        ctx(k.sethostname(h), || format!("set hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        if !uts {
            return Err("domainname set but the container has no UTS namespace".into());
        }
        std::fs::write("/proc/sys/kernel/domainname", d)
            .map_err(|e| format!("set domainname {d:?}: {e}"))?;
    }
    Ok(())
}

fn set_sysctls(spec: &Spec, plan: &NamespacePlan) -> SetupResult<()> {
    let Some(sysctls) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let ns = process_spec::sysctl_namespace(key)
            .ok_or_else(|| format!("sysctl {key} is not namespaced; refusing to set it"))?;
        if !plan.has(ns) {
            return Err(format!(
                "sysctl {key} needs its own {} namespace",
                super::namespaces::proc_name(ns)
            ));
        }
        let file = Path::new("/proc/sys").join(process_spec::sysctl_file(key)?);
        std::fs::write(&file, &sysctls[key])
            .map_err(|e| format!("sysctl {key}={}: {e}", sysctls[key]))?;
    }
    Ok(())
}

fn set_oom_score_adj(sock: BorrowedFd<'_>, process: &Process) -> SetupResult<()> {
    let Some(want) = process.oom_score_adj() else {
        return Ok(());
    };
    match std::fs::write("/proc/self/oom_score_adj", want.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            let current = std::fs::read_to_string("/proc/self/oom_score_adj")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            warn(
                sock,
                format!("oom_score_adj {want} not permitted (no CAP_SYS_RESOURCE); kept {current}"),
            );
            Ok(())
        }
        Err(e) => Err(format!("set oom_score_adj {want}: {e}")),
    }
}

fn open_pty(sock: BorrowedFd<'_>, process: &Process) -> SetupResult<OwnedFd> {
    let master = ctx(
        nix::fcntl::open(
            "/dev/ptmx",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || "open /dev/ptmx (is /dev/pts a devpts mount?)".into(),
    )?;
    let n = ctx(sys::unlock_pty(master.as_fd()), || "unlock pty".into())?;
    let slave = ctx(
        nix::fcntl::open(
            format!("/dev/pts/{n}").as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open /dev/pts/{n}"),
    )?;
    if let Some(size) = process.console_size() {
        ctx(
            sys::set_winsize(master.as_fd(), size.height() as u16, size.width() as u16),
            || "set the console size".into(),
        )?;
    }
    protocol::send(sock, &Report::PtyMaster, &[master.as_raw_fd()])
        .map_err(|e| format!("send pty master: {e}"))?;
    drop(master);
    ctx(sys::set_controlling_tty(slave.as_fd()), || {
        "make the pty the controlling terminal".into()
    })?;
    Ok(slave)
}

fn install_stdio(tty: Option<&OwnedFd>, stdio: &[OwnedFd]) -> SetupResult<()> {
    for n in 0..3 {
        let src = match tty {
            Some(t) => t.as_fd(),
            None => stdio
                .get(n)
                .ok_or_else(|| format!("missing stdio fd {n}"))?
                .as_fd(),
        };
        ctx(sys::dup2_raw(src, n as i32), || {
            format!("install stdio fd {n}")
        })?;
    }
    Ok(())
}

/// The resolved program and its argv/envp.
struct ExecTarget {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Seccomp programs still to install right before exec (with no_new_privs).
    seccomp: Option<SeccompProgram>,
}

fn cstring(s: &str, what: &str) -> SetupResult<CString> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte: {s:?}"))
}

/// rlimits, user and groups, capabilities, no_new_privs, umask, cwd, and the
/// executable lookup; everything up to the exec itself.
fn setup_process(
    k: &dyn Syscall,
    sock: BorrowedFd<'_>,
    process: &Process,
    seccomp_program: Option<&SeccompProgram>,
) -> SetupResult<ExecTarget> {
    // While the set-up may still write to /proc (as runc, before the
    // capabilities go); it takes effect at the exec.
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        super::apparmor::change_on_exec(profile)?;
    }
    let mut programs = seccomp_program.cloned();
    let nnp = process.no_new_privileges().unwrap_or(false);
    if !nnp && let Some(p) = programs.take() {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do
        // it before the capabilities go (as runc does). The profile must then
        // allow the rest of the set-up.
        seccomp::install(&p).map_err(|e| e.to_string())?;
    }
    for r in process.rlimits().iter().flatten() {
        let res = process_spec::rlimit_resource(r.typ());
        match sys::setrlimit(res, r.soft(), r.hard()) {
            Ok(()) => {}
            Err(Errno::EPERM) => {
                // Raising a hard limit needs CAP_SYS_RESOURCE: keep the current one.
                let (_, cur_hard) = ctx(sys::getrlimit(res), || format!("getrlimit {}", r.typ()))?;
                let soft = r.soft().min(cur_hard);
                ctx(sys::setrlimit(res, soft, cur_hard), || {
                    format!("setrlimit {} soft={soft} hard={cur_hard}", r.typ())
                })?;
                warn(
                    sock,
                    format!(
                        "rlimit {} hard {} not permitted; clamped to {cur_hard} (soft {soft})",
                        r.typ(),
                        r.hard()
                    ),
                );
            }
            Err(e) => {
                return ctx(Err(e), || {
                    format!("setrlimit {} soft={} hard={}", r.typ(), r.soft(), r.hard())
                });
            }
        }
    }
    let user = process.user();
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(user.uid())));
    }
    let caps = process.capabilities().as_ref();
    if let Some(c) = caps {
        // The bounding set first: dropping needs CAP_SETPCAP, still held here.
        // An absent bounding list is an empty one, as in runc: Go's
        // `omitempty` drops `[]`, so "drop ALL" (containerd's CRI) arrives
        // as capabilities without a bounding key.
        let keep = match c.bounding() {
            Some(b) => process_spec::to_caps(b)?,
            None => caps::CapsHashSet::new(),
        };
        for cap in caps::all() {
            if !keep.contains(&cap) {
                match k.drop_bounding(cap) {
                    Ok(()) => {}
                    // A capability this kernel does not have.
                    Err(_) if !k.in_bounding(cap) => {}
                    Err(e) => return Err(format!("drop {cap} from the bounding set: {e}")),
                }
            }
        }
    }
    ctx(sys::set_keepcaps(true), || "keep capabilities".into())?;
    let gids = process_spec::additional_gids(user.additional_gids().as_ref());
    match k.setgroups(&gids) {
        Ok(()) => {}
        // "deny" in /proc/self/setgroups (user namespace): only fine without extra groups.
        Err(Errno::EPERM) if gids.is_empty() => {}
        Err(e) => return ctx(Err(e), || format!("setgroups {gids:?}")),
    }
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    ctx(k.setresgid(gid), || format!("setgid {}", user.gid()))?;
    ctx(k.setresuid(uid), || format!("setuid {}", user.uid()))?;
    ctx(sys::set_keepcaps(false), || "reset keepcaps".into())?;
    if let Some(c) = caps {
        let set = |which: caps::CapSet, v: &Option<oci_spec::runtime::Capabilities>| {
            let v = match v {
                Some(v) => process_spec::to_caps(v)?,
                None => caps::CapsHashSet::new(),
            };
            k.capset(which, &v)
                .map_err(|e| format!("set {which:?} capabilities: {e}"))
        };
        set(caps::CapSet::Inheritable, c.inheritable())?;
        set(caps::CapSet::Effective, c.effective())?;
        set(caps::CapSet::Permitted, c.permitted())?;
        set(caps::CapSet::Ambient, c.ambient())?;
    } else if user.uid() != 0 {
        let _ = k.capset(caps::CapSet::Ambient, &caps::CapsHashSet::new());
    }
    if let Some(mask) = user.umask() {
        sys::umask(mask);
    } else {
        sys::umask(0o022);
    }
    let cwd = process.cwd();
    ctx(k.chdir(cwd.as_path()), || {
        format!("chdir to cwd {}", cwd.display())
    })?;
    let args = process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| "process.args is empty".to_string())?;
    let path = process_spec::find_executable(&args[0], process_spec::env_path(&env), |p| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
            && std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
    })?;
    nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("exec {}: {}", path.display(), errno_text(e)))?;
    if nnp {
        ctx(sys::set_no_new_privs(), || "set no_new_privs".into())?;
    }
    Ok(ExecTarget {
        seccomp: programs,
        path: cstring(&path.to_string_lossy(), "executable path")?,
        argv: args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<SetupResult<_>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "environment variable"))
            .collect::<SetupResult<_>>()?,
    })
}

/// The home directory of `uid` from the container's /etc/passwd, else "/".
fn home_of(uid: u32) -> String {
    // The file belongs to the container: only a regular file, and not much of it
    // (a FIFO or /dev/zero in its place must not stall the set-up).
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open("/etc/passwd")
    else {
        return "/".into();
    };
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return "/".into();
    }
    let mut passwd = String::new();
    if f.take(1 << 20).read_to_string(&mut passwd).is_err() {
        return "/".into();
    }
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_owned())
        })
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

fn exec(sock: BorrowedFd<'_>, t: &ExecTarget) -> ! {
    // Nothing of the runtime may survive into the container (CVE-2024-21626).
    if let Err(e) = sys::cloexec_from(3) {
        fail(sock, format!("mark fds close-on-exec: {}", errno_text(e)));
    }
    // As late as possible: only execve itself has to be allowed.
    if let Some(p) = &t.seccomp
        && let Err(e) = seccomp::install(p)
    {
        fail(sock, e.to_string());
    }
    let e = sys::execve(&t.path, &t.argv, &t.env);
    let msg = format!("exec {:?}: {}", t.path, errno_text(e));
    // After `start` nobody may be listening any more; stderr is the container's.
    let _ = protocol::send(sock, &Report::Error(msg.clone()), &[]);
    let _ = nix::unistd::write(std::io::stderr(), format!("berth: {msg}\n").as_bytes());
    sys::exit_now(127)
}

#[cfg(test)]
mod tests {
    use nix::sched::CloneFlags;
    use oci_spec::runtime::SpecBuilder;

    use super::*;
    use crate::runtime::syscall::recording::{Call, RecordingSyscall};

    fn plan(clone_flags: libc::c_int) -> NamespacePlan {
        NamespacePlan {
            clone_flags,
            join: vec![],
        }
    }

    #[test]
    fn hostname_is_set_only_in_a_uts_namespace() {
        let k = RecordingSyscall::new(Path::new("/nonexistent"));
        let spec = SpecBuilder::default().hostname("pod-a").build().unwrap();
        set_hostname(&k, &spec, &plan(CloneFlags::CLONE_NEWUTS.bits())).unwrap();
        assert_eq!(k.take(), vec![Call::Sethostname("pod-a".into())]);
        let err = set_hostname(&k, &spec, &plan(0)).unwrap_err();
        assert!(err.contains("no UTS namespace"), "{err}");
        assert_eq!(k.take(), vec![]);
        // An empty hostname: no call.
        let spec = SpecBuilder::default().hostname("").build().unwrap();
        set_hostname(&k, &spec, &plan(CloneFlags::CLONE_NEWUTS.bits())).unwrap();
        assert_eq!(k.take(), vec![]);
    }
}
