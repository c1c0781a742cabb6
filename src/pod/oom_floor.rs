//! The lowest oom_score_adj berthd can give a container.
//!
//! The kernel lets a process lower its oom_score_adj below the value it
//! inherited only with CAP_SYS_RESOURCE (`__set_oom_adj`: `oom_score_adj_min`).
//! On a node berthd has that capability and a container gets exactly what
//! kubelet asks (critical and Guaranteed pods get negative scores); where it
//! lacks it (this project's test hosts, rootless setups), a lower request
//! would fail in the shim, so it is raised to berthd's own value, with a
//! log line ([`crate::spec::oom_score_adj`]), as containerd's
//! `restrict_oom_score_adj` does.

use std::collections::HashSet;

use oci_spec::runtime::Capability;

/// The floor for the containers' oom_score_adj: None (no floor) when berthd
/// holds CAP_SYS_RESOURCE (or its capabilities are unknown: `caps` None means
/// every capability, as in [`crate::spec::HostFacts`]), else berthd's own
/// value `own`.
pub(crate) fn oom_score_adj_floor(
    own: Option<i32>,
    caps: Option<&HashSet<Capability>>,
) -> Option<i32> {
    match caps {
        Some(caps) if !caps.contains(&Capability::SysResource) => {
            if own.is_some_and(|v| v > -1000) {
                tracing::debug!(
                    floor = own,
                    "berthd lacks CAP_SYS_RESOURCE: containers' oom_score_adj cannot go below berthd's own"
                );
            }
            own
        }
        _ => None,
    }
}

/// berthd's own oom_score_adj.
pub(crate) fn own_oom_score_adj() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_only_without_cap_sys_resource() {
        let with: HashSet<_> = [Capability::SysResource, Capability::Chown].into();
        let without: HashSet<_> = [Capability::Chown, Capability::SysAdmin].into();
        // A node: berthd may set any value, the request is kept.
        assert_eq!(oom_score_adj_floor(Some(-999), Some(&with)), None);
        assert_eq!(oom_score_adj_floor(Some(0), Some(&with)), None);
        // Capabilities unknown: every capability.
        assert_eq!(oom_score_adj_floor(Some(0), None), None);
        // Without the capability: berthd's own value.
        assert_eq!(oom_score_adj_floor(Some(0), Some(&without)), Some(0));
        assert_eq!(oom_score_adj_floor(Some(-500), Some(&without)), Some(-500));
        assert_eq!(oom_score_adj_floor(None, Some(&without)), None);
    }

    #[test]
    fn the_floor_raises_only_lower_requests() {
        let without: HashSet<_> = [Capability::Chown].into();
        let floor = oom_score_adj_floor(Some(0), Some(&without));
        assert_eq!(crate::spec::oom_score_adj(-997, floor).unwrap(), 0);
        assert_eq!(crate::spec::oom_score_adj(1000, floor).unwrap(), 1000);
        let with: HashSet<_> = [Capability::SysResource].into();
        let floor = oom_score_adj_floor(Some(0), Some(&with));
        assert_eq!(crate::spec::oom_score_adj(-997, floor).unwrap(), -997);
    }
}
