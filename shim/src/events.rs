//! Events to containerd, published in order from one thread so that no RPC
//! ever waits on containerd.

use std::sync::mpsc::{Sender, channel};

use containerd_shim::Context;
use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;

use crate::error::{Result, ShimError};

type Envelope = (String, Box<dyn MessageDyn>);

/// Queues events for containerd, in the order they were sent.
#[derive(Clone)]
pub struct EventSender {
    tx: Option<Sender<Envelope>>,
}

impl EventSender {
    /// Starts the publishing thread for `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Result<EventSender> {
        let (tx, rx) = channel::<Envelope>();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for (topic, event) in rx {
                    if let Err(e) = publisher.publish(Context::default(), &topic, &namespace, event)
                    {
                        tracing::warn!(topic = %topic, error = %e, "publish event failed");
                    }
                }
            })
            .map_err(ShimError::io("spawn events thread"))?;
        Ok(EventSender { tx: Some(tx) })
    }

    /// A sender that drops everything (tests, `delete`).
    #[cfg(test)]
    pub fn discard() -> EventSender {
        EventSender { tx: None }
    }

    /// Queues `event` under its topic.
    pub fn send<E: Event>(&self, event: E) {
        let topic = event.topic();
        tracing::debug!(topic = %topic, "event");
        if let Some(tx) = &self.tx
            && tx.send((topic, Box::new(event))).is_err()
        {
            tracing::warn!("events thread is gone");
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
