//! The host's device nodes under /dev, for privileged containers (which get
//! all of them) and CRI `devices` (which name some), as containerd's
//! `HostDevices` lists them.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::spec::{DeviceKind, HostDevice};

/// Directories under /dev that hold no device a container should get as a
/// node of its own (its /dev/pts, /dev/shm and /dev/mqueue are its own).
const SKIPPED: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every character and block device below /dev (symlinks not followed;
/// /dev/console skipped: a container's console is its own).
pub(crate) fn host_devices() -> Vec<HostDevice> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), true, &mut out);
    out
}

fn walk(dir: &Path, top: bool, out: &mut Vec<HostDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let name = e.file_name();
            if top && SKIPPED.iter().any(|s| name == *s) {
                continue;
            }
            walk(&path, false, out);
            continue;
        }
        let kind = if ft.is_char_device() {
            DeviceKind::Char
        } else if ft.is_block_device() {
            DeviceKind::Block
        } else {
            continue;
        };
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        out.push(HostDevice {
            path,
            kind,
            major: libc::major(rdev) as i64,
            minor: libc::minor(rdev) as i64,
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
}
