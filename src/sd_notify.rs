//! The `sd_notify(3)` protocol berthd speaks as a `Type=notify` service
//! (deploy/berthd.service): one datagram of `KEY=VALUE` lines to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). Without `$NOTIFY_SOCKET` (not started by systemd as a
//! `Type=notify` service) every call is a no-op.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// sd_notify could not reach the service manager.
#[derive(Debug, thiserror::Error)]
#[error("sd_notify to {socket}: {source}")]
pub struct NotifyError {
    socket: String,
    #[source]
    source: std::io::Error,
}

/// `READY=1`: start-up is complete (the CRI socket is listening).
pub const READY: &str = "READY=1";
/// `STOPPING=1`: shutdown has begun.
pub const STOPPING: &str = "STOPPING=1";

/// Sends `state` to the service manager. Returns whether it was sent
/// (`false` when `$NOTIFY_SOCKET` is unset).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    send(&socket, state).map_err(|source| NotifyError { socket, source })?;
    Ok(true)
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::send;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
