//! Resources: CPU, cpuset, memory, swap, hugepages, unified, oom_score_adj.

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::SpecError;
use super::input::HostFacts;

/// Largest CPU CFS period the kernel accepts (1 s).
const MAX_CPU_PERIOD: i64 = 1_000_000;
/// Smallest CPU CFS period/quota the kernel accepts (1 ms).
const MIN_CPU_PERIOD: i64 = 1_000;
/// Largest cpu.shares value (v1).
const MAX_CPU_SHARES: i64 = 262_144;

/// Checks a cpuset list such as `0-3,5,7-8`.
fn valid_cpuset(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-');
        let lo = ends.next().unwrap_or("");
        let hi = ends.next();
        let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 6;
        match hi {
            None => num(lo),
            Some(hi) => num(lo) && num(hi) && lo.parse::<u32>().ok() <= hi.parse::<u32>().ok(),
        }
    })
}

/// Applies the CRI resources to `out` (containerd's `WithResources`): zero
/// means "not set"; the swap limit defaults to the memory limit (no swap) when
/// the host accounts swap; hugepage limits need the hugetlb controller and are
/// dropped (with a log line) without it.
pub(crate) fn apply_resources(
    r: &LinuxContainerResources,
    host: &HostFacts,
    out: &mut LinuxResources,
) -> Result<(), SpecError> {
    let mut cpu = out.cpu().clone().unwrap_or_default();
    if r.cpu_period != 0 {
        if !(MIN_CPU_PERIOD..=MAX_CPU_PERIOD).contains(&r.cpu_period) {
            return Err(SpecError::field(
                "linux.resources.cpu_period",
                format!(
                    "{} is outside {MIN_CPU_PERIOD}..={MAX_CPU_PERIOD} microseconds",
                    r.cpu_period
                ),
            ));
        }
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if r.cpu_quota != 0 {
        if r.cpu_quota != -1 && r.cpu_quota < MIN_CPU_PERIOD {
            return Err(SpecError::field(
                "linux.resources.cpu_quota",
                format!(
                    "{} is below {MIN_CPU_PERIOD} microseconds (use -1 for no limit)",
                    r.cpu_quota
                ),
            ));
        }
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        if !(2..=MAX_CPU_SHARES).contains(&r.cpu_shares) {
            return Err(SpecError::field(
                "linux.resources.cpu_shares",
                format!("{} is outside 2..={MAX_CPU_SHARES}", r.cpu_shares),
            ));
        }
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        if !valid_cpuset(&r.cpuset_cpus) {
            return Err(SpecError::field(
                "linux.resources.cpuset_cpus",
                format!("{:?} is not a cpu list such as 0-3,5", r.cpuset_cpus),
            ));
        }
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        if !valid_cpuset(&r.cpuset_mems) {
            return Err(SpecError::field(
                "linux.resources.cpuset_mems",
                format!("{:?} is not a node list such as 0-1", r.cpuset_mems),
            ));
        }
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }

    let mut memory = out.memory().unwrap_or_default();
    if r.memory_limit_in_bytes < 0 {
        return Err(SpecError::field(
            "linux.resources.memory_limit_in_bytes",
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(SpecError::field(
            "linux.resources.memory_swap_limit_in_bytes",
            format!(
                "{} is negative (use -1 for unlimited swap)",
                r.memory_swap_limit_in_bytes
            ),
        ));
    }
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        if r.memory_swap_limit_in_bytes == 0 && host.swap_accounting {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap_accounting {
        if r.memory_swap_limit_in_bytes > 0
            && r.memory_limit_in_bytes > 0
            && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
        {
            return Err(SpecError::field(
                "linux.resources.memory_swap_limit_in_bytes",
                format!(
                    "{} is below the memory limit {} (it counts memory plus swap)",
                    r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
                ),
            ));
        }
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }

    if !r.hugepage_limits.is_empty() {
        if host.hugetlb {
            let mut limits = Vec::new();
            for h in &r.hugepage_limits {
                if h.page_size.is_empty() {
                    return Err(SpecError::field(
                        "linux.resources.hugepage_limits",
                        "a limit has an empty page_size (expected e.g. 2MB or 1GB)",
                    ));
                }
                let limit = i64::try_from(h.limit).map_err(|_| {
                    SpecError::field(
                        "linux.resources.hugepage_limits",
                        format!("limit {} for {} is too large", h.limit, h.page_size),
                    )
                })?;
                let mut l = LinuxHugepageLimit::default();
                l.set_page_size(h.page_size.clone()).set_limit(limit);
                limits.push(l);
            }
            out.set_hugepage_limits(Some(limits));
        } else {
            tracing::warn!(
                limits = r.hugepage_limits.len(),
                "the hugetlb cgroup controller is absent: hugepage limits are not applied"
            );
        }
    }

    if !r.unified.is_empty() {
        let mut unified = out.unified().clone().unwrap_or_default();
        for (k, v) in &r.unified {
            if k.is_empty() || k.contains('/') || k.contains("..") {
                return Err(SpecError::field(
                    "linux.resources.unified",
                    format!("{k:?} is not a cgroup v2 file name"),
                ));
            }
            unified.insert(k.clone(), v.clone());
        }
        out.set_unified(Some(unified));
    }
    Ok(())
}

/// The container's oom_score_adj: the CRI value, raised to `min` when it is
/// lower (the caller sets `min` only where the runtime lacks CAP_SYS_RESOURCE
/// and so cannot lower a score below its own).
pub fn oom_score_adj(requested: i64, min: Option<i32>) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(SpecError::field(
            "linux.resources.oom_score_adj",
            format!("{requested} is outside -1000..=1000"),
        ));
    }
    let adj = requested as i32;
    match min {
        Some(min) if adj < min => {
            tracing::info!(
                requested = adj,
                applied = min,
                "oom_score_adj raised to berthd's own value: berthd lacks CAP_SYS_RESOURCE, so a lower score cannot be set"
            );
            Ok(min)
        }
        _ => Ok(adj),
    }
}

/// The OCI resources for a CRI resources message, for
/// UpdateContainerResources: the same rules as at creation (zero means "not
/// set"), without device rules.
pub fn oci_resources(
    r: &LinuxContainerResources,
    host: &HostFacts,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    apply_resources(r, host, &mut out)?;
    Ok(out)
}
