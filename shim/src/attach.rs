//! Attach: the live stdio of a container's init, for berthd's CRI Attach
//! (the wire protocol is `berth::attach_wire`).
//!
//! An [`AttachHub`] per container created with a `cri-log://` output: the
//! log threads pass every chunk they read through a [`Tap`], which copies it
//! to the attached clients with non-blocking sends. A client whose socket
//! buffer is full is disconnected: a slow attacher never blocks the logger
//! (nor so the container) and costs no memory in the shim beyond its
//! kernel socket buffer. When every output stream of the container has
//! ended (it exited) the hub closes every session.
//!
//! stdin: a container created with the stdin URI `attach-stdin://[once]`
//! reads a pipe whose write end the hub keeps (so the container never
//! reads EOF between sessions), or with a terminal the pty master. Each
//! session copies its client's bytes there on its own thread; with
//! `stdin_once` the end of the first session that had stdin closes the
//! hub's end, and the container reads EOF (not with a terminal, as
//! containerd: kubectl#1108).
//!
//! One listening socket per shim, `<ttrpc socket>.attach`, bound at the
//! first container that has a hub; a thread per session.

use crate::sync::Lock;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use berth::attach_wire::{self, AttachRequest};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::MsgFlags;

const STACK: usize = 64 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// stdin is written in chunks no larger than PIPE_BUF: a pipe that polls
/// writable takes such a write without blocking.
const STDIN_CHUNK: usize = 4096;

/// An attached client.
struct Subscriber {
    id: u64,
    sock: Arc<UnixStream>,
    stdout: bool,
    stderr: bool,
}

#[derive(Default)]
struct HubState {
    /// Where sessions write stdin: the stdin pipe's write end or the pty master.
    stdin: Option<Arc<OwnedFd>>,
    subscribers: Vec<Subscriber>,
    /// Output streams (taps) still open.
    streams: usize,
    ended: bool,
    next_id: u64,
}

/// The attachable stdio of one container.
pub struct AttachHub {
    terminal: bool,
    /// The container was created with stdin open.
    has_stdin: bool,
    stdin_once: bool,
    state: Mutex<HubState>,
}

impl AttachHub {
    /// `stdin`: `Some(stdin_once)` for a container with stdin open.
    pub fn new(terminal: bool, stdin: Option<bool>) -> Arc<AttachHub> {
        Arc::new(AttachHub {
            terminal,
            has_stdin: stdin.is_some(),
            stdin_once: stdin == Some(true),
            state: Mutex::new(HubState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.locked()
    }

    /// Gives the hub the container's stdin: the write end of its stdin
    /// pipe, or the pty master.
    /// (Ignored for a container created without stdin.)
    pub fn set_stdin(&self, fd: Arc<OwnedFd>) {
        let mut s = self.state();
        if self.has_stdin && !s.ended {
            s.stdin = Some(fd);
        }
    }

    /// Copies `data` of `stream` to every client that wants it; disconnects
    /// the ones that cannot take it now.
    fn publish(&self, stream: u8, data: &[u8]) {
        let mut s = self.state();
        let wants = |sub: &Subscriber| {
            if stream == attach_wire::STDOUT {
                sub.stdout
            } else {
                sub.stderr
            }
        };
        if data.is_empty() || !s.subscribers.iter().any(wants) {
            return;
        }
        let mut frame = Vec::with_capacity(attach_wire::FRAME_HEADER + data.len());
        frame.extend_from_slice(&attach_wire::frame_header(stream, data.len()));
        frame.extend_from_slice(data);
        s.subscribers.retain(|sub| {
            if !wants(sub) {
                return true;
            }
            let sent = nix::sys::socket::send(
                sub.sock.as_raw_fd(),
                &frame,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
            match sent {
                Ok(n) if n == frame.len() => true,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                    tracing::warn!(session = sub.id, "attach client too slow: disconnected");
                    let _ = sub.sock.shutdown(std::net::Shutdown::Both);
                    false
                }
                Err(_) => {
                    let _ = sub.sock.shutdown(std::net::Shutdown::Both);
                    false
                }
            }
        });
    }

    fn stream_opened(&self) {
        self.state().streams += 1;
    }

    /// One output stream ended; after the last, every session is closed.
    fn stream_ended(&self) {
        let mut s = self.state();
        s.streams = s.streams.saturating_sub(1);
        if s.streams > 0 || s.ended {
            return;
        }
        s.ended = true;
        s.stdin = None;
        for sub in s.subscribers.drain(..) {
            let _ = sub.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Adds a client and answers it `ok` (under the lock: no frame can
    /// come before the answer). Returns its id.
    fn subscribe(&self, sock: &Arc<UnixStream>, req: &AttachRequest) -> Result<u64, String> {
        let mut s = self.state();
        if s.ended {
            return Err("the container has exited".into());
        }
        let id = s.next_id;
        s.next_id += 1;
        let line = format!("{}\n", attach_wire::OK);
        let sent = nix::sys::socket::send(
            sock.as_raw_fd(),
            line.as_bytes(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
        if sent != Ok(line.len()) {
            return Err("the client is gone".into());
        }
        s.subscribers.push(Subscriber {
            id,
            sock: sock.clone(),
            stdout: req.stdout,
            stderr: req.stderr && !self.terminal,
        });
        Ok(id)
    }

    fn unsubscribe(&self, id: u64) {
        self.state().subscribers.retain(|s| s.id != id);
    }

    fn stdin(&self) -> Option<Arc<OwnedFd>> {
        self.state().stdin.clone()
    }

    /// The end of a session that had stdin.
    fn stdin_done(&self) {
        if self.stdin_once && !self.terminal {
            self.state().stdin = None;
        }
    }
}

/// A log thread's input that also feeds the hub.
pub struct Tap<R> {
    inner: R,
    stream: u8,
    hub: Option<Arc<AttachHub>>,
}

impl<R: Read> Tap<R> {
    /// Taps `inner`, the container's `stream` ("stdout" or "stderr").
    pub fn new(inner: R, stream: &str, hub: Option<Arc<AttachHub>>) -> Tap<R> {
        if let Some(h) = &hub {
            h.stream_opened();
        }
        let stream = if stream == "stderr" {
            attach_wire::STDERR
        } else {
            attach_wire::STDOUT
        };
        Tap { inner, stream, hub }
    }

    fn end(&mut self) {
        if let Some(h) = self.hub.take() {
            h.stream_ended();
        }
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) => {
                self.end();
                Ok(0)
            }
            Ok(n) => {
                if let Some(h) = &self.hub {
                    h.publish(self.stream, &buf[..n]);
                }
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }
}

impl<R> Drop for Tap<R> {
    fn drop(&mut self) {
        if let Some(h) = self.hub.take() {
            h.stream_ended();
        }
    }
}

/// The shim's attach socket and the hubs it serves, by container id.
struct Registry {
    path: PathBuf,
    hubs: Mutex<HashMap<String, Weak<AttachHub>>>,
    listening: OnceLock<bool>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Names the shim's attach socket after its ttrpc socket `address`.
pub fn init(address: &str) {
    let _ = REGISTRY.set(Registry {
        path: attach_wire::socket_path(address),
        hubs: Mutex::new(HashMap::new()),
        listening: OnceLock::new(),
    });
}

/// Makes `hub` reachable as container `id`; binds the socket on first use.
pub fn register(id: &str, hub: &Arc<AttachHub>) {
    let Some(reg) = REGISTRY.get() else {
        return;
    };
    {
        let mut hubs = reg.hubs.locked();
        hubs.retain(|_, h| h.strong_count() > 0);
        hubs.insert(id.to_string(), Arc::downgrade(hub));
    }
    reg.listening.get_or_init(|| match listen(&reg.path) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %reg.path.display(), error = %e, "no attach socket");
            false
        }
    });
}

/// Removes the socket (the shim is exiting).
pub fn remove_socket() {
    if let Some(reg) = REGISTRY.get()
        && reg.listening.get() == Some(&true)
    {
        let _ = std::fs::remove_file(&reg.path);
    }
}

fn find(id: &str) -> Option<Arc<AttachHub>> {
    REGISTRY.get()?.hubs.locked().get(id)?.upgrade()
}

fn listen(path: &std::path::Path) -> std::io::Result<()> {
    // Our ttrpc socket's name is ours alone: an attach socket there is a
    // dead shim's.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("attach".into())
        .stack_size(STACK)
        .spawn(move || {
            loop {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let spawned = std::thread::Builder::new()
                            .name("attach-session".into())
                            .stack_size(STACK)
                            .spawn(move || session(sock));
                        if let Err(e) = spawned {
                            tracing::warn!(error = %e, "spawn attach session");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "attach accept");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    tracing::info!(path = %path.display(), "attach socket listening");
    Ok(())
}

/// Reads the request line, byte by byte (nothing after it is ours to read yet).
fn read_request(sock: &UnixStream) -> Result<AttachRequest, String> {
    sock.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*sock).read(&mut byte) {
            Ok(0) => return Err("no request".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        }
        if line.len() > attach_wire::MAX_REQUEST_LINE {
            return Err("request line too long".into());
        }
    }
    sock.set_read_timeout(None).map_err(|e| e.to_string())?;
    attach_wire::parse_request(&line)
}

/// Serves one client until it leaves or the hub closes the session.
fn session(sock: UnixStream) {
    let sock = Arc::new(sock);
    let refuse = |msg: String| {
        let line = format!("error: {msg}\n");
        let _ = nix::sys::socket::send(
            sock.as_raw_fd(),
            line.as_bytes(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
    };
    let req = match read_request(&sock) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let Some(hub) = find(&req.container) else {
        return refuse(format!(
            "container {} has no attachable stdio in this shim",
            req.container
        ));
    };
    let id = match hub.subscribe(&sock, &req) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    tracing::info!(container = %req.container, session = id, stdin = req.stdin, "attached");
    let mut stdin = if req.stdin { hub.stdin() } else { None };
    let had_stdin = stdin.is_some();
    let mut buf = [0u8; STDIN_CHUNK];
    loop {
        match (&*sock).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(fd) = &stdin
                    && !write_stdin(fd, &buf[..n], &sock)
                {
                    stdin = None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(stdin);
    if had_stdin {
        hub.stdin_done();
    }
    // The client half-closed (its stdin ended): it still reads output
    // until it leaves or the hub closes the session.
    wait_hangup(&sock);
    hub.unsubscribe(id);
    tracing::info!(container = %req.container, session = id, "detached");
}

/// Writes `data` to the container's stdin, waiting for room but giving up
/// when the client hangs up or the container's end is gone.
fn write_stdin(fd: &OwnedFd, mut data: &[u8], sock: &UnixStream) -> bool {
    while !data.is_empty() {
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLOUT),
            PollFd::new(sock.as_fd(), PollFlags::empty()),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
        {
            return false;
        }
        let ready = fds[0].revents().unwrap_or(PollFlags::empty());
        if ready.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            return false;
        }
        if !ready.contains(PollFlags::POLLOUT) {
            continue;
        }
        let n = data.len().min(STDIN_CHUNK);
        match nix::unistd::write(fd, &data[..n]) {
            Ok(w) => data = &data[w..],
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Blocks until the socket is hung up on (by the client, or by the hub's
/// shutdown).
fn wait_hangup(sock: &UnixStream) {
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {
                if fds[0].revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                }) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_frame(c: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; attach_wire::FRAME_HEADER];
        c.read_exact(&mut h).ok()?;
        let (stream, len) = attach_wire::parse_frame_header(&h);
        let mut data = vec![0u8; len];
        c.read_exact(&mut data).ok()?;
        Some((stream, data))
    }

    fn request(stdin: bool) -> AttachRequest {
        AttachRequest {
            container: "c".into(),
            stdin,
            stdout: true,
            stderr: true,
        }
    }

    #[test]
    fn output_fans_out_and_ends_with_the_streams() {
        let hub = AttachHub::new(false, Some(false));
        let (a, mut client) = UnixStream::pair().unwrap();
        let a = Arc::new(a);
        hub.subscribe(&a, &request(false)).unwrap();
        let mut ok = [0u8; 3];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok\n");
        let mut out = Tap::new(&b"hello"[..], "stdout", Some(hub.clone()));
        let mut err = Tap::new(&b"oops"[..], "stderr", Some(hub.clone()));
        let mut sink = Vec::new();
        out.read_to_end(&mut sink).unwrap();
        assert_eq!(
            read_frame(&mut client),
            Some((attach_wire::STDOUT, b"hello".to_vec()))
        );
        // One stream is still open: the session goes on.
        assert!(!hub.state().ended);
        err.read_to_end(&mut sink).unwrap();
        assert_eq!(
            read_frame(&mut client),
            Some((attach_wire::STDERR, b"oops".to_vec()))
        );
        assert!(hub.state().ended);
        assert_eq!(
            read_frame(&mut client),
            None,
            "closed after the last stream"
        );
        assert!(hub.subscribe(&a, &request(false)).is_err());
    }

    #[test]
    fn a_slow_client_is_disconnected_not_waited_for() {
        let hub = AttachHub::new(false, Some(false));
        let (a, mut client) = UnixStream::pair().unwrap();
        let a = Arc::new(a);
        hub.subscribe(&a, &request(false)).unwrap();
        // The client does not read: publishing must never block, and far
        // more than any socket buffer holds disconnects the client.
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..1024 {
            hub.publish(attach_wire::STDOUT, &chunk);
        }
        assert!(hub.state().subscribers.is_empty(), "slow client dropped");
        // What the buffer held is readable, then the end.
        let mut ok = [0u8; 3];
        client.read_exact(&mut ok).unwrap();
        let mut frames = 0;
        while let Some((_, d)) = read_frame(&mut client) {
            assert_eq!(d.len(), chunk.len());
            frames += 1;
        }
        assert!(frames < 1024);
    }

    #[test]
    fn stdin_once_closes_the_pipe_after_the_first_session() {
        let hub = AttachHub::new(false, Some(true));
        let (r, w) = nix::unistd::pipe().unwrap();
        hub.set_stdin(Arc::new(w));
        let fd = hub.stdin().unwrap();
        let (a, _client) = UnixStream::pair().unwrap();
        assert!(write_stdin(&fd, b"line\n", &a));
        drop(fd);
        hub.stdin_done();
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"line\n");
        assert!(hub.stdin().is_none());
        // Without stdin_once the hub keeps stdin open between sessions.
        let hub = AttachHub::new(false, Some(false));
        let (_r, w) = nix::unistd::pipe().unwrap();
        hub.set_stdin(Arc::new(w));
        hub.stdin_done();
        assert!(hub.stdin().is_some());
    }
}
