//! The `[stream]` table of berthd's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::StreamError;

/// Where the streaming server listens and how long its URLs stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// `ip:port`; port 0 picks a free port (the default, as containerd does).
    pub address: String,
    /// How long a URL handed out by Exec/Attach/PortForward may wait for its
    /// client before it expires. Each URL works once.
    pub token_ttl_secs: u64,
    /// PEM certificate chain: with `tls_key` the server speaks TLS and its
    /// URLs are `https://`. Both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".to_owned(),
            // kubelet's and containerd's streaming servers use one minute.
            token_ttl_secs: 60,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl StreamConfig {
    /// Checks the values without binding anything.
    pub fn validate(&self) -> Result<std::net::SocketAddr, StreamError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(StreamError::Config(
                "stream.tls_cert and stream.tls_key go together: set both or neither".to_owned(),
            ));
        }
        if self.token_ttl_secs == 0 {
            return Err(StreamError::Config(
                "stream.token_ttl_secs must be at least 1".to_owned(),
            ));
        }
        self.address.parse().map_err(|e| {
            StreamError::Config(format!(
                "stream.address {:?} is not ip:port: {e}",
                self.address
            ))
        })
    }
}
