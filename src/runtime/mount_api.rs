//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`, `fsopen`,
//! `fsconfig`, `fsmount`): part of the syscall layer, like `sys.rs`. Neither
//! `nix` nor `std` wrap these (rustix has no `mount_setattr`); every `unsafe`
//! block for them lives here.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

fn cstr(p: &Path) -> nix::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn owned(ret: libc::c_long) -> nix::Result<OwnedFd> {
    let fd = Errno::result(ret)?;
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`:
/// a detached copy of the mount (tree) at `path`, unmounted when the fd is
/// closed without being attached.
pub fn clone_tree(path: &Path, recursive: bool) -> nix::Result<OwnedFd> {
    let p = cstr(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `p` is a valid NUL-terminated string for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    owned(ret)
}

/// What `mount_setattr` changes.
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttr {
    /// MOUNT_ATTR_* flags to set.
    pub set: u64,
    /// MOUNT_ATTR_* flags to clear.
    pub clear: u64,
    /// With MOUNT_ATTR_IDMAP in `set`: the user namespace giving the mapping.
    pub userns: Option<RawFd>,
}

fn setattr(dfd: RawFd, path: &CString, flags: libc::c_uint, attr: MountAttr) -> nix::Result<()> {
    let mut a = libc::mount_attr {
        attr_set: attr.set,
        attr_clr: attr.clear,
        propagation: 0,
        userns_fd: attr.userns.map(|fd| fd as u64).unwrap_or(0),
    };
    // SAFETY: `path` is NUL-terminated and `a` a valid mount_attr whose size
    // is passed along; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dfd,
            path.as_ptr(),
            flags,
            &mut a as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// `mount_setattr` on the (detached or attached) mount `fd` refers to.
pub fn setattr_fd(fd: BorrowedFd<'_>, recursive: bool, attr: MountAttr) -> nix::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    setattr(fd.as_raw_fd(), &CString::default(), flags, attr)
}

/// `mount_setattr` on the mount at `path`.
pub fn setattr_path(path: &Path, recursive: bool, attr: MountAttr) -> nix::Result<()> {
    let p = cstr(path)?;
    let flags = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    setattr(libc::AT_FDCWD, &p, flags, attr)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches
/// the detached mount `fd` at `target`.
pub fn attach(fd: BorrowedFd<'_>, target: &Path) -> nix::Result<()> {
    let to = cstr(target)?;
    move_mount(fd, libc::AT_FDCWD, &to, 0)
}

/// `move_mount(fd, "", target_fd, "", F_EMPTY_PATH | T_EMPTY_PATH)`:
/// attaches the detached mount `fd` on the directory or file `target` is
/// open on (an O_PATH fd resolved inside the container's root).
pub fn attach_at(fd: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    move_mount(
        fd,
        target.as_raw_fd(),
        &CString::default(),
        libc::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

/// `move_mount(fd, "", to_dir, to_path, MOVE_MOUNT_F_EMPTY_PATH | flags)`.
fn move_mount(
    fd: BorrowedFd<'_>,
    to_dir: RawFd,
    to_path: &CString,
    flags: libc::c_uint,
) -> nix::Result<()> {
    let empty = CString::default();
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // fds are the caller's, valid for its duration.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            to_dir,
            to_path.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | flags,
        )
    };
    Errno::result(ret).map(drop)
}

/// A filesystem context (`fsopen`) being configured.
pub struct FsContext(OwnedFd);

impl FsContext {
    /// `fsopen(fstype, FSOPEN_CLOEXEC)`.
    pub fn open(fstype: &str) -> nix::Result<FsContext> {
        let t = CString::new(fstype).map_err(|_| Errno::EINVAL)?;
        // SAFETY: `t` is NUL-terminated and lives across the call.
        let ret = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), libc::FSOPEN_CLOEXEC) };
        owned(ret).map(FsContext)
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&str>,
        value: Option<&CString>,
        aux: libc::c_int,
    ) -> nix::Result<()> {
        let k = match key {
            Some(k) => Some(CString::new(k).map_err(|_| Errno::EINVAL)?),
            None => None,
        };
        // SAFETY: key and value are NUL-terminated strings (or NULL) that
        // live across the call; the kernel only reads them.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                cmd,
                k.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
                value.map_or(std::ptr::null(), |v| v.as_ptr()),
                aux,
            )
        };
        Errno::result(ret).map(drop)
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
    pub fn set_string(&self, key: &str, value: &str) -> nix::Result<()> {
        let v = CString::new(value).map_err(|_| Errno::EINVAL)?;
        self.config(libc::FSCONFIG_SET_STRING, Some(key), Some(&v), 0)
    }

    /// `fsconfig(FSCONFIG_SET_FLAG, key)`.
    pub fn set_flag(&self, key: &str) -> nix::Result<()> {
        self.config(libc::FSCONFIG_SET_FLAG, Some(key), None, 0)
    }

    /// `fsconfig(FSCONFIG_SET_FD, key, fd)`.
    pub fn set_fd(&self, key: &str, fd: BorrowedFd<'_>) -> nix::Result<()> {
        self.config(libc::FSCONFIG_SET_FD, Some(key), None, fd.as_raw_fd())
    }

    /// `fsconfig(FSCONFIG_CMD_CREATE)` then `fsmount`: the new, detached mount.
    pub fn mount(self, attr_flags: u64) -> nix::Result<OwnedFd> {
        self.config(libc::FSCONFIG_CMD_CREATE, None, None, 0)?;
        // SAFETY: fsmount takes plain integers.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.0.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attr_flags as libc::c_uint,
            )
        };
        owned(ret)
    }
}

/// A read-only overlayfs over the `lowerdir` layers (`a:b`, escaped), never
/// attached to any mount tree: the returned mount fd is the only way into it
/// (runc's "sealed overlayfs" for the binary that sets containers up).
pub fn detached_readonly_overlay(lowerdir: &str) -> nix::Result<OwnedFd> {
    let ctx = FsContext::open("overlay")?;
    ctx.set_string("lowerdir", lowerdir)?;
    ctx.mount(libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (the suite runs as root); skipped otherwise.
    #[test]
    fn detached_readonly_overlay_reads_and_refuses_writes() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let layer = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(layer.path().join("bin"), b"payload").unwrap();
        let lower = format!("{}:{}", layer.path().display(), empty.path().display());
        let mnt = detached_readonly_overlay(&lower).unwrap();
        let fd = nix::fcntl::openat(
            &mnt,
            "bin",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut got).unwrap();
        assert_eq!(got, "payload");
        let err = nix::fcntl::openat(
            &mnt,
            "bin",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap_err();
        assert_eq!(err, Errno::EROFS);
    }
}
