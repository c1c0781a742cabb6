//! Process capabilities: containerd's default set, CRI add/drop (with `ALL`),
//! privileged containers.

use std::collections::HashSet;
use std::str::FromStr;

use k8s_cri::v1::Capability as CriCapability;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::SpecError;

/// The capabilities a container gets by default: containerd's (and Docker's)
/// default set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability (CAP_CHOWN = 0 .. CAP_CHECKPOINT_RESTORE = 40).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities of a mask as `/proc/<pid>/status` shows it (`CapEff:`,
/// bit n = capability n).
pub fn capabilities_from_mask(mask: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES
        .into_iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| c)
        .collect()
}

/// Parses a capability name as the CRI gives it: case-insensitive, with or
/// without the `CAP_` prefix. `ALL` is not a capability; see [`is_all`].
pub fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare.is_empty() || bare == "ALL" {
        return Err(SpecError::UnknownCapability(name.to_string()));
    }
    Capability::from_str(bare).map_err(|_| SpecError::UnknownCapability(name.to_string()))
}

/// Whether a CRI capability name means "all capabilities".
pub fn is_all(name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    upper == "ALL" || upper == "CAP_ALL"
}

/// The capability set of a container: the default set (all of them when
/// privileged), then `add: ALL`, `drop: ALL`, the individual adds and the
/// individual drops, in that order (containerd's `WithCapabilities`; so
/// `add: [ALL], drop: [CHOWN]` is everything but CHOWN, and `drop: [ALL],
/// add: [NET_ADMIN]` is NET_ADMIN only).
///
/// A privileged container gets every capability whatever add/drop say.
/// "Every capability" is those of `available` (the runtime's own, as
/// containerd's `cap.Current()`; a capability the runtime lacks cannot be
/// given, the capset would fail); None means all of [`ALL_CAPABILITIES`].
pub fn capability_set(
    caps: Option<&CriCapability>,
    privileged: bool,
    available: Option<&HashSet<Capability>>,
) -> Result<HashSet<Capability>, SpecError> {
    let every = || -> HashSet<Capability> {
        ALL_CAPABILITIES
            .into_iter()
            .filter(|c| available.is_none_or(|a| a.contains(c)))
            .collect()
    };
    if privileged {
        // Still refuse names that do not exist, so a typo is noticed.
        if let Some(caps) = caps {
            for name in caps.add_capabilities.iter().chain(&caps.drop_capabilities) {
                if !is_all(name) {
                    parse_capability(name)?;
                }
            }
        }
        return Ok(every());
    }
    let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let Some(caps) = caps else {
        return Ok(set);
    };
    if caps.add_capabilities.iter().any(|c| is_all(c)) {
        set = every();
    }
    if caps.drop_capabilities.iter().any(|c| is_all(c)) {
        set.clear();
    }
    for name in caps.add_capabilities.iter().filter(|c| !is_all(c)) {
        let cap = parse_capability(name)?;
        if available.is_some_and(|a| !a.contains(&cap)) {
            return Err(SpecError::Unsupported(format!(
                "capability {name:?} cannot be added: the runtime does not hold it itself"
            )));
        }
        set.insert(cap);
    }
    for name in caps.drop_capabilities.iter().filter(|c| !is_all(c)) {
        set.remove(&parse_capability(name)?);
    }
    if !caps.add_ambient_capabilities.is_empty() {
        // containerd clears the ambient set too (kubernetes#56374).
        for name in &caps.add_ambient_capabilities {
            if !is_all(name) {
                parse_capability(name)?;
            }
        }
        tracing::warn!(
            ambient = ?caps.add_ambient_capabilities,
            "add_ambient_capabilities is ignored: containers get no ambient capabilities"
        );
    }
    Ok(set)
}

/// The OCI capability sets of the container's process.
///
/// Bounding, effective and permitted hold the set, whatever the user
/// (containerd's behaviour: for a non-root user the kernel clears effective
/// and permitted at execve unless the program has file capabilities, which
/// then still work; Docker's earlier clearing, moby#36587, broke such
/// programs, moby#45491, and containerd#4669 to copy it was not merged).
/// Inheritable and ambient are empty (containerd since CVE-2022-24769;
/// ambient per kubernetes#56374).
pub fn process_capabilities(set: &HashSet<Capability>) -> LinuxCapabilities {
    let all: Capabilities = set.iter().copied().collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(all.clone()))
        .set_effective(Some(all.clone()))
        .set_permitted(Some(all))
        .set_inheritable(Some(Capabilities::new()))
        .set_ambient(Some(Capabilities::new()));
    caps
}
