//! Exits of reaped processes: the state change and TaskExit.

use crate::sync::Lock;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;

use super::Inner;
use super::runtime::Runtime;
use crate::events::now;

impl<R: Runtime> Inner<R> {
    /// Runs on the reaper thread for every reaped child.
    pub(super) fn on_exit(&self, pid: i32, status: u32) {
        let mut pids = self.pids.locked();
        let Some(p) = pids.remove(&pid) else {
            if !crate::helper_run::exited(pid, status) {
                tracing::debug!(pid, status, "reaped a process the shim does not track");
            }
            return;
        };
        // The init's OOM check queues its TaskOOM before anyone can learn
        // of the exit (Wait answers once the process is marked exited).
        if let Some(hook) = &p.before_exit_event {
            hook(status);
        }
        let at = now();
        p.set_exited(status, at.clone());
        tracing::info!(container = %p.container_id, exec = %p.exec_id, pid, status, "process exited");
        if let Some(kill_all) = &p.kill_all_on_exit
            && let Err(e) = kill_all()
        {
            tracing::warn!(container = %p.container_id, error = %e, "kill the rest of the container");
        }
        // Still under the pids lock: TaskStart/TaskExecStarted are queued first.
        self.events.send(TaskExit {
            container_id: p.container_id.clone(),
            id: p.event_id().to_string(),
            pid: pid as u32,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        });
    }
}
