//! Contents of the files a pod gets: /etc/resolv.conf, /etc/hosts and
//! /etc/hostname (the caller writes them and passes their paths as
//! [`super::PodFiles`]).

use std::net::IpAddr;

use k8s_cri::v1::DnsConfig;

use super::SpecError;

/// The pod's resolv.conf: built from the CRI DNS config when it sets anything
/// (`search`, `nameserver` and `options` lines, as containerd writes them),
/// else the host's resolv.conf unchanged.
pub fn pod_resolv_conf(
    dns: Option<&DnsConfig>,
    host_resolv_conf: &str,
) -> Result<String, SpecError> {
    let Some(dns) =
        dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return Ok(host_resolv_conf.to_string());
    };
    for s in &dns.servers {
        if s.trim().parse::<IpAddr>().is_err() {
            return Err(SpecError::Dns(format!(
                "nameserver {s:?} is not an IP address"
            )));
        }
    }
    for (what, list) in [("search domain", &dns.searches), ("option", &dns.options)] {
        if let Some(bad) = list
            .iter()
            .find(|v| v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SpecError::Dns(format!(
                "{what} {bad:?} is empty or holds whitespace"
            )));
        }
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {}\n", s.trim()));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// Checks a pod hostname: 1 to 64 characters of letters, digits, `-` and `.`,
/// not starting or ending with `-` or `.` (what sethostname and resolvers take).
pub fn validate_hostname(hostname: &str) -> Result<(), SpecError> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !hostname.starts_with(['-', '.'])
        && !hostname.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(SpecError::field(
            "hostname",
            format!(
                "{hostname:?} is not a hostname (1-64 letters, digits, '-' or '.', not starting or ending with '-' or '.')"
            ),
        ))
    }
}

/// The pod's /etc/hostname.
pub fn pod_hostname_file(hostname: &str) -> Result<String, SpecError> {
    validate_hostname(hostname)?;
    Ok(format!("{hostname}\n"))
}

/// The pod's /etc/hosts: the localhost lines containerd writes, then one line
/// per pod IP naming the pod's hostname (as kubelet's managed hosts file does).
pub fn pod_hosts_file(hostname: &str, pod_ips: &[IpAddr]) -> Result<String, SpecError> {
    validate_hostname(hostname)?;
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    Ok(out)
}
