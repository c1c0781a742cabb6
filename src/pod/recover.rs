//! berthd restart: pods and containers come back from the store; running
//! containers were never touched (their shim outlived berthd); exits that
//! happened meanwhile are read from the shim; half-made pods are removed.

use super::shim_client::ShimClient;
use super::{PodManager, Result};
use crate::store::ContainerState;

impl PodManager {
    pub(crate) async fn recover(&self) -> Result<()> {
        let mut pods = self.store.pods()?;
        // RunPodSandbox cut off by a crash: undo what it made, forget the pod.
        for pod in pods.iter().filter(|p| p.setting_up) {
            tracing::warn!(pod = %pod.id, "removing a pod whose creation was interrupted");
            if let Err(e) = self.teardown_pod(pod).await {
                tracing::error!(pod = %pod.id, error = %e, "cleanup of an interrupted pod incomplete");
                continue;
            }
            self.store.delete_pod(&pod.id)?;
        }
        pods.retain(|p| !p.setting_up);
        for pod in &pods {
            self.names
                .reserve(
                    &super::locks::pod_name(&pod.name, &pod.namespace, &pod.uid, pod.attempt),
                    &pod.id,
                )
                .ok();
            let Some(addr) = &pod.shim_address else {
                continue;
            };
            match ShimClient::connect_alive(addr).await {
                Ok(c) => self.register_shim(&pod.id, std::sync::Arc::new(c)),
                Err(_) => tracing::warn!(pod = %pod.id, shim = %addr, "the pod's shim is gone"),
            }
        }
        for mut c in self.store.containers()? {
            self.names
                .reserve(
                    &super::locks::container_name(&c.pod_id, &c.name, c.attempt),
                    &c.id,
                )
                .ok();
            if c.state != ContainerState::Running {
                continue;
            }
            let Some(shim) = self.connected_shim(&c.pod_id) else {
                c.state = ContainerState::Exited;
                c.exit_code = 255;
                c.reason = "Unknown".into();
                c.message = "the container's shim was gone when berthd restarted".into();
                c.finished_at = super::now_ns();
                self.store.put_container(&c)?;
                continue;
            };
            let st = shim.state(&c.id, "").await;
            match st {
                Ok(st)
                    if st.status.value() == containerd_shim_protos::api::Status::STOPPED as i32 =>
                {
                    let at = st
                        .exited_at
                        .as_ref()
                        .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                        .unwrap_or_else(super::now_ns);
                    self.record_exit(&c.id, st.exit_status, at)?;
                }
                Ok(_) => self.spawn_waiter(shim, &c.id),
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "container unknown to its shim");
                    self.record_exit(&c.id, 255, super::now_ns())?;
                }
            }
        }
        tracing::info!(pods = pods.len(), "pods and containers recovered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::pod::PodManager;
    use crate::store::{MetadataStore, PodRecord};

    /// A pod whose RunPodSandbox was cut off is removed at start-up, files
    /// and record; a finished pod stays.
    #[tokio::test]
    async fn interrupted_pod_creation_is_swept_on_start() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Arc::new(Config {
            root: tmp.path().join("root"),
            state: tmp.path().join("state"),
            ..Config::default()
        });
        let half_dir = config.state.join("pods").join("half");
        std::fs::create_dir_all(&half_dir).unwrap();
        std::fs::write(half_dir.join("hostname"), "half\n").unwrap();
        let done_dir = config.state.join("pods").join("done");
        std::fs::create_dir_all(&done_dir).unwrap();
        {
            let db = config.root.join("metadata").join("pods.redb");
            std::fs::create_dir_all(db.parent().unwrap()).unwrap();
            let store = MetadataStore::open(&db).unwrap();
            store
                .put_pod(&PodRecord {
                    id: "half".into(),
                    dir: half_dir.clone(),
                    utsns: Some(half_dir.join("utsns")),
                    setting_up: true,
                    ..Default::default()
                })
                .unwrap();
            store
                .put_pod(&PodRecord {
                    id: "done".into(),
                    dir: done_dir.clone(),
                    ..Default::default()
                })
                .unwrap();
        }
        let images = Arc::new(
            crate::image::ImageStore::open(&config.root.join("images"), &config.image)
                .await
                .unwrap(),
        );
        let pods = PodManager::open(config.clone(), images, None)
            .await
            .unwrap();
        let ids: Vec<String> = pods
            .store
            .pods()
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, vec!["done".to_owned()]);
        assert!(!half_dir.exists(), "the interrupted pod's dir is gone");
        assert!(done_dir.exists());
    }
}
