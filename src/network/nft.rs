//! The built-in mode's nftables rules, all in one berth-owned `inet` table:
//! egress masquerade for the pod subnets, and hostPort DNAT through four maps
//! (`hp4`, `hp6`: any local address; `hp4ip`, `hp6ip`: one host address).
//! A pod's port mappings are map elements whose value is the pod's address,
//! so teardown deletes exactly those and nothing else. Rules go through the
//! `nft` binary as one atomic script per change.

use std::net::IpAddr;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::addr::{Ipv4Net, Ipv6Net};
use super::error::NetworkError;
use super::types::PortMapping;

const MAPS: [&str; 4] = ["hp4", "hp4ip", "hp6", "hp6ip"];

/// The berth table of one bridge.
#[derive(Clone, Debug)]
pub struct NftTable {
    pub name: String,
    bridge: String,
}

async fn nft(args: &[&str], script: Option<&str>) -> Result<String, NetworkError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| NetworkError::io("run nft", e))?;
    if let Some(s) = script {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(s.as_bytes())
            .await
            .map_err(|e| NetworkError::io("write nft script", e))?;
        drop(stdin);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::io("run nft", e))?;
    if !out.status.success() {
        return Err(NetworkError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NftTable {
    pub fn new(bridge: &str) -> Self {
        Self {
            name: format!("berth_{}", bridge.replace(['-', '.'], "_")),
            bridge: bridge.to_string(),
        }
    }

    /// The whole table as a script: idempotent (`add` of what exists is a
    /// no-op; the chains are flushed and refilled, the maps kept).
    pub fn ensure_script(&self, v4: &[Ipv4Net], v6: &[Ipv6Net]) -> String {
        let t = format!("inet {}", self.name);
        let br = &self.bridge;
        let mut s = format!("add table {t}\n");
        s += &format!(
            "add map {t} hp4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n"
        );
        s += &format!(
            "add map {t} hp4ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n"
        );
        s += &format!(
            "add map {t} hp6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n"
        );
        s += &format!(
            "add map {t} hp6ip {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n"
        );
        s += &format!(
            "add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
        );
        s += &format!(
            "add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n"
        );
        s += &format!(
            "add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        );
        s += &format!("add chain {t} hostports\n");
        for c in ["prerouting", "output", "postrouting", "hostports"] {
            s += &format!("flush chain {t} {c}\n");
        }
        s += &format!("add rule {t} prerouting fib daddr type local jump hostports\n");
        s += &format!("add rule {t} output fib daddr type local jump hostports\n");
        s += &format!(
            "add rule {t} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hp4ip\n"
        );
        s += &format!(
            "add rule {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hp4\n"
        );
        s += &format!(
            "add rule {t} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hp6ip\n"
        );
        s += &format!(
            "add rule {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hp6\n"
        );
        // 127.0.0.1:hostPort: the bridge has route_localnet=1; the pod must see
        // a source it can answer, the gateway.
        s +=
            &format!("add rule {t} postrouting oifname \"{br}\" ip saddr 127.0.0.0/8 masquerade\n");
        for n in v4 {
            // Hairpin: a pod reaching a hostPort that lands on the bridge again.
            s += &format!(
                "add rule {t} postrouting oifname \"{br}\" ct status dnat ip saddr {n} masquerade\n"
            );
            s += &format!("add rule {t} postrouting ip saddr {n} ip daddr != {n} masquerade\n");
        }
        for n in v6 {
            s += &format!(
                "add rule {t} postrouting oifname \"{br}\" ct status dnat ip6 saddr {n} masquerade\n"
            );
            s += &format!("add rule {t} postrouting ip6 saddr {n} ip6 daddr != {n} masquerade\n");
        }
        s
    }

    pub async fn ensure(&self, v4: &[Ipv4Net], v6: &[Ipv6Net]) -> Result<(), NetworkError> {
        nft(&["-f", "-"], Some(&self.ensure_script(v4, v6)))
            .await
            .map(|_| ())
    }

    /// The map elements of a pod's port mappings (map name, element).
    pub fn elements(&self, ports: &[PortMapping], ips: &[IpAddr]) -> Vec<(&'static str, String)> {
        let v4 = ips.iter().find(|i| i.is_ipv4());
        let v6 = ips.iter().find(|i| i.is_ipv6());
        let mut out = Vec::new();
        for p in ports {
            let proto = p.protocol.as_str();
            let host_ip = p.host_ip.filter(|h| !h.is_unspecified());
            match host_ip {
                None => {
                    if let Some(ip) = v4 {
                        out.push((
                            "hp4",
                            format!("{proto} . {} : {ip} . {}", p.host_port, p.container_port),
                        ));
                    }
                    if let Some(ip) = v6 {
                        out.push((
                            "hp6",
                            format!("{proto} . {} : {ip} . {}", p.host_port, p.container_port),
                        ));
                    }
                }
                Some(h @ IpAddr::V4(_)) => {
                    if let Some(ip) = v4 {
                        out.push((
                            "hp4ip",
                            format!(
                                "{h} . {proto} . {} : {ip} . {}",
                                p.host_port, p.container_port
                            ),
                        ));
                    }
                }
                Some(h @ IpAddr::V6(_)) => {
                    if let Some(ip) = v6 {
                        out.push((
                            "hp6ip",
                            format!(
                                "{h} . {proto} . {} : {ip} . {}",
                                p.host_port, p.container_port
                            ),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Adds a pod's port mappings in one transaction; a host port already
    /// mapped to another pod fails the whole set.
    pub async fn add_ports(
        &self,
        ports: &[PortMapping],
        ips: &[IpAddr],
    ) -> Result<(), NetworkError> {
        let elems = self.elements(ports, ips);
        if elems.is_empty() {
            return Ok(());
        }
        let mut s = String::new();
        for (map, e) in &elems {
            s += &format!("add element inet {} {map} {{ {e} }}\n", self.name);
        }
        nft(&["-f", "-"], Some(&s))
            .await
            .map(|_| ())
            .map_err(|e| match e {
                NetworkError::Nft(m) if m.contains("File exists") => NetworkError::PortInUse(
                    elems
                        .iter()
                        .map(|(_, e)| e.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                e => e,
            })
    }

    /// Deletes every map element that points at one of `ips`. Idempotent;
    /// a missing table is fine.
    pub async fn remove_ports(&self, ips: &[IpAddr]) -> Result<usize, NetworkError> {
        if ips.is_empty() {
            return Ok(0);
        }
        let json = match nft(&["-j", "list", "table", "inet", &self.name], None).await {
            Ok(j) => j,
            Err(NetworkError::Nft(m)) if m.contains("No such file") => return Ok(0),
            Err(e) => return Err(e),
        };
        let wanted: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        let mut s = String::new();
        let mut n = 0;
        for MapElement { map, key, value } in parse_elements(&json)? {
            if wanted.iter().any(|w| value.first() == Some(w)) {
                s += &format!(
                    "delete element inet {} {map} {{ {} }}\n",
                    self.name,
                    key.join(" . ")
                );
                n += 1;
            }
        }
        if n > 0 {
            nft(&["-f", "-"], Some(&s)).await?;
        }
        Ok(n)
    }

    /// Every element of the hostPort maps (for tests and leak checks).
    pub async fn port_elements(&self) -> Result<Vec<MapElement>, NetworkError> {
        match nft(&["-j", "list", "table", "inet", &self.name], None).await {
            Ok(j) => parse_elements(&j),
            Err(NetworkError::Nft(m)) if m.contains("No such file") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes the whole table. Idempotent.
    pub async fn delete(&self) -> Result<(), NetworkError> {
        match nft(&["delete", "table", "inet", &self.name], None).await {
            Ok(_) => Ok(()),
            Err(NetworkError::Nft(m)) if m.contains("No such file") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One element of a hostPort map: `key : value`, each a concatenation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapElement {
    pub map: String,
    pub key: Vec<String>,
    pub value: Vec<String>,
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn concat(v: &Value) -> Vec<String> {
    match v.get("concat").and_then(Value::as_array) {
        Some(items) => items.iter().map(scalar).collect(),
        None => vec![scalar(v)],
    }
}

/// (map, key parts, value parts) of every element of berth's maps in `nft -j` output.
fn parse_elements(json: &str) -> Result<Vec<MapElement>, NetworkError> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| NetworkError::Nft(format!("parse nft -j output: {e}")))?;
    let mut out = Vec::new();
    for item in v
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(map) = item.get("map") else { continue };
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        if !MAPS.contains(&name) {
            continue;
        }
        for e in map
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some([k, val]) = e.as_array().map(|a| a.as_slice()) {
                out.push(MapElement {
                    map: name.to_string(),
                    key: concat(k),
                    value: concat(val),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::types::Protocol;

    #[test]
    fn elements_per_family_and_host_ip() {
        let t = NftTable::new("br-x");
        assert_eq!(t.name, "berth_br_x");
        let ports = vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: None,
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 5353,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 1,
                host_port: 2,
                host_ip: Some("::1".parse().unwrap()),
            },
        ];
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let e = t.elements(&ports, &ips);
        assert_eq!(
            e,
            vec![
                ("hp4", "tcp . 8080 : 10.0.0.2 . 80".to_string()),
                ("hp6", "tcp . 8080 : fd00::2 . 80".to_string()),
                (
                    "hp4ip",
                    "127.0.0.1 . udp . 5353 : 10.0.0.2 . 53".to_string()
                ),
                ("hp6ip", "::1 . tcp . 2 : fd00::2 . 1".to_string()),
            ]
        );
        // A v4-only pod gets no v6 elements.
        assert_eq!(t.elements(&ports, &ips[..1]).len(), 2);
    }

    #[test]
    fn parses_nft_json() {
        let j = r#"{"nftables": [{"metainfo": {}}, {"map": {"family": "inet", "name": "hp4", "table": "t",
            "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.99.0.2", 80]}]]}},
            {"map": {"name": "other", "elem": [[1, 2]]}}]}"#;
        let e = parse_elements(j).unwrap();
        assert_eq!(
            e,
            vec![MapElement {
                map: "hp4".into(),
                key: vec!["tcp".into(), "8080".into()],
                value: vec!["10.99.0.2".into(), "80".into()]
            }]
        );
    }
}
