//! Namespaces: the container joins the pod's network, IPC and UTS namespaces
//! by path (none when the pod uses the host's), gets a new mount namespace,
//! and a PID namespace per its NamespaceMode; a user-namespaced pod's
//! containers join the pod's user namespace with its mappings.

use std::path::Path;

use k8s_cri::v1::{IdMapping, NamespaceMode, NamespaceOption, UserNamespace};
use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType,
};

use super::SpecError;
use super::input::{PodNamespace, PodNamespaces};

/// The container's namespaces and, when it is user-namespaced, its uid and
/// gid mappings.
#[derive(Debug, Default)]
pub(crate) struct NamespacePlan {
    pub namespaces: Vec<LinuxNamespace>,
    pub uid_mappings: Vec<LinuxIdMapping>,
    pub gid_mappings: Vec<LinuxIdMapping>,
    /// The CRI mappings, for the pod's file mounts.
    pub cri_uid_mappings: Vec<IdMapping>,
    pub cri_gid_mappings: Vec<IdMapping>,
}

impl NamespacePlan {
    pub fn user_namespaced(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
    }
}

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ).set_path(path.map(Path::to_path_buf));
    n
}

fn mode(value: i32, field: &'static str) -> Result<NamespaceMode, SpecError> {
    NamespaceMode::try_from(value).map_err(|_| {
        SpecError::field(
            field,
            format!("unknown namespace mode {value} (expected POD, CONTAINER, NODE or TARGET)"),
        )
    })
}

fn mappings(maps: &[IdMapping], what: &str) -> Result<Vec<LinuxIdMapping>, SpecError> {
    if maps.is_empty() {
        return Err(SpecError::Namespace(format!(
            "the user namespace has no {what} mappings"
        )));
    }
    maps.iter()
        .map(|m| {
            if m.length == 0 {
                return Err(SpecError::Namespace(format!(
                    "a {what} mapping has length 0"
                )));
            }
            if m.container_id.checked_add(m.length - 1).is_none()
                || m.host_id.checked_add(m.length - 1).is_none()
            {
                return Err(SpecError::Namespace(format!(
                    "the {what} mapping {}:{}:{} overflows the id range",
                    m.container_id, m.host_id, m.length
                )));
            }
            Ok(LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build()
                .unwrap_or_default())
        })
        .collect()
}

fn userns_mode(u: Option<&UserNamespace>) -> Result<NamespaceMode, SpecError> {
    match u {
        None => Ok(NamespaceMode::Node),
        Some(u) => mode(u.mode, "userns_options.mode"),
    }
}

/// Plans the container's namespaces.
pub(crate) fn container_namespaces(
    container: Option<&NamespaceOption>,
    sandbox: Option<&NamespaceOption>,
    pod: &PodNamespaces,
    target_pid_namespace: Option<&Path>,
    privileged: bool,
    cgroup_v2: bool,
) -> Result<NamespacePlan, SpecError> {
    let mut plan = NamespacePlan::default();
    plan.namespaces.push(ns(LinuxNamespaceType::Mount, None));
    for (typ, pod_ns) in [
        (LinuxNamespaceType::Network, &pod.network),
        (LinuxNamespaceType::Ipc, &pod.ipc),
        (LinuxNamespaceType::Uts, &pod.uts),
    ] {
        if let PodNamespace::Path(p) = pod_ns {
            plan.namespaces.push(ns(typ, Some(p)));
        }
    }

    let pid_mode = mode(
        container.map_or(0, |o| o.pid),
        "linux.security_context.namespace_options.pid",
    )?;
    match pid_mode {
        NamespaceMode::Pod => match &pod.pid {
            Some(p) => plan.namespaces.push(ns(LinuxNamespaceType::Pid, Some(p))),
            None => {
                return Err(SpecError::Namespace(
                    "the container asks for the pod's PID namespace (POD) but the pod has none"
                        .to_string(),
                ));
            }
        },
        NamespaceMode::Container => plan.namespaces.push(ns(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let target = container.map_or("", |o| o.target_id.as_str());
            match target_pid_namespace {
                Some(p) => plan.namespaces.push(ns(LinuxNamespaceType::Pid, Some(p))),
                None => {
                    return Err(SpecError::Namespace(format!(
                        "PID namespace mode TARGET names container {target:?}, whose PID namespace is unknown (is it running in this pod?)"
                    )));
                }
            }
        }
    }

    let c_userns = container.and_then(|o| o.userns_options.as_ref());
    let s_userns = sandbox.and_then(|o| o.userns_options.as_ref());
    let c_mode = userns_mode(c_userns)?;
    let s_mode = userns_mode(s_userns)?;
    let same = c_mode == s_mode
        && (c_mode != NamespaceMode::Pod
            || c_userns.map(|u| (&u.uids, &u.gids)) == s_userns.map(|u| (&u.uids, &u.gids)));
    if !same {
        return Err(SpecError::Namespace(format!(
            "the container's user namespace options ({c_mode:?}) differ from the pod's ({s_mode:?})"
        )));
    }
    match c_mode {
        NamespaceMode::Node => {
            if pod.user.is_some() {
                return Err(SpecError::Namespace(
                    "the pod has a user namespace but the container asks for the host's"
                        .to_string(),
                ));
            }
        }
        NamespaceMode::Pod => {
            let Some(path) = &pod.user else {
                return Err(SpecError::Namespace(
                    "the container asks for the pod's user namespace but the pod has none"
                        .to_string(),
                ));
            };
            if privileged {
                return Err(SpecError::Namespace(
                    "a privileged container cannot run in a user namespace".to_string(),
                ));
            }
            let Some(u) = c_userns else {
                return Err(SpecError::Namespace(
                    "user namespace mode POD without user namespace options".to_string(),
                ));
            };
            plan.uid_mappings = mappings(&u.uids, "uid")?;
            plan.gid_mappings = mappings(&u.gids, "gid")?;
            plan.cri_uid_mappings = u.uids.clone();
            plan.cri_gid_mappings = u.gids.clone();
            plan.namespaces
                .push(ns(LinuxNamespaceType::User, Some(path)));
        }
        other => {
            return Err(SpecError::Namespace(format!(
                "user namespace mode {other:?} is not supported (use POD or NODE)"
            )));
        }
    }

    if cgroup_v2 && !privileged {
        plan.namespaces.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    Ok(plan)
}
