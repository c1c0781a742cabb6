//! Errors of the metadata store.

use std::path::PathBuf;

/// Why reading or writing pod/container metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database: {0}")]
    Db(String),
    /// The database file could not be read or written (ENOSPC, EIO, ...).
    #[error("metadata database: I/O error: {0}")]
    DbIo(#[source] std::io::Error),
    /// An earlier I/O error left the database closed; it is reopened on
    /// the next call.
    #[error("metadata database: closed after an earlier I/O error")]
    PreviousIo,
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

impl StoreError {
    /// Whether the database must be closed and opened again (redb refuses
    /// every transaction after an I/O error).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::DbIo(_) | StoreError::PreviousIo)
    }

    /// The OS error behind it, if any (ENOSPC: the disk is full).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::DbIo(e) | StoreError::Io { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}
