//! Device nodes: the default set plus the spec's, made with mknod (or bound
//! from the host in a user namespace), and the /dev symlinks.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::{RootfsContext, SetupResult, sys};
use crate::runtime::path::{Kind, ensure_in_root, proc_fd_path};
use crate::runtime::syscall::Syscall;

/// A device to create in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The devices every container gets, plus the spec's own.
pub fn device_list(spec: &Spec) -> SetupResult<Vec<Device>> {
    let mut out: Vec<Device> = [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| Device {
        path: p.into(),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: None,
        gid: None,
    })
    .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(format!(
                    "device {}: type 'a' is not a device",
                    d.path().display()
                ));
            }
        };
        if !d.path().starts_with("/dev") {
            return Err(format!("device {} is not under /dev", d.path().display()));
        }
        let dev = Device {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        };
        out.retain(|o| o.path != dev.path);
        out.push(dev);
    }
    Ok(out)
}

pub(super) fn create_devices(root: BorrowedFd<'_>, ctx: &RootfsContext<'_>) -> SetupResult<()> {
    let k = ctx.sys;
    for d in device_list(ctx.spec)? {
        let what = format!("create device {}", d.path.display());
        let parent = d.path.parent().unwrap_or(Path::new("/dev"));
        let name = d
            .path
            .file_name()
            .ok_or_else(|| format!("{what}: no file name"))?;
        let dir = ensure_in_root(root, parent, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
        // Whatever the image put there goes (a regular file posing as /dev/null).
        match k.unlinkat(dir.as_fd(), name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return sys(Err(e), || format!("{what}: remove existing")),
        }
        if ctx.userns {
            // mknod is not allowed in a user namespace: bind the host's node.
            let f =
                ensure_in_root(root, &d.path, Kind::File).map_err(|e| format!("{what}: {e}"))?;
            sys(
                k.mount(
                    Some(&d.path.to_string_lossy()),
                    &proc_fd_path(&f),
                    None,
                    MsFlags::MS_BIND,
                    None,
                ),
                || format!("{what}: bind from host"),
            )?;
            continue;
        }
        let mode = Mode::from_bits_truncate(d.mode);
        let dev = nix::sys::stat::makedev(d.major, d.minor);
        sys(k.mknodat(dir.as_fd(), name, d.kind, mode, dev), || {
            format!("{what}: mknod")
        })?;
        sys(
            k.fchmodat(dir.as_fd(), name, mode, false).or_else(|e| {
                // fchmodat cannot skip symlinks on older kernels; the node is ours.
                if e == Errno::EOPNOTSUPP {
                    k.fchmodat(dir.as_fd(), name, mode, true)
                } else {
                    Err(e)
                }
            }),
            || format!("{what}: chmod"),
        )?;
        if d.uid.is_some() || d.gid.is_some() {
            sys(
                k.fchownat(
                    dir.as_fd(),
                    name,
                    d.uid.map(nix::unistd::Uid::from_raw),
                    d.gid.map(nix::unistd::Gid::from_raw),
                ),
                || format!("{what}: chown"),
            )?;
        }
    }
    Ok(())
}

pub(super) fn dev_symlinks(k: &dyn Syscall, root: BorrowedFd<'_>) -> SetupResult<()> {
    let dev = ensure_in_root(root, Path::new("/dev"), Kind::Dir)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if k.exists(Path::new("/proc/kcore")) {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        if name == "ptmx" {
            // Replace a ptmx node of the image: the container's devpts is what counts.
            let _ = k.unlinkat(dev.as_fd(), OsStr::new(name));
        }
        match k.symlinkat(target, dev.as_fd(), OsStr::new(name)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return sys(Err(e), || format!("symlink /dev/{name} -> {target}")),
        }
    }
    Ok(())
}
