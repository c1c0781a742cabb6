//! Errors of the pod and container lifecycle.

use crate::image::ImageError;
use crate::network::NetworkError;
use crate::spec::SpecError;
use crate::store::StoreError;

/// Why a pod or container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("pod namespaces: {0}")]
    Namespace(String),
    #[error("pod cgroup: {0}")]
    Cgroup(String),
    #[error("image volume: {0}")]
    ImageVolume(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("container spec: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::CdiError),
    #[error("shim: {0}")]
    Shim(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl PodError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PodError::Io {
            context: context.into(),
            source,
        }
    }
}
