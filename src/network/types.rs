//! What a pod asks of the network and what it gets back.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A transport protocol of a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A hostPort mapping of a pod (CRI `PortMapping`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Only this host address when set; every local address otherwise.
    pub host_ip: Option<IpAddr>,
}

/// The pod's DNS settings (CRI `DNSConfig`), passed to CNI's `dns` capability.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Traffic shaping (the pod's bandwidth annotations), passed to CNI's
/// `bandwidth` capability. Rates in bits per second, bursts in bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// Everything needed to set up one pod's network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNetworkRequest {
    /// The sandbox id (CNI's container id); keys every lease and state file.
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pod's pinned network namespace (see [`super::create_netns`]).
    pub netns_path: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsConfig>,
    pub bandwidth: Option<Bandwidth>,
}

/// What setup gave the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// The pod's addresses, the primary (IPv4 when present) first.
    pub ips: Vec<IpAddr>,
    /// The interface inside the pod (`eth0`).
    pub interface: String,
}

/// The `NetworkReady` runtime condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkReadiness {
    pub ready: bool,
    /// CamelCase reason when not ready (CRI convention), empty otherwise.
    pub reason: String,
    pub message: String,
}

/// Counters of one interface in a pod's namespace (for PodSandboxStats and
/// the `container_network_*` metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The counters of every interface in a pod's namespace but `lo`, and the
/// name of the pod's own (default) interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInterfaces {
    pub default_name: String,
    pub interfaces: Vec<InterfaceStats>,
}

impl PodInterfaces {
    /// The pod's own interface, when it is there.
    pub fn default_interface(&self) -> Option<&InterfaceStats> {
        self.interfaces.iter().find(|i| i.name == self.default_name)
    }
}
