//! RemovePodSandbox: force-stops and removes the pod's containers, shuts its
//! shim down, and removes every namespace pin, mount, cgroup and file.
//! Idempotent: an unknown pod is not an error.

use super::namespaces::{unmount_dir, unpin};
use super::{PodError, PodManager, Result, remove_dir_all};
use crate::store::PodRecord;

impl PodManager {
    /// Removes the pod and everything it holds.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Some(pod) = self.resolve_pod(id)? else {
            return Ok(());
        };
        let _guard = self.locks.exclusive(&pod.id).await;
        // Stops the containers and tears the network down; a CNI DEL that
        // fails fails this call too, and the pod stays for kubelet to retry.
        self.stop_pod_locked(&pod.id).await?;
        // As the stop left it (network torn down, so not torn down twice).
        let Some(pod) = self.store.pod(&pod.id)? else {
            return Ok(());
        };
        for c in self.store.containers_of(&pod.id)? {
            let _c = self.locks.exclusive(&c.id).await;
            self.remove_container_locked(&c.id).await?;
        }
        self.shutdown_shim(&pod).await;
        self.teardown_pod(&pod).await?;
        self.store.delete_pod(&pod.id)?;
        self.names.release(
            &super::locks::pod_name(&pod.name, &pod.namespace, &pod.uid, pod.attempt),
            &pod.id,
        );
        self.emit(
            k8s_cri::v1::ContainerEventType::ContainerDeletedEvent,
            &pod.id,
            &pod.id,
        );
        self.cpu_rates.forget(&super::pod_stats::pod_key(&pod.id));
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(())
    }

    /// Removes what setup made (also a half-made pod). Idempotent.
    pub(crate) async fn teardown_pod(&self, pod: &PodRecord) -> Result<()> {
        let mut first_err: Option<PodError> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        if pod.network
            && let (Some(net), Some(netns)) = (&self.network, &pod.netns)
        {
            keep(net.teardown(&pod.id, netns).await.map_err(Into::into));
        }
        if let Some(pid) = pod.init_pid {
            super::pod_init::kill(pid, &pod.id);
        }
        if let Some(p) = &pod.netns {
            keep(crate::network::remove_netns(p).map_err(Into::into));
        }
        for p in [&pod.ipcns, &pod.utsns, &pod.pidns, &pod.userns]
            .into_iter()
            .flatten()
        {
            keep(unpin(p));
        }
        keep(unmount_dir(&pod.dir.join("shm")));
        keep(self.remove_image_volumes(pod));
        if let Some(cg) = &pod.cgroup {
            match crate::runtime::cgroups::CgroupManager::new(cg) {
                Ok(m) => keep(
                    m.destroy()
                        .map_err(|e| PodError::Cgroup(format!("{cg}: {e}"))),
                ),
                Err(e) => keep(Err(PodError::Cgroup(e.to_string()))),
            }
        }
        keep(remove_dir_all(&pod.dir));
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
