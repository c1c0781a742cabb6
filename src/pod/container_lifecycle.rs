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

impl PodManager {
    /// The shim of the pod `pod_id` (reconnecting with the stored address).
    pub(crate) fn shim_of(&self, pod_id: &str) -> Result<Arc<ShimClient>> {
        if let Some(s) = self.shims.lock().expect("shims lock").get(pod_id) {
            return Ok(s.clone());
        }
        let mut pod = self
            .store
            .pod(pod_id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id}")))?;
        if pod.shim_address.is_none() {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {pod_id} has no shim"
            )));
        }
        self.pod_shim(&mut pod)
    }

    fn container_or_not_found(&self, id: &str) -> Result<ContainerRecord> {
        self.resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))
    }

    /// Starts a created container.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let mut c = self.container_or_not_found(id)?;
        if c.state != ContainerState::Created {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                c.id, c.state
            )));
        }
        let shim = self.shim_of(&c.pod_id)?;
        let cid = c.id.clone();
        let s = shim.clone();
        // The process may exit before Start returns: take the start time first.
        let started_at = now_ns();
        let pid = tokio::task::spawn_blocking(move || s.start(&cid, ""))
            .await
            .map_err(|e| PodError::Shim(format!("start task: {e}")))?;
        let pid = match pid {
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

    /// A thread blocked in Task.Wait for the container's exit; records it.
    pub(crate) fn spawn_waiter(&self, shim: Arc<ShimClient>, id: &str) {
        let me = self.me.clone();
        let id = id.to_owned();
        let spawned = std::thread::Builder::new()
            .name("exit-waiter".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let res = shim.wait(&id, "", 0);
                let Some(me) = me.upgrade() else { return };
                match res {
                    Ok((status, at)) => {
                        let _guard = me.lock.blocking_lock();
                        if let Err(e) = me.record_exit(&id, status, at) {
                            tracing::warn!(container = %id, error = %e, "record exit");
                        }
                    }
                    Err(e) => tracing::debug!(container = %id, error = %e, "wait ended"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "spawn exit waiter");
        }
    }

    /// Records an exit unless one was recorded already. Caller holds the lock.
    pub(crate) fn record_exit(&self, id: &str, status: u32, at: i64) -> Result<()> {
        let Some(mut c) = self.store.container(id)? else {
            return Ok(());
        };
        if c.state != ContainerState::Running {
            return Ok(());
        }
        c.state = ContainerState::Exited;
        c.exit_code = status as i32;
        c.finished_at = at.max(c.started_at);
        let oom = self.oom.lock().expect("oom lock").remove(id)
            || c.cgroup.as_deref().is_some_and(oom_killed);
        c.reason = if oom {
            "OOMKilled".into()
        } else if status == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        self.store.put_container(&c)?;
        self.emit(
            cri::ContainerEventType::ContainerStoppedEvent,
            &c.id,
            &c.pod_id,
        );
        tracing::info!(container = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
        Ok(())
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout` seconds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let _guard = self.lock.lock().await;
        let c = self.container_or_not_found(id)?;
        self.stop_container_locked(&c.id, timeout).await
    }

    /// Stops a container; caller holds the lock. Idempotent.
    pub(crate) async fn stop_container_locked(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.store.container(id)? else {
            return Ok(());
        };
        match c.state {
            ContainerState::Running | ContainerState::Unknown => {}
            ContainerState::Created => {
                // Never started: kill the waiting init so the task can go.
                if let Ok(shim) = self.shim_of(&c.pod_id) {
                    let cid = c.id.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        shim.kill(&cid, "", libc::SIGKILL as u32, true)
                    })
                    .await;
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
        let shim = match self.shim_of(&c.pod_id) {
            Ok(s) => s,
            Err(e) => {
                // The shim is gone: so is the container.
                tracing::warn!(container = %c.id, error = %e, "shim unreachable; marking exited");
                return self.record_exit(&c.id, 137, now_ns());
            }
        };
        let cid = c.id.clone();
        let waiter = {
            let s = shim.clone();
            let cid = cid.clone();
            tokio::task::spawn_blocking(move || s.wait(&cid, "", 0))
        };
        tokio::pin!(waiter);
        if timeout > 0 {
            let s = shim.clone();
            let cid2 = cid.clone();
            // The image's STOPSIGNAL, else SIGTERM (as containerd does).
            let signal = super::stop_signal::stop_signal(&cid, &c.stop_signal);
            let sent = tokio::task::spawn_blocking(move || s.kill(&cid2, "", signal as u32, false))
                .await
                .map_err(|e| PodError::Shim(e.to_string()))?;
            if let Err(e) = sent {
                tracing::debug!(container = %cid, signal, error = %e, "stop signal");
            }
            if let Ok(done) =
                tokio::time::timeout(Duration::from_secs(timeout as u64), &mut waiter).await
            {
                return self.finish_stop(&cid, done);
            }
            tracing::info!(container = %cid, timeout, "no exit after the stop signal; sending SIGKILL");
        }
        let s = shim.clone();
        let cid2 = cid.clone();
        let sent =
            tokio::task::spawn_blocking(move || s.kill(&cid2, "", libc::SIGKILL as u32, true))
                .await
                .map_err(|e| PodError::Shim(e.to_string()))?;
        if let Err(e) = sent {
            tracing::debug!(container = %cid, error = %e, "SIGKILL");
        }
        let done = waiter.await;
        self.finish_stop(&cid, done)
    }

    fn finish_stop(
        &self,
        id: &str,
        done: std::result::Result<Result<(u32, i64)>, tokio::task::JoinError>,
    ) -> Result<()> {
        match done {
            Ok(Ok((status, at))) => self.record_exit(id, status, at),
            Ok(Err(PodError::NotFound(_))) => self.record_exit(id, 137, now_ns()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(PodError::Shim(e.to_string())),
        }
    }

    /// Removes a container (force-stopping it first). Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let Some(c) = self.resolve_container(id)? else {
            return Ok(());
        };
        self.remove_container_locked(&c.id).await
    }

    pub(crate) async fn remove_container_locked(&self, id: &str) -> Result<()> {
        let Some(c) = self.store.container(id)? else {
            return Ok(());
        };
        self.stop_container_locked(id, 0).await?;
        if let Ok(shim) = self.shim_of(&c.pod_id) {
            let cid = c.id.clone();
            let res = tokio::task::spawn_blocking(move || shim.delete(&cid, ""))
                .await
                .map_err(|e| PodError::Shim(e.to_string()))?;
            match res {
                Ok(()) | Err(PodError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        crate::pod::namespaces::unmount_dir(&c.bundle.join("rootfs"))?;
        self.images.remove_rootfs(&c.id)?;
        super::remove_dir_all(&c.bundle)?;
        self.store.delete_container(&c.id)?;
        self.cpu_rates.forget(&c.id);
        self.emit(
            cri::ContainerEventType::ContainerDeletedEvent,
            &c.id,
            &c.pod_id,
        );
        tracing::info!(container = %c.id, "container removed");
        Ok(())
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
        let _guard = self.lock.lock().await;
        let Some(mut c) = self.store.container(&c.id)? else {
            return Err(PodError::NotFound(format!("container {id}")));
        };
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is {:?}: only a created or running container can be updated",
                c.id, c.state
            )));
        }
        let shim = self.shim_of(&c.pod_id)?;
        tokio::task::spawn_blocking(move || shim.update(&req))
            .await
            .map_err(|e| PodError::Shim(e.to_string()))??;
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
    pub(crate) async fn shutdown_shim(&self, pod: &PodRecord) {
        let shim = self.shims.lock().expect("shims lock").remove(&pod.id);
        let shim = match shim {
            Some(s) => Some(s),
            None => pod
                .shim_address
                .as_deref()
                .and_then(|a| ShimClient::connect(a).ok().map(Arc::new)),
        };
        if let Some(shim) = shim {
            let pid = shim.shim_pid();
            let _ = tokio::task::spawn_blocking(move || shim.shutdown()).await;
            if let Some(pid) = pid {
                wait_gone(pid as i32).await;
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
