//! berthd restart: pods and containers come back from the store; running
//! containers were never touched (their shim outlived berthd); exits that
//! happened meanwhile are read from the shim; half-made pods are removed.

use super::shim_client::ShimClient;
use super::{PodManager, Result};
use crate::store::ContainerState;

impl PodManager {
    pub(crate) async fn recover(&self) -> Result<()> {
        let _guard = self.lock.lock().await;
        let pods = self.store.pods()?;
        for pod in &pods {
            let Some(addr) = &pod.shim_address else {
                continue;
            };
            match ShimClient::connect(addr) {
                Ok(c) if c.alive() => {
                    self.shims
                        .lock()
                        .expect("shims lock")
                        .insert(pod.id.clone(), std::sync::Arc::new(c));
                }
                _ => tracing::warn!(pod = %pod.id, shim = %addr, "the pod's shim is gone"),
            }
        }
        for mut c in self.store.containers()? {
            if c.state != ContainerState::Running {
                continue;
            }
            let shim = self
                .shims
                .lock()
                .expect("shims lock")
                .get(&c.pod_id)
                .cloned();
            let Some(shim) = shim else {
                c.state = ContainerState::Exited;
                c.exit_code = 255;
                c.reason = "Unknown".into();
                c.message = "the container's shim was gone when berthd restarted".into();
                c.finished_at = super::now_ns();
                self.store.put_container(&c)?;
                continue;
            };
            let id = c.id.clone();
            let s = shim.clone();
            let st = tokio::task::spawn_blocking(move || s.state(&id, ""))
                .await
                .map_err(|e| super::PodError::Shim(e.to_string()))?;
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
