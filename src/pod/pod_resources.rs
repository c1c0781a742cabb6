//! The limits of a pod's cgroup from its CRI `LinuxPodSandboxConfig`:
//! `resources` (the sum of its containers' resources) plus `overhead` (what
//! the pod's runtime itself costs, from its RuntimeClass).

use k8s_cri::v1 as cri;

use super::{PodError, Result};

/// The pod cgroup's resources, `None` when the pod asks for none.
///
/// A limit is only set when `resources` has one (an overhead alone does not
/// make an unlimited pod limited); the overhead is then added to it. cpu
/// shares add up; a quota is scaled to the resources' period first.
pub(crate) fn pod_cgroup_resources(
    linux: &cri::LinuxPodSandboxConfig,
) -> Result<Option<cri::LinuxContainerResources>> {
    let res = linux.resources.clone().unwrap_or_default();
    let over = linux.overhead.clone().unwrap_or_default();
    let unset = cri::LinuxContainerResources::default();
    if res == unset && over == unset {
        return Ok(None);
    }
    for (what, r) in [("resources", &res), ("overhead", &over)] {
        if r.memory_limit_in_bytes < 0 || r.cpu_shares < 0 || r.cpu_period < 0 {
            return Err(PodError::InvalidArgument(format!(
                "pod {what}: negative memory limit, cpu shares or cpu period"
            )));
        }
        if r.cpu_quota < -1 {
            return Err(PodError::InvalidArgument(format!(
                "pod {what}: cpu quota {} (use -1 for no limit)",
                r.cpu_quota
            )));
        }
    }
    let overflow = |what: &str| PodError::InvalidArgument(format!("pod {what}: value too large"));
    let mut out = res.clone();
    if res.memory_limit_in_bytes > 0 {
        out.memory_limit_in_bytes = res
            .memory_limit_in_bytes
            .checked_add(over.memory_limit_in_bytes)
            .ok_or_else(|| overflow("memory limit"))?;
    }
    if res.cpu_shares > 0 || over.cpu_shares > 0 {
        out.cpu_shares = res
            .cpu_shares
            .checked_add(over.cpu_shares)
            .ok_or_else(|| overflow("cpu shares"))?;
    }
    if res.cpu_quota > 0 {
        let period = if res.cpu_period > 0 {
            res.cpu_period
        } else {
            100_000
        };
        let over_quota = if over.cpu_quota > 0 {
            let over_period = if over.cpu_period > 0 {
                over.cpu_period
            } else {
                100_000
            };
            i64::try_from(i128::from(over.cpu_quota) * i128::from(period) / i128::from(over_period))
                .map_err(|_| overflow("cpu quota"))?
        } else {
            0
        };
        out.cpu_quota = res
            .cpu_quota
            .checked_add(over_quota)
            .ok_or_else(|| overflow("cpu quota"))?;
        out.cpu_period = period;
    } else {
        out.cpu_quota = 0;
        out.cpu_period = 0;
    }
    // A pod cgroup has no score of its own.
    out.oom_score_adj = 0;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(
        res: Option<cri::LinuxContainerResources>,
        over: Option<cri::LinuxContainerResources>,
    ) -> cri::LinuxPodSandboxConfig {
        cri::LinuxPodSandboxConfig {
            resources: res,
            overhead: over,
            ..Default::default()
        }
    }

    #[test]
    fn nothing_asked_nothing_applied() {
        assert_eq!(pod_cgroup_resources(&linux(None, None)).unwrap(), None);
    }

    #[test]
    fn overhead_is_added_to_the_resources() {
        let res = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            ..Default::default()
        };
        let over = cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            cpu_quota: 5_000,
            cpu_period: 50_000,
            cpu_shares: 102,
            ..Default::default()
        };
        let out = pod_cgroup_resources(&linux(Some(res), Some(over)))
            .unwrap()
            .unwrap();
        assert_eq!(out.memory_limit_in_bytes, 80 << 20);
        // 5ms per 50ms is 10ms per 100ms.
        assert_eq!(out.cpu_quota, 60_000);
        assert_eq!(out.cpu_period, 100_000);
        assert_eq!(out.cpu_shares, 614);
    }

    #[test]
    fn overhead_alone_limits_nothing_but_shares() {
        let over = cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            cpu_quota: 5_000,
            cpu_period: 100_000,
            cpu_shares: 102,
            ..Default::default()
        };
        let out = pod_cgroup_resources(&linux(None, Some(over)))
            .unwrap()
            .unwrap();
        assert_eq!(out.memory_limit_in_bytes, 0);
        assert_eq!(out.cpu_quota, 0);
        assert_eq!(out.cpu_shares, 102);
    }

    #[test]
    fn negative_values_are_refused() {
        let res = cri::LinuxContainerResources {
            memory_limit_in_bytes: -5,
            ..Default::default()
        };
        assert!(matches!(
            pod_cgroup_resources(&linux(Some(res), None)),
            Err(PodError::InvalidArgument(_))
        ));
    }
}
