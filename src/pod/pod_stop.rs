//! StopPodSandbox: stops every container of the pod and tears down its
//! network. Idempotent; an unknown pod is not an error (kubelet retries).

use super::{PodManager, Result};
use crate::store::PodState;

impl PodManager {
    /// Stops the pod's containers (SIGKILL, as containerd does for a pod
    /// stop) and tears down its network.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let Some(pod) = self.resolve_pod(id)? else {
            return Ok(());
        };
        let _guard = self.locks.exclusive(&pod.id).await;
        self.stop_pod_locked(&pod.id).await
    }

    /// Stops the pod; caller holds the pod's lock exclusively.
    pub(crate) async fn stop_pod_locked(&self, id: &str) -> Result<()> {
        let Some(mut pod) = self.store.pod(id)? else {
            return Ok(());
        };
        for c in self.store.containers_of(&pod.id)? {
            let _c = self.locks.exclusive(&c.id).await;
            self.stop_container_locked(&c.id, 0).await?;
        }
        if pod.network {
            if let (Some(net), Some(netns)) = (&self.network, &pod.netns) {
                net.teardown(&pod.id, netns).await?;
            }
            pod.network = false;
        }
        if pod.state != PodState::NotReady || !pod.ips.is_empty() {
            let was_ready = pod.state != PodState::NotReady;
            pod.state = PodState::NotReady;
            self.store.put_pod(&pod)?;
            if was_ready {
                self.emit(
                    k8s_cri::v1::ContainerEventType::ContainerStoppedEvent,
                    &pod.id,
                    &pod.id,
                );
            }
        }
        tracing::info!(pod = %pod.id, "pod stopped");
        Ok(())
    }
}
