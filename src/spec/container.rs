//! `container_spec`: a CRI container config, its pod's config and its image's
//! config → the container's OCI runtime spec.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxResources, Process, Root, Spec, User};

use super::SpecError;
use super::annotations::container_annotations;
use super::capabilities::{capability_set, process_capabilities};
use super::devices::container_devices;
use super::input::{ContainerSpecInput, PodNamespace};
use super::mounts::{MountContext, container_mounts};
use super::namespaces::container_namespaces;
use super::pod_files::validate_hostname;
use super::process::{process_args, process_cwd, process_env};
use super::resources::{apply_resources, oom_score_adj};
use super::seccomp::{container_seccomp, seccomp_is_set, seccomp_selection};
use super::security::{apparmor_profile, check_selinux};
use super::sysctls::container_sysctls;
use super::user::resolve_user;

/// The runtime-spec version of the specs berth writes (1.2 has `rro` and
/// idmapped mounts).
pub const OCI_VERSION: &str = "1.2.0";

/// The cgroup path of a container: `<cgroup_parent>/<container_id>` (the
/// cgroupfs layout kubelet expects), or `None` when the pod has no parent.
pub fn container_cgroups_path(cgroup_parent: &str, container_id: &str) -> Option<PathBuf> {
    if cgroup_parent.is_empty() {
        None
    } else {
        Some(Path::new(cgroup_parent).join(container_id))
    }
}

/// The cgroups path of a container under the systemd driver:
/// `<pod slice>:berth:<id>`, the scope `berth-<id>.scope` in the pod's slice
/// (containerd's CRI: `<slice>:cri-containerd:<id>`; CRI-O: `crio`);
/// `system.slice` when the pod names no parent.
pub fn container_systemd_cgroups_path(cgroup_parent: &str, container_id: &str) -> PathBuf {
    let slice = if cgroup_parent.is_empty() {
        "system.slice"
    } else {
        cgroup_parent
    };
    PathBuf::from(format!("{slice}:berth:{container_id}"))
}

fn check_paths(paths: &[String], field: &'static str) -> Result<Vec<String>, SpecError> {
    for p in paths {
        if !p.starts_with('/') || p.contains('\0') {
            return Err(SpecError::field(
                field,
                format!("{p:?} is not an absolute path"),
            ));
        }
    }
    Ok(paths.to_vec())
}

/// Builds the OCI runtime spec of a container, with containerd's CRI plugin's
/// semantics. Pure: every input is in `input`.
pub fn container_spec(input: &ContainerSpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
    if name.is_empty() {
        return Err(SpecError::field(
            "metadata.name",
            "the container has no name",
        ));
    }
    let linux_cfg = config.linux.as_ref();
    let sc = linux_cfg.and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let sandbox_linux = input.sandbox_config.linux.as_ref();
    let sandbox_sc = sandbox_linux.and_then(|l| l.security_context.as_ref());
    if privileged && !sandbox_sc.is_some_and(|s| s.privileged) {
        return Err(SpecError::PrivilegedNotAllowed(name.to_string()));
    }
    let image_cfg = input.image.config.config().as_ref();
    let ns = input.namespaces;
    let host_network = ns.network == PodNamespace::Host;
    let host_ipc = ns.ipc == PodNamespace::Host;
    let host_uts = ns.uts == PodNamespace::Host;

    // The process.
    let args = process_args(config, image_cfg)?;
    let pod_hostname = input.sandbox_config.hostname.as_str();
    if !pod_hostname.is_empty() {
        validate_hostname(pod_hostname)?;
    }
    let env_hostname = if pod_hostname.is_empty() {
        input.host.hostname.as_str()
    } else {
        pod_hostname
    };
    let env = process_env(config, image_cfg, env_hostname)?;
    let cwd = process_cwd(config, image_cfg)?;
    let image_user = image_cfg.and_then(|c| c.user().as_deref()).unwrap_or("");
    let user = resolve_user(sc, image_user, input.image.passwd, input.image.group)?;
    let caps = capability_set(
        sc.and_then(|s| s.capabilities.as_ref()),
        privileged,
        input.host.capabilities.as_ref(),
    )?;
    let resources = linux_cfg.and_then(|l| l.resources.as_ref());
    let oom = match resources {
        Some(r) => Some(oom_score_adj(
            r.oom_score_adj,
            input.options.oom_score_adj_min,
        )?),
        None => None,
    };
    let apparmor = apparmor_profile(sc, input.host, input.options)?;
    check_selinux(sc, input.host)?;

    let mut oci_user = User::default();
    oci_user
        .set_uid(user.uid)
        .set_gid(user.gid)
        .set_additional_gids(Some(user.additional_gids.clone()));
    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_user(oci_user)
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(process_capabilities(&caps)))
        .set_rlimits(None)
        .set_no_new_privileges(Some(sc.is_some_and(|s| s.no_new_privs)))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(oom)
        .set_selinux_label(None);

    // Namespaces.
    let plan = container_namespaces(
        sc.and_then(|s| s.namespace_options.as_ref()),
        sandbox_sc.and_then(|s| s.namespace_options.as_ref()),
        ns,
        input.target_pid_namespace,
        privileged,
        input.host.cgroup_v2,
    )?;

    // Mounts.
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let (mounts, rootfs_propagation) = container_mounts(
        &config.mounts,
        &MountContext {
            pod_files: input.pod_files,
            image_volumes: input.image_volumes,
            ipc: &ns.ipc,
            privileged,
            readonly_rootfs,
            userns_on_host_network: plan.user_namespaced() && host_network,
            recursive_read_only_supported: input.host.recursive_read_only,
            uid_mappings: &plan.cri_uid_mappings,
            gid_mappings: &plan.cri_gid_mappings,
        },
    )?;

    // Devices and resources.
    let owner = if input.options.device_ownership_from_security_context {
        let id = |v: Option<&k8s_cri::v1::Int64Value>| {
            v.map_or(0, |v| u32::try_from(v.value).unwrap_or(0))
        };
        Some((
            id(sc.and_then(|s| s.run_as_user.as_ref())),
            id(sc.and_then(|s| s.run_as_group.as_ref())),
        ))
    } else {
        None
    };
    let (devices, device_rules) =
        container_devices(&config.devices, &input.host.devices, privileged, owner)?;
    let mut oci_resources = LinuxResources::default();
    oci_resources.set_devices(Some(device_rules));
    if let Some(r) = resources {
        apply_resources(r, input.host, &mut oci_resources)?;
    }

    // Sysctls of the pod.
    let sysctls = match sandbox_linux {
        Some(l) if !l.sysctls.is_empty() => Some(container_sysctls(
            &l.sysctls,
            host_network,
            host_ipc,
            host_uts,
        )?),
        _ => None,
    };

    // Masked and read-only paths: what the CRI gives (kubelet sends the
    // defaults for procMount Default and nothing for Unmasked; containerd
    // starts from none too, containerd#5029). None when privileged.
    let (masked, readonly) = match sc {
        Some(s) if !privileged => (
            check_paths(&s.masked_paths, "linux.security_context.masked_paths")?,
            check_paths(&s.readonly_paths, "linux.security_context.readonly_paths")?,
        ),
        _ => (Vec::new(), Vec::new()),
    };

    // seccomp (a privileged container never gets a filter).
    let mut selection = seccomp_selection(sc)?;
    if input.options.seccomp_default_when_unset && !privileged && !seccomp_is_set(sc) {
        selection = super::seccomp::SeccompSelection::RuntimeDefault;
    }
    let seccomp = container_seccomp(
        &selection,
        input.seccomp_localhost_profile,
        &caps,
        input.host.seccomp,
        input.host.kernel_version,
    )?;

    let mut linux = Linux::default();
    linux
        .set_uid_mappings(if plan.uid_mappings.is_empty() {
            None
        } else {
            Some(plan.uid_mappings.clone())
        })
        .set_gid_mappings(if plan.gid_mappings.is_empty() {
            None
        } else {
            Some(plan.gid_mappings.clone())
        })
        .set_sysctl(sysctls)
        .set_resources(Some(oci_resources))
        .set_cgroups_path(input.cgroups_path.map(Path::to_path_buf))
        .set_namespaces(Some(plan.namespaces))
        .set_devices(Some(devices))
        .set_seccomp(seccomp)
        .set_rootfs_propagation(rootfs_propagation)
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_mount_label(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf())
        .set_readonly(Some(readonly_rootfs));

    let image_name = if input.image.name.is_empty() {
        config.image.as_ref().map_or("", |i| i.image.as_str())
    } else {
        input.image.name
    };
    let annotations = container_annotations(
        &config.annotations,
        input.sandbox_id,
        input.sandbox_config,
        name,
        image_name,
    );

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(if host_uts || pod_hostname.is_empty() {
            None
        } else {
            Some(pod_hostname.to_string())
        })
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    tracing::debug!(
        container = input.container_id,
        pod = input.sandbox_id,
        image = image_name,
        "built container spec"
    );
    Ok(spec)
}
