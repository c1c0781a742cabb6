//! Netlink work of the built-in mode: the bridge, a veth pair per pod with
//! its peer created directly in the pod's namespace, and the pod side's
//! addresses and routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use sha2::{Digest, Sha256};

use super::error::{NetworkError, netlink_errno};
use super::types::InterfaceStats;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

/// The host side name of a pod's veth: `bv` + 12 hex digits of the pod id's hash.
pub fn host_veth_name(pod_id: &str) -> String {
    let h = Sha256::digest(pod_id.as_bytes());
    format!("bv{}", &hex::encode(h)[..12])
}

/// A stable, locally administered MAC for the bridge: a bridge without a set
/// address takes its ports' lowest MAC, which changes as pods come and go and
/// leaves stale gateway entries in the pods' neighbour tables.
fn bridge_mac(name: &str) -> Vec<u8> {
    let h = Sha256::digest(format!("berth-bridge:{name}").as_bytes());
    let mut mac = h[..6].to_vec();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The index of link `name`, or None.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("get link {name}"), e)),
    }
}

async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("get link {name}"), e)),
    }
}

async fn add_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetworkError> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        // No duplicate address detection: the IPAM guarantees uniqueness, and
        // a tentative address would be unusable for a second or more.
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(NetworkError::netlink(
            format!("add address {ip}/{prefix}"),
            e,
        )),
    }
}

/// Creates the bridge if missing, gives it the gateway addresses, brings it up.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateways: &[(IpAddr, u8)],
) -> Result<u32, NetworkError> {
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            let msg = LinkBridge::new(name).address(bridge_mac(name)).up().build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if netlink_errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(NetworkError::netlink(format!("create bridge {name}"), e)),
            }
            link_index(h, name).await?.ok_or_else(|| {
                NetworkError::Config(format!("bridge {name} vanished after creation"))
            })?
        }
    };
    for &(ip, prefix) in gateways {
        add_addr(h, index, ip, prefix).await?;
    }
    set_up(h, index, name).await?;
    Ok(index)
}

/// Sets the link `index` (named `name` in errors) up.
async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("set {name} up"), e))
}

/// Sets the link `name`, which must exist in `h`'s namespace, up; its index.
async fn set_up_existing(h: &Handle, name: &str) -> Result<u32, NetworkError> {
    let index = link_index(h, name)
        .await?
        .ok_or_else(|| NetworkError::InvalidRequest(format!("pod netns has no {name}")))?;
    set_up(h, index, name).await?;
    Ok(index)
}

/// Creates the pod's veth pair: `host` attached to the bridge and up, its
/// peer `eth0` created directly inside the namespace `netns`.
pub async fn add_veth(
    h: &Handle,
    bridge: u32,
    host: &str,
    netns: &impl AsRawFd,
) -> Result<(), NetworkError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::default()
        .name("eth0".to_string())
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge)
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("create veth {host}"), e))
}

/// Deletes a link by name; a missing link is fine. Returns whether it existed.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, NetworkError> {
    let Some(index) = link_index(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(NetworkError::netlink(format!("delete link {name}"), e)),
    }
}

/// Inside the pod (a handle opened in its namespace): lo up, eth0 up with
/// its addresses, default routes through the gateways.
pub async fn configure_pod(
    h: &Handle,
    addrs: &[(IpAddr, u8)],
    gw4: Option<Ipv4Addr>,
    gw6: Option<Ipv6Addr>,
) -> Result<(), NetworkError> {
    set_up_existing(h, "lo").await?;
    let eth0 = set_up_existing(h, "eth0").await?;
    for &(ip, prefix) in addrs {
        add_addr(h, eth0, ip, prefix).await?;
    }
    if let Some(gw) = gw4 {
        let r = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(eth0)
            .build();
        add_default_route(h, r, gw.into()).await?;
    }
    if let Some(gw) = gw6 {
        let r = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(eth0)
            .build();
        add_default_route(h, r, gw.into()).await?;
    }
    Ok(())
}

/// Inside the pod: lo up (when no loopback CNI plugin is installed).
pub async fn configure_pod_lo(h: &Handle) -> Result<(), NetworkError> {
    set_up_existing(h, "lo").await.map(drop)
}

/// Counters of `name` (a handle opened in the pod's namespace).
pub async fn link_stats(h: &Handle, name: &str) -> Result<Option<InterfaceStats>, NetworkError> {
    let Some(link) = get_link(h, name).await? else {
        return Ok(None);
    };
    Ok(Some(counters(link)))
}

/// The counters of a link message (its name from IFLA_IFNAME).
fn counters(link: LinkMessage) -> InterfaceStats {
    let mut st = InterfaceStats::default();
    for a in link.attributes {
        match a {
            LinkAttribute::IfName(n) => st.name = n,
            LinkAttribute::Stats64(s) => {
                st.rx_bytes = s.rx_bytes;
                st.rx_packets = s.rx_packets;
                st.rx_errors = s.rx_errors;
                st.rx_dropped = s.rx_dropped;
                st.tx_bytes = s.tx_bytes;
                st.tx_packets = s.tx_packets;
                st.tx_errors = s.tx_errors;
                st.tx_dropped = s.tx_dropped;
            }
            _ => {}
        }
    }
    st
}

/// Counters of every link but `lo` (a handle opened in the pod's
/// namespace), as CRI-O's stats server lists a pod's links; sorted by name.
pub async fn all_link_stats(h: &Handle) -> Result<Vec<InterfaceStats>, NetworkError> {
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink("list links".to_string(), e))?
    {
        let st = counters(link);
        if st.name != "lo" && !st.name.is_empty() {
            out.push(st);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes a sysctl given as path parts under /proc/sys (of the calling
/// thread's namespace), e.g. `["net", "ipv4", "ip_forward"]`.
pub fn sysctl(parts: &[&str], value: &str) -> Result<(), NetworkError> {
    let path = format!("/proc/sys/{}", parts.join("/"));
    if std::fs::read_to_string(&path)
        .map(|v| v.trim() == value)
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| NetworkError::io(format!("sysctl {path}={value}"), e))
}

/// Adds a default route (built by the caller for its address family); one
/// that exists already is fine.
async fn add_default_route(
    h: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    gw: IpAddr,
) -> Result<(), NetworkError> {
    match h.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(NetworkError::netlink(
            format!("add default route via {gw}"),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_macs_are_local_unicast() {
        let n = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 14);
        assert_ne!(n, host_veth_name("other"));
        let m = bridge_mac("berth0");
        assert_eq!(m[0] & 0x03, 0x02);
    }
}
