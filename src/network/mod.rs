//! Pod network namespaces, the built-in bridge + IPAM, the CNI driver, port mappings.
//!
//! [`PodNetwork`] sets up and tears down one pod's network given its pinned
//! network namespace ([`create_netns`]) and metadata, in the built-in mode
//! (bridge, veth, file-per-lease IPAM, nftables) or through CNI plugins.

pub mod addr;
pub mod cni;
pub mod config;
pub mod error;
pub mod ipam;
pub mod links;
pub mod netns;
pub mod nft;
mod pod_network;
pub mod state;
pub mod types;

pub use config::{NetworkConfig, NetworkMode};
pub use error::NetworkError;
pub use netns::{create_netns, is_netns, remove_netns, run_in_netns};
pub use pod_network::PodNetwork;
pub use types::{
    Bandwidth, DnsConfig, InterfaceStats, NetworkReadiness, PodInterfaces, PodNetworkRequest,
    PodNetworkStatus, PortMapping, Protocol,
};
