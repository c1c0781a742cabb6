//! The exec / attach / port-forward streaming server.
//!
//! The CRI's Exec, Attach and PortForward calls return a URL of this
//! server ([`StreamServer::get_exec`] and friends); the client (kubelet,
//! crictl) then upgrades an HTTP connection at that URL to SPDY/3.1 or
//! WebSocket and speaks the Kubernetes channel protocols over it. The
//! container side is a [`StreamBackend`], implemented by the runtime service.

pub mod backend;
pub mod config;
pub mod error;
mod portforward;
mod remotecommand;
mod server;
mod session;
pub mod spdy;
pub mod status;
mod tls;
pub mod token;
mod websocket;

pub use backend::{BoxFuture, InputPipe, OutputPipe, SessionIo, StreamBackend, TerminalSize};
pub use config::StreamConfig;
pub use error::StreamError;
pub use server::{PORTFORWARD_PROTOCOL, REMOTECOMMAND_PROTOCOLS, StreamServer};
pub use websocket::PROTOCOLS as WEBSOCKET_PROTOCOLS;
