//! Messages between the caller and its init helper (and the container init
//! the helper clones): JSON over a `SOCK_SEQPACKET` socket pair, one message
//! per packet, file descriptors alongside as `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg,
};
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use super::seccomp::SeccompProgram;

/// The largest message either side accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// What the caller asks the helper to do. The stdio fds (stdin, stdout,
/// stderr, in this order) travel with the message.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Create(Box<CreateRequest>),
    Exec(Box<ExecRequest>),
    /// Sent after `Create`/`Exec` once the container's cgroup is ready: the
    /// helper reads the request meanwhile, and clones only after this. The
    /// fds that travel with it say how the clone gets into the cgroup.
    Proceed(CgroupJoin),
}

/// How the helper gets what it clones into the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupJoin {
    /// cgroup v1: the fds are the cgroup's `tasks` files; the helper moves
    /// itself in before it clones.
    Tasks,
    /// cgroup v2: the one fd is the cgroup's directory; the helper clones
    /// into it (`CLONE_INTO_CGROUP`).
    CloneInto,
}

/// Set up a new container.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    pub spec: Spec,
    /// Absolute path of the (already mounted) rootfs.
    pub rootfs: PathBuf,
    /// The fifo `start` writes to; the init blocks on it before exec.
    pub exec_fifo: PathBuf,
    /// The cgroup path of the container (relative to the hierarchy roots).
    pub cgroup_path: String,
    /// The spec's seccomp filter, compiled by the caller.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
}

/// Start a process inside a running container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub process: Process,
    /// The container init whose namespaces the process joins.
    pub init_pid: i32,
    /// The container's seccomp profile, applied to this process too.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
}

/// What the helper and the container init report back.
#[derive(Debug, Serialize, Deserialize)]
pub enum Report {
    /// Pid of the container (exec) process, in the caller's pid namespace.
    Pid(i32),
    /// Something worth a log line (e.g. a clamped value).
    Warning(String),
    /// The pty master travels with this message.
    PtyMaster,
    /// The init is set up and waits for `start`.
    Ready,
    /// Set-up failed; the message says what and where.
    Error(String),
}

/// A connected pair of sockets, both close-on-exec.
pub fn socket_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let data = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if data.len() > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {} bytes exceeds {MAX_MESSAGE}",
            data.len()
        )));
    }
    let iov = [IoSlice::new(&data)];
    let cmsgs = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds that came with it; `None` at end of stream.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed these fds in
                            // our table for us; nothing else owns them.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    return Err(std::io::Error::other("message truncated"));
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len]).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_fds_round_trip() {
        let (a, b) = socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), &Report::Pid(42), &[w.as_raw_fd()]).unwrap();
        drop(w);
        let (msg, mut fds) = recv::<Report>(b.as_fd()).unwrap().unwrap();
        assert!(matches!(msg, Report::Pid(42)));
        assert_eq!(fds.len(), 1);
        // The fd that came over is the pipe's write end: data reaches `r`.
        let w2 = fds.pop().unwrap();
        nix::unistd::write(&w2, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        // Received fds are close-on-exec.
        let flags = nix::fcntl::fcntl(&w2, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        drop(a);
        assert!(recv::<Report>(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn requests_serialize() {
        let req = Request::Exec(Box::new(ExecRequest {
            process: Process::default(),
            init_pid: 7,
            seccomp: None,
        }));
        let (a, b) = socket_pair().unwrap();
        send(a.as_fd(), &req, &[]).unwrap();
        let (got, fds) = recv::<Request>(b.as_fd()).unwrap().unwrap();
        assert!(fds.is_empty());
        match got {
            Request::Exec(e) => assert_eq!(e.init_pid, 7),
            other => panic!("{other:?}"),
        }
    }
}
