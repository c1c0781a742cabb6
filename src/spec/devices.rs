//! Devices: CRI devices become device nodes plus device-cgroup allow rules;
//! a privileged container gets every host device and may use any device.

use std::path::PathBuf;

use k8s_cri::v1::Device as CriDevice;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::SpecError;
use super::input::{DeviceKind, HostDevice};
use super::mounts::clean_path;

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    r
}

/// The device-cgroup rules every unprivileged container starts with: deny
/// everything, then allow mknod of any node and use of the standard nodes
/// (null, zero, full, random, urandom, tty, ptmx and the container's ptys),
/// the list runc applies.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    vec![
        rule(false, A, None, None, "rwm"),
        rule(true, C, None, None, "m"),
        rule(true, B, None, None, "m"),
        rule(true, C, Some(1), Some(3), "rwm"), // /dev/null
        rule(true, C, Some(1), Some(5), "rwm"), // /dev/zero
        rule(true, C, Some(1), Some(7), "rwm"), // /dev/full
        rule(true, C, Some(1), Some(8), "rwm"), // /dev/random
        rule(true, C, Some(1), Some(9), "rwm"), // /dev/urandom
        rule(true, C, Some(5), Some(0), "rwm"), // /dev/tty
        rule(true, C, Some(5), Some(2), "rwm"), // /dev/ptmx
        rule(true, C, Some(136), None, "rwm"),  // /dev/pts/*
    ]
}

fn oci_type(kind: DeviceKind) -> LinuxDeviceType {
    match kind {
        DeviceKind::Char => LinuxDeviceType::C,
        DeviceKind::Block => LinuxDeviceType::B,
    }
}

fn node(host: &HostDevice, container_path: String, owner: Option<(u32, u32)>) -> LinuxDevice {
    let (uid, gid) = owner.unwrap_or((host.uid, host.gid));
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(container_path))
        .set_typ(oci_type(host.kind))
        .set_major(host.major)
        .set_minor(host.minor)
        .set_file_mode(Some(host.file_mode & 0o7777))
        .set_uid(Some(uid))
        .set_gid(Some(gid));
    d
}

/// Device nodes and device-cgroup rules of a container.
///
/// `owner` overrides the nodes' uid/gid (containerd's
/// `device_ownership_from_security_context`); a zero id keeps the host's.
pub(crate) fn container_devices(
    cri_devices: &[CriDevice],
    host_devices: &[HostDevice],
    privileged: bool,
    owner: Option<(u32, u32)>,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules;
    if privileged {
        for d in host_devices {
            nodes.push(node(d, d.path.to_string_lossy().into_owned(), None));
        }
        rules = vec![rule(true, LinuxDeviceType::A, None, None, "rwm")];
    } else {
        rules = default_device_rules();
    }
    for dev in cri_devices {
        let err = |reason: String| SpecError::Device {
            host_path: dev.host_path.clone(),
            reason,
        };
        if !dev.host_path.starts_with('/') {
            return Err(err("the host path must be absolute".to_string()));
        }
        if !dev.container_path.starts_with('/') {
            return Err(err(format!(
                "the container path {:?} must be absolute",
                dev.container_path
            )));
        }
        let access = if dev.permissions.is_empty() {
            "rwm".to_string()
        } else {
            dev.permissions.clone()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(err(format!(
                "permissions {:?} may only hold the letters r, w and m",
                dev.permissions
            )));
        }
        let host_path = clean_path(&dev.host_path);
        let container_path = clean_path(&dev.container_path);
        let matched: Vec<(&HostDevice, String)> = match host_devices
            .iter()
            .find(|d| d.path.to_string_lossy() == host_path)
        {
            Some(d) => vec![(d, container_path.clone())],
            // A directory: every device below it, at the same place below
            // the container path (as containerd's WithDevices does).
            None => host_devices
                .iter()
                .filter_map(|d| {
                    let p = d.path.to_string_lossy();
                    p.strip_prefix(&format!("{host_path}/"))
                        .map(|rest| (d, format!("{container_path}/{rest}")))
                })
                .collect(),
        };
        if matched.is_empty() {
            return Err(err(
                "no such device on the host (not a device node, nor a directory holding any)"
                    .to_string(),
            ));
        }
        for (d, path) in matched {
            let owner = owner.map(|(uid, gid)| {
                (
                    if uid != 0 { uid } else { d.uid },
                    if gid != 0 { gid } else { d.gid },
                )
            });
            nodes.retain(|n: &LinuxDevice| n.path().to_string_lossy() != path);
            nodes.push(node(d, path, owner));
            if !privileged {
                rules.push(rule(
                    true,
                    oci_type(d.kind),
                    Some(d.major),
                    Some(d.minor),
                    &access,
                ));
            }
        }
    }
    Ok((nodes, rules))
}
