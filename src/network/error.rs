//! The network subsystem's errors.

use std::path::PathBuf;

/// Everything that can go wrong setting up or tearing down a pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network config: {0}")]
    Config(String),
    #[error("invalid pod network request: {0}")]
    InvalidRequest(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {msg}")]
    Netns { path: PathBuf, msg: String },
    #[error("nft: {0}")]
    Nft(String),
    #[error("no free address left in {0}")]
    IpamExhausted(String),
    #[error("host port {0} is already mapped to another pod")]
    PortInUse(String),
    #[error("CNI config in {dir}: {msg}")]
    CniConfig { dir: PathBuf, msg: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    CniPluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{details}")]
    CniPlugin {
        plugin: String,
        command: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("network not ready: {0}")]
    NotReady(String),
}

impl NetworkError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NetworkError::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// The errno of a netlink error, if it is one.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
