//! The HTTP server behind the URLs Exec, Attach and PortForward return.
//!
//! `GET|POST /exec/<token>`, `/attach/<token>`, `/portforward/<token>`:
//! the token names the CRI request the URL was made for (it works once, and
//! only until its TTL). The request must ask for an upgrade to `SPDY/3.1`
//! (with `X-Stream-Protocol-Version`) or to `websocket` (exec and attach,
//! with `Sec-WebSocket-Protocol`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::backend::StreamBackend;
use super::config::StreamConfig;
use super::error::StreamError;
use super::session::{Streams, Target};
use super::spdy::conn;
use super::status::RemoteCommandVersion;
use super::token::{PendingRequest, TokenCache};
use super::websocket::{self, WsProtocol};
use super::{portforward, remotecommand};

/// SPDY subprotocols for exec/attach, best first.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The SPDY subprotocol for port forwarding.
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// How long a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    tokens: TokenCache,
    backend: Arc<dyn StreamBackend>,
    base_url: String,
}

/// A running streaming server. Dropping it stops the listener and every
/// session it serves.
pub struct StreamServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamServer {
    /// Binds `config.address` and starts serving on the current runtime.
    pub async fn start(
        config: &StreamConfig,
        backend: Arc<dyn StreamBackend>,
    ) -> Result<Self, StreamError> {
        let addr = config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(super::tls::acceptor(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StreamError::io(format!("binding the streaming server to {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StreamError::io("streaming server address", e))?;
        let shared = Arc::new(Shared {
            tokens: TokenCache::new(Duration::from_secs(config.token_ttl_secs)),
            backend,
            base_url: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
        });
        let with_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), tls));
        tracing::info!(%addr, tls = with_tls, "streaming server listening");
        Ok(Self { shared, addr, task })
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// URLs handed out and not yet used.
    pub fn pending_tokens(&self) -> usize {
        self.shared.tokens.len()
    }

    /// The URL for a CRI Exec request.
    pub fn get_exec(&self, req: &cri::ExecRequest) -> Result<cri::ExecResponse, StreamError> {
        if req.container_id.is_empty() {
            return Err(StreamError::InvalidRequest(
                "container_id is empty".to_owned(),
            ));
        }
        if req.cmd.is_empty() {
            return Err(StreamError::InvalidRequest("cmd is empty".to_owned()));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self
            .shared
            .tokens
            .insert(PendingRequest::Exec(req.clone()))?;
        Ok(cri::ExecResponse {
            url: format!("{}/exec/{token}", self.shared.base_url),
        })
    }

    /// The URL for a CRI Attach request.
    pub fn get_attach(&self, req: &cri::AttachRequest) -> Result<cri::AttachResponse, StreamError> {
        if req.container_id.is_empty() {
            return Err(StreamError::InvalidRequest(
                "container_id is empty".to_owned(),
            ));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self
            .shared
            .tokens
            .insert(PendingRequest::Attach(req.clone()))?;
        Ok(cri::AttachResponse {
            url: format!("{}/attach/{token}", self.shared.base_url),
        })
    }

    /// The URL for a CRI PortForward request.
    pub fn get_port_forward(
        &self,
        req: &cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, StreamError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(StreamError::InvalidRequest(
                "pod_sandbox_id is empty".to_owned(),
            ));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(StreamError::InvalidRequest(format!(
                "port {p} is out of range"
            )));
        }
        let token = self
            .shared
            .tokens
            .insert(PendingRequest::PortForward(req.clone()))?;
        Ok(cri::PortForwardResponse {
            url: format!("{}/portforward/{token}", self.shared.base_url),
        })
    }
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), StreamError> {
    if tty && stderr {
        return Err(StreamError::InvalidRequest(
            "tty and stderr cannot both be true".to_owned(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(StreamError::InvalidRequest(
            "one of stdin, stdout or stderr must be set".to_owned(),
        ));
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    // Dropped (aborting every connection) when the server is dropped.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let Some(tls) = tls else {
                return serve_http(tcp, peer, shared).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => serve_http(stream, peer, shared).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves HTTP/1.1 (and its upgrades) on one accepted connection.
async fn serve_http<IO>(io: IO, peer: SocketAddr, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// All values of a header, split at commas.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client lists that the server speaks; `Ok(None)`
/// when the client lists none (legacy clients).
fn negotiate<'a>(client: &[String], server: &[&'a str]) -> Result<Option<&'a str>, String> {
    if client.is_empty() {
        return Ok(None);
    }
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
        .map(Some)
        .ok_or_else(|| {
            format!("unable to upgrade: unable to negotiate protocol: client supports {client:?}, server supports {server:?}")
        })
}

async fn route(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let Some(pending) = shared.tokens.consume(token) else {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    let (target, streams, pod) = match (kind, pending) {
        ("exec", PendingRequest::Exec(r)) => (
            Some(Target::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            }),
            Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            None,
        ),
        ("attach", PendingRequest::Attach(r)) => (
            Some(Target::Attach {
                container_id: r.container_id,
            }),
            Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            None,
        ),
        ("portforward", PendingRequest::PortForward(r)) => (
            None,
            Streams {
                stdin: false,
                stdout: false,
                stderr: false,
                tty: false,
            },
            Some(r.pod_sandbox_id),
        ),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "token is for another kind of request",
            );
        }
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let backend = shared.backend.clone();
    if upgrade == "spdy/3.1" {
        let client = header_list(req.headers(), PROTOCOL_HEADER);
        let server: &[&str] = if pod.is_some() {
            &[PORTFORWARD_PROTOCOL]
        } else {
            REMOTECOMMAND_PROTOCOLS
        };
        let chosen = match negotiate(&client, server) {
            Ok(c) => c,
            Err(msg) => return plain(StatusCode::FORBIDDEN, msg),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY upgrade failed");
                    return;
                }
            };
            let result = match (target, pod) {
                (Some(target), _) => {
                    let version = match chosen {
                        Some("v4.channel.k8s.io") => RemoteCommandVersion::V4,
                        Some("v3.channel.k8s.io") => RemoteCommandVersion::V3,
                        Some("v2.channel.k8s.io") => RemoteCommandVersion::V2,
                        _ => RemoteCommandVersion::V1,
                    };
                    conn::serve(io, |incoming, out| {
                        remotecommand::handle(backend, target, streams, version, incoming, out)
                    })
                    .await
                }
                (None, Some(pod)) => {
                    conn::serve(io, |incoming, out| {
                        portforward::handle(backend, pod, incoming, out)
                    })
                    .await
                }
                (None, None) => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "SPDY session ended with an error");
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        if let Some(p) = chosen {
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(p));
        }
        return r;
    }
    if upgrade == "websocket" {
        let Some(target) = target else {
            return plain(
                StatusCode::BAD_REQUEST,
                "port forwarding over WebSocket is not supported; use SPDY/3.1",
            );
        };
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        };
        if req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
        }
        let client = header_list(req.headers(), header::SEC_WEBSOCKET_PROTOCOL.as_str());
        let chosen = match negotiate(&client, websocket::PROTOCOLS) {
            Ok(c) => c,
            Err(msg) => return plain(StatusCode::FORBIDDEN, msg),
        };
        let protocol =
            WsProtocol::from_name(chosen.unwrap_or("")).expect("negotiated protocols are known");
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            websocket::handle(ws, backend, target, streams, protocol).await;
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = chosen {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        return r;
    }
    plain(
        StatusCode::BAD_REQUEST,
        "this URL must be upgraded to SPDY/3.1 or websocket",
    )
}
