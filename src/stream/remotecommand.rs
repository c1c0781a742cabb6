//! Exec and attach over SPDY (the remotecommand protocol, `channel.k8s.io`
//! through `v4.channel.k8s.io`).
//!
//! The client opens one SPDY stream per channel, naming it in the
//! `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`).
//! Once the expected streams are there the command runs; at the end the
//! output streams are closed and the exit status goes on the error stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::StreamBackend;
use super::session::{self, Streams, Target};
use super::spdy::conn::{IncomingStream, Outgoing, StreamSender};
use super::spdy::frame::{RST_PROTOCOL_ERROR, header};
use super::status::{RemoteCommandVersion, ResizeDecoder, error_channel_message};

/// How long the client has to open its streams after the upgrade
/// (kubelet's streamCreationTimeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct ClientStreams {
    error: Option<IncomingStream>,
    stdin: Option<IncomingStream>,
    stdout: Option<IncomingStream>,
    stderr: Option<IncomingStream>,
    resize: Option<IncomingStream>,
}

impl ClientStreams {
    fn count(&self) -> usize {
        [
            self.error.is_some(),
            self.stdin.is_some(),
            self.stdout.is_some(),
            self.stderr.is_some(),
            self.resize.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// Serves one exec/attach session on an upgraded SPDY connection.
pub async fn handle(
    backend: Arc<dyn StreamBackend>,
    target: Target,
    streams: Streams,
    version: RemoteCommandVersion,
    mut incoming: mpsc::Receiver<IncomingStream>,
    _out: mpsc::Sender<Outgoing>,
) {
    let with_resize = streams.tty && version.carries_resize();
    let expected = 1
        + usize::from(streams.stdin)
        + usize::from(streams.stdout)
        + usize::from(streams.stderr && !streams.tty)
        + usize::from(with_resize);
    let mut got = ClientStreams::default();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while got.count() < expected {
        let stream = tokio::select! {
            s = incoming.recv() => match s { Some(s) => s, None => return },
            () = &mut deadline => {
                tracing::warn!(expected, got = got.count(), "client did not open its streams in time");
                break;
            }
        };
        let kind = header(&stream.headers, "streamtype")
            .unwrap_or("")
            .to_owned();
        let slot = match kind.as_str() {
            "error" => &mut got.error,
            "stdin" => &mut got.stdin,
            "stdout" => &mut got.stdout,
            "stderr" => &mut got.stderr,
            "resize" => &mut got.resize,
            _ => {
                tracing::warn!(stream = stream.id, kind, "unknown stream type");
                let _ = stream.out.reset(RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        if slot.is_some() {
            tracing::warn!(kind, "client opened a second stream of one type");
            let _ = stream.out.reset(RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
    }
    // Streams the client opened decide the pipes (it may have opened fewer
    // than the request allowed).
    let (io, ends) = session::pipes(
        streams.tty,
        streams.stdin && got.stdin.is_some(),
        streams.stdout && got.stdout.is_some(),
        streams.stderr && got.stderr.is_some(),
        with_resize && got.resize.is_some(),
    );
    let mut inputs = JoinSet::new();
    let mut outputs = JoinSet::new();
    if let (Some(stream), Some(pipe)) = (got.stdin.take(), ends.stdin) {
        inputs.spawn(pump_in(stream.data, pipe));
    }
    if let (Some(stream), Some(sizes)) = (got.resize.take(), ends.resize) {
        inputs.spawn(pump_resize(stream.data, sizes));
    }
    if let (Some(stream), Some(pipe)) = (got.stdout.take(), ends.stdout) {
        outputs.spawn(pump_out(pipe, stream.out));
    }
    if let (Some(stream), Some(pipe)) = (got.stderr.take(), ends.stderr) {
        outputs.spawn(pump_out(pipe, stream.out));
    }
    // Output streams the client opened but the session does not use.
    for stream in [got.stdout.take(), got.stderr.take()].into_iter().flatten() {
        let _ = stream.out.close().await;
    }

    let outcome = session::run(backend, target, io).await;
    // The backend dropped its ends: the output pumps see EOF once drained.
    while outputs.join_next().await.is_some() {}
    inputs.abort_all();
    if let Some(error) = got.error.take() {
        if let Some(msg) = error_channel_message(version, &outcome) {
            let _ = error.out.write(&msg).await;
        }
        let _ = error.out.close().await;
    }
}

/// Client stdin → backend pipe; closing the pipe on the client's FIN.
async fn pump_in(mut data: mpsc::Receiver<Bytes>, mut pipe: DuplexStream) {
    while let Some(chunk) = data.recv().await {
        if pipe.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = pipe.shutdown().await;
}

/// Backend pipe → client stream, then FIN.
pub(crate) async fn pump_out(mut pipe: DuplexStream, out: StreamSender) {
    let mut buf = vec![0u8; super::spdy::conn::MAX_DATA_FRAME];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = out.close().await;
}

async fn pump_resize(
    mut data: mpsc::Receiver<Bytes>,
    sizes: mpsc::Sender<super::backend::TerminalSize>,
) {
    let mut decoder = ResizeDecoder::default();
    while let Some(chunk) = data.recv().await {
        match decoder.push(&chunk) {
            Ok(list) => {
                for size in list {
                    if sizes.send(size).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad resize stream");
                return;
            }
        }
    }
}
