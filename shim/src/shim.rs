//! The `Shim` side: starting (or reusing) the shim process of a pod, and
//! cleaning up after a shim that is gone.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use oci_spec::runtime::Spec;

use crate::events::{EventSender, now};
use crate::reaper::signal_exit_code;
use crate::service::{self, TaskService};

/// Annotation naming the pod sandbox a CRI container belongs to: containers
/// of one pod share one shim, as with containerd's runc shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Environment variable carrying the listening socket's fd to the daemon.
pub const LISTENER_FD_ENV: &str = "BERTH_SHIM_LISTENER_FD";

/// containerd-shim-berth-v2.
pub struct BerthShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// The id whose shim serves a container: its sandbox's, or its own.
pub fn grouping_id(id: &str, spec: Option<&Spec>) -> String {
    spec.and_then(|s| s.annotations().as_ref())
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|g| !g.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

impl Shim for BerthShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        BerthShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// Runs in the bundle directory. Returns the address of the shim that
    /// will serve this container: the running shim of its pod if there is
    /// one, else a new daemon started here.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let spec = Spec::load("config.json").ok();
        let grouping = grouping_id(&opts.id, spec.as_ref());
        let address = opts.socket_address(&grouping);
        let path = socket_path(&address);
        if let Some(dir) = Path::new(path).parent() {
            std::fs::create_dir_all(dir).map_err(other("create socket dir"))?;
        }
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    // The pod's shim is alive: it serves this container too.
                    write_address(&address)?;
                    return Ok(address);
                }
                // A dead shim's socket: take its place.
                std::fs::remove_file(path).map_err(other("remove stale socket"))?;
                UnixListener::bind(path).map_err(other("bind shim socket"))?
            }
            Err(e) => return Err(other("bind shim socket")(e)),
        };
        // The daemon inherits the bound socket, so the address works as soon
        // as this returns, with no wait for the daemon to come up.
        fcntl(listener.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        let exe = std::env::current_exe().map_err(other("current exe"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "-namespace",
            &opts.namespace,
            "-id",
            &opts.id,
            "-address",
            &opts.address,
            "-socket",
            &address,
        ]);
        if opts.debug {
            cmd.arg("-debug");
        }
        if !opts.ttrpc_address.is_empty() {
            cmd.env("TTRPC_ADDRESS", &opts.ttrpc_address);
        }
        cmd.env(LISTENER_FD_ENV, listener.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd.spawn().map_err(other("spawn shim daemon"))?;
        drop(listener);
        write_address(&address)?;
        let _ = std::fs::write("shim.pid", child.id().to_string());
        Ok(address)
    }

    /// Cleans up a bundle whose shim is gone: kills what is left, removes the
    /// cgroup and unmounts the rootfs. Runs in the bundle directory.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(other("current dir"))?;
        let mut pid = 0;
        if let Some(c) = service::state_file::read(&bundle) {
            pid = c.pid as u32;
            if let Err(e) = c.kill(libc::SIGKILL, true) {
                tracing::debug!(container = %self.id, error = %e, "kill leftovers");
            }
            if let Err(e) = c.delete() {
                tracing::warn!(container = %self.id, error = %e, "delete leftovers");
            }
        }
        crate::rootfs::unmount_all(&bundle.join("rootfs"));
        let _ = std::fs::remove_file(bundle.join(service::state_file::STATE_FILE));
        // The dead shim's socket, unless another container's shim serves it.
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            let path = socket_path(address.trim());
            if Path::new(path).exists() && UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(berth::attach_wire::socket_path(path));
            }
        }
        Ok(DeleteResponse {
            pid,
            exit_status: signal_exit_code(libc::SIGKILL),
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    /// The crate hands over a connected publisher; the shim publishes
    /// through its own reconnecting [`EventSender`] instead (the daemon
    /// calls [`BerthShim::task_service`] and never makes this connection).
    fn create_task_service(&self, _publisher: RemotePublisher) -> Self::T {
        self.task_service()
    }
}

impl BerthShim {
    /// The Task service with its events thread.
    pub fn task_service(&self) -> TaskService {
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events =
            EventSender::start(address, self.namespace.clone()).expect("start the events thread");
        TaskService::new(service::Berth, &self.namespace, events, self.exit.clone())
            .expect("start the task service")
    }
}

fn other(context: &'static str) -> impl Fn(std::io::Error) -> containerd_shim::Error {
    move |err| containerd_shim::Error::IoError {
        context: context.to_string(),
        err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_group_by_sandbox_annotation() {
        let mut spec = Spec::default();
        assert_eq!(grouping_id("c1", Some(&spec)), "c1");
        assert_eq!(grouping_id("c1", None), "c1");
        spec.set_annotations(Some(
            [(SANDBOX_ID_ANNOTATION.to_string(), "pod1".to_string())].into(),
        ));
        assert_eq!(grouping_id("c1", Some(&spec)), "pod1");
    }
}
