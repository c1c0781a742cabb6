//! The kernel seam of the container set-up, as youki's `Syscall` trait:
//! every kernel side effect of the init and of the rootfs set-up (mounts and
//! the new mount API, `pivot_root`, `chdir`, device nodes, ownership,
//! symlinks, hostname, ids and groups, namespaces, capabilities) goes
//! through [`Syscall`]. [`LinuxSyscall`] makes the real calls;
//! `RecordingSyscall` (tests only) records them, so unit tests assert the
//! exact call sequence a spec asks for without root.
//!
//! Path resolution inside the rootfs ([`super::path`], `openat2`) is not
//! behind the seam: it has no side effect a test must avoid, and a test
//! running it on a temporary rootfs checks it as the kernel does.
//!
//! The init runs in a single-threaded process (a copy of the init helper,
//! itself a fresh exec), so neither the set-up nor this seam has to be
//! async-signal-safe; calls go through `&dyn Syscall` and allocate nothing
//! of their own.

mod linux;
#[cfg(test)]
pub mod recording;

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::unistd::{Gid, Uid};

pub use linux::LinuxSyscall;

use super::mount_api::MountAttr;

/// The kernel operations of container init and rootfs set-up.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    /// move_mount(2): attaches the detached mount `tree` on what `target`
    /// is open on.
    fn move_mount_at(&self, tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()>;
    /// mount_setattr(2) on the mount at `path` (and below, with `recursive`).
    fn mount_setattr(&self, path: &Path, recursive: bool, attr: MountAttr) -> nix::Result<()>;
    /// The mount flags of the filesystem at `path` (statvfs(2)).
    fn statvfs_flags(&self, path: &Path) -> nix::Result<FsFlags>;
    /// This process' `/proc/self/mountinfo`.
    fn mountinfo(&self) -> std::io::Result<String>;
    /// Whether `path` exists on the host (before `pivot_root`).
    fn exists(&self, path: &Path) -> bool;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// fchdir(2).
    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()>;
    /// mknodat(2).
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: SFlag,
        mode: Mode,
        dev: u64,
    ) -> nix::Result<()>;
    /// fchmodat(2), following a symlink only with `follow`.
    fn fchmodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: Mode,
        follow: bool,
    ) -> nix::Result<()>;
    /// fchownat(2) with AT_SYMLINK_NOFOLLOW.
    fn fchownat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: Option<Uid>,
        gid: Option<Gid>,
    ) -> nix::Result<()>;
    /// unlinkat(2) of a non-directory.
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()>;
    /// symlinkat(2): `dir`/`name` pointing at `target`.
    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// setresuid(2) with all three ids `uid`.
    fn setresuid(&self, uid: Uid) -> nix::Result<()>;
    /// setresgid(2) with all three ids `gid`.
    fn setresgid(&self, gid: Gid) -> nix::Result<()>;
    /// setgroups(2) (an empty list too).
    fn setgroups(&self, gids: &[u32]) -> nix::Result<()>;
    /// setns(2).
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    /// Drops `cap` from the bounding set (prctl PR_CAPBSET_DROP).
    fn drop_bounding(&self, cap: Capability) -> Result<(), caps::errors::CapsError>;
    /// Whether `cap` is in the bounding set.
    fn in_bounding(&self, cap: Capability) -> bool;
    /// capset(2) for one set (ambient: prctl PR_CAP_AMBIENT).
    fn capset(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), caps::errors::CapsError>;
}
