//! Start of a container's init or of an exec: TaskStart or
//! TaskExecStarted, queued under the `pids` lock before any TaskExit.

use crate::sync::Lock;
use std::sync::Arc;

use containerd_shim::api::{StartRequest, StartResponse};
use containerd_shim::protos::events::task::{TaskExecStarted, TaskStart};
use containerd_shim::protos::types::task::Status;

use super::Inner;
use super::runtime::{Runtime, RuntimeContainer};
use crate::error::{Result, ShimError};
use crate::stdio;

impl<R: Runtime> Inner<R> {
    pub(super) fn start(&self, req: &StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "{} is {:?}, not created",
                p.event_id(),
                p.status()
            )));
        }
        if req.exec_id.is_empty() {
            let pids = self.pids.locked();
            c.runtime.start()?;
            if !p.set_running(c.runtime.pid()) {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} exited before it started",
                    c.id
                )));
            }
            self.events.send(TaskStart {
                container_id: c.id.clone(),
                pid: c.runtime.pid() as u32,
                ..Default::default()
            });
            drop(pids);
            tracing::info!(container = %c.id, pid = c.runtime.pid(), "started");
            return Ok(StartResponse {
                pid: c.runtime.pid() as u32,
                ..Default::default()
            });
        }
        if c.init.status() == Status::STOPPED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let spec = p
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec has no process spec".into()))?;
        let (stdio, io) = stdio::open(&p.stdio)?;
        let mut pids = self.pids.locked();
        let execed = c.runtime.exec(spec, stdio);
        self.children_added();
        let exec = execed?;
        if let Some(master) = exec.pty_master {
            io.attach_pty(master)?;
        }
        *p.io.locked() = Some(Arc::new(io));
        p.set_running(exec.pid);
        pids.insert(exec.pid, p.clone());
        self.events.send(TaskExecStarted {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: exec.pid as u32,
            ..Default::default()
        });
        drop(pids);
        tracing::info!(container = %c.id, exec = %req.exec_id, pid = exec.pid, "exec started");
        Ok(StartResponse {
            pid: exec.pid as u32,
            ..Default::default()
        })
    }
}
