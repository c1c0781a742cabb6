//! The CRI unix socket: created with mode 0660 in a directory made 0711, a
//! stale socket replaced only when nothing listens on it, and removed again
//! at shutdown (only if it is still the one this process made).

use std::fs::{DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Mode of the CRI socket: root and the socket's group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of directories berthd creates for its socket and data.
pub const DIR_MODE: u32 = 0o711;

/// What can go wrong while creating the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another process is already serving on {0}; stop it or pick another --address")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io {
        context,
        path,
        source,
    }
}

/// Creates `dir` and its missing parents with mode 0711; existing
/// directories are left as they are.
pub fn create_dir(dir: &Path) -> Result<(), SocketError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io("cannot create directory", dir))
}

/// The bound socket; removes its file when dropped.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    /// (device, inode) of the socket file this process created.
    identity: (u64, u64),
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Remove the file only if it is still ours: an operator may have
        // started another instance on the same path meanwhile.
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove socket");
                } else {
                    tracing::debug!(socket = %self.path.display(), "removed socket");
                }
            }
            Ok(_) => tracing::warn!(
                socket = %self.path.display(),
                "socket file was replaced by someone else; leaving it"
            ),
            Err(_) => {}
        }
    }
}

/// Binds the unix socket at `path` with mode 0660.
pub fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), SocketError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    remove_if_stale(path)?;
    let listener = UnixListener::bind(path).map_err(|e| {
        if e.kind() == ErrorKind::AddrInUse {
            SocketError::InUse(path.to_owned())
        } else {
            io("cannot bind socket", path)(e)
        }
    })?;
    std::fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE))
        .map_err(io("cannot set mode of socket", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(io("cannot stat socket", path))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        },
    ))
}

/// Removes a socket file nobody listens on; refuses a live socket or a
/// file that is not a socket.
fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("cannot stat socket path", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io("cannot remove stale socket", path))
        }
        Err(e) => Err(io("cannot probe existing socket", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_mode_and_parent_dir_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/berth.sock");
        let (_listener, bound) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        let parent = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(parent, DIR_MODE);
        drop(bound);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn live_socket_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let (_listener, _bound) = bind(&path).unwrap();
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, _bound) = bind(&path).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[tokio::test]
    async fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn replaced_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.sock");
        let (listener, bound) = bind(&path).unwrap();
        drop(listener);
        // Moved away (not deleted) so the new socket cannot reuse its inode.
        std::fs::rename(&path, dir.path().join("old.sock")).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(bound);
        assert!(path.exists());
    }
}
