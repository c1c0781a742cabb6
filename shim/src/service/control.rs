//! Pause, Resume and Update of a running container.

use containerd_shim::api::UpdateTaskRequest;
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::types::task::Status;
use oci_spec::runtime::LinuxResources;

use super::Inner;
use super::runtime::{Runtime, RuntimeContainer};
use crate::error::{Result, ShimError};

impl<R: Runtime> Inner<R> {
    pub(super) fn pause(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is {:?}, not running",
                c.init.status()
            )));
        }
        c.runtime.pause()?;
        c.init.set_paused(true);
        self.events.send(TaskPaused {
            container_id: id.to_string(),
            ..Default::default()
        });
        Ok(())
    }

    pub(super) fn resume(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if c.init.status() != Status::PAUSED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is {:?}, not paused",
                c.init.status()
            )));
        }
        c.runtime.resume()?;
        c.init.set_paused(false);
        self.events.send(TaskResumed {
            container_id: id.to_string(),
            ..Default::default()
        });
        Ok(())
    }

    pub(super) fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))?;
        c.runtime.update(&resources)?;
        Ok(())
    }
}
