//! CreateContainer: image → rootfs (overlay, mounted by the shim from the
//! Mount in Task.Create, as containerd does) → OCI spec (`spec`) → bundle →
//! Task.Create in the pod's shim.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::api;
use k8s_cri::v1 as cri;
use oci_spec::image::ImageConfiguration;
use prost::Message;

use super::shim_client::{ShimClient, start_shim};
use super::{PodError, PodManager, Result, files, new_id, now_ns};
use crate::image::RootfsMount;
use crate::spec::{self, PodFiles, PodNamespace, PodNamespaces};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};

/// The stdio URI scheme the shim turns into a CRI log file writer.
pub const CRI_LOG_SCHEME: &str = "cri-log://";

/// Reads `etc/<name>` from the top-most lower dir that has it as a regular
/// file (never following a symlink out of the image).
fn image_file(lowers: &[PathBuf], name: &str) -> Option<String> {
    for dir in lowers {
        let etc = dir.join("etc");
        match std::fs::symlink_metadata(&etc) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return None,
            Err(_) => continue,
        }
        let p = etc.join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

fn overlay_mount(m: &RootfsMount) -> api::Mount {
    let lower = m
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    api::Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={lower}"),
            format!("upperdir={}", m.upper_dir.display()),
            format!("workdir={}", m.work_dir.display()),
        ],
        ..Default::default()
    }
}

/// The contents of the Localhost seccomp profile the container's security
/// context names (`seccomp` or the deprecated `seccomp_profile_path`), read
/// from the host; None for any other selection. A missing or unreadable file
/// is the container's error.
fn localhost_seccomp_profile(config: &cri::ContainerConfig) -> Result<Option<String>> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    match spec::seccomp_selection(sc)? {
        spec::SeccompSelection::Localhost(path) => match std::fs::read_to_string(&path) {
            Ok(contents) => Ok(Some(contents)),
            Err(e) => Err(spec::SpecError::SeccompProfile {
                source_name: path,
                reason: format!("cannot read the profile file: {e}"),
            }
            .into()),
        },
        _ => Ok(None),
    }
}

/// The container's log file: `log_path` joined under the pod's
/// `log_directory` as containerd does (`filepath.Join`: an absolute
/// `log_path` lands under the directory too, `..` is resolved lexically),
/// refusing what resolves outside the directory, which containerd does not.
/// Empty when either is empty (no log file).
pub(crate) fn container_log_path(log_directory: &str, log_path: &str) -> Result<String> {
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(String::new());
    }
    let dir = checked_log_directory(log_directory)?;
    let mut out = dir.clone();
    let mut depth = 0usize;
    for part in log_path.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err(PodError::InvalidArgument(format!(
                    "log_path {log_path:?} resolves outside the pod's log_directory {log_directory:?}"
                )));
            }
            ".." => {
                out.pop();
                depth -= 1;
            }
            p => {
                out.push(p);
                depth += 1;
            }
        }
    }
    if depth == 0 {
        return Err(PodError::InvalidArgument(format!(
            "log_path {log_path:?} names the pod's log_directory itself, not a file in it"
        )));
    }
    Ok(out.display().to_string())
}

/// The pod's `log_directory`, which must be absolute; `..` is refused.
pub(crate) fn checked_log_directory(log_directory: &str) -> Result<PathBuf> {
    let dir = Path::new(log_directory);
    if !dir.is_absolute() {
        return Err(PodError::InvalidArgument(format!(
            "log_directory {log_directory:?} is not an absolute path"
        )));
    }
    if dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(PodError::InvalidArgument(format!(
            "log_directory {log_directory:?} contains \"..\""
        )));
    }
    Ok(dir.components().collect())
}

fn ns_of(p: &Option<PathBuf>) -> PodNamespace {
    match p {
        Some(p) => PodNamespace::Path(p.clone()),
        None => PodNamespace::Host,
    }
}

impl PodManager {
    /// The connected shim of `pod`, starting one when the pod has none.
    /// One at a time per pod (two CreateContainer at once start one shim).
    pub(crate) async fn pod_shim(&self, pod: &mut PodRecord) -> Result<Arc<ShimClient>> {
        if let Some(s) = self.connected_shim(&pod.id) {
            return Ok(s);
        }
        let _serial = self.locks.exclusive(&super::shim_lock_key(&pod.id)).await;
        if let Some(s) = self.connected_shim(&pod.id) {
            return Ok(s);
        }
        // Another CreateContainer may have started it meanwhile.
        if let Some(p) = self.store.pod(&pod.id)? {
            pod.shim_address = p.shim_address;
        }
        if let Some(addr) = &pod.shim_address
            && let Ok(c) = ShimClient::connect_alive(addr).await
        {
            let c = Arc::new(c);
            self.register_shim(&pod.id, c.clone());
            return Ok(c);
        }
        let started = std::time::Instant::now();
        let fifo = super::shim_log::open(&pod.dir);
        let addr = start_shim(&pod.id, &pod.dir, &self.events_address).await?;
        let c = Arc::new(ShimClient::connect(&addr).await?);
        pod.shim_address = Some(addr.clone());
        self.store.put_pod(pod)?;
        self.register_shim_with_log(&pod.id, c.clone(), fifo);
        tracing::info!(
            pod = %pod.id,
            shim = %addr,
            start_ms = started.elapsed().as_secs_f64() * 1e3,
            "shim started"
        );
        Ok(c)
    }

    /// Creates a container in pod `pod_id`; returns its id.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| PodError::InvalidArgument("container config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(PodError::InvalidArgument(
                "container metadata has no name".into(),
            ));
        }
        super::limits::check_container_config(&config)?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(PodError::InvalidArgument(
                "container config names no image".into(),
            ));
        }
        // containerd and CRI-O restore a checkpoint when the image is a
        // checkpoint archive: the container is made from the checkpointed
        // image and process, its task restored by CRIU.
        let checkpoint = if super::container_checkpoint::is_checkpoint_archive(&image_name) {
            Some(super::container_checkpoint::read_checkpoint_source(
                Path::new(&image_name),
            )?)
        } else {
            None
        };
        let config = match &checkpoint {
            Some(src) => super::container_checkpoint::restored_config(&config, src),
            None => config,
        };
        let image_name = match &checkpoint {
            Some(src) if !src.image.is_empty() => src.image.clone(),
            Some(src) => src.image_ref.clone(),
            None => image_name,
        };
        let pod = self
            .resolve_pod(pod_id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id}")))?;
        // Shared: containers of one pod are created at once; the pod cannot
        // be stopped or removed meanwhile.
        let _pod_guard = self.locks.shared(&pod.id).await;
        let mut pod = self
            .store
            .pod(&pod.id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id}")))?;
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let id = new_id()?;
        let name_key = super::locks::container_name(&pod.id, &meta.name, meta.attempt);
        let reservation = self
            .names
            .reserve_until_made(&name_key, &id)
            .map_err(|holder| {
                PodError::AlreadyExists(format!(
                    "container name {} (attempt {}) is reserved by container {holder} in pod {}",
                    meta.name, meta.attempt, pod.id
                ))
            })?;
        let mut image = self.images.get(&image_name)?;
        if image.is_none()
            && let Some(src) = checkpoint.as_ref().filter(|s| !s.image_ref.is_empty())
        {
            image = self.images.get(&src.image_ref)?;
        }
        let image = image.ok_or_else(|| match &checkpoint {
            Some(src) => PodError::NotFound(format!(
                "image {image_name:?} of checkpoint {} (pull it first)",
                src.archive.display()
            )),
            None => PodError::NotFound(format!("image {image_name:?} (pull it first)")),
        })?;
        let sandbox_config = match sandbox_config {
            Some(s) if s.metadata.is_some() => s,
            _ => cri::PodSandboxConfig::decode(pod.config.as_slice()).unwrap_or_default(),
        };
        let bundle = self.containers_dir().join(&id);
        let log_path = container_log_path(&sandbox_config.log_directory, &config.log_path)?;
        let mut record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            state: ContainerState::Created,
            image: image_name.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            created_at: now_ns(),
            log_path: log_path.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            config: config.encode_to_vec(),
            bundle: bundle.clone(),
            ..Default::default()
        };
        let mut created_task = false;
        let result = self
            .create_in_shim(
                &mut pod,
                &config,
                &sandbox_config,
                &image,
                &mut record,
                &mut created_task,
                checkpoint.as_ref(),
            )
            .await;
        match result {
            Ok(()) => {
                reservation.keep();
                self.emit(cri::ContainerEventType::ContainerCreatedEvent, &id, &pod.id);
                tracing::info!(container = %id, pod = %pod.id, image = %image_name, "container created");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container = %id, pod = %pod.id, error = %e, "create failed; rolling back");
                let shim = self.connected_shim(&pod.id);
                if created_task && let Some(shim) = shim {
                    let _ = shim.kill(&id, "", libc::SIGKILL as u32, true).await;
                    let _ = shim.delete(&id, "").await;
                }
                let _ = self.images.remove_rootfs(&id);
                if let Ok(Some(c)) = self.store.container(&id) {
                    let _ = self.release_image_volumes(&c).await;
                }
                let _ = super::remove_dir_all(&bundle);
                let _ = self.store.delete_container(&id);
                drop(reservation);
                Err(e)
            }
        }
    }

    // One call site; the inputs are the create's own state.
    #[allow(clippy::too_many_arguments)]
    async fn create_in_shim(
        &self,
        pod: &mut PodRecord,
        config: &cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
        image: &crate::image::ImageRecord,
        record: &mut ContainerRecord,
        created_task: &mut bool,
        checkpoint: Option<&super::container_checkpoint::CheckpointSource>,
    ) -> Result<()> {
        let id = record.id.clone();
        let bundle = record.bundle.clone();
        std::fs::create_dir_all(bundle.join("rootfs"))
            .map_err(|e| PodError::io(format!("create {}", bundle.display()), e))?;
        self.store.put_container(record)?;
        let image_config: ImageConfiguration = serde_json::from_slice(&image.config_json)
            .map_err(|e| PodError::FailedPrecondition(format!("image {} config: {e}", image.id)))?;
        record.stop_signal = image_config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .unwrap_or_default();
        let rootfs = self.images.prepare_rootfs(&image.id, &id)?;
        record.upper_dir = Some(rootfs.upper_dir.clone());
        // A restore: the CRIU images next to the bundle, the checkpointed
        // writable layer in the new one.
        let restore_images = match checkpoint {
            Some(src) => {
                let dir = bundle.join("restore");
                let images = super::container_checkpoint::extract_for_restore(&src.archive, &dir)?;
                super::container_checkpoint::apply_rootfs_diff(&dir, &rootfs.upper_dir)?;
                Some(images)
            }
            None => None,
        };
        if pod.userns.is_some() {
            // The image layers are idmapped (shared, unchanged); only this
            // container's own upper dir belongs to the pod's root, so that
            // root inside can write its rootfs.
            let ns = super::pod_run::namespace_options(sandbox_config);
            if let Some(maps) = super::pod_userns::pod_id_mappings(&ns)? {
                let (uid, gid) = maps.root();
                std::os::unix::fs::chown(&rootfs.upper_dir, Some(uid), Some(gid)).map_err(|e| {
                    PodError::io(format!("chown {}", rootfs.upper_dir.display()), e)
                })?;
            }
        }
        let passwd = image_file(&rootfs.lower_dirs, "passwd");
        let group = image_file(&rootfs.lower_dirs, "group");
        let cgroup_parent = sandbox_config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let systemd_cgroup = self.cgroup_systemd();
        let cgroups_path = if systemd_cgroup {
            Some(spec::container_systemd_cgroups_path(&cgroup_parent, &id))
        } else {
            spec::container_cgroups_path(&cgroup_parent, &id)
        };
        record.cgroup = cgroups_path.as_ref().map(|p| p.display().to_string());
        let namespaces = PodNamespaces {
            network: ns_of(&pod.netns),
            ipc: ns_of(&pod.ipcns),
            uts: ns_of(&pod.utsns),
            pid: pod.pidns.clone(),
            user: pod.userns.clone(),
        };
        let pod_files = PodFiles {
            hostname: Some(pod.dir.join(files::HOSTNAME_FILE)),
            hosts: Some(pod.dir.join(files::HOSTS_FILE)),
            resolv_conf: Some(pod.dir.join(files::RESOLV_FILE)),
            shm: pod.ipcns.as_ref().map(|_| pod.dir.join("shm")),
        };
        let features = self.host_features();
        let capabilities = own_capabilities();
        let oom_score_adj_min = super::oom_floor::oom_score_adj_floor(
            super::oom_floor::own_oom_score_adj(),
            capabilities.as_ref(),
        );
        let cg = crate::runtime::cgroups::CgroupFeatures::detect();
        let host = spec::HostFacts {
            hostname: files::host_hostname(),
            cgroup_v2: cg.v2,
            hugetlb: cg.hugetlb,
            swap_accounting: cg.swap,
            recursive_read_only: features.recursive_read_only,
            capabilities,
            apparmor: super::apparmor::host_enabled(),
            devices: if needs_host_devices(config) {
                super::host_devices::host_devices()
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let (_, handler) = self
            .config
            .runtime_handler(&pod.runtime_handler)
            .ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "pod {} was run with runtime handler {:?}, which berthd's config no longer has",
                    pod.id, pod.runtime_handler
                ))
            })?;
        let options = spec::RuntimeOptions {
            oom_score_adj_min,
            seccomp_default_when_unset: handler.default_seccomp,
            apparmor_default_profile: Some(super::apparmor::DEFAULT_PROFILE.to_owned()),
            ..Default::default()
        };
        let target_pid_ns = self.target_pid_namespace(config, &pod.id)?;
        super::host_paths::create_missing_host_paths(&config.mounts)?;
        // Image volumes become read-only binds of the pod's mounts of them.
        let resolved = self.resolve_image_volumes(pod, config, record).await?;
        let config = resolved.as_ref().unwrap_or(config);
        let seccomp_profile = localhost_seccomp_profile(config)?;
        let rootfs_path = bundle.join("rootfs");
        let cdi_names = crate::cdi::requested_devices(
            &config
                .cdi_devices
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>(),
            &config.annotations,
        );
        let cdi_edits = if cdi_names.is_empty() {
            None
        } else {
            let registry = crate::cdi::CdiRegistry::load(&self.config.cdi.spec_dirs);
            Some(registry.resolve(&cdi_names)?)
        };
        let mut oci = spec::container_spec(&spec::ContainerSpecInput {
            container_id: &id,
            sandbox_id: &pod.id,
            config,
            sandbox_config,
            image: spec::ImageInput {
                config: &image_config,
                name: &record.image,
                passwd: passwd.as_deref(),
                group: group.as_deref(),
            },
            rootfs: &rootfs_path,
            cgroups_path: cgroups_path.as_deref(),
            namespaces: &namespaces,
            target_pid_namespace: target_pid_ns.as_deref(),
            pod_files: &pod_files,
            image_volumes: &[],
            seccomp_localhost_profile: seccomp_profile.as_deref(),
            host: &host,
            options: &options,
        })?;
        if let Some(edits) = &cdi_edits {
            spec::apply_cdi_edits(&mut oci, edits)?;
            tracing::info!(container = %id, devices = ?cdi_names, "CDI devices applied");
        }
        if host.apparmor {
            super::apparmor::check_spec_profile(&oci)?;
        }
        let config_path = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| PodError::Shim(format!("encode config.json: {e}")))?;
        std::fs::write(&config_path, json)
            .map_err(|e| PodError::io(format!("write {}", config_path.display()), e))?;
        if !record.log_path.is_empty()
            && let Some(dir) = Path::new(&record.log_path).parent()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| PodError::io(format!("create {}", dir.display()), e))?;
        }
        let shim = self.pod_shim(pod).await?;
        // Without a log path the shim logs nothing but still serves attach.
        let log_uri = format!("{CRI_LOG_SCHEME}{}", record.log_path);
        let req = api::CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: vec![overlay_mount(&rootfs)],
            terminal: config.tty,
            stdin: if config.stdin {
                crate::attach_wire::stdin_uri(config.stdin_once)
            } else {
                String::new()
            },
            stdout: log_uri.clone(),
            stderr: if config.tty { String::new() } else { log_uri },
            // The driver, as containerd tells the runc shim.
            options: containerd_shim_protos::protobuf::MessageField::from_option(
                systemd_cgroup.then(runc_systemd_options),
            ),
            checkpoint: restore_images
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let pid = shim.create(&req).await?;
        *created_task = true;
        record.pid = pid;
        self.store.put_container(record)?;
        tracing::debug!(
            container = %id,
            task_create_ms = started.elapsed().as_secs_f64() * 1e3,
            "task created"
        );
        Ok(())
    }
}

impl PodManager {
    /// For NamespaceMode TARGET: the pid namespace of the running target
    /// container of the same pod.
    fn target_pid_namespace(
        &self,
        config: &cri::ContainerConfig,
        pod_id: &str,
    ) -> Result<Option<PathBuf>> {
        let Some(ns) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
        else {
            return Ok(None);
        };
        if ns.pid != cri::NamespaceMode::Target as i32 {
            return Ok(None);
        }
        let target = self
            .resolve_container(&ns.target_id)?
            .filter(|t| t.pod_id == pod_id)
            .ok_or_else(|| {
                PodError::NotFound(format!(
                    "target container {:?} of the pid namespace (in pod {pod_id})",
                    ns.target_id
                ))
            })?;
        if target.state != ContainerState::Running || target.pid == 0 {
            return Err(PodError::FailedPrecondition(format!(
                "target container {} is not running",
                target.id
            )));
        }
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
    }
}

/// Whether the spec needs the host's device list: a privileged container
/// gets every device, CRI `devices` name some.
fn needs_host_devices(config: &cri::ContainerConfig) -> bool {
    !config.devices.is_empty()
        || config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|sc| sc.privileged)
}

/// berthd's effective capabilities (what a container can at most be given).
fn own_capabilities() -> Option<std::collections::HashSet<oci_spec::runtime::Capability>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let mask = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(spec::capabilities_from_mask(mask))
}

/// runc's shim options with `SystemdCgroup = true` (containerd's
/// `options.Options`), for the shim's create request.
fn runc_systemd_options() -> containerd_shim_protos::protobuf::well_known_types::any::Any {
    use containerd_shim_protos::protobuf::Message;
    let o = containerd_shim_protos::shim::oci::Options {
        systemd_cgroup: true,
        ..Default::default()
    };
    containerd_shim_protos::protobuf::well_known_types::any::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: o.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        let ok = |d: &str, p: &str| container_log_path(d, p).unwrap();
        let refused = |d: &str, p: &str| {
            assert!(
                matches!(container_log_path(d, p), Err(PodError::InvalidArgument(_))),
                "{d:?} + {p:?} accepted"
            )
        };
        assert_eq!(
            ok("/var/log/pods/p", "app/0.log"),
            "/var/log/pods/p/app/0.log"
        );
        assert_eq!(
            ok("/var/log/pods/p/", "./app//0.log"),
            "/var/log/pods/p/app/0.log"
        );
        // As containerd's filepath.Join: an absolute path goes under the dir.
        assert_eq!(
            ok("/var/log/pods/p", "/tmp/elsewhere/abs.log"),
            "/var/log/pods/p/tmp/elsewhere/abs.log"
        );
        assert_eq!(ok("/var/log/pods/p", "a/../b.log"), "/var/log/pods/p/b.log");
        refused("/var/log/pods/p", "../../x/dd.log");
        refused("/var/log/pods/p", "a/../../b.log");
        refused("/var/log/pods/p", "..");
        refused("/var/log/pods/p", "a/..");
        refused("var/log/pods/p", "app/0.log");
        refused("/var/log/../p", "app/0.log");
        assert_eq!(ok("", "app/0.log"), "");
        assert_eq!(ok("/var/log/pods/p", ""), "");
    }
}
