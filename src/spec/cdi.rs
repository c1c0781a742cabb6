//! CDI container edits (resolved by `crate::cdi` from the host's CDI specs)
//! applied to a container's OCI spec, as the CDI library's
//! `ContainerEdits.Apply`: environment variables (a later value of a name
//! wins), device nodes with their device-cgroup allow rules, mounts, and
//! additional groups.

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, Mount, Spec,
};

use super::SpecError;

/// A device node a CDI device adds (type, major and minor known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdiDeviceNode {
    /// Path in the container.
    pub path: String,
    /// "c", "b", "u" (unbuffered character) or "p" (FIFO).
    pub typ: String,
    pub major: i64,
    pub minor: i64,
    pub file_mode: Option<u32>,
    /// Device-cgroup access, a subset of "rwm".
    pub permissions: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl CdiDeviceNode {
    /// The character device both CDI test suites use (`/dev/vgpu0`, 195:0).
    #[cfg(test)]
    pub(crate) fn test_vgpu0() -> Self {
        CdiDeviceNode {
            path: "/dev/vgpu0".into(),
            typ: "c".into(),
            major: 195,
            minor: 0,
            file_mode: Some(0o666),
            permissions: "rw".into(),
            uid: None,
            gid: None,
        }
    }
}

/// A mount a CDI device adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    pub typ: String,
    pub options: Vec<String>,
}

/// Everything the container's CDI devices add, in the order of the devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdiEdits {
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub device_nodes: Vec<CdiDeviceNode>,
    pub mounts: Vec<CdiMount>,
    pub additional_gids: Vec<u32>,
}

fn device_type(t: &str) -> Result<LinuxDeviceType, SpecError> {
    Ok(match t {
        "c" => LinuxDeviceType::C,
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        other => {
            return Err(SpecError::field(
                "CDI_devices",
                format!("device type {other:?} is not c, b, u or p"),
            ));
        }
    })
}

/// Applies `edits` to `spec`.
pub fn apply_cdi_edits(spec: &mut Spec, edits: &CdiEdits) -> Result<(), SpecError> {
    if edits == &CdiEdits::default() {
        return Ok(());
    }
    if let Some(process) = spec.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        for e in &edits.env {
            let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
            if name.is_empty() {
                return Err(SpecError::field(
                    "CDI_devices",
                    format!("environment entry {e:?} has no name"),
                ));
            }
            env.retain(|x| x.split_once('=').map_or(x.as_str(), |(n, _)| n) != name);
            env.push(e.clone());
        }
        process.set_env(Some(env));
        if !edits.additional_gids.is_empty() {
            let mut user = process.user().clone();
            let mut gids = user.additional_gids().clone().unwrap_or_default();
            gids.extend(edits.additional_gids.iter().copied().filter(|g| *g != 0));
            gids.sort_unstable();
            gids.dedup();
            user.set_additional_gids(Some(gids));
            process.set_user(user);
        }
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &edits.mounts {
        if !m.container_path.starts_with('/') {
            return Err(SpecError::field(
                "CDI_devices",
                format!("mount destination {:?} is not absolute", m.container_path),
            ));
        }
        mounts.retain(|x| x.destination().to_string_lossy() != m.container_path);
        let mut out = Mount::default();
        out.set_destination(m.container_path.clone().into())
            .set_source(Some(m.host_path.clone().into()))
            .set_typ(Some(m.typ.clone()))
            .set_options(if m.options.is_empty() {
                None
            } else {
                Some(m.options.clone())
            });
        mounts.push(out);
    }
    spec.set_mounts(Some(mounts));

    if edits.device_nodes.is_empty() {
        return Ok(());
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources: LinuxResources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for n in &edits.device_nodes {
        if !n.path.starts_with('/') {
            return Err(SpecError::field(
                "CDI_devices",
                format!("device path {:?} is not absolute", n.path),
            ));
        }
        let typ = device_type(&n.typ)?;
        let mut d = LinuxDevice::default();
        d.set_path(n.path.clone().into())
            .set_typ(typ)
            .set_major(n.major)
            .set_minor(n.minor)
            .set_file_mode(n.file_mode)
            .set_uid(n.uid)
            .set_gid(n.gid);
        devices.retain(|x| x.path().to_string_lossy() != n.path);
        devices.push(d);
        if typ != LinuxDeviceType::P {
            let mut r = LinuxDeviceCgroup::default();
            r.set_allow(true)
                .set_typ(Some(if typ == LinuxDeviceType::U {
                    LinuxDeviceType::C
                } else {
                    typ
                }))
                .set_major(Some(n.major))
                .set_minor(Some(n.minor))
                .set_access(Some(n.permissions.clone()));
            rules.push(r);
        }
    }
    resources.set_devices(Some(rules));
    linux
        .set_devices(Some(devices))
        .set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Ok(())
}
