//! One spec mount: a bind (idmapped, with remounted flags, `rro`), or a
//! filesystem (tmpfs, proc, sysfs, ...), then its propagation. Cgroup
//! mounts go to `cgroupfs.rs`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::{RootfsContext, SetupResult, cgroupfs, remount_bind, sys};
use crate::runtime::mount_api::MountAttr;
use crate::runtime::mount_options::{self, MountOptions};
use crate::runtime::path::{Kind, ensure_in_root, open_in_root, proc_fd_path};
use crate::runtime::syscall::Syscall;

pub(super) fn mount_entry(
    root: BorrowedFd<'_>,
    m: &Mount,
    idmapped: Option<&OwnedFd>,
    ctx: &RootfsContext<'_>,
) -> SetupResult<()> {
    let k = ctx.sys;
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(format!(
            "mount destination {} is not absolute",
            dest.display()
        ));
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = mount_options::parse(m.options().as_deref().unwrap_or(&[]));
    let bind = opts.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return cgroupfs::mount_cgroup(root, m, &opts, ctx);
    }
    let what = format!(
        "mount {} on {}",
        if bind { "bind" } else { typ },
        dest.display()
    );
    if bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| format!("{what}: bind mount without a source"))?;
        // A detached tree tells what it is (its source may be out of the
        // reach of a user-namespaced process: see `RootfsContext::idmapped`).
        let is_dir = match idmapped {
            Some(tree) => nix::sys::stat::fstat(tree.as_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(true),
            None => std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(true),
        };
        let kind = if is_dir { Kind::Dir } else { Kind::File };
        let target = ensure_in_root(root, dest, kind).map_err(|e| format!("{what}: {e}"))?;
        if let Some(tree) = idmapped {
            k.move_mount_at(tree.as_fd(), target.as_fd()).map_err(|e| {
                format!(
                    "{what} (detached tree of {}): move_mount: {e}",
                    src.display()
                )
            })?;
        } else {
            let mut flags = MsFlags::MS_BIND;
            if opts.recursive {
                flags |= MsFlags::MS_REC;
            }
            sys(
                k.mount(
                    Some(&src.to_string_lossy()),
                    &proc_fd_path(&target),
                    None,
                    flags,
                    None,
                ),
                || format!("{what} (from {})", src.display()),
            )?;
        }
        // Reopen: the fd still points at the covered directory.
        let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
        let extra = opts.flags - MsFlags::MS_REMOUNT;
        if !extra.is_empty() {
            remount_bind(k, &proc_fd_path(&mounted), extra, &what)?;
        }
        if opts.recursive_readonly {
            // mount_setattr MOUNT_ATTR_RDONLY with AT_RECURSIVE.
            let path = proc_fd_path(&mounted);
            let attr = MountAttr {
                set: libc::MOUNT_ATTR_RDONLY,
                ..Default::default()
            };
            k.mount_setattr(&path, true, attr).map_err(|e| {
                format!("{what}: make {} recursively read-only: {e}", path.display())
            })?;
        }
        apply_propagation(k, &mounted, &opts, &what)?;
        return Ok(());
    }
    let target = ensure_in_root(root, dest, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| typ.to_owned());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let res = k.mount(
        Some(&source),
        &proc_fd_path(&target),
        Some(typ),
        opts.flags,
        data,
    );
    match res {
        Ok(()) => {}
        Err(Errno::EPERM) if typ == "sysfs" && ctx.userns => {
            // A user namespace without its own network namespace may not
            // mount sysfs; bind the host's read-only instead (as runc does).
            sys(
                k.mount(
                    Some("/sys"),
                    &proc_fd_path(&target),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                ),
                || format!("{what} (rbind of /sys)"),
            )?;
            let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
            remount_bind(
                k,
                &proc_fd_path(&mounted),
                opts.flags | MsFlags::MS_RDONLY,
                &what,
            )?;
        }
        Err(e) => return sys(Err(e), || format!("{what} (options {data:?})")),
    }
    let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
    apply_propagation(k, &mounted, &opts, &what)
}

fn apply_propagation(
    k: &dyn Syscall,
    target: &OwnedFd,
    opts: &MountOptions,
    what: &str,
) -> SetupResult<()> {
    for p in &opts.propagation {
        sys(k.mount(None, &proc_fd_path(target), None, *p, None), || {
            format!("{what}: set propagation {p:?}")
        })?;
    }
    Ok(())
}
