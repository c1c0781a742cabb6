//! Command-line entry: `start`, `delete`, or serve the Task API.
//!
//! This follows `containerd_shim::run` but speaks what containerd 1.6 expects,
//! which the crate's `run` (written for containerd 2.x) does not:
//! - `start` prints the bare socket address (1.6 reads stdout+stderr as the
//!   address; the crate prints a JSON reply), or, to containerd 2.3's
//!   bootstrap params on stdin, a `BootstrapResult` (`start_params.rs`);
//! - `-info` prints containerd's `RuntimeInfo` with the OCI features (`info.rs`);
//! - the service answers as `containerd.task.v2.Task` (what 1.6 calls) as
//!   well as `containerd.task.v3.Task` (2.x), same messages.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::Server;
use containerd_shim::{Config, Flags, Shim, Task};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use crate::shim::{BerthShim, LISTENER_FD_ENV};
use crate::start_params;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.berth.v2";

/// Runs the action the command line asks for; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return 1;
        }
    };
    if flags.version {
        println!("containerd-shim-berth-v2 {}", berth::VERSION);
        return 0;
    }
    if flags.info {
        return match print_info() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{RUNTIME_ID}: {e:#}");
                1
            }
        };
    }
    match run(flags) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e:#}");
            1
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.namespace.is_empty() {
        bail!("shim namespace cannot be empty (-namespace)");
    }
    let mut config = Config::default();
    let mut shim = BerthShim::new(RUNTIME_ID, &flags, &mut config);
    match flags.action.as_str() {
        "start" => {
            let input = start_params::read_stdin().context("read stdin")?;
            let (opts, protocol) =
                start_params::parse(&input, &flags, std::env::var("TTRPC_ADDRESS").ok())?;
            let address = shim.start_shim(opts)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&start_params::reply(&address, protocol)?)?;
            out.flush()?;
            Ok(())
        }
        "delete" => {
            let response = shim.delete_shim()?;
            let mut out = std::io::stdout().lock();
            response.write_to_writer(&mut out)?;
            out.flush()?;
            Ok(())
        }
        "" => serve(shim, &flags),
        other => bail!("unknown action {other:?}"),
    }
}

/// `-info`: the runtime's `RuntimeInfo` on stdout.
fn print_info() -> anyhow::Result<()> {
    let input = start_params::read_stdin().context("read stdin")?;
    let info = crate::info::runtime_info(RUNTIME_ID, &input)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&info)?;
    out.flush()?;
    Ok(())
}

/// The daemon: serves the Task API until Shutdown leaves no container.
fn serve(mut shim: BerthShim, flags: &Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        bail!("shim socket cannot be empty (-socket)");
    }
    // Still single-threaded: take our socket, drop whatever else containerd's
    // callers leaked to us (a stray pipe held open here can hang a client).
    let listener = take_listener(&flags.socket)?;
    close_inherited_fds(listener.as_raw_fd());
    // Few threads and little churn: one malloc arena keeps RSS small.
    // SAFETY: mallopt only changes allocator tunables.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        // No log fifo (started by hand): log nowhere rather than fail.
        eprintln!("{RUNTIME_ID}: no log fifo: {e}");
    }
    crate::reaper::set_subreaper()?;
    crate::attach::init(&flags.socket);

    // Events go through the service's own publisher thread, which connects
    // on the first event: no connection is made here.
    std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let task: Arc<dyn Task + Send + Sync> = Arc::new(shim.task_service());
    let v3 = create_task(task.clone());
    let v2 = create_task(task)
        .into_iter()
        .map(|(k, v)| (k.replace("/containerd.task.v3.", "/containerd.task.v2."), v))
        .collect();
    // Per connection ttrpc starts `default` idle workers and starts more
    // whenever fewer than `min` (1) are idle (a blocked Wait is not idle):
    // two instead of three saves a thread per connection.
    let mut server = Server::new()
        .set_thread_count_default(2)
        .add_listener(listener.into_raw_fd())?
        .register_service(v3)
        .register_service(v2);
    server.start()?;
    tracing::info!(namespace = %flags.namespace, id = %flags.id, "shim serving");
    shim.wait();
    tracing::info!("shim exiting");
    shutdown_server(server);
    let _ = std::fs::remove_file(flags.socket.trim_start_matches("unix://"));
    crate::attach::remove_socket();
    Ok(())
}

/// How long the ttrpc server gets to close its connections on exit.
const SERVER_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Stops the ttrpc server, waiting at most [`SERVER_SHUTDOWN_GRACE`].
///
/// ttrpc's sync server can miss the wake-up of a connection whose reader
/// thread sees the quit flag between two messages: that connection's
/// handler then waits forever and `Server::shutdown` never returns. The shim
/// would hang after Shutdown with containerd waiting for its connection to
/// close, until ctr's timeout (seen once in a full test run).
/// Every answer has been handed to the writer by then; exiting closes what
/// is left.
fn shutdown_server(server: Server) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ttrpc-shutdown".into())
        .spawn(move || {
            server.shutdown();
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            if done_rx.recv_timeout(SERVER_SHUTDOWN_GRACE).is_err() {
                tracing::warn!(
                    grace_ms = SERVER_SHUTDOWN_GRACE.as_millis() as u64,
                    "ttrpc server did not shut down in time; exiting anyway"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "no thread to shut the ttrpc server down"),
    }
}

/// Closes every fd above stderr except `keep`.
fn close_inherited_fds(keep: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // The directory's own fd is already closed by now: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
}

/// The socket `start` bound and passed down, or a fresh one when the daemon
/// was started by hand.
fn take_listener(address: &str) -> anyhow::Result<OwnedFd> {
    let fd = match std::env::var(LISTENER_FD_ENV) {
        Ok(v) => {
            let raw: i32 = v.parse().context("bad listener fd")?;
            // SAFETY: `start` passed this fd to us for exactly this purpose and
            // nothing else in this process refers to it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: still single-threaded here; nothing reads the environment concurrently.
            unsafe { std::env::remove_var(LISTENER_FD_ENV) };
            fd
        }
        Err(_) => {
            let path = address.trim_start_matches("unix://");
            OwnedFd::from(UnixListener::bind(path).with_context(|| format!("bind {path}"))?)
        }
    };
    // Never leak the socket into containers.
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}
