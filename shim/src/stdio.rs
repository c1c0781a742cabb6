//! A process' stdio through containerd's fifos.
//!
//! Output without a terminal: the container gets the fifo's write end
//! itself: no copy, no thread, no extra wake-up per write. The shim keeps a
//! read end of each output fifo open as the runc shim does, so a container
//! writing while containerd restarts never gets EPIPE (its writes block until
//! containerd reads again).
//!
//! stdin is copied by a small thread from the fifo to a pipe the process
//! reads: a fifo read end handed over directly would read EOF before the
//! client has even opened its end. The thread polls the fifo (which reports
//! hang-up only once a writer came and went), so the process sees EOF exactly
//! when the client closes stdin, or on CloseIO.
//!
//! With a terminal the runtime hands back the pty master; threads copy stdin
//! fifo → master and master → stdout fifo.

use crate::sync::Lock;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::runtime::Stdio;

use crate::attach::AttachHub;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Result, ShimError};

/// Stack size of the copy threads: they only hold a small buffer.
const COPY_STACK: usize = 64 * 1024;
const COPY_BUF: usize = 8 * 1024;

/// The stdio paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the shim holds for one process' stdio.
#[derive(Default)]
pub struct ProcessIo {
    /// Dropping it stops the stdin copy (CloseIO).
    stdin_cancel: Mutex<Option<OwnedFd>>,
    /// Our read ends of the stdout/stderr fifos (never read: they keep the
    /// fifo open while containerd is away).
    _keepers: Vec<OwnedFd>,
    /// Ends a terminal process' copies need once the master arrives.
    pending_tty: Mutex<Option<(Option<File>, Option<File>)>>,
    /// The pty master, for TIOCSWINSZ.
    pty_master: Mutex<Option<Arc<OwnedFd>>>,
    /// Dropping it wakes the copy threads up so they exit.
    cancel: Mutex<Option<OwnedFd>>,
    /// One receiver per copy thread: it disconnects when the thread ends.
    copies: Mutex<Vec<Receiver<()>>>,
    /// The live stdio for attach sessions (berthd's containers).
    attach: Option<Arc<AttachHub>>,
    /// The terminal's output copy (pty master → stdout fifo), kept apart so
    /// that Wait can let it drain before the exit is reported.
    output: Mutex<Option<Receiver<()>>>,
}

/// Opens the fifos in `paths`. Returns what the runtime passes to the process
/// and what the shim keeps.
pub fn open(paths: &StdioPaths) -> Result<(Stdio, ProcessIo)> {
    let mut io = ProcessIo::default();
    let mut keepers = Vec::new();
    // berthd's containers: output to a CRI log, stdin (if any) from attach.
    let attach_stdin = berth::attach_wire::parse_stdin_uri(&paths.stdin);
    let hub = (attach_stdin.is_some() || paths.stdout.starts_with(crate::cri_log::SCHEME))
        .then(|| AttachHub::new(paths.terminal, attach_stdin));
    let stdin = if paths.stdin.is_empty() || attach_stdin.is_some() {
        None
    } else {
        Some(open_stdin(&paths.stdin)?)
    };
    let stdout = open_output(&paths.stdout, "stdout", &mut keepers, hub.as_ref())?;
    let stderr = if paths.terminal {
        None
    } else {
        open_output(&paths.stderr, "stderr", &mut keepers, hub.as_ref())?
    };
    io._keepers = keepers;
    io.attach = hub.clone();
    if paths.terminal {
        *io.pending_tty.get_mut().expect("fresh mutex") =
            Some((stdin.map(File::from), stdout.map(File::from)));
        return Ok((
            Stdio {
                terminal: true,
                ..Default::default()
            },
            io,
        ));
    }
    // The process reads a pipe; a thread feeds it from the fifo, or attach
    // sessions write to it.
    let stdin = match stdin {
        None => match (attach_stdin, &hub) {
            (Some(_), Some(hub)) => {
                let (r, w) =
                    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))?;
                hub.set_stdin(Arc::new(w));
                Some(r)
            }
            _ => None,
        },
        Some(fifo) => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))?;
            let (cancel_r, cancel_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))?;
            *io.stdin_cancel.get_mut().expect("fresh mutex") = Some(cancel_w);
            let rx = spawn_copy(
                "stdin-copy",
                File::from(fifo),
                File::from(w),
                Arc::new(cancel_r),
            )?;
            io.copies.get_mut().expect("fresh mutex").push(rx);
            Some(r)
        }
    };
    Ok((
        Stdio {
            stdin,
            stdout,
            stderr,
            terminal: false,
        },
        io,
    ))
}

/// stdin: a non-blocking read end of the fifo for the copy thread to poll.
fn open_stdin(path: &str) -> Result<OwnedFd> {
    let path = fifo_path(path)?;
    // Non-blocking: the open must not wait for the client's writer.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ShimError::io(format!("open stdin fifo {path}")))?;
    Ok(OwnedFd::from(reader))
}

/// stdout/stderr: a fifo (the shim keeps a read end) or a `file://` log.
fn open_output(
    uri: &str,
    stream: &'static str,
    keepers: &mut Vec<OwnedFd>,
    hub: Option<&Arc<AttachHub>>,
) -> Result<Option<OwnedFd>> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(file) = uri.strip_prefix(crate::cri_log::SCHEME) {
        return crate::cri_log::open(file, stream, hub.cloned()).map(Some);
    }
    if let Some(file) = uri.strip_prefix("file://") {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(file)
            .map_err(ShimError::io(format!("open log file {file}")))?;
        return Ok(Some(OwnedFd::from(f)));
    }
    let path = fifo_path(uri)?;
    let keeper = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ShimError::io(format!("open output fifo {path}")))?;
    let writer = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(ShimError::io(format!(
            "open output fifo {path} for writing"
        )))?;
    keepers.push(OwnedFd::from(keeper));
    Ok(Some(OwnedFd::from(writer)))
}

fn fifo_path(uri: &str) -> Result<&str> {
    if let Some(rest) = uri.strip_prefix("fifo://") {
        return Ok(rest);
    }
    if uri.contains("://") {
        return Err(ShimError::Unimplemented(format!(
            "stdio URI {uri}: only fifos, file:// and cri-log:// are supported"
        )));
    }
    Ok(uri)
}

impl ProcessIo {
    /// The live stdio for attach sessions, if the process has one.
    pub fn attach_hub(&self) -> Option<&Arc<AttachHub>> {
        self.attach.as_ref()
    }

    /// Starts copying between the fifos and the pty master of a terminal process.
    pub fn attach_pty(&self, master: OwnedFd) -> Result<()> {
        let master = Arc::new(master);
        *self.pty_master.locked() = Some(master.clone());
        if let Some(hub) = &self.attach {
            hub.set_stdin(master.clone());
        }
        let Some((stdin, stdout)) = self.pending_tty.locked().take() else {
            return Ok(());
        };
        let (cancel_r, cancel_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))?;
        let cancel_r = Arc::new(cancel_r);
        *self.cancel.locked() = Some(cancel_w);
        let mut copies = self.copies.locked();
        if let Some(stdin) = stdin {
            let master_w = File::from(
                master
                    .try_clone()
                    .map_err(ShimError::io("dup pty master"))?,
            );
            let (stdin_r, stdin_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))?;
            *self.stdin_cancel.locked() = Some(stdin_w);
            copies.push(spawn_copy(
                "stdin-copy",
                stdin,
                master_w,
                Arc::new(stdin_r),
            )?);
        }
        if let Some(stdout) = stdout {
            let master_r = File::from(
                master
                    .try_clone()
                    .map_err(ShimError::io("dup pty master"))?,
            );
            *self.output.locked() = Some(spawn_copy("stdout-copy", master_r, stdout, cancel_r)?);
        }
        Ok(())
    }

    /// Sets the terminal size. Without a terminal there is nothing to resize.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let guard = self.pty_master.locked();
        let Some(master) = guard.as_ref() else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        tiocswinsz(master.as_raw_fd(), &ws).map_err(ShimError::sys("TIOCSWINSZ"))?;
        Ok(())
    }

    /// Stops feeding stdin (CloseIO): the process reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_cancel.locked().take();
    }

    /// Waits (at most `grace`) until a terminal's output copy has ended, i.e.
    /// everything the exited process wrote is in the stdout fifo. Clients
    /// such as `ctr run -t` stop reading soon after they learn of the exit:
    /// reporting it before the copy is done loses the last output.
    pub fn drain_output(&self, grace: Duration) {
        let mut output = self.output.locked();
        if let Some(rx) = output.as_ref() {
            match rx.recv_timeout(grace) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => *output = None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Lets the copies drain what the exited process left (bounded by
    /// `grace`), then stops them.
    pub fn shutdown(&self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace;
        // The process is gone: its stdin no longer matters. The output copy
        // ends by itself (EIO once the pty slave is closed).
        self.stdin_cancel.locked().take();
        self.drain_output(grace);
        let copies = std::mem::take(&mut *self.copies.locked());
        for rx in &copies {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        self.cancel.locked().take();
        self.pty_master.locked().take();
    }
}

nix::ioctl_write_ptr_bad!(tiocswinsz_raw, libc::TIOCSWINSZ, libc::winsize);

fn tiocswinsz(fd: i32, ws: &libc::winsize) -> nix::Result<()> {
    // SAFETY: fd is the pty master we own for the duration of the call, and
    // `ws` points to a valid winsize the kernel only reads.
    unsafe { tiocswinsz_raw(fd, ws) }.map(drop)
}

/// Copies `src` to `dst` on a small thread until EOF, an error, or cancel.
/// The returned receiver disconnects when the thread has ended.
fn spawn_copy(
    name: &str,
    mut src: File,
    mut dst: File,
    cancel: Arc<OwnedFd>,
) -> Result<Receiver<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(COPY_STACK)
        .spawn(move || {
            let _done = tx;
            let mut buf = [0u8; COPY_BUF];
            let mut total = 0usize;
            let name = std::thread::current().name().unwrap_or("copy").to_string();
            let end =
                |why: &str, total: usize| tracing::debug!(copy = %name, total, why, "copy ended");
            loop {
                let mut fds = [
                    PollFd::new(src.as_fd(), PollFlags::POLLIN),
                    PollFd::new(cancel.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
                if fds[1].any().unwrap_or(true) {
                    return end("cancelled", total);
                }
                match src.read(&mut buf) {
                    Ok(0) => return end("eof", total),
                    Ok(n) => {
                        total += n;
                        if dst.write_all(&buf[..n]).is_err() {
                            return end("write failed", total);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    // EIO: the pty slave is closed, the process is gone.
                    Err(_) => return end("closed", total),
                }
            }
        })
        .map_err(ShimError::io("spawn stdio copy thread"))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_paths_and_uris() {
        assert_eq!(fifo_path("/run/x/stdout").unwrap(), "/run/x/stdout");
        assert_eq!(fifo_path("fifo:///run/x/stdout").unwrap(), "/run/x/stdout");
        assert!(matches!(
            fifo_path("binary:///usr/bin/logger"),
            Err(ShimError::Unimplemented(_))
        ));
    }

    #[test]
    fn output_fifo_passes_through_and_survives_reader_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdout: fifo.to_str().unwrap().to_string(),
            ..Default::default()
        };
        // A client reader opens first, as containerd does.
        let mut client = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let (stdio, io) = open(&paths).unwrap();
        let mut w = File::from(stdio.stdout.unwrap());
        w.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The client goes away: writes must not fail while the shim keeps its end.
        drop(client);
        w.write_all(b"still open").unwrap();
        drop(io);
    }

    #[test]
    fn stdin_is_fed_until_the_client_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdin: fifo.to_str().unwrap().to_string(),
            ..Default::default()
        };
        let (stdio, io) = open(&paths).unwrap();
        let mut reader = File::from(stdio.stdin.unwrap());
        // No client yet: the process must not see EOF.
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(50u8)).unwrap(), 0);
        let mut client = OpenOptions::new().write(true).open(&fifo).unwrap();
        client.write_all(b"in").unwrap();
        drop(client);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"in");
        drop(io);
    }

    #[test]
    fn close_io_ends_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdin: fifo.to_str().unwrap().to_string(),
            ..Default::default()
        };
        let (stdio, io) = open(&paths).unwrap();
        let _client = OpenOptions::new().write(true).open(&fifo).unwrap();
        io.close_stdin();
        let mut rest = Vec::new();
        File::from(stdio.stdin.unwrap())
            .read_to_end(&mut rest)
            .unwrap();
        assert!(rest.is_empty());
    }
}
