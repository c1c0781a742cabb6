//! GetContainerEvents: a broadcast of container lifecycle events.

use k8s_cri::v1 as cri;
use tokio::sync::broadcast;

/// One container event.
pub type ContainerEvent = cri::ContainerEventResponse;

/// Fans container events out to every GetContainerEvents stream.
#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<ContainerEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }
}

impl EventHub {
    /// A new subscriber: it receives every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.tx.subscribe()
    }

    /// Sends an event (dropped when nobody listens).
    pub fn send(&self, event: ContainerEvent) {
        let _ = self.tx.send(event);
    }
}

impl EventHub {
    /// Whether any GetContainerEvents stream listens.
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

impl super::PodManager {
    /// Sends a CRI container event of `kind` for `container_id` (the pod's
    /// own id for the events of the pod sandbox itself, as containerd does)
    /// in `pod_id`, with the pod's status and the statuses of its
    /// containers as they are now, as containerd sends them. Built only
    /// when somebody listens.
    pub(crate) fn emit(&self, kind: cri::ContainerEventType, container_id: &str, pod_id: &str) {
        if !self.events.has_subscribers() {
            return;
        }
        let pod_sandbox_status = self.pod_status(pod_id, false).ok().map(|(s, _)| s);
        let containers_statuses = self
            .store
            .containers()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .filter_map(|c| self.container_status(&c.id, false).ok().map(|(s, _)| s))
            .collect();
        self.events.send(cri::ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: super::now_ns(),
            pod_sandbox_status,
            containers_statuses,
        });
    }
}

/// Records the init exits the shims publish (`TaskExit` on the events
/// endpoint) as soon as they come, also for containers whose Task.Wait
/// thread is not (yet) running, e.g. right after a berthd restart.
pub(crate) fn spawn_exit_recorder(
    manager: std::sync::Weak<super::PodManager>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<super::shim_client::ShimEvent>,
) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let Some(me) = manager.upgrade() else { return };
            // Each on its own task: an event waits for its container's lock
            // only, never behind another container's.
            match event {
                super::shim_client::ShimEvent::Exit(ev) => {
                    let at = ev
                        .exited_at
                        .as_ref()
                        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                        .unwrap_or_else(super::now_ns);
                    tracing::debug!(container = %ev.container_id, exit_status = ev.exit_status, "exit event");
                    tokio::spawn(async move {
                        me.record_exit_event(&ev.container_id, ev.exit_status, at)
                            .await;
                    });
                }
                super::shim_client::ShimEvent::Oom(id) => {
                    tokio::spawn(async move { me.record_oom_event(&id).await });
                }
            }
        }
    });
}
