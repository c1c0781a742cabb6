//! The shim's errors, and the one place they become ttrpc status codes.

use containerd_shim::protos::ttrpc;
use ttrpc::Code;

/// Everything a Task RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No container or exec with that id in this shim.
    #[error("{0}: not found")]
    NotFound(String),
    /// A container or exec with that id exists already.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is malformed (bad spec, bad resources, bad mount).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is valid but the process is in the wrong state for it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The operation is not supported by this shim.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// The runtime library failed.
    #[error(transparent)]
    Runtime(#[from] berth::runtime::RuntimeError),
    /// An I/O operation of the shim itself failed (fifos, mounts, state files).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call of the shim itself failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
}

/// Result of shim operations.
pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Io { context, source }
    }

    /// Wraps a failed system call with what was being done.
    pub fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Sys { context, source }
    }

    /// The ttrpc status code containerd sees for this error.
    pub fn code(&self) -> Code {
        use berth::runtime::RuntimeError as R;
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Runtime(R::InvalidSpec(_)) => Code::INVALID_ARGUMENT,
            ShimError::Runtime(R::NotFound(_)) => Code::NOT_FOUND,
            ShimError::Runtime(R::BadCheckpoint(_)) => Code::INVALID_ARGUMENT,
            ShimError::Runtime(R::Restore(_)) => Code::FAILED_PRECONDITION,
            ShimError::Runtime(_) | ShimError::Io { .. } | ShimError::Sys { .. } => Code::UNKNOWN,
        }
    }
}

/// The one mapping from shim errors to ttrpc statuses: handlers just use `?`.
impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_error_kind() {
        let cases = [
            (ShimError::NotFound("c1".into()), Code::NOT_FOUND),
            (ShimError::AlreadyExists("c1".into()), Code::ALREADY_EXISTS),
            (
                ShimError::InvalidArgument("x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                ShimError::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (ShimError::Unimplemented("x".into()), Code::UNIMPLEMENTED),
            (
                ShimError::Runtime(berth::runtime::RuntimeError::InvalidSpec("x".into())),
                Code::INVALID_ARGUMENT,
            ),
            (
                ShimError::Runtime(berth::runtime::RuntimeError::NotFound("x".into())),
                Code::NOT_FOUND,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(status) => {
                    assert_eq!(status.code(), code, "{msg}");
                    assert_eq!(status.message(), msg);
                }
                other => panic!("not a status: {other:?}"),
            }
        }
    }
}
