//! The init helper: the caller's own executable started again, single
//! threaded, to join and create namespaces and clone the container process
//! (with `CLONE_PARENT`, so the container is the caller's child).
//!
//! The helper is started from a view of the executable that nothing can
//! write through (a detached read-only overlayfs, or else a sealed memfd
//! copy), so that neither it nor the container process cloned from it can
//! ever reach (and overwrite) the binary on disk through `/proc/<pid>/exe`
//! (CVE-2019-5736 class). It is also non-dumpable until exec.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use nix::fcntl::{FcntlArg, OFlag, SealFlag};
use nix::sched::CloneFlags;
use nix::sys::memfd::MFdFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::LinuxNamespaceType;

use super::cgroups::HelperJoin;
use super::idmap;
use super::init::{self, ExecContext, InitContext};
use super::namespaces::{self, JOIN_ORDER};
use super::protocol::{self, CgroupJoin, CreateRequest, ExecRequest, Report, Request};
use super::sys::{self, CloneResult};
use super::syscall::{LinuxSyscall, Syscall};
use super::{Result, RuntimeError};

/// setns(2) into the namespace of `typ` that `fd` is open on.
fn join_namespace(typ: LinuxNamespaceType, fd: BorrowedFd<'_>) -> nix::Result<()> {
    LinuxSyscall.setns(fd, CloneFlags::from_bits_retain(namespaces::flag(typ)))
}

/// The environment variable that marks a process as the init helper.
pub const HELPER_ENV: &str = "_BERTH_RUNTIME_INIT_HELPER";
/// The fd number the helper finds its socket at.
const HELPER_SOCK_FD: i32 = 3;

/// Entry of [`super::run_helper_if_requested`].
pub fn run_if_requested() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let Some(sock) = sys::take_inherited_fd(HELPER_SOCK_FD) else {
        let _ = writeln!(
            std::io::stderr(),
            "berth init helper: no socket at fd {HELPER_SOCK_FD}"
        );
        sys::exit_now(2);
    };
    let code = match helper_main(sock.as_fd()) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = protocol::send(sock.as_fd(), &Report::Error(msg), &[]);
            1
        }
    };
    sys::exit_now(code)
}

fn helper_main(sock: BorrowedFd<'_>) -> std::result::Result<(), String> {
    // Anything the caller leaked (fds without CLOEXEC) goes now.
    sys::close_from(HELPER_SOCK_FD + 1).map_err(|e| format!("close inherited fds: {e}"))?;
    sys::set_dumpable(false).map_err(|e| format!("set non-dumpable: {e}"))?;
    let (req, fds) = protocol::recv::<Request>(sock)
        .map_err(|e| format!("read request: {e}"))?
        .ok_or_else(|| "the caller closed the socket".to_string())?;
    match req {
        Request::Create(r) => create(sock, *r, fds),
        Request::Exec(r) => exec(sock, *r, fds),
        Request::Proceed(_) => Err("unexpected Proceed before a request".into()),
    }
}

/// Waits until the container's cgroup is ready. On v1, moves this
/// (single-threaded) helper into it through the `tasks` files that came
/// along; on v2, returns the cgroup directory to clone into.
fn wait_for_proceed(sock: BorrowedFd<'_>) -> std::result::Result<Option<OwnedFd>, String> {
    match protocol::recv::<Request>(sock).map_err(|e| format!("read request: {e}"))? {
        Some((Request::Proceed(CgroupJoin::Tasks), tasks)) => super::cgroups::join_self(&tasks)
            .map(|()| None)
            .map_err(|e| format!("join the container's cgroup: {e}")),
        Some((Request::Proceed(CgroupJoin::CloneInto), fds)) => {
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next()) {
                (Some(dir), None) => Ok(Some(dir)),
                _ => Err("Proceed into a cgroup needs exactly its directory fd".into()),
            }
        }
        Some(_) => Err("unexpected request while waiting for Proceed".into()),
        None => Err("the caller closed the socket".into()),
    }
}

/// The v2 cgroup directory to clone into, unless this helper is about to
/// join a cgroup or user namespace. `CLONE_INTO_CGROUP` is checked against
/// the cloning process's namespaces: on a host that mounts cgroup2 with
/// `nsdelegate` (systemd does), a process in the container's cgroup
/// namespace may not move anything in from the shim's cgroup, outside it.
/// Such a helper moves itself in now, from the host's namespaces (by
/// `cgroup.procs`, which takes the kernel's global lock: slower, but
/// allowed); an exec into a running container is this case.
fn join_cgroup(
    into: Option<OwnedFd>,
    joins_boundary: bool,
) -> std::result::Result<Option<OwnedFd>, String> {
    match into {
        Some(dir) if joins_boundary => move_self_into(&dir)
            .map(|()| None)
            .map_err(|e| format!("join the container's cgroup: {e}")),
        into => Ok(into),
    }
}

/// Moves this (single-threaded) process into the v2 cgroup `dir`.
fn move_self_into(dir: &OwnedFd) -> nix::Result<()> {
    let procs = nix::fcntl::openat(
        dir,
        "cgroup.procs",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::unistd::write(&procs, b"0").map(drop)
}

/// A fork-like clone, born in the v2 cgroup `into` when given. A kernel
/// without `CLONE_INTO_CGROUP` (before 5.7): this helper moves itself in
/// first, and the clone inherits the cgroup.
fn clone_into(flags: libc::c_int, into: Option<&OwnedFd>) -> nix::Result<CloneResult> {
    let Some(dir) = into else {
        return sys::clone_fork(flags);
    };
    match sys::clone_into_cgroup(flags, dir.as_fd()) {
        Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::E2BIG) => {
            move_self_into(dir)?;
            sys::clone_fork(flags)
        }
        r => r,
    }
}

fn open_ns(path: &std::path::Path) -> std::result::Result<OwnedFd, String> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("open namespace {}: {e}", path.display()))
}

fn create(
    sock: BorrowedFd<'_>,
    req: CreateRequest,
    stdio: Vec<OwnedFd>,
) -> std::result::Result<(), String> {
    let linux = req.spec.linux().as_ref();
    let plan = namespaces::plan(linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]))?;
    // Idmapped trees for bind mounts with uid/gid mappings: only a process
    // of the host's user namespace can make them, so before joining. In a
    // user namespace every bind mount's source is taken now too.
    let idmapped = idmapped_mounts(&req.spec, plan.has(LinuxNamespaceType::User))?;
    // Open every namespace first: after joining a mount namespace the paths
    // may mean something else.
    let joins = plan
        .join
        .iter()
        .map(|(t, p)| Ok((*t, p.clone(), open_ns(p)?)))
        .collect::<std::result::Result<Vec<_>, String>>()?;
    // Into the container's cgroup while /proc is still the host's (after
    // joining a mount namespace, /proc/self may not resolve), and with the
    // host's credentials.
    let joins_boundary = joins
        .iter()
        .any(|(t, _, _)| matches!(t, LinuxNamespaceType::Cgroup | LinuxNamespaceType::User));
    let into = join_cgroup(wait_for_proceed(sock)?, joins_boundary)?;
    // The container's cgroups (a `cgroup` mount shows these): this helper's
    // now, or (v2) the one its clone is born in.
    let cgroup_file = match &into {
        None => std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        Some(_) => format!("0::/{}\n", req.cgroup_path.trim_start_matches('/')),
    };
    for (typ, path, fd) in &joins {
        join_namespace(*typ, fd.as_fd()).map_err(|e| {
            format!(
                "join {} namespace {}: {e}",
                namespaces::proc_name(*typ),
                path.display()
            )
        })?;
    }
    drop(joins);
    let new_userns = plan.creates(LinuxNamespaceType::User);
    let sync = if new_userns {
        Some(
            nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| format!("pipe for user namespace sync: {e}"))?,
        )
    } else {
        None
    };
    let mut flags = libc::CLONE_PARENT | plan.clone_flags;
    if flags & libc::CLONE_NEWTIME != 0 {
        // CLONE_NEWTIME shares its bit with the exit signal in clone(2):
        // unshare it here, and the child is born in the new time namespace.
        LinuxSyscall
            .unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .map_err(|e| format!("create time namespace: {e}"))?;
        flags &= !libc::CLONE_NEWTIME;
    }
    let cloned = clone_into(flags, into.as_ref());
    drop(into);
    match cloned.map_err(|e| format!("clone container process: {e}"))? {
        CloneResult::Child => {
            let (sync_r, sync_w) = match sync {
                Some((r, w)) => (Some(r), Some(w)),
                None => (None, None),
            };
            drop(sync_w);
            let sock = sock
                .try_clone_to_owned()
                .unwrap_or_else(|_| sys::exit_now(1));
            init::container_init(InitContext {
                req: &req,
                plan: &plan,
                sock,
                stdio,
                userns_sync: sync_r,
                idmapped: &idmapped,
                cgroup_file,
                seccomp: req.seccomp.as_ref(),
            })
        }
        CloneResult::Parent(pid) => {
            drop(stdio);
            let _ = protocol::send(sock, &Report::Pid(pid), &[]);
            if let Some((r, w)) = sync {
                drop(r);
                if let Err(e) = write_id_maps(pid, &req) {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    return Err(e);
                }
                nix::unistd::write(&w, b"1").map_err(|e| format!("release container: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Per spec mount: a detached idmapped tree for each bind mount that has
/// uid/gid mappings. A mount whose mappings are the container's own uses the
/// container's user namespace; others get one made from their mappings.
///
/// With `userns` (the container is in a new or joined user namespace), every
/// other bind mount gets a detached plain copy of its source, taken here,
/// with the host's credentials: the container's root, a mapped id, may not
/// even reach a source under a directory only the host's root may enter
/// (containerd's 0700 `io.containerd.grpc.v1.cri` holding a pod's shm,
/// hosts and resolv.conf). runc opens bind sources before it joins the user
/// namespace for the same reason.
fn idmapped_mounts(
    spec: &oci_spec::runtime::Spec,
    userns: bool,
) -> std::result::Result<Vec<Option<OwnedFd>>, String> {
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    let wanted = |m: &oci_spec::runtime::Mount| {
        m.uid_mappings().as_ref().is_some_and(|u| !u.is_empty())
            || m.gid_mappings().as_ref().is_some_and(|g| !g.is_empty())
    };
    let is_bind = |m: &oci_spec::runtime::Mount| {
        m.typ().as_deref() == Some("bind")
            || super::mount_options::parse(m.options().as_deref().unwrap_or(&[])).bind
    };
    let needed = mounts.iter().any(wanted) || (userns && mounts.iter().any(is_bind));
    if !needed {
        return Ok(Vec::new());
    }
    let linux = spec.linux().as_ref();
    let own_uid = linux
        .and_then(|l| l.uid_mappings().clone())
        .unwrap_or_default();
    let own_gid = linux
        .and_then(|l| l.gid_mappings().clone())
        .unwrap_or_default();
    let mut own_userns: Option<OwnedFd> = None;
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        if !wanted(m) {
            let plain = match m.source() {
                Some(src) if userns && is_bind(m) => {
                    let opts = super::mount_options::parse(m.options().as_deref().unwrap_or(&[]));
                    Some(
                        super::mount_api::clone_tree(src, opts.recursive).map_err(|e| {
                            format!(
                                "mount {}: open_tree {}: {e}",
                                m.destination().display(),
                                src.display()
                            )
                        })?,
                    )
                }
                _ => None,
            };
            out.push(plain);
            continue;
        }
        let dest = m.destination().display().to_string();
        let opts = super::mount_options::parse(m.options().as_deref().unwrap_or(&[]));
        if !(opts.bind || m.typ().as_deref() == Some("bind")) {
            return Err(format!(
                "mount {dest}: uid/gid mappings are supported on bind mounts only"
            ));
        }
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| format!("mount {dest}: bind mount without a source"))?;
        let uid = m.uid_mappings().clone().unwrap_or_default();
        let gid = m.gid_mappings().clone().unwrap_or_default();
        let fresh;
        let userns = if uid == own_uid && gid == own_gid {
            if own_userns.is_none() {
                own_userns = idmap::spec_userns(spec)?;
            }
            match &own_userns {
                Some(fd) => fd.as_fd(),
                None => {
                    return Err(format!(
                        "mount {dest}: uid/gid mappings but no user namespace"
                    ));
                }
            }
        } else {
            fresh = idmap::userns_from_mappings(&uid, &gid)
                .map_err(|e| format!("mount {dest}: {e}"))?;
            fresh.as_fd()
        };
        let tree = idmap::idmapped_tree(src, opts.recursive, userns)
            .map_err(|e| format!("mount {dest}: {e}"))?;
        out.push(Some(tree));
    }
    Ok(out)
}

fn write_id_maps(pid: i32, req: &CreateRequest) -> std::result::Result<(), String> {
    let linux = req.spec.linux().as_ref();
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.into_iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = fmt(linux.and_then(|l| l.gid_mappings().as_ref()));
    if uid.is_empty() || gid.is_empty() {
        return Err("a new user namespace needs uidMappings and gidMappings".into());
    }
    for (file, data) in [("uid_map", &uid), ("gid_map", &gid)] {
        std::fs::write(format!("/proc/{pid}/{file}"), data)
            .map_err(|e| format!("write {file} {:?}: {e}", data.trim()))?;
    }
    Ok(())
}

fn ns_id(path: &str) -> Option<(u64, u64)> {
    nix::sys::stat::stat(path)
        .ok()
        .map(|s| (s.st_dev, s.st_ino))
}

fn exec(
    sock: BorrowedFd<'_>,
    req: ExecRequest,
    stdio: Vec<OwnedFd>,
) -> std::result::Result<(), String> {
    let pid = req.init_pid;
    let mut joins = Vec::new();
    for typ in JOIN_ORDER {
        let name = namespaces::proc_name(typ);
        let theirs = format!("/proc/{pid}/ns/{name}");
        let Some(their_id) = ns_id(&theirs) else {
            if typ == LinuxNamespaceType::Time {
                continue;
            }
            return Err(format!("container init {pid} is gone ({theirs} missing)"));
        };
        if ns_id(&format!("/proc/self/ns/{name}")) == Some(their_id) {
            continue;
        }
        joins.push((typ, open_ns(std::path::Path::new(&theirs))?));
    }
    // Into the container's cgroup before joining its mount namespace (whose
    // /proc does not show this process).
    let joins_boundary = joins
        .iter()
        .any(|(t, _)| matches!(t, LinuxNamespaceType::Cgroup | LinuxNamespaceType::User));
    let into = join_cgroup(wait_for_proceed(sock)?, joins_boundary)?;
    for (typ, fd) in &joins {
        join_namespace(*typ, fd.as_fd()).map_err(|e| {
            format!(
                "join the container's {} namespace: {e}",
                namespaces::proc_name(*typ)
            )
        })?;
    }
    drop(joins);
    let cloned = clone_into(libc::CLONE_PARENT, into.as_ref());
    drop(into);
    match cloned.map_err(|e| format!("clone exec process: {e}"))? {
        CloneResult::Child => {
            let sock = sock
                .try_clone_to_owned()
                .unwrap_or_else(|_| sys::exit_now(1));
            init::exec_init(ExecContext {
                process: &req.process,
                seccomp: req.seccomp.as_ref(),
                sock,
                stdio,
            })
        }
        CloneResult::Parent(child) => {
            let _ = protocol::send(sock, &Report::Pid(child), &[]);
            Ok(())
        }
    }
}

/// The executable helpers are started from: a view of this executable that
/// no process can write through, made once per process and shared by every
/// helper. Preferably a read-only overlayfs over the executable's directory,
/// mounted nowhere (no copy at all, as runc >= 1.2 does); else a sealed
/// memfd copy (a few MB of memory and a copy per process).
fn protected_exe() -> Result<&'static OwnedFd> {
    static EXE: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd);
    }
    let fd = match readonly_overlay_exe() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "no read-only overlay of the executable: sealed copy");
            sealed_copy()?
        }
    };
    Ok(EXE.get_or_init(|| fd))
}

/// Escapes an overlayfs `lowerdir` entry (`:` separates layers).
fn escape_lowerdir(path: &std::path::Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Opens this executable through a detached, read-only overlayfs: writes
/// through it fail with EROFS, and `/proc/<pid>/exe` of a process started
/// from it leads to the overlay, never to the file on disk.
fn readonly_overlay_exe() -> std::result::Result<OwnedFd, String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(format!("odd executable path {}", exe.display()));
    };
    let ours = std::fs::metadata("/proc/self/exe").map_err(|e| format!("stat exe: {e}"))?;
    // The overlay opens the executable by name: after an upgrade renamed
    // another binary over it, that name is a different file (whose helper
    // protocol may differ), and only the sealed copy of our own one is right.
    {
        use std::os::unix::fs::MetadataExt;
        let named = std::fs::metadata(&exe).map_err(|e| format!("stat {}: {e}", exe.display()))?;
        if (named.dev(), named.ino()) != (ours.dev(), ours.ino()) {
            return Err(format!("{} was replaced on disk", exe.display()));
        }
    }
    // overlayfs wants two lower layers when there is no upper one: an empty
    // directory of our own is the second (the executable's is on top).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let empty =
        std::env::temp_dir().join(format!("berth-exe-layer-{}-{nanos:x}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&empty)
            .map_err(|e| format!("create {}: {e}", empty.display()))?;
    }
    let opened = (|| {
        let lower = format!("{}:{}", escape_lowerdir(dir), escape_lowerdir(&empty));
        let mnt = super::mount_api::detached_readonly_overlay(&lower)
            .map_err(|e| format!("overlay: {e}"))?;
        let fd = nix::fcntl::openat(
            &mnt,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open through the overlay: {e}"))?;
        let fs = nix::sys::statvfs::fstatvfs(&fd).map_err(|e| format!("statvfs: {e}"))?;
        if !fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Err("the overlay is not read-only".to_string());
        }
        let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("stat: {e}"))?;
        if st.st_size as u64 != std::os::unix::fs::MetadataExt::size(&ours) {
            return Err("the overlay shows another file".to_string());
        }
        Ok(fd)
    })();
    // The overlay holds on to the layer; the name can go.
    let _ = std::fs::remove_dir(&empty);
    opened
}

/// A sealed, in-memory copy of this executable.
fn sealed_copy() -> Result<OwnedFd> {
    let io = |context: &str, source| RuntimeError::Io {
        context: context.to_owned(),
        source,
    };
    let mut src =
        std::fs::File::open("/proc/self/exe").map_err(|e| io("open /proc/self/exe", e))?;
    let memfd = nix::sys::memfd::memfd_create(
        "berth-runtime",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| RuntimeError::Sys {
        context: "memfd_create".into(),
        source: e,
    })?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(&mut src, &mut dst).map_err(|e| io("copy executable to memfd", e))?;
    let memfd = OwnedFd::from(dst);
    nix::fcntl::fcntl(
        &memfd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )
    .map_err(|e| RuntimeError::Sys {
        context: "seal executable memfd".into(),
        source: e,
    })?;
    Ok(memfd)
}

/// A started helper and the caller's end of its socket.
pub struct Helper {
    pub child: Child,
    pub sock: OwnedFd,
}

impl Helper {
    /// Lets the helper go on and clone, with what gets the clone into the
    /// container's cgroup. `role` names the helper in the error.
    pub fn proceed(&self, join: HelperJoin, role: &str) -> Result<()> {
        let (how, fds) = match join {
            HelperJoin::Tasks(fds) => (CgroupJoin::Tasks, fds),
            HelperJoin::CloneInto(fd) => (CgroupJoin::CloneInto, vec![fd]),
        };
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        protocol::send(self.sock.as_fd(), &Request::Proceed(how), &raw).map_err(|e| {
            RuntimeError::Io {
                context: format!("tell the {role} helper to proceed"),
                source: e,
            }
        })
    }

    /// Starts a helper (from the sealed copy of this executable).
    pub fn spawn() -> Result<Self> {
        let exe = protected_exe()?;
        let (ours, theirs) = protocol::socket_pair().map_err(|e| RuntimeError::Sys {
            context: "socketpair".into(),
            source: e,
        })?;
        let mut cmd = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
        use std::os::unix::process::CommandExt;
        cmd.arg0("berth-init-helper")
            .env_clear()
            .env(HELPER_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        sys::pass_fd_as(&mut cmd, theirs.as_raw_fd(), HELPER_SOCK_FD);
        let child = cmd.spawn().map_err(|e| RuntimeError::Io {
            context: "start the init helper".into(),
            source: e,
        })?;
        drop(theirs);
        Ok(Self { child, sock: ours })
    }

    /// Reaps the helper, which exits on its own once it has cloned the
    /// container process. A caller that reaps every child (`waitpid(-1)`)
    /// may have done it already: that is fine.
    pub fn reap(mut self) {
        let _ = self.child.wait();
    }
}
