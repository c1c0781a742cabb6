//! Where the cgroup hierarchies are: one v1 mount per controller, or the
//! single v2 tree. The one model is the list of cgroup mounts under
//! `/sys/fs/cgroup` that `mountinfo.rs` parses: [`Hierarchy::from_mounts`]
//! indexes it by controller for managing cgroups, and the container's
//! `cgroup` mounts mirror the same list (`rootfs/cgroupfs.rs`), so both
//! agree on whether the machine is unified. Everything else takes explicit
//! directories so that the logic can run against a temp dir in tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::mountinfo::CgroupMount;

/// Where the host's cgroup hierarchies are mounted.
pub const CGROUP_MOUNT_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers a container cgroup is created in (when mounted).
pub(crate) const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
];

/// Overrides detection: containers go in the cgroup2 tree mounted here.
pub const CGROUP2_ROOT_ENV: &str = "BERTH_CGROUP2_ROOT";

/// The host's cgroup mounts of a mountinfo text: those under
/// `/sys/fs/cgroup`, where systemd and every distribution put them.
pub fn host_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    super::mountinfo::cgroup_mounts(mountinfo)
        .into_iter()
        .filter(|m| m.mount_point.starts_with(CGROUP_MOUNT_ROOT))
        .collect()
}

/// The cgroup hierarchy of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Legacy / hybrid: one mount point per controller (co-mounted
    /// controllers share the same directory).
    V1 { mounts: BTreeMap<String, PathBuf> },
    /// Unified: one tree.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Detects the hierarchy of this machine (as this process sees it),
    /// once per process: mounts of cgroup hierarchies do not move.
    pub fn detect() -> Self {
        static DETECTED: OnceLock<Hierarchy> = OnceLock::new();
        DETECTED.get_or_init(Self::probe).clone()
    }

    fn probe() -> Self {
        // For tests of the v2 paths on a hybrid host: its `unified` cgroup2
        // mount (no controllers, but processes and clone-into work).
        if let Some(root) = std::env::var_os(CGROUP2_ROOT_ENV) {
            return Hierarchy::V2 { root: root.into() };
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mounts(&super::mountinfo::cgroup_mounts(&info))
    }

    /// The hierarchy cgroup mounts make: unified when a cgroup2 tree is mounted on `/sys/fs/cgroup` itself
    /// (a hybrid's cgroup2 mount below it has no controllers), else each
    /// v1 controller at the first mount that carries it.
    pub fn from_mounts(host: &[CgroupMount]) -> Self {
        if let Some(m) = host
            .iter()
            .find(|m| m.v2 && m.mount_point == Path::new(CGROUP_MOUNT_ROOT))
        {
            return Hierarchy::V2 {
                root: m.mount_point.clone(),
            };
        }
        let mut mounts = BTreeMap::new();
        for m in host.iter().filter(|m| !m.v2) {
            for c in V1_CONTROLLERS {
                if m.controllers.iter().any(|o| o == c) {
                    mounts
                        .entry((*c).to_owned())
                        .or_insert_with(|| m.mount_point.clone());
                }
            }
        }
        Hierarchy::V1 { mounts }
    }

    /// A v1 hierarchy with every controller in `controllers` at `root/<controller>`.
    pub fn v1_at(root: &Path, controllers: &[&str]) -> Self {
        Hierarchy::V1 {
            mounts: controllers
                .iter()
                .map(|c| ((*c).to_owned(), root.join(c)))
                .collect(),
        }
    }

    /// A v2 hierarchy rooted at `root`.
    pub fn v2_at(root: &Path) -> Self {
        Hierarchy::V2 {
            root: root.to_owned(),
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2 { .. })
    }

    /// The directory of `controller` for the cgroup at relative `path`
    /// (v2: the one directory, whatever the controller).
    pub fn dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        match self {
            Hierarchy::V1 { mounts } => mounts.get(controller).map(|m| m.join(path)),
            Hierarchy::V2 { root } => Some(root.join(path)),
        }
    }

    /// The mount point (root directory) of `controller`.
    pub fn mount(&self, controller: &str) -> Option<&Path> {
        match self {
            Hierarchy::V1 { mounts } => mounts.get(controller).map(PathBuf::as_path),
            Hierarchy::V2 { root } => Some(root),
        }
    }

    /// Every distinct directory of the cgroup at `path`, with one controller
    /// that lives there (v1: co-mounted controllers give one entry).
    pub fn dirs(&self, path: &str) -> Vec<(String, PathBuf)> {
        match self {
            Hierarchy::V1 { mounts } => {
                let mut out: Vec<(String, PathBuf)> = Vec::new();
                for (c, m) in mounts {
                    let d = m.join(path);
                    if !out.iter().any(|(_, o)| *o == d) {
                        out.push((c.clone(), d));
                    }
                }
                out
            }
            Hierarchy::V2 { root } => vec![(String::new(), root.join(path))],
        }
    }
}

/// What the machine's cgroups offer the spec generation (probed once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupFeatures {
    /// The unified hierarchy only (containers get a cgroup namespace).
    pub v2: bool,
    /// The hugetlb controller (hugepage limits).
    pub hugetlb: bool,
    /// Swap accounting: memory.memsw.* (v1) or memory.swap.max (v2).
    pub swap: bool,
}

impl CgroupFeatures {
    /// The features of this machine's hierarchy, probed once per process.
    pub fn detect() -> Self {
        static FEATURES: OnceLock<CgroupFeatures> = OnceLock::new();
        *FEATURES.get_or_init(|| {
            let f = Self::probe(&Hierarchy::detect());
            tracing::info!(
                v2 = f.v2,
                hugetlb = f.hugetlb,
                swap = f.swap,
                "cgroup features probed"
            );
            f
        })
    }

    /// The features of `h`. v2 files such as memory.swap.max exist only
    /// below the root, so the probe looks in the root's child cgroups (and
    /// in this process's own cgroup).
    pub fn probe(h: &Hierarchy) -> Self {
        match h {
            Hierarchy::V1 { mounts } => CgroupFeatures {
                v2: false,
                hugetlb: mounts.contains_key("hugetlb"),
                swap: mounts
                    .get("memory")
                    .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists()),
            },
            Hierarchy::V2 { root } => {
                let controllers =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                let own = std::fs::read_to_string("/proc/self/cgroup")
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_owned()))
                    })
                    .map(|p| root.join(p.trim_start_matches('/')));
                let children = std::fs::read_dir(root)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.path())
                            .filter(|p| p.is_dir())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let swap = own
                    .into_iter()
                    .chain(children)
                    .any(|d| d.join("memory.swap.max").exists());
                CgroupFeatures {
                    v2: true,
                    hugetlb: controllers.split_whitespace().any(|c| c == "hugetlb"),
                    swap,
                }
            }
        }
    }
}
