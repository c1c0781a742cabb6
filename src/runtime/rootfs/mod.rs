//! The container's filesystem, set up by the container init in its new
//! mount namespace: root propagation, the rootfs as a mount point, spec
//! mounts (`mounts.rs`, cgroup mounts in `cgroupfs.rs`), default devices
//! and /dev symlinks (`devices.rs`), `pivot_root` (`pivot.rs`), masked and
//! read-only paths, read-only root.
//!
//! Every destination is resolved inside the rootfs ([`super::path`]) and
//! mounted through `/proc/self/fd/N`, so symlinks in a destination never
//! lead out of the rootfs. Every kernel call goes through [`Syscall`]: the
//! unit tests (`tests.rs`) assert the exact sequence without root.

mod cgroupfs;
mod devices;
mod mounts;
mod pivot;
#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;
use oci_spec::runtime::Spec;

pub use pivot::pivot;

use super::mount_options;
use super::path::{self, Kind, ensure_in_root, open_in_root, proc_fd_path};
use super::syscall::Syscall;

/// A failure with the context a person needs ("mount proc on /proc: EPERM").
pub type SetupResult<T> = Result<T, String>;

/// What the rootfs set-up needs besides the spec.
pub struct RootfsContext<'a> {
    /// The kernel.
    pub sys: &'a dyn Syscall,
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The container runs in a new or joined user namespace: devices are bind
    /// mounted from the host instead of created with mknod.
    pub userns: bool,
    /// The helper's `/proc/self/cgroup` (the container's cgroups).
    pub cgroup_file: &'a str,
    /// Per spec mount (same index): a detached tree the helper made before
    /// it joined the user namespace, attached instead of a bind: idmapped
    /// for a bind mount with uid/gid mappings, a plain copy of the source
    /// for any other bind mount of a container in a user namespace.
    pub idmapped: &'a [Option<OwnedFd>],
}

fn sys<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> SetupResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Everything before `pivot_root`.
pub fn prepare(ctx: &RootfsContext<'_>) -> SetupResult<()> {
    let k = ctx.sys;
    let linux = ctx.spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => mount_options::propagation(p)
            .ok_or_else(|| format!("invalid rootfsPropagation {p:?}"))?,
    };
    sys(k.mount(None, Path::new("/"), None, prop, None), || {
        "set propagation of /".into()
    })?;
    // As runc's prepareRoot: the rootfs's own mount (or, when the rootfs is
    // no mount point, the mount it sits on) becomes private, whatever the
    // root propagation. pivot_root refuses a new root whose parent mount is
    // shared, and with rshared (a Bidirectional mount) every mount here is;
    // private also keeps the bind below from propagating to the host.
    make_rootfs_mount_private(k, ctx.rootfs)?;
    let root_str = ctx.rootfs.to_string_lossy();
    sys(
        k.mount(
            Some(&root_str),
            ctx.rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        || format!("bind mount rootfs {} on itself", ctx.rootfs.display()),
    )?;
    let root = sys(
        nix::fcntl::open(
            ctx.rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open rootfs {}", ctx.rootfs.display()),
    )?;
    for (i, m) in ctx.spec.mounts().iter().flatten().enumerate() {
        let idmapped = ctx.idmapped.get(i).and_then(|t| t.as_ref());
        mounts::mount_entry(root.as_fd(), m, idmapped, ctx)?;
    }
    devices::create_devices(root.as_fd(), ctx)?;
    devices::dev_symlinks(k, root.as_fd())?;
    // The process' cwd must exist (runc creates it too).
    if let Some(cwd) = ctx.spec.process().as_ref().map(|p| p.cwd()) {
        ensure_in_root(root.as_fd(), cwd, Kind::Dir).map_err(|e| format!("process cwd: {e}"))?;
    }
    Ok(())
}

/// runc's rootfsParentMountPrivate: MS_PRIVATE on `rootfs`, else on the
/// nearest mount point above it (EINVAL: not a mount point, go up).
fn make_rootfs_mount_private(k: &dyn Syscall, rootfs: &Path) -> SetupResult<()> {
    let mut path = rootfs;
    loop {
        match k.mount(None, path, None, MsFlags::MS_PRIVATE, None) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if path != Path::new("/") => {
                path = path.parent().unwrap_or(Path::new("/"));
            }
            Err(e) => {
                return Err(format!(
                    "make the mount of rootfs {} private (at {}): {e}",
                    rootfs.display(),
                    path.display()
                ));
            }
        }
    }
}

/// Flags of the mount at `target` that a bind remount must keep (in a user
/// namespace the kernel refuses to drop locked ones).
fn kept_flags(k: &dyn Syscall, target: &Path) -> MsFlags {
    let Ok(f) = k.statvfs_flags(target) else {
        return MsFlags::empty();
    };
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Bind-remounts `target` with `flags` added to what it has.
fn remount_bind(k: &dyn Syscall, target: &Path, flags: MsFlags, what: &str) -> SetupResult<()> {
    let all = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    match k.mount(None, target, None, all, None) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => sys(
            k.mount(None, target, None, all | kept_flags(k, target), None),
            || format!("remount {what} with {flags:?}"),
        ),
        Err(e) => sys(Err(e), || format!("remount {what} with {flags:?}")),
    }
}

/// Everything after `pivot_root` (`root` is then `/`): masked and read-only
/// paths, read-only root.
pub fn finish(k: &dyn Syscall, spec: &Spec, root_path: &Path) -> SetupResult<()> {
    let root = sys(
        nix::fcntl::open(
            root_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", root_path.display()),
    )?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let what = format!("mask {p}");
        let fd = match open_in_root(root.as_fd(), Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return sys(Err(e), || what),
        };
        let target = proc_fd_path(&fd);
        if path::is_dir(&fd) {
            sys(
                k.mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                ),
                || format!("{what}: tmpfs"),
            )?;
        } else {
            sys(
                k.mount(Some("/dev/null"), &target, None, MsFlags::MS_BIND, None),
                || format!("{what}: bind /dev/null"),
            )?;
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let what = format!("read-only path {p}");
        let fd = match open_in_root(root.as_fd(), Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return sys(Err(e), || what),
        };
        let target = proc_fd_path(&fd);
        sys(
            k.mount(
                Some(&target.to_string_lossy()),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            || format!("{what}: bind"),
        )?;
        let fd = sys(open_in_root(root.as_fd(), Path::new(p)), || {
            format!("{what}: reopen")
        })?;
        remount_bind(
            k,
            &proc_fd_path(&fd),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            &what,
        )?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(k, root_path, MsFlags::MS_RDONLY, "read-only root")?;
    }
    Ok(())
}
