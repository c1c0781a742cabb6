//! CRI container/sandbox config + image config → OCI runtime spec.
//!
//! Everything here is a pure function of its inputs: no filesystem, no
//! syscalls, no clock. What needs the host (the image's /etc/passwd, device
//! nodes, probes) is read by the caller and passed in a
//! [`ContainerSpecInput`]. The semantics follow containerd's CRI plugin
//! (`internal/cri/server/container_create*.go`, `internal/cri/opts`); where
//! berth differs, the function's documentation says so and why.

mod annotations;
mod capabilities;
mod cdi;
mod container;
mod devices;
mod error;
mod exec;
mod input;
mod mounts;
mod namespaces;
mod pod_files;
mod process;
mod resources;
pub mod seccomp;
mod security;
mod sysctls;
mod user;

#[cfg(test)]
mod tests;

pub use annotations::container_annotations;
pub use capabilities::{
    ALL_CAPABILITIES, DEFAULT_CAPABILITIES, capabilities_from_mask, capability_set, is_all,
    parse_capability, process_capabilities,
};
pub use cdi::{CdiDeviceNode, CdiEdits, CdiMount, apply_cdi_edits};
pub use container::{
    OCI_VERSION, container_cgroups_path, container_spec, container_systemd_cgroups_path,
};
pub use devices::default_device_rules;
pub use error::SpecError;
pub use exec::exec_process;
pub use input::{
    ContainerSpecInput, DeviceKind, HostDevice, HostFacts, ImageInput, ImageVolume, PodFiles,
    PodNamespace, PodNamespaces, RuntimeOptions,
};
pub use mounts::{clean_path, default_mounts, image_volume_paths};
pub use pod_files::{pod_hostname_file, pod_hosts_file, pod_resolv_conf, validate_hostname};
pub use process::{DEFAULT_PATH_ENV, process_args, process_cwd, process_env};
pub use resources::{oci_resources, oom_score_adj};
pub use seccomp::{
    SeccompSelection, default_seccomp_profile, parse_seccomp_profile, seccomp_is_set,
    seccomp_selection,
};
pub use sysctls::{SysctlNamespace, normalize_sysctl_name, sysctl_namespace};
pub use user::{
    GroupEntry, PasswdEntry, ResolvedUser, linux_container_user, parse_group, parse_passwd,
    resolve_user_spec,
};
