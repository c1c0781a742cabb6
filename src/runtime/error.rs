//! Errors of the in-process runtime.

/// Everything that can go wrong while creating or managing a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The container (or its process) does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] super::cgroups::CgroupError),
    /// A seccomp profile could not be compiled or installed.
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    /// The init helper reported a failure while setting up the container.
    #[error("container setup failed: {0}")]
    Setup(String),
    /// CRIU could not checkpoint the container.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// CRIU could not restore the container (CRIU's own errors).
    #[error("restore: {0}")]
    Restore(String),
    /// The checkpoint's images are unusable (missing, unreadable).
    #[error("checkpoint images: {0}")]
    BadCheckpoint(String),
}
