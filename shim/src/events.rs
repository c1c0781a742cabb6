//! Events to containerd, published in order from one thread so that no RPC
//! ever waits on containerd.
//!
//! Events are encoded here (type URL from the message name, bytes from
//! `write_to_bytes`) rather than through the crate's publisher, which looks
//! the type up by protobuf reflection: that builds descriptor tables the
//! shim would then carry for its whole life.

use std::sync::mpsc::{Sender, channel};

use containerd_shim::Context;
use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_sync::{Client, EventsClient};

use crate::error::{Result, ShimError};

/// An encoded event: topic and the `Any` containerd unpacks.
type Encoded = (String, Any);

/// Queues events for containerd, in the order they were sent.
#[derive(Clone)]
pub struct EventSender {
    tx: Option<Sender<Encoded>>,
}

impl EventSender {
    /// Starts the publishing thread for `namespace`, talking to containerd's
    /// ttrpc socket at `ttrpc_address`; after a containerd restart it
    /// reconnects and retries.
    pub fn start(ttrpc_address: String, namespace: String) -> Result<EventSender> {
        let (tx, rx) = channel::<Encoded>();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut client = None;
                for (topic, event) in rx {
                    publish(&mut client, &ttrpc_address, &namespace, &topic, event);
                }
            })
            .map_err(ShimError::io("spawn events thread"))?;
        Ok(EventSender { tx: Some(tx) })
    }

    /// A sender that drops everything (tests).
    #[cfg(test)]
    pub fn discard() -> EventSender {
        EventSender { tx: None }
    }

    /// A sender whose events (topic, encoded event) the test reads from
    /// the receiver, in order.
    #[cfg(test)]
    pub fn recording() -> (EventSender, std::sync::mpsc::Receiver<(String, Any)>) {
        let (tx, rx) = channel::<Encoded>();
        (EventSender { tx: Some(tx) }, rx)
    }

    /// Queues `event` under its topic.
    pub fn send<E: Event + Message>(&self, event: E) {
        let topic = event.topic();
        tracing::debug!(topic = %topic, "event");
        let any = Any {
            type_url: format!("containerd.events.{}", E::NAME),
            value: event.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(tx) = &self.tx
            && tx.send((topic, any)).is_err()
        {
            tracing::warn!("events thread is gone");
        }
    }
}

/// Attempts before an event is given up (containerd down for good).
const PUBLISH_ATTEMPTS: u32 = 20;

fn connect(address: &str) -> Result<EventsClient> {
    let fd = containerd_shim::util::connect(address).map_err(|e| ShimError::Io {
        context: format!("connect to {address}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let client = Client::new(fd).map_err(|e| ShimError::Io {
        context: format!("ttrpc client for {address}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(EventsClient::new(client))
}

fn publish(
    client: &mut Option<EventsClient>,
    address: &str,
    namespace: &str,
    topic: &str,
    event: Any,
) {
    let req = ForwardRequest {
        envelope: MessageField::some(Envelope {
            timestamp: MessageField::some(now()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: MessageField::some(event),
            ..Default::default()
        }),
        ..Default::default()
    };
    for attempt in 0..PUBLISH_ATTEMPTS {
        if client.is_none() {
            match connect(address) {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reconnect to containerd");
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        match c.forward(Context::default(), &req) {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(topic, attempt, error = %e, "publish event failed; reconnecting");
                *client = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::TaskExit;

    #[test]
    fn type_urls_name_containerd_event_types() {
        assert_eq!(
            format!("containerd.events.{}", TaskExit::NAME),
            "containerd.events.TaskExit"
        );
    }
}
