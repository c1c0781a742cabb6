//! Kill of a container's init (or all its processes) or of an exec.

use containerd_shim::api::KillRequest;
use containerd_shim::protos::types::task::Status;

use super::Inner;
use super::runtime::{Runtime, RuntimeContainer};
use crate::error::{Result, ShimError};

impl<R: Runtime> Inner<R> {
    pub(super) fn kill(&self, req: &KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .map_err(|_| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        if req.exec_id.is_empty() {
            if p.status() == Status::STOPPED && !req.all {
                return Err(ShimError::NotFound(format!(
                    "container {}: process already finished",
                    c.id
                )));
            }
            c.runtime.kill(signal, req.all)?;
            return Ok(());
        }
        match p.status() {
            Status::STOPPED => Err(ShimError::NotFound(format!(
                "exec {}: process already finished",
                req.exec_id
            ))),
            Status::CREATED => Err(ShimError::FailedPrecondition(format!(
                "exec {} is not started",
                req.exec_id
            ))),
            _ => c.runtime.kill_exec(p.pid(), signal),
        }
    }
}
