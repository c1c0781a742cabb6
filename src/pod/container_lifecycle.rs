//! StartContainer, StopContainer, RemoveContainer, UpdateContainerResources,
//! and the exit waiter of each started container.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use k8s_cri::v1 as cri;

use super::shim_client::ShimClient;
use super::{PodError, PodManager, Result, now_ns};
use crate::store::{ContainerRecord, ContainerState, PodRecord};

/// How long a failed exit from Task.Wait waits for the shim's TaskExit
/// event (and the TaskOOM before it): see `await_exit_event`.
const EXIT_EVENT_GRACE: Duration = Duration::from_secs(2);

impl PodManager {
    /// The shim of the pod `pod_id`: the connected one, else a new
    /// connection to the stored address. Never starts a shim.
    pub(crate) async fn shim_of(&self, pod_id: &str) -> Result<Arc<ShimClient>> {
        if let Some(s) = self.connected_shim(pod_id) {
            return Ok(s);
        }
        let pod = self
            .store
            .pod(pod_id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id}")))?;
        let Some(addr) = pod.shim_address else {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {pod_id} has no shim"
            )));
        };
        let _serial = self.locks.exclusive(&super::shim_lock_key(pod_id)).await;
        if let Some(s) = self.connected_shim(pod_id) {
            return Ok(s);
        }
        let c = Arc::new(ShimClient::connect_alive(&addr).await?);
        self.register_shim(pod_id, c.clone());
        Ok(c)
    }

    /// The connected shim of `pod_id`, unless its connection closed.
    pub(crate) fn connected_shim(&self, pod_id: &str) -> Option<Arc<ShimClient>> {
        super::lock(&self.shims)
            .get(pod_id)
            .filter(|s| !s.is_closed())
            .cloned()
    }

    fn container_or_not_found(&self, id: &str) -> Result<ContainerRecord> {
        self.resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))
    }

    /// Starts a created container.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container_or_not_found(id)?;
        let _pod = self.locks.shared(&c.pod_id).await;
        let _guard = self.locks.exclusive(&c.id).await;
        let mut c = self.container_or_not_found(&c.id)?;
        if c.state != ContainerState::Created {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                c.id, c.state
            )));
        }
        let shim = self.shim_of(&c.pod_id).await?;
        // The process may exit before Start returns: take the start time first.
        let started_at = now_ns();
        let pid = match shim.start(&c.id, "").await {
            Ok(pid) => pid,
            Err(e) => {
                c.state = ContainerState::Exited;
                c.finished_at = now_ns();
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = e.to_string();
                self.store.put_container(&c)?;
                return Err(e);
            }
        };
        c.state = ContainerState::Running;
        c.pid = pid;
        c.started_at = started_at;
        self.store.put_container(&c)?;
        self.spawn_waiter(shim, &c.id);
        self.emit(
            cri::ContainerEventType::ContainerStartedEvent,
            &c.id,
            &c.pod_id,
        );
        tracing::info!(container = %c.id, pid, "container started");
        Ok(())
    }

    /// A task pending in Task.Wait for the container's exit (a future on the
    /// shim's connection, no thread); records the exit.
    pub(crate) fn spawn_waiter(&self, shim: Arc<ShimClient>, id: &str) {
        let me = self.me.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let res = shim.wait(&id, "", 0).await;
            let Some(me) = me.upgrade() else { return };
            match res {
                Ok((status, at)) => {
                    if status != 0 {
                        me.await_exit_event(&id).await;
                    }
                    me.record_exit_event(&id, status, at).await
                }
                Err(e) => tracing::debug!(container = %id, error = %e, "wait ended"),
            }
        });
    }

    /// Gives the shim's TaskExit event a moment to record a failed exit
    /// that Task.Wait reported first. The shim publishes an OOM kill's
    /// TaskOOM before the TaskExit, on the events connection, but Wait
    /// answers on another one and can overtake both: recorded from Wait
    /// alone, the exit of an OOM-killed container whose cgroup is already
    /// gone (systemd removes an empty scope at once) would read "Error"
    /// until the TaskOOM came. containerd's CRI waits for the OOM event in
    /// the same way. Returns as soon as the exit is recorded, or after
    /// [`EXIT_EVENT_GRACE`] (a shim whose events cannot reach berthd).
    async fn await_exit_event(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + EXIT_EVENT_GRACE;
        while tokio::time::Instant::now() < deadline {
            match self.store.container(id) {
                Ok(Some(c)) if c.state == ContainerState::Running => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Records an exit learnt outside any operation on the container (its
    /// Wait or the shim's TaskExit event): waits for the container's own
    /// lock only.
    pub(crate) async fn record_exit_event(&self, id: &str, status: u32, at: i64) {
        let _guard = self.locks.exclusive(id).await;
        if let Err(e) = self.record_exit(id, status, at) {
            tracing::warn!(container = %id, error = %e, "record exit");
        }
    }

    /// Records a TaskOOM event. An exit recorded before it (the shim's OOM
    /// watcher and its reaper race, and so do Wait and the events) gets the
    /// reason `OOMKilled`, as containerd sets it on TaskOOM whatever the
    /// state; a running container's exit takes it from the OOM set.
    pub(crate) async fn record_oom_event(&self, id: &str) {
        let _guard = self.locks.exclusive(id).await;
        let c = match self.store.container(id) {
            Ok(Some(c)) => c,
            Ok(None) => {
                super::lock(&self.oom).remove(id);
                return;
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "record OOM");
                return;
            }
        };
        if c.state != ContainerState::Exited {
            return;
        }
        super::lock(&self.oom).remove(id);
        if c.reason == "OOMKilled" {
            return;
        }
        let mut c = c;
        c.reason = "OOMKilled".into();
        if let Err(e) = self.store.put_container(&c) {
            tracing::warn!(container = %id, error = %e, "record OOM");
            return;
        }
        tracing::info!(container = %id, "exit reason: OOMKilled (TaskOOM after the exit)");
    }

    /// Records an exit unless one was recorded already. Caller holds the
    /// container's lock.
    pub(crate) fn record_exit(&self, id: &str, status: u32, at: i64) -> Result<()> {
        self.record_exit_with(id, status, at, None)
    }

    /// As [`Self::record_exit`], with a message (why berthd, not the shim,
    /// decided the container exited).
    pub(crate) fn record_exit_with(
        &self,
        id: &str,
        status: u32,
        at: i64,
        message: Option<&str>,
    ) -> Result<()> {
        let Some(mut c) = self.store.container(id)? else {
            return Ok(());
        };
        if c.state != ContainerState::Running {
            return Ok(());
        }
        c.state = ContainerState::Exited;
        c.exit_code = status as i32;
        c.finished_at = at.max(c.started_at);
        let oom = super::lock(&self.oom).remove(id) || c.cgroup.as_deref().is_some_and(oom_killed);
        c.reason = if oom {
            "OOMKilled".into()
        } else if status == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        if let Some(m) = message {
            c.message = m.to_owned();
        }
        self.store.put_container(&c)?;
        self.emit(
            cri::ContainerEventType::ContainerStoppedEvent,
            &c.id,
            &c.pod_id,
        );
        tracing::info!(container = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`
    /// seconds. The grace period is waited out holding no lock: other
    /// operations, also on this container (status, a RemoveContainer that
    /// kills it at once), go on meanwhile.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let c = self.container_or_not_found(id)?;
        if timeout <= 0 {
            let _guard = self.locks.exclusive(&c.id).await;
            return self.stop_container_locked(&c.id, 0).await;
        }
        let (shim, signal) = {
            let _guard = self.locks.exclusive(&c.id).await;
            let Some(c) = self.store.container(&c.id)? else {
                return Ok(());
            };
            if c.state != ContainerState::Running && c.state != ContainerState::Unknown {
                return self.stop_container_locked(&c.id, 0).await;
            }
            let shim = match self.shim_of(&c.pod_id).await {
                Ok(s) => s,
                Err(e) => return self.stop_without_shim(&c, &e).await,
            };
            // The image's STOPSIGNAL, else SIGTERM (as containerd does).
            let signal = super::stop_signal::stop_signal(&c.id, &c.stop_signal);
            if let Err(e) = shim.kill(&c.id, "", signal as u32, false).await {
                tracing::debug!(container = %c.id, signal, error = %e, "stop signal");
            }
            (shim, signal)
        };
        let waited =
            tokio::time::timeout(Duration::from_secs(timeout as u64), shim.wait(&c.id, "", 0))
                .await;
        let _guard = self.locks.exclusive(&c.id).await;
        match waited {
            Ok(done) => self.finish_stop(&c, &shim, done).await,
            Err(_) => {
                tracing::info!(container = %c.id, timeout, signal, "no exit after the stop signal; sending SIGKILL");
                self.stop_container_locked(&c.id, 0).await
            }
        }
    }

    /// Stops a container at once (SIGKILL); caller holds the container's
    /// lock. Idempotent.
    pub(crate) async fn stop_container_locked(&self, id: &str, _timeout: i64) -> Result<()> {
        let Some(c) = self.store.container(id)? else {
            return Ok(());
        };
        match c.state {
            ContainerState::Running | ContainerState::Unknown => {}
            ContainerState::Created => {
                // Never started: kill the waiting init so the task can go.
                if let Ok(shim) = self.shim_of(&c.pod_id).await {
                    let _ = shim.kill(&c.id, "", libc::SIGKILL as u32, true).await;
                }
                let mut c = c;
                c.state = ContainerState::Exited;
                c.finished_at = now_ns();
                c.exit_code = 137;
                c.reason = "Error".into();
                self.store.put_container(&c)?;
                return Ok(());
            }
            ContainerState::Exited => return Ok(()),
        }
        let shim = match self.shim_of(&c.pod_id).await {
            Ok(s) => s,
            Err(e) => return self.stop_without_shim(&c, &e).await,
        };
        if let Err(e) = shim.kill(&c.id, "", libc::SIGKILL as u32, true).await {
            tracing::debug!(container = %c.id, error = %e, "SIGKILL");
        }
        let done = shim.wait(&c.id, "", 0).await;
        self.finish_stop(&c, &shim, done).await
    }

    /// The pod's shim is gone: so is the container, once what is left of it
    /// is killed through its cgroup (see [`Self::cleanup_dead_shim_container`]).
    async fn stop_without_shim(&self, c: &ContainerRecord, e: &PodError) -> Result<()> {
        tracing::warn!(container = %c.id, error = %e, "shim unreachable; cleaning up after it");
        self.cleanup_dead_shim_container(c).await
    }

    async fn finish_stop(
        &self,
        c: &ContainerRecord,
        shim: &ShimClient,
        done: Result<(u32, i64)>,
    ) -> Result<()> {
        match done {
            Ok((status, at)) => self.record_exit(&c.id, status, at),
            Err(PodError::NotFound(_)) => self.record_exit(&c.id, 137, now_ns()),
            // The shim died under the call.
            Err(e) if shim.is_closed() => self.stop_without_shim(c, &e).await,
            Err(e) => Err(e),
        }
    }

    /// Removes a container (force-stopping it first). Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(c) = self.resolve_container(id)? else {
            return Ok(());
        };
        let _guard = self.locks.exclusive(&c.id).await;
        self.remove_container_locked(&c.id).await
    }

    /// Removes a container; caller holds the container's lock.
    pub(crate) async fn remove_container_locked(&self, id: &str) -> Result<()> {
        let Some(c) = self.store.container(id)? else {
            return Ok(());
        };
        self.stop_container_locked(id, 0).await?;
        if let Some(shim) = self.reachable_shim(&c.pod_id).await {
            match shim.delete(&c.id, "").await {
                Ok(()) | Err(PodError::NotFound(_)) => {}
                Err(_) if shim.is_closed() => {}
                Err(e) => return Err(e),
            }
        }
        crate::pod::namespaces::unmount_dir(&c.bundle.join("rootfs"))?;
        self.images.remove_rootfs(&c.id)?;
        self.release_image_volumes(&c).await?;
        super::remove_dir_all(&c.bundle)?;
        self.store.delete_container(&c.id)?;
        self.names.release(
            &super::locks::container_name(&c.pod_id, &c.name, c.attempt),
            &c.id,
        );
        self.cpu_rates.forget(&c.id);
        self.emit(
            cri::ContainerEventType::ContainerDeletedEvent,
            &c.id,
            &c.pod_id,
        );
        tracing::info!(container = %c.id, "container removed");
        Ok(())
    }

    /// The pod's shim if it is connected or answers a reconnect.
    async fn reachable_shim(&self, pod_id: &str) -> Option<Arc<ShimClient>> {
        self.shim_of(pod_id).await.ok()
    }

    /// Applies new resources to a running container.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let c = self.container_or_not_found(id)?;
        let Some(linux) = linux else {
            return Ok(());
        };
        let res = crate::spec::oci_resources(&linux, &super::cgroup_host_facts())?;
        // The kernel refuses a memory limit below the current usage (EBUSY),
        // after the cpu limits were already written: refuse it up front.
        if linux.memory_limit_in_bytes > 0
            && let Some(usage) = c.cgroup.as_deref().and_then(memory_usage)
            && usage > linux.memory_limit_in_bytes as u64
        {
            return Err(PodError::InvalidArgument(format!(
                "memory limit {} is below container {}'s current memory usage {usage}",
                linux.memory_limit_in_bytes, c.id
            )));
        }
        let json = serde_json::to_vec(&res).map_err(|e| PodError::Shim(e.to_string()))?;
        let req = api::UpdateTaskRequest {
            id: c.id.clone(),
            resources: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: json,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let _guard = self.locks.exclusive(&c.id).await;
        let Some(mut c) = self.store.container(&c.id)? else {
            return Err(PodError::NotFound(format!("container {id}")));
        };
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}: only a created or running container can be updated",
                c.id, c.state
            )));
        }
        let shim = self.shim_of(&c.pod_id).await?;
        shim.update(&req).await?;
        // Remembered in the container's config, as containerd does, so that
        // ContainerStatus reports the resources in force.
        use prost::Message;
        let mut config = cri::ContainerConfig::decode(c.config.as_slice()).unwrap_or_default();
        let stored = config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        merge_resources(stored, &linux);
        c.config = config.encode_to_vec();
        self.store.put_container(&c)?;
        Ok(())
    }

    /// ReopenContainerLog: after kubelet renamed the log file away, starts a
    /// new one. The shim's log writer notices the new file (another inode at
    /// the path) at its next record and writes there.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let c = self.container_or_not_found(id)?;
        if c.state != ContainerState::Running {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if c.log_path.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&c.log_path)
            .map(drop)
            .map_err(|e| PodError::io(format!("create {}", c.log_path), e))
    }

    /// Shuts the pod's shim down (once it holds no container). Best effort.
    /// A shim that is gone leaves its sockets behind: they are removed.
    pub(crate) async fn shutdown_shim(&self, pod: &PodRecord) {
        // Out of the map first: its connection closing is no death.
        let shim = super::lock(&self.shims).remove(&pod.id);
        let shim = match shim.filter(|s| !s.is_closed()) {
            Some(s) => Some(s),
            None => match pod.shim_address.as_deref() {
                Some(a) => ShimClient::connect(a).await.ok().map(Arc::new),
                None => None,
            },
        };
        if let Some(shim) = shim
            && let Some(pid) = shim.shim_pid().await
        {
            let _ = shim.shutdown().await;
            wait_gone(pid as i32).await;
        } else if let Some(addr) = pod.shim_address.as_deref() {
            remove_dead_shim_sockets(addr);
        }
    }
}

/// Removes a dead shim's ttrpc and attach sockets, unless a live shim
/// answers on them.
pub(crate) fn remove_dead_shim_sockets(address: &str) {
    let path = std::path::Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return;
    }
    for p in [path.to_path_buf(), crate::attach_wire::socket_path(address)] {
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::debug!(socket = %p.display(), "removed a dead shim's socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %p.display(), error = %e, "remove a dead shim's socket")
            }
        }
    }
}

/// Waits (bounded) until the process `pid` has exited. A zombie counts as
/// exited: the shim daemonised, so its parent is pid 1, not berthd.
/// Polls from 200 µs up (a shim exits about a millisecond after it answers
/// Shutdown: a fixed 10 ms step made every RemovePodSandbox wait ~10 ms).
async fn wait_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut step = Duration::from_micros(200);
    while tokio::time::Instant::now() < deadline {
        if crate::runtime::has_exited(pid) {
            return;
        }
        tokio::time::sleep(step).await;
        step = (step * 2).min(Duration::from_millis(10));
    }
    tracing::warn!(shim_pid = pid, "shim still running after Shutdown");
}

/// An update over the resources in force: what it sets (non-zero,
/// non-empty) replaces, the rest stays (containerd's `WithResources`).
fn merge_resources(
    stored: &mut cri::LinuxContainerResources,
    update: &cri::LinuxContainerResources,
) {
    let set = |dst: &mut i64, v: i64| {
        if v != 0 {
            *dst = v;
        }
    };
    set(&mut stored.cpu_period, update.cpu_period);
    set(&mut stored.cpu_quota, update.cpu_quota);
    set(&mut stored.cpu_shares, update.cpu_shares);
    set(
        &mut stored.memory_limit_in_bytes,
        update.memory_limit_in_bytes,
    );
    set(
        &mut stored.memory_swap_limit_in_bytes,
        update.memory_swap_limit_in_bytes,
    );
    if !update.cpuset_cpus.is_empty() {
        stored.cpuset_cpus = update.cpuset_cpus.clone();
    }
    if !update.cpuset_mems.is_empty() {
        stored.cpuset_mems = update.cpuset_mems.clone();
    }
    if !update.hugepage_limits.is_empty() {
        stored.hugepage_limits = update.hugepage_limits.clone();
    }
    stored
        .unified
        .extend(update.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// The current memory usage of the cgroup at `path` (either driver's
/// form; v1 `memory.usage_in_bytes`, v2 `memory.current`).
fn memory_usage(path: &str) -> Option<u64> {
    let m = crate::runtime::cgroups::CgroupManager::new(path).ok()?;
    m.stats().ok().map(|s| s.memory_usage_bytes)
}

/// Whether the OOM killer killed a process of the cgroup at `path` (either
/// driver's form): v1's `memory.oom_control` or v2's `memory.events`
/// (`oom_kill N`). This covers exits whose TaskOOM event berthd missed (it
/// was down, or the exit was seen first). The shim removes the cgroup only
/// on Task.Delete, so it is still there when the exit is recorded.
fn oom_killed(path: &str) -> bool {
    crate::runtime::cgroups::CgroupManager::new(path)
        .and_then(|m| m.stats())
        .is_ok_and(|s| s.oom_kills > 0)
}
