//! Delete of an exec or of a container (its init's exit, a last OOM, the
//! runtime's delete, the rootfs, TaskDelete).

use crate::sync::Lock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use containerd_shim::api::{DeleteRequest, DeleteResponse};
use containerd_shim::protos::events::task::TaskDelete;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::task::Status;

use super::runtime::{Runtime, RuntimeContainer};
use super::{IO_DRAIN, Inner, REAP_GRACE};
use crate::error::{Result, ShimError};
use crate::events::now;
use crate::reaper::signal_exit_code;
use crate::rootfs;

impl<R: Runtime> Inner<R> {
    pub(super) fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if matches!(p.status(), Status::RUNNING | Status::PAUSED) {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} is running",
                    req.exec_id
                )));
            }
            c.execs.locked().remove(&req.exec_id);
            if let Some(io) = p.io() {
                io.shutdown(IO_DRAIN);
            }
            let exit = p.exit();
            return Ok(DeleteResponse {
                pid: p.pid() as u32,
                exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                ..Default::default()
            });
        }
        let init = &c.init;
        if matches!(init.status(), Status::RUNNING | Status::PAUSED) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is running: kill it first",
                c.id
            )));
        }
        // An OOM the watcher has not got to yet must not vanish with the cgroup.
        if let Ok(counts) = c.runtime.oom_counts() {
            super::oom::report(&c.oom, &counts, None, &self.events, &c.id);
        }
        c.oom_stop.store(true, Ordering::SeqCst);
        if let Err(e) = c.runtime.delete() {
            tracing::warn!(container = %c.id, error = %e, "runtime delete");
        }
        let exit = match init.exit() {
            Some(e) => e,
            // Created but never started: the runtime killed it; take the exit.
            None => init.wait_timeout(REAP_GRACE).unwrap_or_else(|| {
                self.pids.locked().remove(&init.pid());
                crate::process::Exit {
                    status: signal_exit_code(libc::SIGKILL),
                    at: now(),
                }
            }),
        };
        // The exit dispatch holds `pids` from marking the init exited until
        // its TaskExit is queued: taking it here puts TaskExit before
        // TaskDelete (a never-started init killed by the runtime's delete
        // is reported by the reaper while Delete is already waking up).
        drop(self.pids.locked());
        let execs: Vec<_> = c.execs.locked().drain().collect();
        for (_, p) in &execs {
            if let Some(io) = p.io() {
                io.shutdown(Duration::ZERO);
            }
        }
        if let Some(io) = init.io() {
            io.shutdown(IO_DRAIN);
        }
        if let Some(t) = &c.rootfs {
            rootfs::detach_all(t);
        }
        let _ = std::fs::remove_file(c.bundle.join(super::state_file::STATE_FILE));
        self.containers.locked().remove(&c.id);
        tracing::info!(container = %c.id, status = exit.status, "deleted");
        self.events.send(TaskDelete {
            container_id: c.id.clone(),
            pid: init.pid() as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid: init.pid() as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }
}
