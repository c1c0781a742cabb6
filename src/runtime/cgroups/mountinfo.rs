//! The one mountinfo parser: the cgroup hierarchies mounted on the host
//! (`/proc/self/mountinfo`, escapes undone) and a process' cgroup in each
//! (`/proc/<pid>/cgroup`). Hierarchy detection and the container's
//! `cgroup` mounts both read them here.

use std::path::PathBuf;

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// The root of the hierarchy that is mounted there.
    pub root: String,
    /// v1 controllers (and `name=`) from the super options; empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies of a mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
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
        out.push(CgroupMount {
            mount_point: unescape_mountinfo(l[4]),
            root: l[3].to_owned(),
            controllers,
            v2,
        });
    }
    out
}

/// The cgroup path of a hierarchy in a `/proc/<pid>/cgroup` text.
pub fn cgroup_path_for(cgroup_file: &str, h: &CgroupMount) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/sys\\040temd rw - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn cgroup_mounts_from_mountinfo() {
        let h = cgroup_mounts(MOUNTINFO);
        assert_eq!(h.len(), 5);
        assert!(h[0].v2);
        assert_eq!(h[1].controllers, vec!["cpu"]);
        assert_eq!(h[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h[4].mount_point, PathBuf::from("/sys/fs/cgroup/sys temd"));
        assert_eq!(h[4].controllers, vec!["name=systemd"]);
    }

    #[test]
    fn cgroup_paths_match_their_hierarchy() {
        let h = cgroup_mounts(MOUNTINFO);
        let file = "12:memory:/berth/c1\n4:cpu:/berth/c1-cpu\n3:cpu,cpuacct:/x\n0::/v2path\n";
        assert_eq!(cgroup_path_for(file, &h[0]).as_deref(), Some("/v2path"));
        assert_eq!(
            cgroup_path_for(file, &h[1]).as_deref(),
            Some("/berth/c1-cpu")
        );
        assert_eq!(cgroup_path_for(file, &h[2]).as_deref(), Some("/x"));
        assert_eq!(cgroup_path_for(file, &h[3]).as_deref(), Some("/berth/c1"));
        assert_eq!(cgroup_path_for(file, &h[4]), None);
    }
}
