//! Bounds on CRI values that Kubernetes itself could never send: refused
//! with InvalidArgument before anything is made, rather than stored (a
//! 1 MiB pod name would be written to the metadata database, the logs and
//! every ListPodSandbox answer) or silently truncated (a port of 65536 read
//! as 0).
//!
//! The limits are Kubernetes' own validation (apimachinery): an object name
//! is a DNS subdomain of at most 253 characters, a namespace and a container
//! name DNS labels of at most 63, and a pod's annotations at most 256 KiB in
//! total (keys plus values). Labels get the same total bound.

use std::collections::{HashMap, HashSet};

use k8s_cri::v1 as cri;

use super::{PodError, Result};

/// A Kubernetes object name (DNS subdomain).
pub const MAX_NAME: usize = 253;
/// A namespace or container name (DNS label).
pub const MAX_LABEL_NAME: usize = 63;
/// Kubernetes' `TotalAnnotationSizeLimitB`.
pub const MAX_ANNOTATIONS: usize = 256 << 10;

fn invalid(message: String) -> PodError {
    PodError::InvalidArgument(message)
}

fn check_len(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(format!(
            "{what} is {} bytes long; the limit is {max} (as Kubernetes validates it)",
            value.len()
        )));
    }
    Ok(())
}

fn check_map(what: &str, map: &HashMap<String, String>) -> Result<()> {
    let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS {
        return Err(invalid(format!(
            "{what} are {total} bytes in total; the limit is {MAX_ANNOTATIONS} (Kubernetes' total annotation size)"
        )));
    }
    Ok(())
}

/// The pod's metadata, labels, annotations and port mappings.
pub fn check_pod_config(config: &cri::PodSandboxConfig) -> Result<()> {
    if let Some(m) = &config.metadata {
        check_len("pod name", &m.name, MAX_NAME)?;
        check_len("pod namespace", &m.namespace, MAX_LABEL_NAME)?;
        check_len("pod uid", &m.uid, MAX_NAME)?;
    }
    check_len("pod hostname", &config.hostname, MAX_LABEL_NAME)?;
    check_map("pod labels", &config.labels)?;
    check_map("pod annotations", &config.annotations)?;
    check_port_mappings(&config.port_mappings)
}

/// The container's metadata, labels and annotations.
pub fn check_container_config(config: &cri::ContainerConfig) -> Result<()> {
    if let Some(m) = &config.metadata {
        check_len("container name", &m.name, MAX_LABEL_NAME)?;
    }
    check_map("container labels", &config.labels)?;
    check_map("container annotations", &config.annotations)
}

/// Ports in range, known protocols, and no host port mapped twice.
pub fn check_port_mappings(ports: &[cri::PortMapping]) -> Result<()> {
    let mut seen = HashSet::new();
    for p in ports {
        let protocol = cri::Protocol::try_from(p.protocol).map_err(|_| {
            invalid(format!(
                "port mapping {}: unknown protocol {} (TCP, UDP or SCTP)",
                p.container_port, p.protocol
            ))
        })?;
        if !(1..=65535).contains(&p.container_port) {
            return Err(invalid(format!(
                "container port {} is out of range (1-65535)",
                p.container_port
            )));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(invalid(format!(
                "host port {} of container port {} is out of range (0-65535, 0 for none)",
                p.host_port, p.container_port
            )));
        }
        if p.host_port > 0 && !seen.insert((p.host_ip.clone(), p.host_port, protocol)) {
            return Err(invalid(format!(
                "host port {}/{} (host IP {:?}) is mapped twice in this pod",
                p.host_port,
                protocol.as_str_name(),
                p.host_ip
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(container: i32, host: i32, protocol: i32) -> cri::PortMapping {
        cri::PortMapping {
            protocol,
            container_port: container,
            host_port: host,
            host_ip: String::new(),
        }
    }

    #[test]
    fn ports_out_of_range_unknown_or_twice_are_refused() {
        assert!(check_port_mappings(&[port(80, 8080, 0), port(53, 53, 1), port(80, 0, 0)]).is_ok());
        for bad in [
            vec![port(80, -1, 0)],
            vec![port(80, 65536, 0)],
            vec![port(0, 80, 0)],
            vec![port(65536, 80, 0)],
            vec![port(80, 80, 7)],
            vec![port(80, 8080, 0), port(81, 8080, 0)],
        ] {
            assert!(
                matches!(check_port_mappings(&bad), Err(PodError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        // The same host port for TCP and UDP is two mappings.
        assert!(check_port_mappings(&[port(53, 53, 0), port(53, 53, 1)]).is_ok());
    }

    #[test]
    fn names_and_annotations_beyond_kubernetes_limits_are_refused() {
        let mut c = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "a".repeat(MAX_NAME),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.annotations
            .insert("k".into(), "v".repeat(MAX_ANNOTATIONS - 1));
        assert!(check_pod_config(&c).is_ok());
        c.annotations.insert("k2".into(), "v".into());
        let e = check_pod_config(&c).unwrap_err().to_string();
        assert!(e.contains("262144"), "{e}");
        c.annotations.clear();
        c.metadata.as_mut().unwrap().name.push('a');
        let e = check_pod_config(&c).unwrap_err().to_string();
        assert!(e.contains("253"), "{e}");
    }
}
