//! Pods and their containers: the lifecycle logic behind the CRI
//! RuntimeService (`cri/runtime_service.rs` only converts messages).
//!
//! A pod is not a container: its namespaces (net, ipc, uts) are created once
//! and pinned under `<state>/pods/<id>/` ([`namespaces`]); its files
//! (hostname, hosts, resolv.conf) and /dev/shm tmpfs live there too. The
//! containers of a pod run in one `containerd-shim-berth-v2` ([`shim_client`])
//! and join the pod's namespaces by path. Every state change is written to
//! the [`crate::store::MetadataStore`] before the call returns.
//!
//! One file per operation: `pod_run.rs`, `pod_stop.rs`, `pod_remove.rs`,
//! `pod_status.rs`, `container_*.rs`.

mod apparmor;
mod container_attach;
mod container_checkpoint;
mod container_create;
mod container_exec;
mod container_lifecycle;
mod container_status;
mod cpu_rate;
mod dead_shim;
mod error;
mod files;
mod host_devices;
mod host_features;
mod host_paths;
mod image_volumes;
mod limits;
mod locks;
pub mod namespaces;
mod oom_floor;
pub mod pod_init;
mod pod_metrics;
mod pod_reality;
mod pod_remove;
mod pod_resources;
mod pod_run;
mod pod_stats;
mod pod_status;
mod pod_stop;
mod pod_userns;
mod recover;
pub mod shim_client;
mod shim_log;
mod stop_signal;
mod stream_backend;

pub use host_features::HostFeatures;
pub use stream_backend::PodStreamBackend;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use error::PodError;

use crate::config::Config;
use crate::image::ImageStore;
use crate::network::PodNetwork;
use crate::store::MetadataStore;

use shim_client::ShimClient;

/// Result of pod and container operations.
pub type Result<T> = std::result::Result<T, PodError>;

/// Subdirectory of the state dir with one directory per pod.
pub const PODS_DIR: &str = "pods";
/// Size of a pod's /dev/shm tmpfs (containerd's default).
pub const SHM_SIZE: u64 = 64 << 20;

/// The pods and containers of one berthd.
pub struct PodManager {
    config: Arc<Config>,
    store: MetadataStore,
    images: Arc<ImageStore>,
    network: Option<PodNetwork>,
    /// One lock per pod and per container: only operations on the same
    /// object wait for each other (`locks.rs`).
    locks: locks::ObjectLocks,
    /// Pod and container names reserved for their ids.
    names: locks::NameIndex,
    /// Connected shims by pod id.
    shims: Mutex<HashMap<String, Arc<ShimClient>>>,
    /// The ttrpc events endpoint the shims publish to.
    events_address: String,
    events_socket: shim_client::EventsSocket,
    events: events::EventHub,
    /// Containers the OOM killer hit.
    oom: shim_client::OomSet,
    /// Last cpu samples, for `usage_nano_cores`.
    cpu_rates: cpu_rate::CpuRates,
    /// This manager, for the exit waiter and shim monitor tasks.
    me: std::sync::Weak<PodManager>,
    /// The cgroup driver in use: systemd (true) or cgroupfs.
    cgroup_systemd: bool,
}

mod events;
pub use events::{ContainerEvent, EventHub};

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager").finish_non_exhaustive()
    }
}

impl PodManager {
    /// Opens the pod/container database under the root and reconnects to
    /// the shims of the pods it lists.
    pub async fn open(
        config: Arc<Config>,
        images: Arc<ImageStore>,
        network: Option<PodNetwork>,
    ) -> Result<Arc<Self>> {
        let store = MetadataStore::open(&config.root.join("metadata").join("pods.redb"))?;
        let oom = shim_client::OomSet::default();
        let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
        let events_socket = shim_client::serve_events(&config.state, oom.clone(), exits_tx).await?;
        let events_address = events_socket.address.clone();
        let cgroup_systemd = config.cgroup.driver.is_systemd();
        tracing::info!(
            setting = ?config.cgroup.driver,
            driver = if cgroup_systemd { "systemd" } else { "cgroupfs" },
            "cgroup driver"
        );
        let manager = Arc::new_cyclic(|me| Self {
            cgroup_systemd,
            config,
            store,
            images,
            network,
            locks: locks::ObjectLocks::default(),
            names: locks::NameIndex::default(),
            shims: Mutex::new(HashMap::new()),
            events_address,
            events_socket,
            events: EventHub::default(),
            oom,
            cpu_rates: cpu_rate::CpuRates::default(),
            me: me.clone(),
        });
        manager.recover().await?;
        events::spawn_exit_recorder(Arc::downgrade(&manager), exits_rx);
        Ok(manager)
    }

    /// Clean shutdown: removes the events socket (the shims keep running
    /// and reconnect to the next berthd).
    pub fn shutdown(&self) {
        self.events_socket.remove();
    }

    /// The pod network, when berthd has one.
    pub fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    /// The container events broadcaster (GetContainerEvents).
    /// The kernel's user namespace and mount features (probed once).
    pub fn host_features(&self) -> HostFeatures {
        host_features::host_features(&self.config.root)
    }

    /// Whether pods and containers get systemd units (`[cgroup] driver`,
    /// auto: systemd when systemd is pid 1).
    pub fn cgroup_systemd(&self) -> bool {
        self.cgroup_systemd
    }

    pub fn events(&self) -> &EventHub {
        &self.events
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.config.state.join(PODS_DIR).join(id)
    }

    fn containers_dir(&self) -> PathBuf {
        self.config.state.join("containers")
    }

    /// Resolves a full id or a unique prefix of one.
    fn resolve<'a>(ids: impl Iterator<Item = &'a str>, prefix: &str) -> Option<String> {
        if prefix.is_empty() {
            return None;
        }
        let mut found = None;
        for id in ids {
            if id == prefix {
                return Some(id.to_owned());
            }
            if id.starts_with(prefix) {
                if found.is_some() {
                    return None;
                }
                found = Some(id.to_owned());
            }
        }
        found
    }

    fn resolve_pod(&self, id: &str) -> Result<Option<crate::store::PodRecord>> {
        if let Some(p) = self.store.pod(id)? {
            return Ok(Some(p));
        }
        let pods = self.store.pods()?;
        match Self::resolve(pods.iter().map(|p| p.id.as_str()), id) {
            Some(full) => Ok(pods.into_iter().find(|p| p.id == full)),
            None => Ok(None),
        }
    }

    fn resolve_container(&self, id: &str) -> Result<Option<crate::store::ContainerRecord>> {
        if let Some(c) = self.store.container(id)? {
            return Ok(Some(c));
        }
        let all = self.store.containers()?;
        match Self::resolve(all.iter().map(|c| c.id.as_str()), id) {
            Some(full) => Ok(all.into_iter().find(|c| c.id == full)),
            None => Ok(None),
        }
    }
}

/// The lock that serialises starting or reconnecting a pod's shim.
fn shim_lock_key(pod_id: &str) -> String {
    format!("shim/{pod_id}")
}

/// A std mutex whose poisoning is not a permanent failure: what it guards
/// (maps, sets) is consistent at every step, so the guard is taken back.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A new random 64-hex-digit id.
pub fn new_id() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| PodError::io("read /dev/urandom", e))?;
    Ok(hex::encode(buf))
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("remove {}", path.display()), e)),
    }
}

/// The cgroup facts of the machine for the spec generation (cgroup v2,
/// hugetlb, swap accounting), probed once.
pub(crate) fn cgroup_host_facts() -> crate::spec::HostFacts {
    let cg = crate::runtime::cgroups::CgroupFeatures::detect();
    crate::spec::HostFacts {
        cgroup_v2: cg.v2,
        hugetlb: cg.hugetlb,
        swap_accounting: cg.swap,
        ..Default::default()
    }
}
