//! A pod's shim that dies (kill -9, a crash, the OOM killer) is noticed the
//! way containerd notices it: its ttrpc connection closes. berthd then does
//! what containerd's `cleanupAfterDeadShim` does: runs the shim binary's
//! `delete` for every container the shim held (it kills what is left of the
//! container through its cgroup — the processes were re-parented, not
//! killed —, removes the cgroup and unmounts the rootfs), records the exit
//! it reports (128 + SIGKILL; 255 when even that fails, as containerd),
//! removes the dead shim's sockets, and marks the pod NOTREADY. Stop and
//! RemovePodSandbox then succeed and remove the pod's network, IP lease and
//! mounts as for any pod.

use std::sync::Arc;

use k8s_cri::v1 as cri;

use super::shim_client::{self, ShimClient};
use super::{PodManager, Result, now_ns};
use crate::store::{ContainerRecord, ContainerState, PodState};

/// Exit status recorded when the dead shim's cleanup could not say (as
/// containerd).
const UNKNOWN_EXIT: u32 = 255;
/// The message of a container whose shim died.
const DEAD_SHIM_MESSAGE: &str = "the container's shim exited unexpectedly";

impl PodManager {
    /// Makes `shim` the pod's connected shim, and watches its connection:
    /// when it closes while the shim is still the pod's, the shim died.
    pub(crate) fn register_shim(&self, pod_id: &str, shim: Arc<ShimClient>) {
        let fifo = super::shim_log::open(&self.pod_dir(pod_id));
        self.register_shim_with_log(pod_id, shim, fifo);
    }

    /// As [`Self::register_shim`], relaying the shim's log from `fifo`
    /// (opened before the shim started: see `shim_log`).
    pub(crate) fn register_shim_with_log(
        &self,
        pod_id: &str,
        shim: Arc<ShimClient>,
        fifo: super::Result<tokio::net::unix::pipe::Receiver>,
    ) {
        match fifo {
            Ok(fifo) => super::shim_log::relay(pod_id, fifo, shim.clone()),
            Err(e) => tracing::warn!(pod = %pod_id, error = %e, "the shim's log is not relayed"),
        }
        super::lock(&self.shims).insert(pod_id.to_owned(), shim.clone());
        let me = self.me.clone();
        let pod_id = pod_id.to_owned();
        tokio::spawn(async move {
            shim.closed().await;
            let Some(me) = me.upgrade() else { return };
            me.on_shim_closed(&pod_id, &shim).await;
        });
    }

    async fn on_shim_closed(&self, pod_id: &str, shim: &Arc<ShimClient>) {
        {
            let mut shims = super::lock(&self.shims);
            match shims.get(pod_id) {
                // Shut down on purpose (removed first), or replaced.
                Some(s) if Arc::ptr_eq(s, shim) => {
                    shims.remove(pod_id);
                }
                _ => return,
            }
        }
        // A connection can close with the shim alive (it never does here,
        // but a shim is not trusted to be dead on that alone): a shim that
        // answers on its socket gets a new connection, and the containers'
        // Waits are made on it again.
        if let Ok(c) = ShimClient::connect_alive(&shim.address).await {
            tracing::warn!(pod = %pod_id, shim = %shim.address, "shim connection closed; reconnected");
            let c = Arc::new(c);
            self.register_shim(pod_id, c.clone());
            for ctr in self.store.containers().unwrap_or_default() {
                if ctr.pod_id == pod_id && ctr.state == ContainerState::Running {
                    self.spawn_waiter(c.clone(), &ctr.id);
                }
            }
            return;
        }
        tracing::warn!(pod = %pod_id, shim = %shim.address, "shim disconnected: cleaning up after it");
        if let Err(e) = self.cleanup_after_dead_shim(pod_id, &shim.address).await {
            tracing::error!(pod = %pod_id, error = %e, "cleanup after a dead shim incomplete");
        }
    }

    /// Cleans up every container of the pod whose shim at `address` died,
    /// and marks the pod NOTREADY.
    pub(crate) async fn cleanup_after_dead_shim(&self, pod_id: &str, address: &str) -> Result<()> {
        let _pod = self.locks.exclusive(pod_id).await;
        let Some(mut pod) = self.store.pod(pod_id)? else {
            return Ok(());
        };
        if pod.shim_address.as_deref() != Some(address) {
            // Another shim serves the pod by now.
            return Ok(());
        }
        for c in self.store.containers()? {
            if c.pod_id != pod_id {
                continue;
            }
            let _c = self.locks.exclusive(&c.id).await;
            if let Some(c) = self.store.container(&c.id)? {
                self.cleanup_dead_shim_container(&c).await?;
            }
        }
        shim_client_sockets(address);
        pod.shim_address = None;
        let was_ready = pod.state == PodState::Ready;
        pod.state = PodState::NotReady;
        self.store.put_pod(&pod)?;
        if was_ready {
            self.emit(
                cri::ContainerEventType::ContainerStoppedEvent,
                &pod.id,
                &pod.id,
            );
        }
        tracing::info!(pod = %pod_id, "pod not ready: its shim died");
        Ok(())
    }

    /// One container of a dead shim: the shim binary's `delete` kills what
    /// is left through the cgroup and unmounts the rootfs; its exit is
    /// recorded. Caller holds the container's lock. Idempotent.
    pub(crate) async fn cleanup_dead_shim_container(&self, c: &ContainerRecord) -> Result<()> {
        if c.state == ContainerState::Exited && !c.bundle.join("rootfs").is_dir() {
            return Ok(());
        }
        let (status, at) = if c.bundle.is_dir() {
            match shim_client::delete_after_dead_shim(&c.id, &c.bundle).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "cleanup of a dead shim's container failed");
                    (UNKNOWN_EXIT, now_ns())
                }
            }
        } else {
            (UNKNOWN_EXIT, now_ns())
        };
        match c.state {
            ContainerState::Running | ContainerState::Unknown => {
                if c.state == ContainerState::Unknown {
                    let mut r = c.clone();
                    r.state = ContainerState::Running;
                    self.store.put_container(&r)?;
                }
                self.record_exit_with(&c.id, status, at, Some(DEAD_SHIM_MESSAGE))
            }
            ContainerState::Created => {
                let mut r = c.clone();
                r.state = ContainerState::Exited;
                r.exit_code = status as i32;
                r.finished_at = at;
                r.reason = "Error".into();
                r.message = DEAD_SHIM_MESSAGE.into();
                self.store.put_container(&r)?;
                Ok(())
            }
            ContainerState::Exited => Ok(()),
        }
    }
}

fn shim_client_sockets(address: &str) {
    super::container_lifecycle::remove_dead_shim_sockets(address);
}
