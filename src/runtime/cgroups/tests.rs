//! Unit tests against temp directories laid out like the v1 and v2
//! hierarchies (the files a real cgroup has, with realistic contents).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder,
};

use super::plan::{self, Step};
use super::*;

const MIB: i64 = 1024 * 1024;

fn touch(dir: &Path, files: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    for f in files {
        fs::write(dir.join(f), "").unwrap();
    }
}

fn put(dir: &Path, file: &str, content: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(file), content).unwrap();
}

fn get(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap()
}

const V2_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.freeze",
    "cgroup.events",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "memory.max",
    "memory.low",
    "memory.high",
    "memory.swap.max",
    "pids.max",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
];

const V1_FILES: &[(&str, &[&str])] = &[
    (
        "cpu",
        &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.cfs_burst_us",
        ],
    ),
    ("cpuset", &["cpuset.cpus", "cpuset.mems"]),
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.soft_limit_in_bytes",
            "memory.swappiness",
            "memory.oom_control",
            "memory.kmem.tcp.limit_in_bytes",
        ],
    ),
    ("pids", &["pids.max"]),
    (
        "blkio",
        &[
            "blkio.bfq.weight",
            "blkio.bfq.weight_device",
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_iops_device",
        ],
    ),
    ("devices", &["devices.allow", "devices.deny"]),
    ("freezer", &["freezer.state"]),
];

/// A fake v2 tree with the cgroup `ctr` in it.
fn v2_tree(root: &Path) -> CgroupManager {
    put(
        root,
        "cgroup.controllers",
        "cpuset cpu io memory hugetlb pids",
    );
    put(root, "cgroup.subtree_control", "");
    touch(&root.join("ctr"), V2_FILES);
    CgroupManager::with_hierarchy("/ctr", Hierarchy::v2_at(root)).unwrap()
}

/// A fake v1 tree (hybrid machine: no hugetlb) with the cgroup `ctr` in it.
fn v1_tree(root: &Path) -> CgroupManager {
    let controllers: Vec<&str> = V1_FILES.iter().map(|(c, _)| *c).collect();
    for (c, files) in V1_FILES {
        touch(&root.join(c).join("ctr"), files);
    }
    CgroupManager::with_hierarchy("ctr", Hierarchy::v1_at(root, &controllers)).unwrap()
}

fn full_resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .shares(1024u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0-1")
                .mems("0")
                .build()
                .unwrap(),
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(256 * MIB)
                .swap(384 * MIB)
                .reservation(128 * MIB)
                .kernel(64 * MIB)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(42).build().unwrap())
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(500u16)
                .weight_device(vec![
                    LinuxWeightDeviceBuilder::default()
                        .major(8)
                        .minor(0)
                        .weight(1000u16)
                        .build()
                        .unwrap(),
                ])
                .throttle_read_bps_device(vec![
                    LinuxThrottleDeviceBuilder::default()
                        .major(8)
                        .minor(16)
                        .rate(1_048_576u64)
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

// ---- conversions (runc's formulas) ----

#[test]
fn cpu_shares_convert_to_cpu_weight() {
    assert_eq!(plan::shares_to_weight(2), 1);
    assert_eq!(plan::shares_to_weight(1024), 39);
    assert_eq!(plan::shares_to_weight(262_144), 10_000);
    // Out-of-range shares are clamped, never underflow.
    assert_eq!(plan::shares_to_weight(1), 1);
    assert_eq!(plan::shares_to_weight(1_000_000), 10_000);
}

#[test]
fn blkio_weight_converts_to_io_weight() {
    assert_eq!(plan::blkio_weight_to_io_weight(10), 1);
    assert_eq!(plan::blkio_weight_to_io_weight(500), 4950);
    assert_eq!(plan::blkio_weight_to_io_weight(1000), 10_000);
}

#[test]
fn memory_swap_converts_to_v2_swap_max() {
    assert_eq!(plan::swap_to_v2(0, -1).unwrap().as_deref(), Some("max"));
    assert_eq!(plan::swap_to_v2(-1, 100).unwrap().as_deref(), Some("max"));
    assert_eq!(plan::swap_to_v2(0, 100).unwrap(), None);
    assert_eq!(plan::swap_to_v2(300, 100).unwrap().as_deref(), Some("200"));
    assert_eq!(plan::swap_to_v2(100, 100).unwrap().as_deref(), Some("0"));
    assert!(plan::swap_to_v2(50, 100).is_err());
    assert!(plan::swap_to_v2(100, 0).is_err());
    assert!(plan::swap_to_v2(100, -1).is_err());
}

#[test]
fn quota_and_period_make_cpu_max() {
    assert_eq!(plan::cpu_max(0, 0), None);
    assert_eq!(plan::cpu_max(50_000, 0).as_deref(), Some("50000"));
    assert_eq!(
        plan::cpu_max(50_000, 100_000).as_deref(),
        Some("50000 100000")
    );
    assert_eq!(plan::cpu_max(-1, 100_000).as_deref(), Some("max 100000"));
    assert_eq!(plan::cpu_max(0, 250_000).as_deref(), Some("max 250000"));
}

// ---- v2 writes ----

#[test]
fn v2_resources_become_v2_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let mut res = full_resources();
    res.set_hugepage_limits(Some(vec![
        LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(4 * MIB)
            .build()
            .unwrap(),
    ]));
    res.set_unified(Some(HashMap::from([(
        "memory.high".to_owned(),
        "200000000".to_owned(),
    )])));
    mgr.apply(&res).unwrap();
    let d = tmp.path().join("ctr");
    assert_eq!(get(&d, "cpu.weight"), "39");
    assert_eq!(get(&d, "cpu.max"), "50000 100000");
    assert_eq!(get(&d, "cpuset.cpus"), "0-1");
    assert_eq!(get(&d, "cpuset.mems"), "0");
    assert_eq!(get(&d, "memory.max"), (256 * MIB).to_string());
    assert_eq!(get(&d, "memory.swap.max"), (128 * MIB).to_string());
    assert_eq!(get(&d, "memory.low"), (128 * MIB).to_string());
    assert_eq!(get(&d, "pids.max"), "42");
    // io.weight gets one write per line: the device line comes last.
    assert_eq!(get(&d, "io.weight"), "8:0 10000");
    assert_eq!(get(&d, "io.max"), "8:16 rbps=1048576");
    assert_eq!(get(&d, "hugetlb.2MB.max"), (4 * MIB).to_string());
    assert_eq!(get(&d, "memory.high"), "200000000");
}

#[test]
fn v2_plan_orders_default_io_weight_and_unlimited_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let res = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(10u16)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let steps = plan::plan(mgr.hierarchy(), mgr.path(), &res, false).unwrap();
    let writes: Vec<(String, String)> = steps
        .iter()
        .map(|s| match s {
            Step::Write(w) => (w.file.clone(), w.value.clone()),
            Step::Ordered(..) => panic!("v2 needs no ordered writes"),
        })
        .collect();
    let want = [
        ("memory.swap.max", "max"),
        ("memory.max", "max"),
        ("pids.max", "max"),
        ("io.weight", "default 1"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(writes, want);
}

#[test]
fn v2_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let rt = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .realtime_runtime(1000i64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    for bad_key in ["../memory.max", "cgroup.procs", "memory", "memory.nosuch"] {
        let mut res = LinuxResources::default();
        res.set_unified(Some(HashMap::from([(bad_key.to_owned(), "1".to_owned())])));
        let err = mgr.apply(&res).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidResources(_)),
            "{bad_key}: {err}"
        );
    }
    assert!(matches!(
        mgr.apply(&rt),
        Err(CgroupError::InvalidResources(_))
    ));
    let bad_swap = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(100)
                .swap(50)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(matches!(
        mgr.apply(&bad_swap),
        Err(CgroupError::InvalidResources(_))
    ));
    let bad_size = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB/../x")
                .limit(1)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    assert!(matches!(
        mgr.apply(&bad_size),
        Err(CgroupError::InvalidResources(_))
    ));
    // Nothing was written by the refused plans.
    assert_eq!(get(&tmp.path().join("ctr"), "memory.max"), "");
}

#[test]
fn v2_create_delegates_controllers_and_makes_nested_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    put(tmp.path(), "cgroup.controllers", "cpu memory pids");
    put(tmp.path(), "cgroup.subtree_control", "memory");
    let mgr = CgroupManager::with_hierarchy("/pod/ctr", Hierarchy::v2_at(tmp.path())).unwrap();
    mgr.create(None).unwrap();
    assert!(tmp.path().join("pod/ctr").is_dir());
    assert_eq!(get(tmp.path(), "cgroup.subtree_control"), "+cpu +pids");
}

#[test]
fn v2_device_rules_are_ignored_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let res = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    assert!(
        plan::plan(mgr.hierarchy(), mgr.path(), &res, true)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn v2_freeze_writes_cgroup_freeze_and_reads_events() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let d = tmp.path().join("ctr");
    put(&d, "cgroup.events", "populated 1\nfrozen 1\n");
    mgr.freeze().unwrap();
    assert_eq!(get(&d, "cgroup.freeze"), "1");
    put(&d, "cgroup.events", "populated 1\nfrozen 0\n");
    mgr.thaw().unwrap();
    assert_eq!(get(&d, "cgroup.freeze"), "0");
    assert!(freezer::v2_frozen("populated 0\nfrozen 1\n"));
    assert!(!freezer::v2_frozen("populated 1\nfrozen 0\n"));
    assert!(!freezer::v2_frozen("frozen 10\n"));
}

// ---- v1 writes ----

#[test]
fn v1_resources_become_v1_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    mgr.apply(&full_resources()).unwrap();
    let c = |ctl: &str| tmp.path().join(ctl).join("ctr");
    assert_eq!(get(&c("cpu"), "cpu.shares"), "1024");
    assert_eq!(get(&c("cpu"), "cpu.cfs_quota_us"), "50000");
    assert_eq!(get(&c("cpu"), "cpu.cfs_period_us"), "100000");
    assert_eq!(get(&c("cpuset"), "cpuset.cpus"), "0-1");
    assert_eq!(
        get(&c("memory"), "memory.limit_in_bytes"),
        (256 * MIB).to_string()
    );
    assert_eq!(
        get(&c("memory"), "memory.memsw.limit_in_bytes"),
        (384 * MIB).to_string()
    );
    assert_eq!(
        get(&c("memory"), "memory.soft_limit_in_bytes"),
        (128 * MIB).to_string()
    );
    assert_eq!(get(&c("pids"), "pids.max"), "42");
    // Only the BFQ files exist here, so the weights go there.
    assert_eq!(get(&c("blkio"), "blkio.bfq.weight"), "500");
    assert_eq!(get(&c("blkio"), "blkio.bfq.weight_device"), "8:0 1000");
    assert_eq!(
        get(&c("blkio"), "blkio.throttle.read_bps_device"),
        "8:16 1048576"
    );
    // Kernel memory is ignored, so no kmem file was needed.
}

#[test]
fn v1_memory_and_cpu_pairs_are_ordered_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    let steps = plan::plan(mgr.hierarchy(), mgr.path(), &full_resources(), false).unwrap();
    let ordered: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Ordered(a, b) => Some((a.file.as_str(), b.file.as_str())),
            Step::Write(_) => None,
        })
        .collect();
    assert_eq!(
        ordered,
        [
            ("cpu.cfs_period_us", "cpu.cfs_quota_us"),
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        ]
    );
    // Unlimited memory with unset swap makes swap unlimited too.
    let unlimited = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
        .build()
        .unwrap();
    mgr.apply(&unlimited).unwrap();
    let m = tmp.path().join("memory/ctr");
    assert_eq!(get(&m, "memory.limit_in_bytes"), "-1");
    assert_eq!(get(&m, "memory.memsw.limit_in_bytes"), "-1");
}

#[test]
fn v1_refuses_what_the_hierarchy_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    let huge = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(2 * MIB)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    let err = mgr.apply(&huge).unwrap_err();
    assert!(err.to_string().contains("hugetlb"), "{err}");
    let mut unified = LinuxResources::default();
    unified.set_unified(Some(HashMap::from([("memory.high".into(), "1".into())])));
    let err = mgr.apply(&unified).unwrap_err();
    assert!(err.to_string().contains("cgroup v2"), "{err}");
    let weight = LinuxResourcesBuilder::default()
        .block_io(LinuxBlockIoBuilder::default().weight(5u16).build().unwrap())
        .build()
        .unwrap();
    assert!(matches!(
        mgr.apply(&weight),
        Err(CgroupError::InvalidResources(_))
    ));
    // A swap limit without memsw files (no swap accounting) is refused.
    fs::remove_file(tmp.path().join("memory/ctr/memory.memsw.limit_in_bytes")).unwrap();
    let err = mgr.apply(&full_resources()).unwrap_err();
    assert!(err.to_string().contains("swap accounting"), "{err}");
}

#[test]
fn v1_device_rules_deny_all_then_spec_then_defaults() {
    let spec = [
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .minor(200i64)
            .access("rw")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(8i64)
            .access("r")
            .build()
            .unwrap(),
    ];
    let rules = devices::v1_rules(&spec).unwrap();
    let text: Vec<String> = rules
        .iter()
        .map(|r| format!("{} {}", r.file(), r.value()))
        .collect();
    assert_eq!(text[0], "devices.deny a");
    assert_eq!(text[1], "devices.deny a *:* rwm");
    assert_eq!(text[2], "devices.allow c 10:200 rw");
    assert_eq!(text[3], "devices.allow b 8:* r");
    assert!(text.contains(&"devices.allow c 1:3 rwm".to_owned()));
    assert!(text.contains(&"devices.allow c 136:* rwm".to_owned()));
    let bad = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwx")
        .build()
        .unwrap();
    assert!(devices::v1_rules(&[bad]).is_err());
    let fifo = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::P)
        .build()
        .unwrap();
    assert!(devices::v1_rules(&[fifo]).is_err());
}

#[test]
fn v1_create_applies_device_rules_even_without_resources() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    let steps = plan::plan(
        mgr.hierarchy(),
        mgr.path(),
        &LinuxResources::default(),
        true,
    )
    .unwrap();
    assert!(matches!(&steps[0], Step::Write(w) if w.file == "devices.deny" && w.value == "a"));
    let update = plan::plan(
        mgr.hierarchy(),
        mgr.path(),
        &LinuxResources::default(),
        false,
    );
    assert!(update.unwrap().is_empty());
}

// ---- stats ----

const V2_CPU_STAT: &str = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
    core_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 7\nthrottled_usec 350000\n\
    nr_bursts 0\nburst_usec 0\n";
const V2_MEMORY_STAT: &str = "anon 104857600\nfile 20971520\nkernel 1048576\n\
    kernel_stack 65536\nshmem 0\nfile_mapped 0\nactive_anon 104857600\ninactive_anon 0\n\
    active_file 4194304\ninactive_file 16777216\nunevictable 0\npgfault 12345\n";
const V2_MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";

#[test]
fn v2_stats_parse_v2_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let d = tmp.path().join("ctr");
    put(&d, "cpu.stat", V2_CPU_STAT);
    put(&d, "memory.stat", V2_MEMORY_STAT);
    put(&d, "memory.events", V2_MEMORY_EVENTS);
    put(&d, "memory.current", "130023424\n");
    put(&d, "memory.max", "max\n");
    put(&d, "memory.swap.current", "4096\n");
    put(&d, "pids.current", "3\n");
    put(&d, "pids.max", "100\n");
    put(&d, "memory.swap.max", "max\n");
    put(&d, "memory.peak", "140000000\n");
    put(
        &d,
        "io.stat",
        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=0 rios=1 wios=0\n",
    );
    put(&d, "hugetlb.2MB.current", "2097152\n");
    put(&d, "hugetlb.2MB.max", "4194304\n");
    put(&d, "hugetlb.2MB.events", "max 3\n");
    put(&d, "hugetlb.2MB.events.local", "max 3\n");
    put(&d, "hugetlb.1GB.current", "0\n");
    put(&d, "hugetlb.1GB.max", "max\n");
    put(
        &d,
        "memory.pressure",
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=678\n",
    );
    put(
        &d,
        "cpu.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n",
    );
    let s = mgr.stats().unwrap();
    let v2 = s.v2.clone().expect("v2 stats on v2");
    assert_eq!(v2.memory_events.get("oom_kill"), Some(&2));
    assert_eq!(v2.memory_stat.get("anon"), Some(&104_857_600));
    assert_eq!(v2.memory_swap_limit_bytes, u64::MAX);
    assert_eq!(v2.memory_peak_bytes, 140_000_000);
    assert_eq!(
        v2.io[0],
        crate::runtime::IoUsage {
            major: 8,
            minor: 0,
            rbytes: 4096,
            wbytes: 8192,
            rios: 1,
            wios: 2
        }
    );
    assert_eq!(v2.io.len(), 2);
    assert_eq!(
        v2.hugetlb,
        vec![
            crate::runtime::HugetlbUsage {
                pagesize: "1GB".into(),
                current: 0,
                max: u64::MAX,
                failcnt: 0
            },
            crate::runtime::HugetlbUsage {
                pagesize: "2MB".into(),
                current: 2_097_152,
                max: 4_194_304,
                failcnt: 3
            },
        ]
    );
    let mp = v2.memory_pressure.expect("memory.pressure");
    assert_eq!(
        (mp.some.avg10, mp.some.avg60, mp.some.total),
        (1.5, 0.25, 12345)
    );
    assert_eq!(mp.full.total, 678);
    assert_eq!(v2.cpu_pressure.expect("cpu.pressure").some.total, 9);
    // No io.pressure file: no PSI for io (a kernel without PSI has none).
    assert_eq!(v2.io_pressure, None);
    assert_eq!(
        Stats { v2: None, ..s },
        Stats {
            cpu_usage_ns: 2_500_000_000,
            cpu_user_ns: 2_000_000_000,
            cpu_system_ns: 500_000_000,
            cpu_throttled_periods: 7,
            cpu_throttled_time_ns: 350_000_000,
            memory_usage_bytes: 130_023_424,
            memory_limit_bytes: u64::MAX,
            memory_working_set_bytes: 130_023_424 - 16_777_216,
            memory_rss_bytes: 104_857_600,
            memory_cache_bytes: 20_971_520,
            memory_swap_bytes: 4096,
            memory_failcnt: 12,
            oom_kills: 2,
            pids_current: 3,
            pids_limit: 100,
            v2: None,
        }
    );
}

#[test]
fn working_set_never_goes_below_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v2_tree(tmp.path());
    let d = tmp.path().join("ctr");
    put(&d, "memory.current", "1000\n");
    put(&d, "memory.stat", "inactive_file 4096\n");
    put(&d, "memory.max", "max\n");
    put(&d, "pids.max", "max\n");
    assert_eq!(mgr.stats().unwrap().memory_working_set_bytes, 0);
}

#[test]
fn v1_stats_parse_v1_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    let c = |ctl: &str| tmp.path().join(ctl).join("ctr");
    // cpuacct is not in the fake tree yet: add it.
    let mgr = CgroupManager::with_hierarchy(
        mgr.path(),
        Hierarchy::v1_at(tmp.path(), &["cpu", "cpuacct", "memory", "pids"]),
    )
    .unwrap();
    put(&c("cpuacct"), "cpuacct.usage", "3000000000\n");
    put(&c("cpuacct"), "cpuacct.usage_user", "2000000000\n");
    put(&c("cpuacct"), "cpuacct.usage_sys", "900000000\n");
    put(
        &c("cpu"),
        "cpu.stat",
        "nr_periods 10\nnr_throttled 4\nthrottled_time 123456789\nnr_bursts 0\nburst_time 0\n",
    );
    put(
        &c("memory"),
        "memory.stat",
        "cache 100\nrss 200\nrss_huge 0\ninactive_file 50\ntotal_cache 20971520\n\
         total_rss 104857600\ntotal_inactive_file 8388608\ntotal_active_file 12582912\n",
    );
    put(&c("memory"), "memory.usage_in_bytes", "130023424\n");
    put(
        &c("memory"),
        "memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    put(&c("memory"), "memory.memsw.usage_in_bytes", "130027520\n");
    put(&c("memory"), "memory.failcnt", "5\n");
    put(
        &c("memory"),
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    put(&c("pids"), "pids.current", "2\n");
    put(&c("pids"), "pids.max", "max\n");
    let s = mgr.stats().unwrap();
    assert_eq!(
        s,
        Stats {
            cpu_usage_ns: 3_000_000_000,
            cpu_user_ns: 2_000_000_000,
            cpu_system_ns: 900_000_000,
            cpu_throttled_periods: 4,
            cpu_throttled_time_ns: 123_456_789,
            memory_usage_bytes: 130_023_424,
            memory_limit_bytes: u64::MAX,
            memory_working_set_bytes: 130_023_424 - 8_388_608,
            memory_rss_bytes: 104_857_600,
            memory_cache_bytes: 20_971_520,
            memory_swap_bytes: 4096,
            memory_failcnt: 5,
            oom_kills: 1,
            pids_current: 2,
            pids_limit: u64::MAX,
            v2: None,
        }
    );
    // Old kernels: only cpuacct.stat, in USER_HZ ticks.
    fs::remove_file(c("cpuacct").join("cpuacct.usage_user")).unwrap();
    put(&c("cpuacct"), "cpuacct.stat", "user 150\nsystem 30\n");
    let s = mgr.stats().unwrap();
    assert_eq!(
        (s.cpu_user_ns, s.cpu_system_ns),
        (1_500_000_000, 300_000_000)
    );
}

#[test]
fn keyed_files_parse_and_skip_junk() {
    let m = stats::parse_keyed("a 1\nb two\n\nc 3 extra\nd\n");
    assert_eq!(m.get("a"), Some(&1));
    assert_eq!(m.get("b"), None);
    assert_eq!(m.get("c"), Some(&3));
    assert_eq!(m.len(), 2);
    assert_eq!(fsio::parse_u64("max"), Some(u64::MAX));
    assert_eq!(fsio::parse_u64("-1"), Some(u64::MAX));
    assert_eq!(fsio::parse_u64("17"), Some(17));
    assert_eq!(fsio::parse_u64("x"), None);
}

// ---- paths and missing cgroups ----

#[test]
fn paths_must_stay_inside_the_hierarchy() {
    let h = Hierarchy::v2_at(Path::new("/nonexistent"));
    for bad in ["", "/", "..", "/a/../b", "a/./b", "a//b"] {
        assert!(
            matches!(
                CgroupManager::with_hierarchy(bad, h.clone()),
                Err(CgroupError::InvalidPath(_))
            ),
            "{bad:?}"
        );
    }
    let ok = CgroupManager::with_hierarchy("/kubepods/pod1/ctr1/", h).unwrap();
    assert_eq!(ok.path(), "kubepods/pod1/ctr1");
}

#[test]
fn missing_cgroup_is_not_found_and_destroy_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = CgroupManager::with_hierarchy("gone", Hierarchy::v2_at(tmp.path())).unwrap();
    assert!(matches!(mgr.pids(), Err(CgroupError::NotFound(_))));
    assert!(matches!(mgr.stats(), Err(CgroupError::NotFound(_))));
    assert!(matches!(mgr.freeze(), Err(CgroupError::NotFound(_))));
    assert!(matches!(mgr.add_process(1), Err(CgroupError::NotFound(_))));
    assert!(matches!(mgr.oom_notifier(), Err(CgroupError::NotFound(_))));
    mgr.destroy().unwrap();
    mgr.destroy().unwrap();
}

#[test]
fn join_self_refuses_a_multi_threaded_process() {
    // libtest runs this on a thread of its own: the process has several, and
    // a per-thread move would leave the others behind.
    let null: std::os::fd::OwnedFd = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into();
    let err = super::join_self(&[null]).unwrap_err().to_string();
    assert!(err.contains("single-threaded"), "{err}");
    // Nothing to join (v2: the caller moved the helper) is fine anywhere.
    super::join_self(&[]).unwrap();
}

#[test]
fn helpers_are_admitted_by_tasks_files_on_v1_and_by_directory_on_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = v1_tree(&tmp.path().join("v1"));
    for (c, _) in V1_FILES {
        fs::write(tmp.path().join("v1").join(c).join("ctr/tasks"), "").unwrap();
    }
    let link = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    };
    match v1.admit_helper().unwrap() {
        HelperJoin::Tasks(fds) => {
            let mut got: Vec<_> = fds.iter().map(link).collect();
            got.sort();
            let mut want: Vec<_> = V1_FILES
                .iter()
                .map(|(c, _)| tmp.path().join("v1").join(c).join("ctr/tasks"))
                .collect();
            want.sort();
            assert_eq!(got, want);
        }
        other => panic!("v1 gave {other:?}"),
    }
    let v2 = v2_tree(&tmp.path().join("v2"));
    match v2.admit_helper().unwrap() {
        HelperJoin::CloneInto(fd) => assert_eq!(link(&fd), tmp.path().join("v2/ctr")),
        other => panic!("v2 gave {other:?}"),
    }
    // A cgroup that is not there is an error, not an empty admission.
    let gone =
        CgroupManager::with_hierarchy("/gone", Hierarchy::v2_at(&tmp.path().join("v2"))).unwrap();
    assert!(matches!(gone.admit_helper(), Err(CgroupError::NotFound(_))));
}

// ---- v2 device program ----

/// Runs the device program on one access, as the kernel would: the subset
/// of eBPF that `devices::v2_program` emits, with every jump checked to
/// land inside the program.
fn run_device_program(
    p: &[crate::runtime::bpf::Insn],
    typ: u32,
    major: u32,
    minor: u32,
    access: u32,
) -> u64 {
    let ctx = [access << 16 | typ, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..10_000 {
        let i = p[pc];
        let (d, s) = (i.dst() as usize, i.src() as usize);
        let imm = i.imm as i64 as u64;
        pc += 1;
        match i.code {
            0x61 => {
                assert_eq!(s, 1, "loads only from the context");
                r[d] = u64::from(ctx[i.off as usize / 4]);
            }
            0x54 => r[d] = (r[d] & imm) & 0xffff_ffff,
            0x74 => r[d] = ((r[d] as u32) >> i.imm) as u64,
            0xb4 => r[d] = imm & 0xffff_ffff,
            0xbc => r[d] = r[s] & 0xffff_ffff,
            0x15 | 0x55 | 0x5d => {
                let other = if i.code == 0x5d { r[s] } else { imm };
                let taken = if i.code == 0x15 {
                    r[d] == other
                } else {
                    r[d] != other
                };
                if taken {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            0x95 => return r[0],
            c => panic!("unexpected opcode {c:#x}"),
        }
        assert!(pc < p.len(), "jump out of the program");
    }
    panic!("the program loops");
}

#[test]
fn v2_device_program_follows_the_rules() {
    const B: u32 = 1;
    const C: u32 = 2;
    const M: u32 = 1;
    const R: u32 = 2;
    const W: u32 = 4;
    let spec = vec![
        // An early allow-all, overridden by the later deny of c 10:*.
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(8i64)
            .access("r")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .minor(200i64)
            .access("w")
            .build()
            .unwrap(),
    ];
    let p = devices::v2_program(&devices::rules(&spec).unwrap());
    let run = |t, maj, min, acc| run_device_program(&p, t, maj, min, acc);
    // The defaults: /dev/null, /dev/zero, ptys; mknod of anything.
    assert_eq!(run(C, 1, 3, R | W), 1);
    assert_eq!(run(C, 1, 5, R), 1);
    assert_eq!(run(C, 136, 4, R | W), 1);
    assert_eq!(run(C, 5, 2, R | W), 1);
    assert_eq!(run(B, 8, 0, M), 1);
    assert_eq!(run(C, 4, 1, M), 1);
    // Not allowed: a disk, a tty, /dev/mem.
    assert_eq!(run(B, 259, 0, R), 0);
    assert_eq!(run(C, 4, 1, R), 0);
    assert_eq!(run(C, 1, 1, R | W), 0);
    // b 8:* r: read only, and only block devices.
    assert_eq!(run(B, 8, 0, R), 1);
    assert_eq!(run(B, 8, 16, R | W), 0);
    assert_eq!(run(C, 8, 0, R), 0);
    // c 10:* rwm, but not writing 10:200 (the later rule wins).
    assert_eq!(run(C, 10, 229, R | W), 1);
    assert_eq!(run(C, 10, 200, R), 1);
    assert_eq!(run(C, 10, 200, W), 0);
    assert_eq!(run(C, 10, 200, R | W), 0);

    // No rules: deny all but the defaults, ending in a deny.
    let none = devices::v2_program(&devices::rules(&[]).unwrap());
    assert_eq!(run_device_program(&none, B, 8, 0, R), 0);
    assert_eq!(run_device_program(&none, C, 1, 3, R | W), 1);
    let last = none.len() - 2;
    assert_eq!((none[last].code, none[last].imm), (0xb4, 0));

    // Privileged (a *:* rwm): everything, and nothing unreachable after
    // the rule that matches all (the verifier refuses dead code).
    let all = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()
        .unwrap();
    let privileged = devices::v2_program(&devices::rules(&[all]).unwrap());
    assert_eq!(run_device_program(&privileged, B, 259, 0, R | W | M), 1);
    assert_eq!(privileged.last().unwrap().code, 0x95);
    let exits = privileged.iter().filter(|i| i.code == 0x95).count();
    // The defaults' blocks, then the allow-all one.
    assert_eq!(exits, 11);
}

#[test]
fn v2_oom_counts_read_the_parent_and_survive_the_cgroups_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    put(root, "cgroup.controllers", "memory pids");
    put(
        &root.join("pod.slice"),
        "memory.events",
        "max 4\noom 1\noom_kill 3\n",
    );
    put(
        &root.join("pod.slice/ctr.scope"),
        "memory.events",
        "max 2\noom 1\noom_kill 1\n",
    );
    let mgr = CgroupManager::with_hierarchy("pod.slice/ctr.scope", Hierarchy::v2_at(root)).unwrap();
    assert_eq!(
        mgr.oom_counts().unwrap(),
        OomCounts {
            own: Some(1),
            parent: Some(3)
        }
    );
    // systemd removed the empty scope: its count is gone, the slice's stays.
    std::fs::remove_dir_all(root.join("pod.slice/ctr.scope")).unwrap();
    assert_eq!(
        mgr.oom_counts().unwrap(),
        OomCounts {
            own: None,
            parent: Some(3)
        }
    );
    // A cgroup at the root has no parent count.
    put(&root.join("top"), "memory.events", "oom_kill 0\n");
    let top = CgroupManager::with_hierarchy("top", Hierarchy::v2_at(root)).unwrap();
    assert_eq!(
        top.oom_counts().unwrap(),
        OomCounts {
            own: Some(0),
            parent: None
        }
    );
}

#[test]
fn v1_oom_counts_have_no_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = v1_tree(tmp.path());
    put(
        &tmp.path().join("memory/ctr"),
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    assert_eq!(
        mgr.oom_counts().unwrap(),
        OomCounts {
            own: Some(2),
            parent: None
        }
    );
}

/// A mountinfo line of a cgroup mount at `at`.
fn mount_line(id: u32, at: &str, fstype: &str, opts: &str) -> String {
    format!(
        "{id} 1 0:{id} / {at} rw,nosuid,nodev,noexec,relatime shared:{id} - {fstype} {fstype} {opts}\n"
    )
}

#[test]
fn the_hierarchy_comes_from_the_cgroup_mounts() {
    // systemd + pure v2.
    let pure = mount_line(
        30,
        "/sys/fs/cgroup",
        "cgroup2",
        "rw,nsdelegate,memory_recursiveprot",
    );
    let h = Hierarchy::from_mounts(&host_mounts(&pure));
    assert_eq!(h, Hierarchy::v2_at(Path::new("/sys/fs/cgroup")));
    // A hybrid (this machine's kind): tmpfs on /sys/fs/cgroup, v1
    // controllers below it, and a controller-less cgroup2 at unified/.
    let hybrid = [
        "25 1 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
            .to_owned(),
        mount_line(26, "/sys/fs/cgroup/unified", "cgroup2", "rw,nsdelegate"),
        mount_line(27, "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
        mount_line(28, "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
        mount_line(29, "/sys/fs/cgroup/pids", "cgroup", "rw,pids"),
    ]
    .concat();
    let mounts = host_mounts(&hybrid);
    assert_eq!(mounts.len(), 4, "tmpfs is no cgroup mount: {mounts:?}");
    match Hierarchy::from_mounts(&mounts) {
        Hierarchy::V1 { mounts } => {
            assert_eq!(mounts["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
            assert_eq!(mounts["cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
            assert_eq!(mounts["memory"], Path::new("/sys/fs/cgroup/memory"));
            assert!(!mounts.contains_key("devices"));
        }
        other => panic!("a hybrid is v1: {other:?}"),
    }
    // Cgroup mounts elsewhere (a container runtime's own, a test's) are not
    // the host's.
    let elsewhere = mount_line(40, "/run/other/cgroup", "cgroup2", "rw");
    assert!(host_mounts(&elsewhere).is_empty());
}
