//! Create: the bundle's spec, containerd's rootfs mounts, the stdio, then
//! the runtime's create; TaskCreate.

use crate::sync::Lock;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use berth::runtime::CreateOptions;
use containerd_shim::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use oci_spec::runtime::Spec;

use super::oom::OomTracker;
use super::runtime::{Runtime, RuntimeContainer};
use super::{ContainerEntry, Inner, has_own_pid_namespace};
use crate::error::{Result, ShimError};
use crate::process::Process;
use crate::rootfs;
use crate::stdio::{self, StdioPaths};

impl<R: Runtime> Inner<R> {
    pub(super) fn create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let _serial = self.create_lock.locked();
        if req.id.is_empty() {
            return Err(ShimError::InvalidArgument("container id is empty".into()));
        }
        if self.containers.locked().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("container {}", req.id)));
        }
        // containerd's CreateTaskRequest.checkpoint: the CRIU images to
        // restore the init from (as runc-shim's `runc restore`).
        let checkpoint = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        if let Some(images) = &checkpoint
            && !images.is_absolute()
        {
            return Err(ShimError::InvalidArgument(format!(
                "checkpoint path {:?} must be absolute",
                req.checkpoint
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            ShimError::InvalidArgument(format!("read {}/config.json: {e}", req.bundle))
        })?;
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle.join("rootfs");
            std::fs::create_dir_all(&target)
                .map_err(ShimError::io(format!("create {}", target.display())))?;
            // A user-namespaced container sees the image layers through
            // idmapped mounts of its user namespace (the layers stay as they are).
            let userns = berth::runtime::idmap::spec_userns(&spec)
                .map_err(|e| ShimError::InvalidArgument(format!("user namespace: {e}")))?;
            rootfs::mount_all(&req.rootfs, &target, userns.as_ref().map(|f| f.as_fd()))?;
            Some(target)
        };
        let undo_mount = |e: ShimError| {
            if let Some(t) = &rootfs {
                rootfs::unmount_all(t);
            }
            e
        };
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (stdio, io) = stdio::open(&paths).map_err(undo_mount)?;
        let state_dir = bundle.join("berth");
        std::fs::create_dir_all(&state_dir)
            .map_err(ShimError::io(format!("create {}", state_dir.display())))
            .map_err(undo_mount)?;

        let systemd_cgroup = systemd_cgroup_option(req.options.as_ref()).map_err(undo_mount)?;
        let opts = CreateOptions {
            id: &req.id,
            bundle: &bundle,
            spec: &spec,
            stdio,
            state_dir: &state_dir,
            systemd_cgroup,
        };
        // CRIU runs without the `pids` lock (the reaper takes it to hand
        // CRIU's exit back); the restored tree stays stopped until Start,
        // so it cannot exit before it is registered below.
        let (created, mut pids) = match &checkpoint {
            None => {
                let pids = self.pids.locked();
                #[cfg(debug_assertions)]
                test_panic_hook(&spec);
                (self.runtime.create(opts), pids)
            }
            Some(images) => {
                let run = |cmd: &mut std::process::Command| {
                    crate::helper_run::output(cmd, &|| self.children_added())
                };
                let restored = self.runtime.restore(opts, images, &run).map(|c| (c, None));
                (restored, self.pids.locked())
            }
        };
        self.children_added();
        let (container, master) = created.map_err(undo_mount)?;
        if let Some(master) = master {
            io.attach_pty(master).map_err(undo_mount)?;
        }
        if let Some(hub) = io.attach_hub() {
            crate::attach::register(&req.id, hub);
        }
        let mut init = Process::new(&req.id, "", paths.clone());
        if !has_own_pid_namespace(&spec) {
            let c = container.clone();
            init.kill_all_on_exit = Some(Box::new(move || c.kill(libc::SIGKILL, true)));
        }
        let oom = Arc::new(Mutex::new(OomTracker::new(container.oom_counts().ok())));
        init.before_exit_event = Some(super::oom::exit_check(
            container.clone(),
            oom.clone(),
            self.events.clone(),
            req.id.clone(),
        ));
        init.set_pid(container.pid());
        *init.io.locked() = Some(Arc::new(io));
        let init = Arc::new(init);
        pids.insert(container.pid(), init.clone());

        if let Err(e) = container.persist(&bundle) {
            tracing::warn!(container = %req.id, error = %e, "persist container state");
        }
        let entry = Arc::new(ContainerEntry {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runtime: container.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
            rootfs,
            oom_stop: Arc::new(AtomicBool::new(false)),
            oom,
        });
        self.containers
            .locked()
            .insert(req.id.clone(), entry.clone());
        drop(pids);
        self.watch_oom(&entry);

        tracing::info!(container = %req.id, pid = container.pid(), "created");
        self.events.send(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: container.pid() as u32,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid: container.pid() as u32,
            ..Default::default()
        })
    }
}

/// Test builds only (debug assertions): a Create whose command line holds
/// the word in `BERTH_SHIM_TEST_PANIC` panics while it holds the `pids`
/// lock, so that the tests can check that a panicking RPC neither poisons
/// the shim nor stops its reaper. Release builds have no such hook.
#[cfg(debug_assertions)]
fn test_panic_hook(spec: &Spec) {
    let Ok(word) = std::env::var("BERTH_SHIM_TEST_PANIC") else {
        return;
    };
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    if !word.is_empty() && args.iter().any(|a| a.contains(&word)) {
        panic!("test hook: Create panics holding the pids lock ({word})");
    }
}

/// Type URL of runc's shim options (containerd's `options.Options`).
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// runc's `SystemdCgroup` option from a create request's options (as
/// containerd sends them for `[...runtimes.<name>.options]`); other option
/// types say nothing about the driver.
pub fn systemd_cgroup_option(options: Option<&Any>) -> Result<bool> {
    let Some(any) = options.filter(|a| a.type_url.ends_with(RUNC_OPTIONS_TYPE_URL)) else {
        return Ok(false);
    };
    let o = containerd_shim::protos::shim::oci::Options::parse_from_bytes(&any.value)
        .map_err(|e| ShimError::InvalidArgument(format!("runc options: {e}")))?;
    Ok(o.systemd_cgroup)
}

#[cfg(test)]
mod systemd_option_tests {
    use super::*;

    #[test]
    fn runc_options_say_systemd_cgroup() {
        let o = containerd_shim::protos::shim::oci::Options {
            systemd_cgroup: true,
            ..Default::default()
        };
        let any = Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE_URL}"),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert!(systemd_cgroup_option(Some(&any)).unwrap());
        let any = Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: containerd_shim::protos::shim::oci::Options::default()
                .write_to_bytes()
                .unwrap(),
            ..Default::default()
        };
        assert!(!systemd_cgroup_option(Some(&any)).unwrap());
        let other = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert!(!systemd_cgroup_option(Some(&other)).unwrap());
        assert!(!systemd_cgroup_option(None).unwrap());
        let bad = Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: vec![0xff],
            ..Default::default()
        };
        assert!(systemd_cgroup_option(Some(&bad)).is_err());
    }
}
