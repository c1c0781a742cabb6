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

/// A CRI container event of `kind` for `container_id` in `pod_id`.
pub fn event(kind: cri::ContainerEventType, container_id: &str, pod_id: &str) -> ContainerEvent {
    cri::ContainerEventResponse {
        container_id: container_id.to_owned(),
        container_event_type: kind as i32,
        created_at: super::now_ns(),
        pod_sandbox_status: None,
        containers_statuses: Vec::new(),
    }
    .with_pod(pod_id)
}

trait WithPod {
    fn with_pod(self, pod_id: &str) -> Self;
}

impl WithPod for ContainerEvent {
    fn with_pod(mut self, pod_id: &str) -> Self {
        self.pod_sandbox_status = Some(cri::PodSandboxStatus {
            id: pod_id.to_owned(),
            ..Default::default()
        });
        self
    }
}
