//! The real [`Syscall`]: each method is the kernel call itself, through
//! `nix`, `caps`, the new mount API wrappers (`mount_api.rs`) and
//! `sys.rs`. Part of the syscall layer: where a call needs `unsafe`, it is
//! in those files with its `// SAFETY:` line; nothing here needs one.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::fcntl::AtFlags;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::Syscall;
use crate::runtime::mount_api::{self, MountAttr};
use crate::runtime::sys;

/// The kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn move_mount_at(&self, tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
        mount_api::attach_at(tree, target)
    }

    fn mount_setattr(&self, path: &Path, recursive: bool, attr: MountAttr) -> nix::Result<()> {
        mount_api::setattr_path(path, recursive, attr)
    }

    fn statvfs_flags(&self, path: &Path) -> nix::Result<FsFlags> {
        nix::sys::statvfs::statvfs(path).map(|s| s.flags())
    }

    fn mountinfo(&self) -> std::io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
        nix::unistd::fchdir(dir)
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: SFlag,
        mode: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        nix::sys::stat::mknodat(dir, name, kind, mode, dev)
    }

    fn fchmodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: Mode,
        follow: bool,
    ) -> nix::Result<()> {
        let f = if follow {
            FchmodatFlags::FollowSymlink
        } else {
            FchmodatFlags::NoFollowSymlink
        };
        nix::sys::stat::fchmodat(dir, name, mode, f)
    }

    fn fchownat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: Option<Uid>,
        gid: Option<Gid>,
    ) -> nix::Result<()> {
        nix::unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
    }

    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
        nix::unistd::symlinkat(target, dir, name)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn setresuid(&self, uid: Uid) -> nix::Result<()> {
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn setresgid(&self, gid: Gid) -> nix::Result<()> {
        nix::unistd::setresgid(gid, gid, gid)
    }

    fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
        sys::setgroups(gids)
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(fd, nstype)
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn drop_bounding(&self, cap: Capability) -> Result<(), caps::errors::CapsError> {
        caps::drop(None, CapSet::Bounding, cap)
    }

    fn in_bounding(&self, cap: Capability) -> bool {
        caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
    }

    fn capset(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
        caps::set(None, set, caps)
    }
}
