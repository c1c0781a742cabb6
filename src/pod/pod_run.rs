//! RunPodSandbox: namespaces, files, /dev/shm, cgroup, network, record.

use std::net::IpAddr;

use k8s_cri::v1 as cri;
use prost::Message;

use super::namespaces::{NsKind, mount_shm, pin_namespaces};
use super::{PodError, PodManager, Result, SHM_SIZE, files, new_id, now_ns};
use crate::network::{self, PodNetworkRequest, PortMapping, Protocol};
use crate::store::{PodRecord, PodState};

/// The CRI namespace options of a pod, with defaults.
pub(crate) fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn is_node(mode: i32) -> bool {
    mode == cri::NamespaceMode::Node as i32
}

impl PodManager {
    /// Creates a pod with the runtime handler `runtime_handler` ("" for the
    /// default one); returns its id. On any failure nothing is left.
    pub async fn run_pod(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let (handler_name, handler) =
            self.config
                .runtime_handler(runtime_handler)
                .ok_or_else(|| {
                    PodError::InvalidArgument(format!(
                        "no runtime handler {runtime_handler:?} is configured (berthd has {:?}: [runtimes.<name>] in its config)",
                        self.config.runtimes.keys().collect::<Vec<_>>()
                    ))
                })?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| PodError::InvalidArgument("pod config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(PodError::InvalidArgument("pod metadata has no name".into()));
        }
        super::limits::check_pod_config(&config)?;
        if !config.log_directory.is_empty() {
            super::container_create::checked_log_directory(&config.log_directory)?;
        }
        let ns = namespace_options(&config);
        if ns.network == cri::NamespaceMode::Target as i32
            || ns.ipc == cri::NamespaceMode::Target as i32
        {
            return Err(PodError::InvalidArgument(
                "NamespaceMode TARGET is only valid for a container's pid namespace".into(),
            ));
        }
        // Checked before anything is made: bad mappings leave nothing behind.
        let userns = super::pod_userns::pod_id_mappings(&ns)?;
        if userns.is_some() && !handler.user_namespaces {
            return Err(PodError::FailedPrecondition(format!(
                "runtime handler {handler_name:?} does not allow user-namespaced pods (user_namespaces = false in [runtimes.{handler_name}])"
            )));
        }
        if userns.is_some() && !self.host_features().user_namespaces {
            return Err(PodError::FailedPrecondition(
                "this host cannot run user-namespaced pods (the user namespace and idmapped mount probe failed; see berthd's log)".into(),
            ));
        }
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        check_cgroup_parent(&cgroup_parent, self.cgroup_systemd())?;
        // Checked before anything is made.
        let pod_resources = match config.linux.as_ref() {
            Some(l) => super::pod_resources::pod_cgroup_resources(l)?
                .map(|r| crate::spec::oci_resources(&r, &super::cgroup_host_facts()))
                .transpose()?,
            None => None,
        };
        let id = new_id()?;
        let reservation = self
            .names
            .reserve_until_made(
                &super::locks::pod_name(&meta.name, &meta.namespace, &meta.uid, meta.attempt),
                &id,
            )
            .map_err(|holder| {
                PodError::AlreadyExists(format!(
                    "pod name {}/{} (uid {}, attempt {}) is reserved by pod {holder}",
                    meta.namespace, meta.name, meta.uid, meta.attempt
                ))
            })?;
        // Only this pod's own operations wait for its set-up.
        let _guard = self.locks.exclusive(&id).await;
        let span = tracing::info_span!("run_pod", pod = %id, name = %meta.name);
        let _enter = span.enter();
        let dir = self.pod_dir(&id);
        let mut record = PodRecord {
            id: id.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            attempt: meta.attempt,
            state: PodState::Ready,
            created_at: now_ns(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            config: config.encode_to_vec(),
            dir: dir.clone(),
            setting_up: true,
            runtime_handler: runtime_handler.to_owned(),
            ..Default::default()
        };
        drop(_enter);
        match self
            .setup_pod(
                &config,
                &ns,
                userns.as_ref(),
                &cgroup_parent,
                pod_resources.as_ref(),
                &mut record,
            )
            .await
        {
            Ok(()) => {
                reservation.keep();
                tracing::info!(pod = %id, name = %meta.name, ips = ?record.ips, "pod ready");
                // The sandbox's own events carry its id as the container id.
                self.emit(cri::ContainerEventType::ContainerCreatedEvent, &id, &id);
                self.emit(cri::ContainerEventType::ContainerStartedEvent, &id, &id);
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(pod = %id, error = %e, "pod creation failed; rolling back");
                if let Err(e2) = self.teardown_pod(&record).await {
                    tracing::error!(pod = %id, error = %e2, "rollback incomplete");
                }
                let _ = self.store.delete_pod(&id);
                Err(e)
            }
        }
    }

    async fn setup_pod(
        &self,
        config: &cri::PodSandboxConfig,
        ns: &cri::NamespaceOption,
        userns: Option<&super::pod_userns::PodIdMappings>,
        cgroup_parent: &str,
        pod_resources: Option<&oci_spec::runtime::LinuxResources>,
        record: &mut PodRecord,
    ) -> Result<()> {
        let dir = record.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| PodError::io(format!("create {}", dir.display()), e))?;
        let host_network = is_node(ns.network);
        let hostname = files::pod_hostname(config);
        if !host_network {
            crate::spec::validate_hostname(&hostname)?;
        }
        // Persist first, so that a crash mid-way is cleaned up on restart.
        self.store.put_pod(record)?;

        let started = std::time::Instant::now();
        let mut pins = Vec::new();
        if !is_node(ns.ipc) {
            pins.push((NsKind::Ipc, dir.join("ipcns")));
        }
        if !host_network {
            pins.push((NsKind::Uts, dir.join("utsns")));
        }
        for (k, p) in &pins {
            match k {
                NsKind::Ipc => record.ipcns = Some(p.clone()),
                NsKind::Uts => record.utsns = Some(p.clone()),
            }
        }
        if !host_network {
            record.netns = Some(dir.join("netns"));
        }
        if userns.is_some() {
            record.userns = Some(dir.join("userns"));
        }
        // Every path is recorded before it is made (removing one that was
        // never made is a no-op), so a crash leaves nothing unknown behind.
        self.store.put_pod(record)?;
        if let (Some(maps), Some(userns_pin)) = (userns, &record.userns) {
            // The containers' set-up runs as the pod's root: it must be able
            // to pass through the state dir to the bundles and pod files.
            make_traversable(&self.config.state)?;
            // The pod's namespaces are made inside its user namespace.
            super::pod_userns::create_pod_userns(
                maps,
                &super::pod_userns::UsernsPins {
                    userns: userns_pin,
                    netns: record.netns.as_deref(),
                    ipcns: record.ipcns.as_deref(),
                    utsns: record.utsns.as_deref(),
                },
                &hostname,
            )?;
        } else {
            pin_namespaces(&pins, &hostname)?;
            if let Some(path) = &record.netns {
                network::create_netns(path)?;
            }
        }
        if ns.pid == cri::NamespaceMode::Pod as i32 {
            // A shared pid namespace: the built-in init is its pid 1.
            let pid = super::pod_init::spawn(&record.id, record.userns.as_deref())?;
            record.init_pid = Some(pid);
            let pin = dir.join("pidns");
            record.pidns = Some(pin.clone());
            self.store.put_pod(record)?;
            super::namespaces::pin_path(&format!("/proc/{pid}/ns/pid"), &pin)?;
        }
        let ns_ms = started.elapsed().as_secs_f64() * 1e3;

        if !is_node(ns.ipc) {
            mount_shm(
                &dir.join("shm"),
                SHM_SIZE,
                userns.map(super::pod_userns::PodIdMappings::root),
            )?;
        }

        let started = std::time::Instant::now();
        if !cgroup_parent.is_empty() {
            let mgr = crate::runtime::cgroups::CgroupManager::new(cgroup_parent)
                .map_err(|e| PodError::Cgroup(e.to_string()))?;
            let existed = mgr.exists();
            if !existed {
                record.cgroup = Some(cgroup_parent.to_owned());
                self.store.put_pod(record)?;
            }
            mgr.create_parent()
                .map_err(|e| PodError::Cgroup(format!("{cgroup_parent}: {e}")))?;
            // The pod's resources plus its overhead, on the pod cgroup.
            if let Some(res) = pod_resources {
                mgr.apply(res)
                    .map_err(|e| PodError::Cgroup(format!("{cgroup_parent}: {e}")))?;
            }
        } else if pod_resources.is_some() {
            tracing::debug!(pod = %record.id, "no cgroup parent: pod resources not applied");
        }
        let cgroup_ms = started.elapsed().as_secs_f64() * 1e3;

        let started = std::time::Instant::now();
        let mut ips: Vec<IpAddr> = Vec::new();
        if let (Some(netns), Some(net)) = (&record.netns, &self.network) {
            record.network = true;
            self.store.put_pod(record)?;
            let req = network_request(config, &record.id, netns);
            let status = net.setup(&req).await?;
            ips = status.ips;
        }
        record.ips = ips.iter().map(|i| i.to_string()).collect();
        let net_ms = started.elapsed().as_secs_f64() * 1e3;

        files::write_pod_files(&dir, config, &hostname, &ips, host_network)?;
        record.setting_up = false;
        self.store.put_pod(record)?;
        tracing::debug!(
            pod = %record.id,
            netns_ms = ns_ms,
            cgroup_ms,
            network_ms = net_ms,
            "pod set up"
        );
        Ok(())
    }
}

/// Adds search (x) permission for everyone to `dir` (never read or write),
/// as containerd does for its state dirs when pods have user namespaces.
fn make_traversable(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(dir).map_err(|e| PodError::io(format!("stat {}", dir.display()), e))?;
    let mode = meta.permissions().mode();
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode((mode | 0o011) & 0o7777),
        )
        .map_err(|e| PodError::io(format!("chmod {}", dir.display()), e))?;
    }
    Ok(())
}

/// The pod's cgroup parent must be in the driver's form: a slice
/// (`kubepods-burstable-pod<uid>.slice`, kubelet's systemd driver) for
/// systemd, a path for cgroupfs (as CRI-O checks).
pub(crate) fn check_cgroup_parent(parent: &str, systemd: bool) -> Result<()> {
    use crate::runtime::cgroups::systemd::{SLICE_SUFFIX, SystemdUnit};
    if parent.is_empty() {
        return Ok(());
    }
    let is_slice = parent.ends_with(SLICE_SUFFIX) && !parent.contains('/');
    if systemd {
        if !is_slice || parent.contains(':') {
            return Err(PodError::InvalidArgument(format!(
                "cgroup parent {parent:?} is not a systemd slice (name.slice), and berth runs the systemd cgroup driver ([cgroup] driver; kubelet's cgroupDriver must match)"
            )));
        }
        SystemdUnit::parse(parent).map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        return Ok(());
    }
    if is_slice || parent.contains(':') {
        return Err(PodError::InvalidArgument(format!(
            "cgroup parent {parent:?} is a systemd slice, and berth runs the cgroupfs cgroup driver ([cgroup] driver = \"systemd\" for kubelet's cgroupDriver: systemd)"
        )));
    }
    Ok(())
}

fn network_request(
    config: &cri::PodSandboxConfig,
    id: &str,
    netns: &std::path::Path,
) -> PodNetworkRequest {
    let meta = config.metadata.clone().unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => Protocol::Udp,
                Ok(cri::Protocol::Sctp) => Protocol::Sctp,
                _ => Protocol::Tcp,
            },
            container_port: p.container_port as u16,
            host_port: p.host_port as u16,
            host_ip: p.host_ip.parse().ok(),
        })
        .collect();
    PodNetworkRequest {
        pod_id: id.to_owned(),
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        netns_path: netns.to_owned(),
        port_mappings,
        dns: config.dns_config.as_ref().map(|d| network::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        bandwidth: None,
    }
}

#[cfg(test)]
mod cgroup_parent_tests {
    use super::check_cgroup_parent;

    #[test]
    fn parents_must_match_the_driver() {
        // systemd: kubelet's slices only.
        assert!(check_cgroup_parent("kubepods-burstable-pod12.slice", true).is_ok());
        assert!(check_cgroup_parent("", true).is_ok());
        for bad in [
            "/kubepods/pod1",
            "kubepods--x.slice",
            "a.slice:b:c",
            "/kubepods.slice/x.slice",
        ] {
            assert!(
                check_cgroup_parent(bad, true).is_err(),
                "{bad} accepted by systemd"
            );
        }
        // cgroupfs: paths only.
        assert!(check_cgroup_parent("/kubepods/burstable/pod1", false).is_ok());
        for bad in ["kubepods-burstable-pod12.slice", "system.slice:x:y"] {
            assert!(
                check_cgroup_parent(bad, false).is_err(),
                "{bad} accepted by cgroupfs"
            );
        }
    }
}
