//! Exec: a process added to a running container (started by Start);
//! TaskExecAdded.

use crate::sync::Lock;
use std::sync::Arc;

use containerd_shim::api::ExecProcessRequest;
use containerd_shim::protos::events::task::TaskExecAdded;
use containerd_shim::protos::types::task::Status;

use super::Inner;
use super::runtime::Runtime;
use crate::error::{Result, ShimError};
use crate::process::Process;
use crate::stdio::StdioPaths;

impl<R: Runtime> Inner<R> {
    pub(super) fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        if c.init.status() == Status::STOPPED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
        let mut p = Process::new(
            &c.id,
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = Some(process);
        {
            let mut execs = c.execs.locked();
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!("exec {}", req.exec_id)));
            }
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.events.send(TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }
}
