//! Mounts: the default container filesystems (/proc, /dev, /sys, ...), the
//! pod's files (/etc/hostname, /etc/hosts, /etc/resolv.conf, /dev/shm) and the
//! CRI mounts, as containerd's `WithMounts` orders and filters them.

use std::collections::HashSet;
use std::path::PathBuf;

use k8s_cri::v1::{IdMapping, Mount as CriMount, MountPropagation};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};

use super::SpecError;
use super::input::{ImageVolume, PodFiles, PodNamespace};

/// Lexically cleans an absolute path: removes `.`, empty components and
/// resolves `..` (never above `/`), like Go's `filepath.Clean`.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The filesystems every container gets (containerd's default unix spec,
/// without /run). /sys and /sys/fs/cgroup are read-only unless `privileged`.
/// With a user namespace on the host network, /sys is a recursive read-only
/// bind of the host's /sys (mounting sysfs fails there with EPERM).
pub fn default_mounts(privileged: bool, userns_on_host_network: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let sys = if userns_on_host_network {
        mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "rro", "nosuid", "nodev", "noexec"],
        )
    } else {
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        sys,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
}

/// What the mount planning needs besides the CRI mounts.
pub(crate) struct MountContext<'a> {
    pub pod_files: &'a PodFiles,
    pub ipc: &'a PodNamespace,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub userns_on_host_network: bool,
    pub recursive_read_only_supported: bool,
    /// Directories for the image's volumes.
    pub image_volumes: &'a [ImageVolume],
    /// The pod's user namespace mappings, given to the pod's file mounts.
    pub uid_mappings: &'a [IdMapping],
    pub gid_mappings: &'a [IdMapping],
}

/// The container's mounts and the rootfs propagation they need.
pub(crate) fn container_mounts(
    cri_mounts: &[CriMount],
    ctx: &MountContext<'_>,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    for m in cri_mounts {
        validate_cri_mount(m)?;
    }
    let cri_dests: HashSet<String> = cri_mounts
        .iter()
        .map(|m| clean_path(&m.container_path))
        .collect();

    // The pod's files, unless a CRI mount replaces them.
    let mut extra = Vec::new();
    let pod_file = |dest: &str, src: &Option<PathBuf>, readonly: bool, mapped: bool| {
        src.as_ref().map(|src| CriMount {
            container_path: dest.to_string(),
            host_path: src.to_string_lossy().into_owned(),
            readonly,
            uid_mappings: if mapped {
                ctx.uid_mappings.to_vec()
            } else {
                Vec::new()
            },
            gid_mappings: if mapped {
                ctx.gid_mappings.to_vec()
            } else {
                Vec::new()
            },
            ..Default::default()
        })
    };
    let f = ctx.pod_files;
    extra.extend(pod_file(
        "/etc/hostname",
        &f.hostname,
        ctx.readonly_rootfs,
        true,
    ));
    extra.extend(pod_file("/etc/hosts", &f.hosts, ctx.readonly_rootfs, true));
    extra.extend(pod_file(
        "/etc/resolv.conf",
        &f.resolv_conf,
        ctx.readonly_rootfs,
        true,
    ));
    let shm = match ctx.ipc {
        PodNamespace::Host => Some(PathBuf::from("/dev/shm")),
        PodNamespace::Path(_) => f.shm.clone(),
    };
    // tmpfs supports idmapped mounts only since Linux 6.3; the pod's shm is
    // empty, so containerd leaves it unmapped and so does berth.
    extra.extend(pod_file("/dev/shm", &shm, false, false));
    // The image's volumes: directories the caller created for this container.
    for v in ctx.image_volumes {
        let dest = clean_path(&v.container_path);
        if !v.host_path.is_absolute() {
            return Err(SpecError::Mount {
                container_path: dest,
                reason: format!(
                    "the image volume's host directory {:?} must be absolute",
                    v.host_path
                ),
            });
        }
        extra.extend(pod_file(&dest, &Some(v.host_path.clone()), false, true));
    }
    extra.retain(|m| !cri_dests.contains(&m.container_path));

    let mut binds: Vec<&CriMount> = cri_mounts.iter().chain(extra.iter()).collect();
    let bind_dests: HashSet<String> = binds
        .iter()
        .map(|m| clean_path(&m.container_path))
        .collect();

    let mut mounts: Vec<Mount> = default_mounts(ctx.privileged, ctx.userns_on_host_network)
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy().into_owned();
            let replaced = bind_dests.contains(&dest);
            let under_cri_dev = bind_dests.contains("/dev") && dest.starts_with("/dev/");
            !replaced && !under_cri_dev
        })
        .collect();

    // Fewer path components first, so a mount never hides a deeper one.
    binds.sort_by_key(|m| clean_path(&m.container_path).matches('/').count());

    let mut rootfs_propagation: Option<String> = None;
    for m in binds {
        mounts.push(bind_mount(
            m,
            ctx.recursive_read_only_supported,
            &mut rootfs_propagation,
        )?);
    }
    Ok((mounts, rootfs_propagation))
}

fn validate_cri_mount(m: &CriMount) -> Result<(), SpecError> {
    let err = |reason: String| SpecError::Mount {
        container_path: m.container_path.clone(),
        reason,
    };
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(err(
            "an image volume reached the spec unresolved (the pod manager mounts it and passes its host path)".to_string()
        ));
    }
    if !m.container_path.starts_with('/') {
        return Err(err("the container path must be absolute".to_string()));
    }
    if clean_path(&m.container_path) == "/" {
        return Err(err("cannot mount over the container's root".to_string()));
    }
    if m.host_path.is_empty() {
        return Err(err("the host path is empty".to_string()));
    }
    if !m.host_path.starts_with('/') {
        return Err(err(format!(
            "the host path {:?} must be absolute",
            m.host_path
        )));
    }
    if m.container_path.contains('\0') || m.host_path.contains('\0') {
        return Err(err("a path holds a NUL byte".to_string()));
    }
    Ok(())
}

fn id_mappings(maps: &[IdMapping]) -> Option<Vec<LinuxIdMapping>> {
    if maps.is_empty() {
        return None;
    }
    Some(
        maps.iter()
            .map(|m| {
                LinuxIdMappingBuilder::default()
                    .host_id(m.host_id)
                    .container_id(m.container_id)
                    .size(m.length)
                    .build()
                    .unwrap_or_default()
            })
            .collect(),
    )
}

fn bind_mount(
    m: &CriMount,
    rro_supported: bool,
    rootfs_propagation: &mut Option<String>,
) -> Result<Mount, SpecError> {
    let err = |reason: String| SpecError::Mount {
        container_path: m.container_path.clone(),
        reason,
    };
    let mut options = vec!["rbind".to_string()];
    let propagation = MountPropagation::try_from(m.propagation).map_err(|_| {
        err(format!(
            "unknown propagation {} (expected PRIVATE, HOST_TO_CONTAINER or BIDIRECTIONAL)",
            m.propagation
        ))
    })?;
    match propagation {
        MountPropagation::PropagationPrivate => options.push("rprivate".to_string()),
        MountPropagation::PropagationHostToContainer => {
            options.push("rslave".to_string());
            if rootfs_propagation.as_deref() != Some("rshared") {
                *rootfs_propagation = Some("rslave".to_string());
            }
        }
        MountPropagation::PropagationBidirectional => {
            options.push("rshared".to_string());
            *rootfs_propagation = Some("rshared".to_string());
        }
    }
    if m.readonly {
        if m.recursive_read_only {
            if !rro_supported {
                return Err(err(format!(
                    "recursive read-only mounts are not supported on this host (host path {:?})",
                    m.host_path
                )));
            }
            if propagation != MountPropagation::PropagationPrivate {
                return Err(err(format!(
                    "a recursive read-only mount needs private propagation, got {}",
                    propagation.as_str_name()
                )));
            }
            options.push("rro".to_string());
        } else {
            options.push("ro".to_string());
        }
    } else {
        if m.recursive_read_only {
            return Err(err(
                "recursive_read_only is set on a read-write mount (set readonly too)".to_string(),
            ));
        }
        options.push("rw".to_string());
    }
    // selinux_relabel: there is no SELinux on berth's hosts; relabelling is
    // the caller's business where there is.
    let mut out = Mount::default();
    out.set_destination(PathBuf::from(clean_path(&m.container_path)))
        .set_typ(Some("bind".to_string()))
        .set_source(Some(PathBuf::from(&m.host_path)))
        .set_options(Some(options))
        .set_uid_mappings(id_mappings(&m.uid_mappings))
        .set_gid_mappings(id_mappings(&m.gid_mappings));
    Ok(out)
}

/// The image's volumes (`VOLUME` in the Dockerfile) that need a directory:
/// those no CRI mount covers, as cleaned absolute paths, sorted. The caller
/// creates an empty directory for each (containerd puts them under the
/// container's directory) and passes them back as
/// [`ContainerSpecInput::image_volumes`](super::ContainerSpecInput).
pub fn image_volume_paths(
    cri_mounts: &[CriMount],
    image: Option<&oci_spec::image::Config>,
) -> Vec<String> {
    let cri: HashSet<String> = cri_mounts
        .iter()
        .map(|m| clean_path(&m.container_path))
        .collect();
    let mut out: Vec<String> = image
        .and_then(|c| c.volumes().as_ref())
        .into_iter()
        .flatten()
        .map(|v| clean_path(v))
        .filter(|v| v != "/" && !cri.contains(v))
        .collect();
    out.sort();
    out.dedup();
    out
}
