//! Cgroup mounts: the host's cgroup hierarchies (from mountinfo) and the
//! container's own cgroup directories bound under the mount's tmpfs (v1) or
//! straight on it (v2 only).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::{RootfsContext, SetupResult, remount_bind, sys};
use crate::runtime::mount_options::MountOptions;
use crate::runtime::path::{Kind, ensure_in_root, open_in_root, proc_fd_path};

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// The root of the hierarchy that is mounted there.
    pub root: String,
    /// v1 controllers (and `name=`) from the super options; empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies of a mountinfo text.
pub fn cgroup_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let v2 = match r[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let controllers = if v2 {
            vec![]
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro"
                            | "nosuid"
                            | "nodev"
                            | "noexec"
                            | "relatime"
                            | "xattr"
                            | "clone_children"
                            | "noprefix"
                            | "cpuset_v2_mode"
                            | "favordynmods"
                    ) && !o.starts_with("release_agent=")
                })
                .map(str::to_owned)
                .collect()
        };
        out.push(Hierarchy {
            mount_point: unescape_mountinfo(l[4]),
            root: l[3].to_owned(),
            controllers,
            v2,
        });
    }
    out
}

/// The cgroup path of a hierarchy in a `/proc/<pid>/cgroup` text.
pub fn cgroup_path_for(cgroup_file: &str, h: &Hierarchy) -> Option<String> {
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let matches = if h.v2 {
            ctrls.is_empty()
        } else {
            !ctrls.is_empty()
                && ctrls
                    .split(',')
                    .all(|c| h.controllers.iter().any(|x| x == c))
                && h.controllers.len() == ctrls.split(',').count()
        };
        if matches {
            return Some(path.to_owned());
        }
    }
    None
}

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
    let hierarchies: Vec<Hierarchy> = cgroup_hierarchies(&info)
        .into_iter()
        .filter(|h| h.mount_point.starts_with("/sys/fs/cgroup"))
        .collect();
    let target = ensure_in_root(root, dest, Kind::Dir).map_err(|e| format!("{what}: {e}"))?;
    let only_v2 = hierarchies.len() == 1 && hierarchies[0].v2;
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

fn unescape_mountinfo(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
