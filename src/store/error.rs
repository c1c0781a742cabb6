//! Errors of the metadata store.

use std::path::PathBuf;

/// Why reading or writing pod/container metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database: {0}")]
    Db(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("record {id} does not decode: {message}")]
    Decode { id: String, message: String },
    #[error("metadata database {0} is locked by another process")]
    Locked(PathBuf),
}
