//! User-namespaced pods (CRI `userns_options`, NamespaceMode POD): the pod's
//! user namespace is made with kubelet's uid/gid mappings, and the pod's
//! network, IPC and UTS namespaces are created *inside* it (so that they are
//! owned by it and its containers may mount sysfs, set the hostname, ...).
//! All are pinned under the pod's directory like a plain pod's namespaces.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use super::namespaces::pin_path;
use super::{PodError, Result};
use crate::runtime::idmap;

/// The most lines a uid_map or gid_map takes (the kernel's limit).
const MAX_MAP_LINES: usize = 340;

/// The pod's user namespace mappings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdMappings {
    pub uid: Vec<LinuxIdMapping>,
    pub gid: Vec<LinuxIdMapping>,
}

impl PodIdMappings {
    /// The host uid and gid of the pod's root (container id 0).
    pub fn root(&self) -> (u32, u32) {
        (host_of_root(&self.uid), host_of_root(&self.gid))
    }
}

fn host_of_root(maps: &[LinuxIdMapping]) -> u32 {
    maps.iter()
        .find(|m| m.container_id() == 0)
        .map_or(0, |m| m.host_id())
}

/// The pod's user namespace mappings when it asks for its own user
/// namespace (mode POD); None for the host's (NODE or unset). Bad mappings
/// are an InvalidArgument that names the mapping.
pub fn pod_id_mappings(ns: &cri::NamespaceOption) -> Result<Option<PodIdMappings>> {
    let Some(u) = &ns.userns_options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => return Ok(None),
        Ok(cri::NamespaceMode::Pod) => {}
        Ok(other) => {
            return Err(PodError::InvalidArgument(format!(
                "user namespace mode {} is not supported for a pod (use POD or NODE)",
                other.as_str_name()
            )));
        }
        Err(_) => {
            return Err(PodError::InvalidArgument(format!(
                "unknown user namespace mode {}",
                u.mode
            )));
        }
    }
    Ok(Some(PodIdMappings {
        uid: validate(&u.uids, "uid")?,
        gid: validate(&u.gids, "gid")?,
    }))
}

fn validate(maps: &[cri::IdMapping], what: &str) -> Result<Vec<LinuxIdMapping>> {
    let bad =
        |msg: String| PodError::InvalidArgument(format!("user namespace {what} mappings: {msg}"));
    if maps.is_empty() {
        return Err(bad("none given (mode POD needs at least one)".into()));
    }
    if maps.len() > MAX_MAP_LINES {
        return Err(bad(format!(
            "{} given, the kernel takes at most {MAX_MAP_LINES}",
            maps.len()
        )));
    }
    let mut ranges: Vec<(u64, u64, u64)> = Vec::new();
    for m in maps {
        let name = format!("{}:{}:{}", m.container_id, m.host_id, m.length);
        if m.length == 0 {
            return Err(bad(format!("{name} has length 0")));
        }
        let (c, h, l) = (m.container_id as u64, m.host_id as u64, m.length as u64);
        if c + l - 1 > u32::MAX as u64 - 1 || h + l - 1 > u32::MAX as u64 - 1 {
            return Err(bad(format!("{name} runs past the largest id")));
        }
        if h == 0 {
            return Err(bad(format!(
                "{name} maps the host's root (host id 0) into the pod; a user-namespaced pod must run as unprivileged host ids"
            )));
        }
        for (c2, h2, l2) in &ranges {
            if c < c2 + l2 && *c2 < c + l {
                return Err(bad(format!(
                    "{name} overlaps another mapping's container ids"
                )));
            }
            if h < h2 + l2 && *h2 < h + l {
                return Err(bad(format!("{name} overlaps another mapping's host ids")));
            }
        }
        ranges.push((c, h, l));
    }
    if !ranges.iter().any(|(c, _, _)| *c == 0) {
        return Err(bad("container id 0 (the pod's root) is not mapped".into()));
    }
    Ok(maps
        .iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build()
                .unwrap_or_default()
        })
        .collect())
}

/// Which namespaces a user-namespaced pod creates inside its user namespace,
/// and where each is pinned.
pub struct UsernsPins<'a> {
    pub userns: &'a Path,
    pub netns: Option<&'a Path>,
    pub ipcns: Option<&'a Path>,
    pub utsns: Option<&'a Path>,
}

/// Creates the pod's user namespace with `maps` and, inside it, the
/// namespaces `pins` names; pins all of them. The paths must be recorded by
/// the caller before (removing a pin that was never made is a no-op).
pub fn create_pod_userns(
    maps: &PodIdMappings,
    pins: &UsernsPins<'_>,
    hostname: &str,
) -> Result<()> {
    let mut flags = 0;
    if pins.netns.is_some() {
        flags |= libc::CLONE_NEWNET;
    }
    if pins.ipcns.is_some() {
        flags |= libc::CLONE_NEWIPC;
    }
    let hostname = if pins.utsns.is_some() {
        flags |= libc::CLONE_NEWUTS;
        hostname
    } else {
        ""
    };
    let child = idmap::userns_child(flags, hostname).map_err(PodError::Namespace)?;
    idmap::write_maps(
        child.pid,
        &idmap::map_text(&maps.uid),
        &idmap::map_text(&maps.gid),
    )
    .map_err(|e| PodError::InvalidArgument(format!("user namespace mappings refused: {e}")))?;
    child.proceed().map_err(|e| {
        PodError::Namespace(format!("namespaces inside the pod's user namespace: {e}"))
    })?;
    let proc = PathBuf::from(format!("/proc/{}/ns", child.pid));
    for (name, pin) in [
        ("user", Some(pins.userns)),
        ("net", pins.netns),
        ("ipc", pins.ipcns),
        ("uts", pins.utsns),
    ] {
        if let Some(pin) = pin {
            if let Some(dir) = pin.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| PodError::io(format!("create {}", dir.display()), e))?;
            }
            pin_path(&proc.join(name).to_string_lossy(), pin)?;
        }
    }
    drop(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(
        mode: cri::NamespaceMode,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
    ) -> cri::NamespaceOption {
        let m = |v: &[(u32, u32, u32)]| {
            v.iter()
                .map(|&(container_id, host_id, length)| cri::IdMapping {
                    container_id,
                    host_id,
                    length,
                })
                .collect()
        };
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: mode as i32,
                uids: m(uids),
                gids: m(gids),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn kubelet_mappings_are_taken() {
        let ok = [(0, 65536, 65536)];
        let m = pod_id_mappings(&opts(cri::NamespaceMode::Pod, &ok, &ok))
            .unwrap()
            .unwrap();
        assert_eq!(m.root(), (65536, 65536));
        assert!(
            pod_id_mappings(&opts(cri::NamespaceMode::Node, &[], &[]))
                .unwrap()
                .is_none()
        );
        assert!(
            pod_id_mappings(&cri::NamespaceOption::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_mappings_are_invalid_arguments() {
        let ok = [(0, 65536, 65536)];
        for (uids, gids, needle) in [
            (&[][..], &ok[..], "none given"),
            (&[(0, 65536, 0)][..], &ok[..], "length 0"),
            (&[(0, 0, 65536)][..], &ok[..], "host's root"),
            (
                &[(0, 65536, 100), (50, 70000, 100)][..],
                &ok[..],
                "container ids",
            ),
            (
                &[(0, 65536, 100), (100, 65600, 100)][..],
                &ok[..],
                "host ids",
            ),
            (&[(1, 65536, 100)][..], &ok[..], "id 0"),
            (
                &ok[..],
                &[(0, u32::MAX - 5, 100)][..],
                "past the largest id",
            ),
        ] {
            let e = pod_id_mappings(&opts(cri::NamespaceMode::Pod, uids, gids)).unwrap_err();
            assert!(matches!(e, PodError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
        let e = pod_id_mappings(&opts(cri::NamespaceMode::Container, &ok, &ok)).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
