//! Errors of the cgroup layer.

/// What can go wrong with a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A resource value the kernel or the hierarchy cannot take.
    #[error("invalid cgroup resources: {0}")]
    InvalidResources(String),
    /// A cgroup path that is empty or leaves its hierarchy ("..").
    #[error("invalid cgroup path {0:?}: must be a relative path below the hierarchy root")]
    InvalidPath(String),
    /// The cgroup does not exist.
    #[error("cgroup {0} not found")]
    NotFound(String),
    /// The cgroup files are not what berth can use (missing controller,
    /// unparsable value).
    #[error("cgroup {path}: {message}")]
    Backend { path: String, message: String },
    /// systemd refused or failed a unit operation (systemd cgroup driver).
    #[error("systemd unit {unit}: {message}")]
    Systemd { unit: String, message: String },
    /// Reading or writing a cgroup file failed.
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
