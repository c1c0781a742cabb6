//! What the streaming server needs from the container runtime.
//!
//! The server owns the wire protocols; a [`StreamBackend`] runs the process
//! (or joins the container's stdio, or dials into the pod's netns) and moves
//! bytes through the plain async pipes it is handed. Dropping a returned
//! future is the cancellation signal: the client went away, so the backend
//! must stop the exec'd process and release everything it holds.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;

use super::error::StreamError;

/// A boxed, sendable future (the trait is used as `dyn StreamBackend`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Bytes from the client (stdin); EOF when the client closes it.
pub type InputPipe = Box<dyn AsyncRead + Send + Unpin>;
/// Bytes to the client (stdout, stderr). Backpressure: a slow client
/// makes writes wait; nothing is buffered beyond a small pipe.
pub type OutputPipe = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size as the client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The stdio of one exec or attach session. Only the streams the request
/// asked for are present. The backend must drop every pipe before its
/// future completes (the server waits for the output pipes to drain).
pub struct SessionIo {
    pub tty: bool,
    pub stdin: Option<InputPipe>,
    pub stdout: Option<OutputPipe>,
    /// Absent with a tty (the terminal merges stderr into stdout).
    pub stderr: Option<OutputPipe>,
    /// Terminal resizes, only with a tty and a protocol that carries them.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// The container runtime side of exec, attach and port-forward.
pub trait StreamBackend: Send + Sync + 'static {
    /// Runs `cmd` in the container with `io`; resolves to its exit code.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: SessionIo,
    ) -> BoxFuture<'_, Result<i32, StreamError>>;

    /// Connects `io` to the running container's stdio until the container
    /// exits or the client leaves.
    fn attach(&self, container_id: String, io: SessionIo)
    -> BoxFuture<'_, Result<(), StreamError>>;

    /// Connects `stream` to TCP `port` on the pod's loopback (inside its
    /// network namespace) and copies both ways until both sides are done.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: DuplexStream,
    ) -> BoxFuture<'_, Result<(), StreamError>>;
}
