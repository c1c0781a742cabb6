//! Everything [`super::container_spec`] needs, gathered by the caller.
//!
//! Spec generation is pure: whatever needs the filesystem, the kernel or the
//! clock (the image's /etc/passwd, the host's devices, probes of the host) is
//! read by the caller and passed in here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Capability;

/// How a container gets one of the pod's namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodNamespace {
    /// The pod uses the host's namespace: the spec has no entry for it.
    Host,
    /// The pod's namespace, pinned at this path (a bind mount of an nsfs file).
    Path(PathBuf),
}

/// The namespaces the pod created (or shares with the host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNamespaces {
    /// The pod's network namespace.
    pub network: PodNamespace,
    /// The pod's IPC namespace.
    pub ipc: PodNamespace,
    /// The pod's UTS namespace.
    pub uts: PodNamespace,
    /// The pod's shared PID namespace, when the pod has one (NamespaceMode POD).
    pub pid: Option<PathBuf>,
    /// The pod's user namespace, when the pod has one (UserNamespace mode POD).
    pub user: Option<PathBuf>,
}

/// Files the caller created for the pod, bind-mounted into every container.
/// `None` means "the pod has no such file": the mount is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFiles {
    /// The pod's hostname file, mounted at /etc/hostname.
    pub hostname: Option<PathBuf>,
    /// The pod's hosts file, mounted at /etc/hosts.
    pub hosts: Option<PathBuf>,
    /// The pod's resolv.conf, mounted at /etc/resolv.conf.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs the caller mounted), unless the pod uses the
    /// host's IPC namespace, in which case the host's /dev/shm is used.
    pub shm: Option<PathBuf>,
}

/// A directory the caller created for one of the image's volumes (see
/// [`super::image_volume_paths`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageVolume {
    /// Where the volume is in the container (absolute).
    pub container_path: String,
    /// The empty directory on the host.
    pub host_path: PathBuf,
}

/// The kind of a device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A character device.
    Char,
    /// A block device.
    Block,
}

/// A device node as found on the host (the caller stats it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Path on the host, symlinks resolved.
    pub path: PathBuf,
    /// Character or block device.
    pub kind: DeviceKind,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits of the node (without the file type bits).
    pub file_mode: u32,
    /// Owner on the host.
    pub uid: u32,
    /// Group on the host.
    pub gid: u32,
}

/// What the host offers, probed by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's hostname, used for `HOSTNAME` when the pod sets none.
    pub hostname: String,
    /// Whether the hugetlb cgroup controller is available (hugepage limits are
    /// dropped, with a log line, when it is not).
    pub hugetlb: bool,
    /// Whether the memory controller accounts swap (memory.memsw.* on v1,
    /// memory.swap.max on v2); without it no swap limit is set.
    pub swap_accounting: bool,
    /// Whether the host runs cgroup v2 only (then containers get a cgroup
    /// namespace, as containerd does).
    pub cgroup_v2: bool,
    /// Whether the kernel supports seccomp filters.
    pub seccomp: bool,
    /// Whether AppArmor is enabled on the host.
    pub apparmor: bool,
    /// Whether SELinux is enabled on the host.
    pub selinux: bool,
    /// Whether the runtime can make recursive read-only mounts
    /// (mount_setattr with MOUNT_ATTR_RDONLY | AT_RECURSIVE).
    pub recursive_read_only: bool,
    /// The kernel version (major, minor), for seccomp profiles with `minKernel`.
    /// `None` treats every `minKernel` as satisfied.
    pub kernel_version: Option<(u32, u32)>,
    /// Device nodes of the host. A privileged container gets all of them;
    /// otherwise this must hold at least the devices the CRI `devices` name.
    pub devices: Vec<HostDevice>,
    /// The capabilities the runtime holds: `ALL` and privileged containers
    /// get these (containerd's `cap.Current()`). None: every capability.
    pub capabilities: Option<HashSet<Capability>>,
}

impl Default for HostFacts {
    fn default() -> Self {
        HostFacts {
            hostname: String::new(),
            hugetlb: false,
            swap_accounting: false,
            cgroup_v2: false,
            seccomp: true,
            apparmor: false,
            selinux: false,
            recursive_read_only: true,
            kernel_version: None,
            devices: Vec::new(),
            capabilities: None,
        }
    }
}

/// Runtime policy knobs (from berthd's config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The lowest oom_score_adj a container may get: None where the runtime
    /// holds CAP_SYS_RESOURCE, else its own value (containerd's
    /// `restrict_oom_score_adj`). Lower requests are raised to it, with a
    /// log line.
    pub oom_score_adj_min: Option<i32>,
    /// Give CRI devices the uid/gid of the container's run_as_user/run_as_group
    /// (containerd's `device_ownership_from_security_context`).
    pub device_ownership_from_security_context: bool,
    /// The AppArmor profile name used for RuntimeDefault when AppArmor is enabled.
    pub apparmor_default_profile: Option<String>,
    /// RuntimeDefault seccomp for a container whose security context selects
    /// no profile (the runtime handler's `default_seccomp`; containerd's
    /// `unset_seccomp_profile`). An explicit Unconfined stays unconfined.
    pub seccomp_default_when_unset: bool,
}

/// The image side of the container.
#[derive(Clone, Copy, Debug)]
pub struct ImageInput<'a> {
    /// The image's config (Entrypoint, Cmd, Env, User, WorkingDir).
    pub config: &'a ImageConfiguration,
    /// The image name as the CRI gave it (for the image-name annotation).
    pub name: &'a str,
    /// Contents of the image's /etc/passwd, if it has one.
    pub passwd: Option<&'a str>,
    /// Contents of the image's /etc/group, if it has one.
    pub group: Option<&'a str>,
}

/// Everything needed to build one container's OCI runtime spec.
#[derive(Clone, Copy, Debug)]
pub struct ContainerSpecInput<'a> {
    /// The container id berth assigned.
    pub container_id: &'a str,
    /// The pod (sandbox) id.
    pub sandbox_id: &'a str,
    /// The CRI container config.
    pub config: &'a ContainerConfig,
    /// The CRI config of the pod the container belongs to.
    pub sandbox_config: &'a PodSandboxConfig,
    /// The image.
    pub image: ImageInput<'a>,
    /// The container's root filesystem (the mounted overlay).
    pub rootfs: &'a Path,
    /// The cgroup path of the container (see [`super::container_cgroups_path`]).
    pub cgroups_path: Option<&'a Path>,
    /// The pod's namespaces.
    pub namespaces: &'a PodNamespaces,
    /// The PID namespace of the target container, for NamespaceMode TARGET.
    pub target_pid_namespace: Option<&'a Path>,
    /// The pod's files (hostname, hosts, resolv.conf, shm).
    pub pod_files: &'a PodFiles,
    /// Directories for the image's volumes (empty: the volumes are left
    /// in the container's writable layer).
    pub image_volumes: &'a [ImageVolume],
    /// The contents of the Localhost seccomp profile the security context
    /// names (see [`super::seccomp_selection`] for which file to read).
    pub seccomp_localhost_profile: Option<&'a str>,
    /// What the host offers.
    pub host: &'a HostFacts,
    /// Runtime policy.
    pub options: &'a RuntimeOptions,
}
