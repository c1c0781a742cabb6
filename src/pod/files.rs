//! The pod's files: hostname, hosts, resolv.conf (contents from `spec`'s
//! pure helpers), written under the pod directory.

use std::net::IpAddr;
use std::path::Path;

use k8s_cri::v1 as cri;

use super::{PodError, Result};
use crate::spec;

/// Names of the files in the pod directory.
pub const HOSTNAME_FILE: &str = "hostname";
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_FILE: &str = "resolv.conf";

/// The host's hostname.
pub fn host_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// The hostname of a pod: the configured one, else the node's, whether the
/// pod has a network of its own or not. containerd does the same (its
/// `setupSandboxFiles` writes `os.Hostname()` to the pod's /etc/hostname when
/// the config names none); the pod's name is no hostname: it may be longer
/// than the 64 bytes a UTS namespace holds.
pub fn pod_hostname(config: &cri::PodSandboxConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    host_hostname()
}

/// Writes hostname, hosts and resolv.conf into `dir`.
pub fn write_pod_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    hostname: &str,
    ips: &[IpAddr],
    host_network: bool,
) -> Result<()> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = spec::pod_resolv_conf(config.dns_config.as_ref(), &host_resolv)?;
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        spec::pod_hosts_file(hostname, ips)?
    };
    let hostname_file = spec::pod_hostname_file(hostname)?;
    for (name, text) in [
        (HOSTNAME_FILE, hostname_file),
        (HOSTS_FILE, hosts),
        (RESOLV_FILE, resolv),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| PodError::io(format!("write {}", path.display()), e))?;
    }
    Ok(())
}
