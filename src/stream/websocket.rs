//! Exec and attach over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `channel.k8s.io`, `base64.channel.k8s.io`).
//!
//! Every message starts with its channel: 0 stdin, 1 stdout, 2 stderr,
//! 3 error, 4 resize; with `base64.channel.k8s.io` the messages are text,
//! the channel is an ASCII digit and the payload is base64. `v5` adds the
//! close signal: a message on channel 255 whose payload names a channel the
//! client will not write to any more (stdin EOF).

use std::sync::Arc;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::backend::StreamBackend;
use super::session::{self, PIPE_BYTES, Streams, Target};
use super::status::{RemoteCommandVersion, ResizeDecoder, error_channel_message};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Messages queued for the socket before output pumps wait.
const WRITE_QUEUE: usize = 16;

/// The WebSocket subprotocols, in the server's order of preference.
pub const PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// A negotiated WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsProtocol {
    pub version: RemoteCommandVersion,
    pub base64: bool,
}

impl WsProtocol {
    pub fn from_name(name: &str) -> Option<Self> {
        let (version, base64) = match name {
            "v5.channel.k8s.io" => (RemoteCommandVersion::V5, false),
            "v4.channel.k8s.io" => (RemoteCommandVersion::V4, false),
            "channel.k8s.io" | "" => (RemoteCommandVersion::V1, false),
            "base64.channel.k8s.io" => (RemoteCommandVersion::V1, true),
            _ => return None,
        };
        Some(Self { version, base64 })
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut buf = Vec::with_capacity(1 + data.len());
            buf.push(channel);
            buf.extend_from_slice(data);
            Message::binary(buf)
        }
    }

    fn decode(self, msg: &Message) -> Option<(u8, Vec<u8>)> {
        match msg {
            Message::Binary(b) if !self.base64 && !b.is_empty() => Some((b[0], b[1..].to_vec())),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let bytes = t.as_bytes();
                let channel = bytes[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&bytes[1..])
                    .ok()?;
                Some((channel, data))
            }
            _ => None,
        }
    }
}

/// Serves one exec/attach session on an upgraded WebSocket.
pub async fn handle<S>(
    ws: WebSocketStream<S>,
    backend: Arc<dyn StreamBackend>,
    target: Target,
    streams: Streams,
    protocol: WsProtocol,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let writer = async move {
        while let Some(msg) = out_rx.recv().await {
            let close = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() {
                return;
            }
            if close {
                break;
            }
        }
        let _ = sink.flush().await;
    };

    let with_resize = streams.tty && protocol.version.carries_resize();
    let (io, ends) = session::pipes(
        streams.tty,
        streams.stdin,
        streams.stdout,
        streams.stderr,
        with_resize,
    );
    let mut outputs = JoinSet::new();
    if let Some(pipe) = ends.stdout {
        outputs.spawn(pump_out(pipe, STDOUT, protocol, out_tx.clone()));
    }
    if let Some(pipe) = ends.stderr {
        outputs.spawn(pump_out(pipe, STDERR, protocol, out_tx.clone()));
    }
    let mut stdin = ends.stdin;
    let resize = ends.resize;
    let reader = async move {
        let mut decoder = ResizeDecoder::default();
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                return;
            }
            let Some((channel, data)) = protocol.decode(&msg) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(pipe) = stdin.as_mut()
                        && !data.is_empty()
                        && pipe.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize {
                        match decoder.push(&data) {
                            Ok(sizes) => {
                                for size in sizes {
                                    let _ = tx.send(size).await;
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "bad resize message"),
                        }
                    }
                }
                CLOSE if protocol.version >= RemoteCommandVersion::V5 => {
                    if data.first() == Some(&STDIN)
                        && let Some(mut pipe) = stdin.take()
                    {
                        let _ = pipe.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    };

    let session = async {
        let outcome = session::run(backend, target, io).await;
        while outputs.join_next().await.is_some() {}
        if let Some(msg) = error_channel_message(protocol.version, &outcome) {
            let _ = out_tx.send(protocol.encode(ERROR, &msg)).await;
        }
        let _ = out_tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    };

    tokio::pin!(writer);
    tokio::select! {
        // The client left (or broke the socket): dropping the session
        // cancels the backend.
        () = reader => {}
        () = &mut writer => {}
        () = session => {
            // Wait for the socket to take the status and the close frame.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), writer).await;
        }
    }
}

async fn pump_out(
    mut pipe: DuplexStream,
    channel: u8,
    protocol: WsProtocol,
    tx: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; PIPE_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(protocol.encode(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}
