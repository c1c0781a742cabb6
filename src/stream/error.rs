//! Errors of the streaming server.

/// What can go wrong in the streaming server and its sessions.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The `[stream]` config makes no sense.
    #[error("{0}")]
    Config(String),
    /// A CRI request asks for something impossible (bad ids, no streams).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many URLs handed out and not yet used.
    #[error("too many in-flight streaming requests ({0})")]
    TooManyRequests(usize),
    /// Binding or serving the socket failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the SPDY or channel protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The backend (container runtime) failed.
    #[error("{0}")]
    Backend(String),
}

impl StreamError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
