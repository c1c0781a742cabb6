//! The `[network]` table of berthd's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::addr::{Ipv4Net, Ipv6Net};
use super::error::NetworkError;

/// Which implementation sets up pod networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// berth's own bridge, veth pairs, IPAM and nftables rules: the embedded
    /// default, so that berthd without a config file runs pods.
    #[default]
    Builtin,
    /// The CNI plugins of the first config list in `cni_conf_dir`. Until
    /// one is there, NetworkReady is false (`NetworkPluginNotReady`) and a
    /// pod that needs its own network is refused, as containerd does: on a
    /// new Kubernetes node, pods wait for the CNI daemonset instead of
    /// getting node-local addresses.
    Cni,
    /// The same as [`NetworkMode::Cni`]. (It once fell back to the built-in
    /// network while no CNI config was there; that gave a new node's first
    /// pods addresses no other node could reach.)
    Auto,
}

impl NetworkMode {
    /// Whether pods are networked through CNI plugins.
    pub fn uses_cni(self) -> bool {
        matches!(self, NetworkMode::Cni | NetworkMode::Auto)
    }
}

/// The `[network]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The built-in mode's bridge (at most 15 bytes, an interface name).
    pub bridge_name: String,
    /// The built-in mode's IPv4 pod subnet. 10.89/16 so that it does not clash
    /// with containerd's default `cni0` network (10.88/16).
    pub pod_subnet: String,
    /// The built-in mode's IPv6 pod subnet (dual stack when set), a /64 or
    /// larger prefix of at most /120.
    pub pod_subnet_v6: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: NetworkMode::Builtin,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            bridge_name: "berth0".to_string(),
            pod_subnet: "10.89.0.0/16".to_string(),
            pod_subnet_v6: Some("fd89:6265:7274::/64".to_string()),
        }
    }
}

impl NetworkConfig {
    /// Checks every field; returns the parsed subnets.
    pub fn validate(&self) -> Result<(Ipv4Net, Option<Ipv6Net>), NetworkError> {
        let name = &self.bridge_name;
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(NetworkError::Config(format!(
                "bridge_name {name:?} must be 1 to 15 characters of [A-Za-z0-9._-]"
            )));
        }
        let v4: Ipv4Net = self.pod_subnet.parse()?;
        if v4.prefix > 30 {
            return Err(NetworkError::Config(format!(
                "pod_subnet {v4} is too small (at most /30)"
            )));
        }
        let v6 = match &self.pod_subnet_v6 {
            Some(s) if !s.is_empty() => {
                let n: Ipv6Net = s.parse()?;
                if n.prefix > 120 {
                    return Err(NetworkError::Config(format!(
                        "pod_subnet_v6 {n} is too small (at most /120)"
                    )));
                }
                Some(n)
            }
            _ => None,
        };
        if self.cni_bin_dirs.is_empty() && self.mode.uses_cni() {
            return Err(NetworkError::Config("cni_bin_dirs is empty".into()));
        }
        Ok((v4, v6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_table() {
        let c: NetworkConfig =
            toml::from_str("mode = \"builtin\"\nbridge_name = \"br-x\"").unwrap();
        assert_eq!(c.mode, NetworkMode::Builtin);
        assert_eq!(c.bridge_name, "br-x");
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        let (v4, v6) = c.validate().unwrap();
        assert_eq!(v4.to_string(), "10.89.0.0/16");
        assert_eq!(v6.unwrap().prefix, 64);
        assert_eq!(NetworkConfig::default().mode, NetworkMode::Builtin);
        let auto: NetworkConfig = toml::from_str("mode = \"auto\"").unwrap();
        assert!(auto.mode.uses_cni());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<NetworkConfig>("bridge = \"x\"").is_err());
        assert!(toml::from_str::<NetworkConfig>("mode = \"weird\"").is_err());
        let mut c = NetworkConfig {
            bridge_name: "a-very-long-bridge-name".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.bridge_name = "ok".into();
        c.pod_subnet = "10.0.0.0/33".into();
        assert!(c.validate().is_err());
        c.pod_subnet = "10.0.0.0/31".into();
        assert!(c.validate().is_err());
        c.pod_subnet = "10.0.0.1/24".into();
        assert!(c.validate().is_err(), "host bits set");
    }
}
