//! Port forwarding over SPDY (`portforward.k8s.io`).
//!
//! For every forwarded connection the client opens two streams with the
//! same `requestid` and `port` headers: `streamtype: error` and
//! `streamtype: data`. Once both are there the backend dials the port in the
//! pod's network namespace and bytes flow both ways over the data stream;
//! a failure is reported as text on the error stream. A connection carries
//! any number of such pairs, in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::StreamBackend;
use super::spdy::conn::{IncomingStream, MAX_DATA_FRAME, Outgoing};
use super::spdy::frame::{RST_PROTOCOL_ERROR, header};

/// Bytes held between the SPDY stream and the backend, per direction.
const PIPE_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Pair {
    error: Option<IncomingStream>,
    data: Option<IncomingStream>,
}

/// Serves port-forward stream pairs until the client closes the connection.
pub async fn handle(
    backend: Arc<dyn StreamBackend>,
    pod_sandbox_id: String,
    mut incoming: mpsc::Receiver<IncomingStream>,
    _out: mpsc::Sender<Outgoing>,
) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    // Dropped with this future: every forward ends with the connection.
    let mut forwards = JoinSet::new();
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s { Some(s) => s, None => return },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let kind = header(&stream.headers, "streamtype").unwrap_or("");
        // Old clients send no requestid: the error stream's id is then the
        // data stream's id minus two (kubelet's rule).
        let request_id = match header(&stream.headers, "requestid") {
            Some(id) => id.to_owned(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let pair = pending.entry(request_id.clone()).or_default();
        let slot = match kind {
            "error" => &mut pair.error,
            "data" => &mut pair.data,
            other => {
                tracing::warn!(pod = %pod_sandbox_id, kind = other, "unknown port-forward stream type");
                let _ = stream.out.reset(RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        if slot.is_some() {
            let _ = stream.out.reset(RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pending.remove(&request_id)
            else {
                continue;
            };
            forwards.spawn(forward(
                backend.clone(),
                pod_sandbox_id.clone(),
                error,
                data,
            ));
        }
    }
}

async fn forward(
    backend: Arc<dyn StreamBackend>,
    pod: String,
    error: IncomingStream,
    data: IncomingStream,
) {
    let port = header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port.filter(|p| *p != 0) else {
        let msg = format!(
            "invalid port {:?} in port-forward request",
            header(&data.headers, "port").unwrap_or("")
        );
        let _ = error.out.write(msg.as_bytes()).await;
        let _ = error.out.close().await;
        let _ = data.out.close().await;
        return;
    };
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let mut client_data = data.data;
    let to_pod = async move {
        while let Some(chunk) = client_data.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client half-closed: the backend sees EOF and shuts down the
        // TCP write side.
        let _ = wr.shutdown().await;
    };
    let sender = data.out.clone();
    let from_pod = async move {
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sender.close().await;
    };
    // Aborted when this forward ends or is dropped with its connection.
    let _to_pod = AbortOnDrop(tokio::spawn(to_pod));
    let backend_done = backend.port_forward(pod.clone(), port, theirs);
    tokio::pin!(backend_done, from_pod);
    // Like kubelet, the forward is over once the pod side has closed and its
    // bytes are delivered, even if the client keeps its side open. The
    // backend is polled first: when it fails it drops its pipe end, so its
    // error is seen before the EOF that causes.
    let result = tokio::select! {
        biased;
        r = &mut backend_done => {
            (&mut from_pod).await;
            r
        }
        () = &mut from_pod => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(pod = %pod, port, error = %e, "port-forward failed");
        let msg = format!("error forwarding port {port} to pod {pod}: {e}");
        let _ = error.out.write(msg.as_bytes()).await;
    }
    let _ = error.out.close().await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
