//! The machine's cgroup hierarchy as the tests read it: v1 (one mount per
//! controller under /sys/fs/cgroup, the hybrid test hosts) or v2 (one tree
//! at /sys/fs/cgroup, the VM lane and real nodes). Detected here, not
//! asked of berth, so that a test checks berth against the kernel.
//!
//! Leftover checks go through [`dirs`], which panics when the hierarchy it
//! would look in does not exist: a "nothing left" check can never pass
//! because it read nothing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the tests run berthd with the systemd cgroup driver
/// (`BERTH_TEST_CGROUP_DRIVER=systemd`, which the VM lane sets for its
/// second pass): pods are then slices and containers scopes.
pub fn systemd_driver() -> bool {
    std::env::var("BERTH_TEST_CGROUP_DRIVER").is_ok_and(|d| d == "systemd")
}

/// Whether /sys/fs/cgroup is the cgroup2 (unified) tree.
pub fn unified() -> bool {
    nix::sys::statfs::statfs(ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The hierarchy root that holds `controller`: `/sys/fs/cgroup/<controller>`
/// on v1, `/sys/fs/cgroup` on v2 (which must list the controller in
/// cgroup.controllers). Panics if there is none.
pub fn root(controller: &str) -> PathBuf {
    if unified() {
        let list =
            std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
        assert!(
            list.split_whitespace().any(|c| c == controller),
            "the cgroup2 root has no {controller} controller ({list:?})"
        );
        PathBuf::from(ROOT)
    } else {
        let p = Path::new(ROOT).join(controller);
        assert!(
            p.is_dir(),
            "no v1 {controller} hierarchy at {}",
            p.display()
        );
        p
    }
}

/// The directory of cgroup `path` (an OCI cgroupsPath, cgroupfs layout, or
/// one starting with a systemd slice name: see [`relative`]) in the
/// hierarchy of `controller`.
pub fn dir(controller: &str, path: &str) -> PathBuf {
    root(controller).join(relative(path))
}

/// `path` relative to the hierarchy root. A first component that is a
/// systemd slice name is expanded as systemd nests slices
/// (`a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`), so that the systemd
/// driver's pod slices and their `berth-<id>.scope`s are found too.
pub fn relative(path: &str) -> String {
    let rel = path.trim_start_matches('/');
    let (first, rest) = rel.split_once('/').unwrap_or((rel, ""));
    let Some(stem) = first
        .strip_suffix(".slice")
        .filter(|s| !s.is_empty() && *s != "-")
    else {
        return rel.to_owned();
    };
    let mut parts = Vec::new();
    let mut prefix = String::new();
    for p in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(p);
        parts.push(format!("{prefix}.slice"));
    }
    if !rest.is_empty() {
        parts.push(rest.to_owned());
    }
    parts.join("/")
}

/// The cgroup of container `id` in pod cgroup `pod` (its cgroup parent):
/// `<pod>/<id>` (cgroupfs driver), `<pod>.slice/berth-<id>.scope` (systemd).
pub fn container(pod: &str, id: &str) -> String {
    if pod.ends_with(".slice") {
        format!("{pod}/berth-{id}.scope")
    } else {
        format!("{pod}/{id}")
    }
}

/// v1 controllers a container's cgroup is in (those mounted here).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];

/// Every directory cgroup `path` can be in: one per mounted v1 controller,
/// or the one v2 directory. Panics if there is no hierarchy to look in.
pub fn dirs(path: &str) -> Vec<PathBuf> {
    let rel = relative(path);
    let rel = rel.as_str();
    if unified() {
        // At the root (the cgroupfs layout's absolute paths), and below
        // this process's own cgroup (a delegated subtree, e.g. the VM
        // lane's Delegate=yes unit): a leftover check looks in both.
        let mut dirs = vec![Path::new(ROOT).join(rel)];
        let own = own_cgroup();
        if own != "/" {
            dirs.push(Path::new(ROOT).join(own.trim_start_matches('/')).join(rel));
        }
        assert!(
            Path::new(ROOT).join("cgroup.procs").is_file(),
            "no cgroup2 tree at {ROOT}: a leftover check would read nothing"
        );
        return dirs;
    }
    let dirs: Vec<PathBuf> = V1_CONTROLLERS
        .iter()
        .map(|c| Path::new(ROOT).join(c))
        .filter(|p| p.is_dir())
        .map(|p| p.join(rel))
        .collect();
    assert!(
        Path::new(ROOT).join("pids").is_dir() && !dirs.is_empty(),
        "no v1 hierarchies under {ROOT}: a leftover check would read nothing"
    );
    dirs
}

/// This process's cgroup in the v2 tree (the `0::` line of /proc/self/cgroup).
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned()
}

/// Whether cgroup `path` exists in any hierarchy.
pub fn exists(path: &str) -> bool {
    dirs(path).iter().any(|d| d.exists())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// The memory limit of cgroup `path` in bytes, `None` for none (v1
/// memory.limit_in_bytes near i64::MAX, v2 memory.max "max").
pub fn memory_limit(path: &str) -> Option<i64> {
    if unified() {
        let v = read(&dir("memory", path).join("memory.max"));
        (v != "max").then(|| v.parse().expect("memory.max"))
    } else {
        let v: i64 = read(&dir("memory", path).join("memory.limit_in_bytes"))
            .parse()
            .expect("memory.limit_in_bytes");
        (v < i64::MAX / 2).then_some(v)
    }
}

/// (CFS quota, period) in µs of cgroup `path`; quota -1 for no limit (v1
/// cpu.cfs_quota_us + cpu.cfs_period_us, v2 cpu.max "<quota|max> <period>").
pub fn cpu_max(path: &str) -> (i64, i64) {
    if unified() {
        let v = read(&dir("cpu", path).join("cpu.max"));
        let (q, p) = v.split_once(' ').expect("cpu.max");
        let q = if q == "max" {
            -1
        } else {
            q.parse().expect("quota")
        };
        (q, p.parse().expect("period"))
    } else {
        let q = read(&dir("cpu", path).join("cpu.cfs_quota_us"));
        let p = read(&dir("cpu", path).join("cpu.cfs_period_us"));
        (q.parse().expect("quota"), p.parse().expect("period"))
    }
}

/// The CPU weight of cgroup `path` as v1 shares would say it: v1
/// cpu.shares; v2 cpu.weight, compared through the conversion runc and
/// crun use (shares 2..262144 → weight 1..10000).
pub fn cpu_weight(path: &str) -> i64 {
    if unified() {
        read(&dir("cpu", path).join("cpu.weight"))
            .parse()
            .expect("cpu.weight")
    } else {
        read(&dir("cpu", path).join("cpu.shares"))
            .parse()
            .expect("cpu.shares")
    }
}

/// What [`cpu_weight`] reads for CRI `cpu_shares` on this hierarchy.
pub fn expected_cpu_weight(shares: i64) -> i64 {
    if unified() {
        if shares == 0 {
            100
        } else {
            1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
        }
    } else {
        shares
    }
}

/// The pids in cgroup `path` of `controller`'s hierarchy.
pub fn procs(controller: &str, path: &str) -> Vec<i32> {
    std::fs::read_to_string(dir(controller, path).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
