//! The runtime's cgroup statistics as the cgroups v1 `Metrics` message the
//! runc shim returns from Stats, so `ctr task metrics` and the CRI read it.

use berth::runtime::Stats;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};
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

/// The metrics wrapped in an `Any` with the type URL containerd expects.
pub fn to_any(s: &Stats) -> Result<Any> {
    let value = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encode metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_V1_TYPE_URL.to_string(),
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
}
