//! Cgroup mounts: the host's cgroup hierarchies (from mountinfo) and the
//! container's own cgroup directories bound under the mount's tmpfs (v1) or
//! straight on it (v2 only).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::{RootfsContext, SetupResult, remount_bind, sys};
use crate::runtime::cgroups::mountinfo::{CgroupMount, cgroup_path_for};
use crate::runtime::cgroups::{Hierarchy, host_mounts};
use crate::runtime::mount_options::MountOptions;
use crate::runtime::path::{Kind, ensure_in_root, open_in_root, proc_fd_path};

/// A `cgroup` spec mount: a tmpfs holding, for each host hierarchy, a bind
/// of the container's own cgroup directory (read-only when asked).
pub(super) fn mount_cgroup(
    root: BorrowedFd<'_>,
    m: &Mount,
    opts: &MountOptions,
    ctx: &RootfsContext<'_>,
) -> SetupResult<()> {
    let dest = m.destination();
    let what = format!("mount cgroup on {}", dest.display());
    let k = ctx.sys;
    let info = k
        .mountinfo()
        .map_err(|e| format!("{what}: read mountinfo: {e}"))?;
    let hierarchies: Vec<CgroupMount> = host_mounts(&info);
    let target = ensure_in_root(root, dest, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
    // The one rule of hierarchy.rs: unified when cgroup2 is on
    // /sys/fs/cgroup itself; then the container's own cgroup is bound
    // straight there, else each hierarchy below a tmpfs.
    let only_v2 = Hierarchy::from_mounts(&hierarchies).is_v2();
    if !only_v2 {
        sys(
            k.mount(
                Some("tmpfs"),
                &proc_fd_path(&target),
                Some("tmpfs"),
                opts.flags - MsFlags::MS_RDONLY,
                Some("mode=755"),
            ),
            || format!("{what}: tmpfs"),
        )?;
    }
    for h in &hierarchies {
        let Some(cg) = cgroup_path_for(ctx.cgroup_file, h) else {
            continue;
        };
        let rel_in_root = cg
            .strip_prefix(h.root.trim_end_matches('/'))
            .unwrap_or(&cg)
            .trim_start_matches('/');
        let src = h.mount_point.join(rel_in_root);
        let name = if only_v2 {
            PathBuf::new()
        } else {
            match h.mount_point.file_name() {
                Some(n) => PathBuf::from(n),
                None => continue,
            }
        };
        let sub = dest.join(&name);
        let t = ensure_in_root(root, &sub, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
        sys(
            k.mount(
                Some(&src.to_string_lossy()),
                &proc_fd_path(&t),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            || format!("{what}: bind {}", src.display()),
        )?;
        let mounted = sys(open_in_root(root, &sub), || format!("{what}: reopen"))?;
        let flags = opts.flags
            & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        remount_bind(k, &proc_fd_path(&mounted), flags, &what)?;
        // co-mounted controllers ("cpu,cpuacct") get a link per controller.
        let n = name.to_string_lossy();
        if n.contains(',') {
            let dir = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
            for c in n.split(',') {
                let _ = k.symlinkat(&n, dir.as_fd(), OsStr::new(c));
            }
        }
    }
    if !only_v2 && opts.flags.contains(MsFlags::MS_RDONLY) {
        let mounted = sys(open_in_root(root, dest), || format!("{what}: reopen"))?;
        sys(
            k.mount(
                None,
                &proc_fd_path(&mounted),
                None,
                MsFlags::MS_REMOUNT | (opts.flags | MsFlags::MS_RDONLY),
                Some("mode=755"),
            ),
            || format!("{what}: remount tmpfs read-only"),
        )?;
    }
    Ok(())
}
