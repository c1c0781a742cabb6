//! The pod's sysctls, applied in each container's namespaces. Only sysctls
//! that belong to a namespace the container does not share with the host are
//! accepted.

use std::collections::HashMap;

use super::SpecError;

/// The namespace a sysctl belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlNamespace {
    /// Network namespace (`net.*`).
    Network,
    /// IPC namespace (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`).
    Ipc,
    /// UTS namespace (`kernel.hostname`, `kernel.domainname`).
    Uts,
}

/// Normalises a sysctl name to dots: Kubernetes accepts `net/ipv4/ip_forward`
/// style names too (where a `.` inside a component becomes a `/`).
pub fn normalize_sysctl_name(name: &str) -> String {
    let first = name.find(['.', '/']);
    match first.map(|i| &name[i..=i]) {
        Some("/") => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// The namespace a sysctl belongs to, or `None` when it is global to the host.
pub fn sysctl_namespace(name: &str) -> Option<SysctlNamespace> {
    const IPC_EXACT: [&str; 7] = [
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
    ];
    if name.starts_with("net.") {
        Some(SysctlNamespace::Network)
    } else if IPC_EXACT.contains(&name) || name == "kernel.msgmni" || name.starts_with("fs.mqueue.")
    {
        Some(SysctlNamespace::Ipc)
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

/// Checks the pod's sysctls against the namespaces the pod shares with the
/// host and returns them with dotted names.
pub(crate) fn container_sysctls(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
    host_uts: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    for (raw, value) in sysctls {
        let name = normalize_sysctl_name(raw.trim());
        let err = |reason: &str| SpecError::Sysctl {
            name: raw.clone(),
            reason: reason.to_string(),
        };
        if name.is_empty()
            || name.contains("..")
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return Err(err("not a sysctl name"));
        }
        if value.contains('\n') || value.contains('\0') {
            return Err(err("the value holds a newline or NUL byte"));
        }
        match sysctl_namespace(&name) {
            None => {
                return Err(err(
                    "not a namespaced sysctl: it would change the whole host, so it cannot be set for a pod",
                ));
            }
            Some(SysctlNamespace::Network) if host_network => {
                return Err(err(
                    "a network sysctl cannot be set for a pod that uses the host's network",
                ));
            }
            Some(SysctlNamespace::Ipc) if host_ipc => {
                return Err(err(
                    "an IPC sysctl cannot be set for a pod that uses the host's IPC namespace",
                ));
            }
            Some(SysctlNamespace::Uts) if host_uts => {
                return Err(err(
                    "a UTS sysctl cannot be set for a pod that uses the host's UTS namespace",
                ));
            }
            Some(_) => {}
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}
