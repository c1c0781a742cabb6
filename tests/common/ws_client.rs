//! A WebSocket client for the channel protocols (k8s.io remotecommand over
//! WebSocket), written from the protocol description: the first byte (or
//! ASCII digit with base64.channel.k8s.io) of each message is its channel.

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    pub protocol: String,
    base64: bool,
}

/// Everything a session sent back, by channel.
#[derive(Default, Debug)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
    pub closed: bool,
}

impl WsClient {
    pub async fn connect(url: &str, protocol: &str) -> Result<Self> {
        let ws_url = url.replacen("http://", "ws://", 1);
        let host = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .context("url")?
            .to_owned();
        let mut req = ws_url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
        let tcp = TcpStream::connect(&host).await?;
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if chosen != protocol {
            bail!("server chose {chosen:?}, asked for {protocol:?}");
        }
        Ok(Self {
            ws,
            base64: protocol == "base64.channel.k8s.io",
            protocol: chosen,
        })
    }

    pub async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let msg = if self.base64 {
            let mut t = String::new();
            t.push(char::from(b'0' + channel));
            t.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            Message::text(t)
        } else {
            let mut b = vec![channel];
            b.extend_from_slice(data);
            Message::binary(b)
        };
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The v5 close signal for `channel`.
    pub async fn close_channel(&mut self, channel: u8) -> Result<()> {
        self.ws.send(Message::binary(vec![255, channel])).await?;
        Ok(())
    }

    /// The next (channel, payload), or `None` once the server closed.
    pub async fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            match msg? {
                Message::Binary(b) if !self.base64 && !b.is_empty() => {
                    return Ok(Some((b[0], b[1..].to_vec())));
                }
                Message::Text(t) if self.base64 && !t.is_empty() => {
                    let bytes = t.as_bytes();
                    let data = base64::engine::general_purpose::STANDARD.decode(&bytes[1..])?;
                    return Ok(Some((bytes[0] - b'0', data)));
                }
                Message::Close(_) => return Ok(None),
                _ => continue,
            }
        }
    }

    /// Reads until the server closes.
    pub async fn collect(&mut self) -> Result<Collected> {
        let mut c = Collected::default();
        while let Some((ch, data)) = self.recv().await? {
            match ch {
                1 => c.stdout.extend_from_slice(&data),
                2 => c.stderr.extend_from_slice(&data),
                3 => c.error.extend_from_slice(&data),
                _ => {}
            }
        }
        c.closed = true;
        Ok(c)
    }

    /// Reads stdout until `needle` appears.
    pub async fn read_stdout_until(&mut self, needle: &str) -> Result<String> {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            match self.recv().await? {
                Some((1, d)) => out.extend_from_slice(&d),
                Some(_) => {}
                None => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
