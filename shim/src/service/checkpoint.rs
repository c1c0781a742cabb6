//! Checkpoint: CRIU dumps a running container, which keeps running.

use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::types::task::Status;

use super::Inner;
use super::runtime::{Runtime, RuntimeContainer};
use crate::error::{Result, ShimError};

impl<R: Runtime> Inner<R> {
    /// Task Checkpoint: CRIU dumps the container's process tree into
    /// `req.path` (its log in `<path>.work/dump.log`) and leaves it
    /// running, as Kubernetes' forensic checkpoints want (containerd's CRI
    /// asks runc the same: `Exit: false`).
    pub(super) fn checkpoint(&self, req: &CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is {:?}, not running: only running containers can be checkpointed",
                c.id,
                c.init.status()
            )));
        }
        let images = std::path::Path::new(&req.path);
        if !images.is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "checkpoint path {:?} must be absolute",
                req.path
            )));
        }
        let work = std::path::PathBuf::from(format!("{}.work", req.path));
        let run = |cmd: &mut std::process::Command| {
            crate::helper_run::output(cmd, &|| self.children_added())
        };
        c.runtime.checkpoint(images, &work, &run)
    }
}
