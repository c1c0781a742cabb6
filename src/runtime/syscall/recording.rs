//! A [`Syscall`] that changes nothing and records every call, with paths
//! as the container sees them: a path under the test's rootfs is written
//! `$ROOT/...`, an fd's path (`/proc/self/fd/N`, a dirfd) is resolved to
//! the file it is open on first. Errors can be injected per call.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::unistd::{Gid, Uid};

use super::Syscall;
use crate::runtime::mount_api::MountAttr;

/// One recorded call, in a form a table test writes by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2(String, MntFlags),
    MoveMount(String),
    MountSetattr {
        path: String,
        recursive: bool,
        set: u64,
    },
    PivotRoot(String, String),
    Chdir(String),
    Mknod {
        path: String,
        kind: SFlag,
        mode: u32,
        dev: u64,
    },
    Chmod(String, u32),
    Chown(String, Option<u32>, Option<u32>),
    Unlink(String),
    Symlink(String, String),
    Sethostname(String),
    Setresuid(u32),
    Setresgid(u32),
    Setgroups(Vec<u32>),
    Setns(String, CloneFlags),
    Unshare(CloneFlags),
    DropBounding(Capability),
    /// The set (`Effective`, ...) and its capabilities.
    Capset(String, Vec<Capability>),
}

/// Picks the call an injected error is for.
type CallMatcher = Box<dyn Fn(&Call) -> bool>;

/// The recording fake.
pub struct RecordingSyscall {
    /// Written `$ROOT` in recorded paths.
    pub rootfs: PathBuf,
    /// What [`Syscall::mountinfo`] returns.
    pub mountinfo: String,
    /// What [`Syscall::statvfs_flags`] returns.
    pub statvfs: FsFlags,
    /// Host paths [`Syscall::exists`] says are there.
    pub existing: Vec<PathBuf>,
    calls: RefCell<Vec<Call>>,
    /// (call matcher, errno): the first call it matches fails, once.
    fail: RefCell<Vec<(CallMatcher, Errno)>>,
}

impl RecordingSyscall {
    pub fn new(rootfs: &Path) -> Self {
        Self {
            rootfs: rootfs.to_path_buf(),
            mountinfo: String::new(),
            statvfs: FsFlags::empty(),
            existing: Vec::new(),
            calls: RefCell::default(),
            fail: RefCell::default(),
        }
    }

    /// The next call that `matches` fails with `errno` (it is still recorded).
    pub fn fail_once(&self, matches: impl Fn(&Call) -> bool + 'static, errno: Errno) {
        self.fail.borrow_mut().push((Box::new(matches), errno));
    }

    /// The calls so far (and forgets them).
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    /// A path as the test writes it.
    pub fn show(&self, p: &Path) -> String {
        let p = if p.starts_with("/proc/self/fd") {
            std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
        } else {
            p.to_path_buf()
        };
        match p.strip_prefix(&self.rootfs) {
            Ok(rel) if rel.as_os_str().is_empty() => "$ROOT".into(),
            Ok(rel) => format!("$ROOT/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }

    fn fd(&self, fd: BorrowedFd<'_>) -> String {
        self.show(&PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
    }

    fn at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> String {
        format!("{}/{}", self.fd(dir), name.to_string_lossy())
    }

    fn record(&self, c: Call) -> nix::Result<()> {
        let errno = {
            let mut fail = self.fail.borrow_mut();
            let i = fail.iter().position(|(m, _)| m(&c));
            i.map(|i| fail.remove(i).1)
        };
        self.calls.borrow_mut().push(c);
        match errno {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn record_caps(&self, c: Call) -> Result<(), caps::errors::CapsError> {
        self.record(c)
            .map_err(|e| caps::errors::CapsError::from(e.to_string()))
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.record(Call::Mount {
            source: source.map(|s| {
                if s.starts_with('/') {
                    self.show(Path::new(s))
                } else {
                    s.to_owned()
                }
            }),
            target: self.show(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.record(Call::Umount2(self.show(target), flags))
    }

    fn move_mount_at(&self, _tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::MoveMount(self.fd(target)))
    }

    fn mount_setattr(&self, path: &Path, recursive: bool, attr: MountAttr) -> nix::Result<()> {
        self.record(Call::MountSetattr {
            path: self.show(path),
            recursive,
            set: attr.set,
        })
    }

    fn statvfs_flags(&self, _path: &Path) -> nix::Result<FsFlags> {
        Ok(self.statvfs)
    }

    fn mountinfo(&self) -> std::io::Result<String> {
        Ok(self.mountinfo.clone())
    }

    fn exists(&self, path: &Path) -> bool {
        self.existing.iter().any(|p| p == path)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.record(Call::PivotRoot(self.show(new_root), self.show(put_old)))
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.record(Call::Chdir(self.show(path)))
    }

    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::Chdir(self.fd(dir)))
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: SFlag,
        mode: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        self.record(Call::Mknod {
            path: self.at(dir, name),
            kind,
            mode: mode.bits(),
            dev,
        })
    }

    fn fchmodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: Mode,
        _follow: bool,
    ) -> nix::Result<()> {
        self.record(Call::Chmod(self.at(dir, name), mode.bits()))
    }

    fn fchownat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: Option<Uid>,
        gid: Option<Gid>,
    ) -> nix::Result<()> {
        self.record(Call::Chown(
            self.at(dir, name),
            uid.map(Uid::as_raw),
            gid.map(Gid::as_raw),
        ))
    }

    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
        self.record(Call::Unlink(self.at(dir, name)))
    }

    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
        self.record(Call::Symlink(self.at(dir, name), target.to_owned()))
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.record(Call::Sethostname(name.to_owned()))
    }

    fn setresuid(&self, uid: Uid) -> nix::Result<()> {
        self.record(Call::Setresuid(uid.as_raw()))
    }

    fn setresgid(&self, gid: Gid) -> nix::Result<()> {
        self.record(Call::Setresgid(gid.as_raw()))
    }

    fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
        self.record(Call::Setgroups(gids.to_vec()))
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        self.record(Call::Setns(self.fd(fd), nstype))
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn drop_bounding(&self, cap: Capability) -> Result<(), caps::errors::CapsError> {
        self.record_caps(Call::DropBounding(cap))
    }

    fn in_bounding(&self, _cap: Capability) -> bool {
        true
    }

    fn capset(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
        let mut v: Vec<Capability> = caps.iter().copied().collect();
        v.sort_by_key(|c| c.index());
        self.record_caps(Call::Capset(format!("{set:?}"), v))
    }
}
