//! Errors of the image subsystem.

/// What can go wrong while pulling, storing or removing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The image is not in the store.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The registry refused the credentials (or asked for some).
    #[error("registry {registry}: authentication failed: {message}")]
    Unauthenticated { registry: String, message: String },
    /// The registry does not have the image or refused access to it.
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    /// The registry is blocked by registries.conf.
    #[error("registry {0} is blocked by the registries configuration")]
    Blocked(String),
    /// A blob's digest or size does not match what the manifest promised.
    #[error("blob {digest}: {reason}")]
    Verification { digest: String, reason: String },
    /// A layer archive that cannot be unpacked safely.
    #[error("layer {digest}: unsafe or malformed archive: {reason}")]
    UnsafeLayer { digest: String, reason: String },
    /// No byte arrived for too long.
    #[error("pull of {reference} stalled: no data for {secs} s")]
    Stalled { reference: String, secs: u64 },
    /// The registries configuration does not parse.
    #[error("registries config {path}: {reason}")]
    Config { path: String, reason: String },
    /// The metadata database failed.
    #[error("image metadata database: {0}")]
    Database(String),
    /// Filesystem I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
