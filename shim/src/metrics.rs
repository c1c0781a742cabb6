//! The runtime's cgroup statistics as the `Metrics` message the runc shim
//! returns from Stats, so `ctr task metrics` and the CRI read it: cgroups v1
//! `io.containerd.cgroups.v1.Metrics` on v1, and on v2 (as the runc shim
//! does) `io.containerd.cgroups.v2.Metrics`, made from the v2 files with
//! memory.events, io.stat, hugetlb and PSI.

use berth::runtime::{Pressure, Stats, StatsV2};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use crate::error::{Result, ShimError};

/// Type URL containerd's typeurl registry knows the v1 metrics by.
pub const METRICS_V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// Builds the v1 metrics message from runtime stats.
pub fn to_metrics(s: &Stats) -> Metrics {
    let mut m = Metrics::new();
    m.pids = Some(PidsStat {
        current: s.pids_current,
        limit: s.pids_limit,
        ..Default::default()
    })
    .into();
    m.cpu = Some(CPUStat {
        usage: Some(CPUUsage {
            total: s.cpu_usage_ns,
            kernel: s.cpu_system_ns,
            user: s.cpu_user_ns,
            ..Default::default()
        })
        .into(),
        throttling: Some(Throttle {
            throttled_periods: s.cpu_throttled_periods,
            throttled_time: s.cpu_throttled_time_ns,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    let inactive_file = s
        .memory_usage_bytes
        .saturating_sub(s.memory_working_set_bytes);
    m.memory = Some(MemoryStat {
        cache: s.memory_cache_bytes,
        rss: s.memory_rss_bytes,
        total_cache: s.memory_cache_bytes,
        total_rss: s.memory_rss_bytes,
        inactive_file,
        total_inactive_file: inactive_file,
        hierarchical_memory_limit: s.memory_limit_bytes,
        usage: Some(MemoryEntry {
            limit: s.memory_limit_bytes,
            usage: s.memory_usage_bytes,
            failcnt: s.memory_failcnt,
            ..Default::default()
        })
        .into(),
        swap: Some(MemoryEntry {
            usage: s.memory_swap_bytes,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    m.memory_oom_control = Some(MemoryOomControl {
        oom_kill: s.oom_kills,
        ..Default::default()
    })
    .into();
    m
}

/// Type URL containerd's typeurl registry knows the v2 metrics by.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

fn psi(p: &Option<Pressure>) -> containerd_shim::protos::protobuf::MessageField<v2::PSIStats> {
    let Some(p) = p else {
        return None.into();
    };
    let line = |l: &berth::runtime::PressureLine| v2::PSIData {
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
        total: l.total,
        ..Default::default()
    };
    Some(v2::PSIStats {
        some: Some(line(&p.some)).into(),
        full: Some(line(&p.full)).into(),
        ..Default::default()
    })
    .into()
}

/// Builds the v2 metrics message (containerd's cgroups/v2 `Stat()`).
pub fn to_metrics_v2(s: &Stats, x: &StatsV2) -> v2::Metrics {
    let ms = |k: &str| x.memory_stat.get(k).copied().unwrap_or(0);
    let cs = |k: &str| x.cpu_stat.get(k).copied().unwrap_or(0);
    let ev = |k: &str| x.memory_events.get(k).copied().unwrap_or(0);
    let mut m = v2::Metrics::new();
    m.pids = Some(v2::PidsStat {
        current: s.pids_current,
        limit: s.pids_limit,
        ..Default::default()
    })
    .into();
    m.cpu = Some(v2::CPUStat {
        usage_usec: cs("usage_usec"),
        user_usec: cs("user_usec"),
        system_usec: cs("system_usec"),
        nr_periods: cs("nr_periods"),
        nr_throttled: cs("nr_throttled"),
        throttled_usec: cs("throttled_usec"),
        nr_bursts: cs("nr_bursts"),
        burst_usec: cs("burst_usec"),
        psi: psi(&x.cpu_pressure),
        ..Default::default()
    })
    .into();
    m.memory = Some(v2::MemoryStat {
        anon: ms("anon"),
        file: ms("file"),
        kernel_stack: ms("kernel_stack"),
        slab: ms("slab"),
        sock: ms("sock"),
        shmem: ms("shmem"),
        file_mapped: ms("file_mapped"),
        file_dirty: ms("file_dirty"),
        file_writeback: ms("file_writeback"),
        anon_thp: ms("anon_thp"),
        inactive_anon: ms("inactive_anon"),
        active_anon: ms("active_anon"),
        inactive_file: ms("inactive_file"),
        active_file: ms("active_file"),
        unevictable: ms("unevictable"),
        slab_reclaimable: ms("slab_reclaimable"),
        slab_unreclaimable: ms("slab_unreclaimable"),
        pgfault: ms("pgfault"),
        pgmajfault: ms("pgmajfault"),
        workingset_refault: ms("workingset_refault"),
        workingset_activate: ms("workingset_activate"),
        workingset_nodereclaim: ms("workingset_nodereclaim"),
        pgrefill: ms("pgrefill"),
        pgscan: ms("pgscan"),
        pgsteal: ms("pgsteal"),
        pgactivate: ms("pgactivate"),
        pgdeactivate: ms("pgdeactivate"),
        pglazyfree: ms("pglazyfree"),
        pglazyfreed: ms("pglazyfreed"),
        thp_fault_alloc: ms("thp_fault_alloc"),
        thp_collapse_alloc: ms("thp_collapse_alloc"),
        usage: s.memory_usage_bytes,
        usage_limit: s.memory_limit_bytes,
        swap_usage: s.memory_swap_bytes,
        swap_limit: x.memory_swap_limit_bytes,
        max_usage: x.memory_peak_bytes,
        swap_max_usage: x.memory_swap_peak_bytes,
        psi: psi(&x.memory_pressure),
        ..Default::default()
    })
    .into();
    m.memory_events = Some(v2::MemoryEvents {
        low: ev("low"),
        high: ev("high"),
        max: ev("max"),
        oom: ev("oom"),
        oom_kill: ev("oom_kill"),
        oom_group_kill: ev("oom_group_kill"),
        ..Default::default()
    })
    .into();
    m.io = Some(v2::IOStat {
        usage: x
            .io
            .iter()
            .map(|e| v2::IOEntry {
                major: e.major,
                minor: e.minor,
                rbytes: e.rbytes,
                wbytes: e.wbytes,
                rios: e.rios,
                wios: e.wios,
                ..Default::default()
            })
            .collect(),
        psi: psi(&x.io_pressure),
        ..Default::default()
    })
    .into();
    m.hugetlb = x
        .hugetlb
        .iter()
        .map(|h| v2::HugeTlbStat {
            current: h.current,
            max: h.max,
            pagesize: h.pagesize.clone(),
            failcnt: h.failcnt,
            ..Default::default()
        })
        .collect();
    m
}

/// The metrics wrapped in an `Any` with the type URL containerd expects:
/// v2 when the stats come from cgroup v2, else v1.
pub fn to_any(s: &Stats) -> Result<Any> {
    let encode = |e: containerd_shim::protos::protobuf::Error| {
        ShimError::InvalidArgument(format!("encode metrics: {e}"))
    };
    let (type_url, value) = match &s.v2 {
        Some(x) => (
            METRICS_V2_TYPE_URL,
            to_metrics_v2(s, x).write_to_bytes().map_err(encode)?,
        ),
        None => (
            METRICS_V1_TYPE_URL,
            to_metrics(s).write_to_bytes().map_err(encode)?,
        ),
    };
    Ok(Any {
        type_url: type_url.to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_through_the_v1_message() {
        let s = Stats {
            cpu_usage_ns: 10,
            cpu_user_ns: 6,
            cpu_system_ns: 4,
            memory_usage_bytes: 1000,
            memory_working_set_bytes: 800,
            memory_limit_bytes: 4096,
            memory_failcnt: 2,
            oom_kills: 1,
            pids_current: 3,
            pids_limit: 10,
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V1_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 10);
        assert_eq!(m.cpu.usage.total, 10);
        assert_eq!(m.cpu.usage.user, 6);
        assert_eq!(m.memory.usage.usage, 1000);
        assert_eq!(m.memory.usage.limit, 4096);
        assert_eq!(m.memory.total_inactive_file, 200);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
    }

    #[test]
    fn v2_stats_become_the_v2_message_with_psi() {
        let mut x = StatsV2::default();
        x.memory_stat.insert("anon".into(), 700);
        x.memory_stat.insert("inactive_file".into(), 200);
        x.memory_stat.insert("pgmajfault".into(), 4);
        x.cpu_stat.insert("usage_usec".into(), 10);
        x.cpu_stat.insert("nr_bursts".into(), 2);
        x.memory_events.insert("oom_kill".into(), 1);
        x.memory_swap_limit_bytes = u64::MAX;
        x.io.push(berth::runtime::IoUsage {
            major: 8,
            minor: 0,
            rbytes: 5,
            ..Default::default()
        });
        x.hugetlb.push(berth::runtime::HugetlbUsage {
            pagesize: "2MB".into(),
            current: 1,
            max: 2,
            failcnt: 3,
        });
        x.memory_pressure = Some(Pressure {
            some: berth::runtime::PressureLine {
                avg10: 1.5,
                total: 99,
                ..Default::default()
            },
            ..Default::default()
        });
        let s = Stats {
            memory_usage_bytes: 1000,
            memory_limit_bytes: 4096,
            pids_current: 3,
            v2: Some(x),
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE_URL);
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!((m.cpu.usage_usec, m.cpu.nr_bursts), (10, 2));
        assert_eq!((m.memory.usage, m.memory.usage_limit), (1000, 4096));
        assert_eq!(
            (m.memory.anon, m.memory.inactive_file, m.memory.pgmajfault),
            (700, 200, 4)
        );
        assert_eq!(m.memory.swap_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.io.usage[0].rbytes, 5);
        assert_eq!(m.hugetlb[0].failcnt, 3);
        assert_eq!(
            (m.memory.psi.some.avg10, m.memory.psi.some.total),
            (1.5, 99)
        );
        assert!(m.cpu.psi.is_none(), "no cpu.pressure, no PSI message");
    }
}
