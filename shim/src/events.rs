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
    /// Starts the publishing thread for `namespace`. When containerd
    /// restarts, the thread reconnects to `ttrpc_address` and retries.
    pub fn start(
        publisher: RemotePublisher,
        ttrpc_address: String,
        namespace: String,
    ) -> Result<EventSender> {
        let (tx, rx) = channel::<Envelope>();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut publisher = Some(publisher);
                for (topic, event) in rx {
                    publish(&mut publisher, &ttrpc_address, &namespace, &topic, event);
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

/// Attempts before an event is given up (containerd down for good).
const PUBLISH_ATTEMPTS: u32 = 20;

fn publish(
    publisher: &mut Option<RemotePublisher>,
    address: &str,
    namespace: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    for attempt in 0..PUBLISH_ATTEMPTS {
        if publisher.is_none() {
            match RemotePublisher::new(address) {
                Ok(p) => *publisher = Some(p),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reconnect to containerd");
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    continue;
                }
            }
        }
        let Some(p) = publisher.as_ref() else {
            continue;
        };
        // The message is re-sent as is: clone it through its bytes.
        let copy = event.clone_box();
        match p.publish(Context::default(), topic, namespace, copy) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(topic, attempt, error = %e, "publish event failed; reconnecting");
                *publisher = None;
            }
        }
    }
    tracing::error!(topic, "event dropped: containerd unreachable");
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
