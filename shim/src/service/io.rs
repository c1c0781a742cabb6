//! CloseIO and ResizePty of a process' stdio.

use containerd_shim::api::{CloseIORequest, ResizePtyRequest};

use super::Inner;
use super::runtime::Runtime;
use crate::error::Result;

impl<R: Runtime> Inner<R> {
    pub(super) fn close_io(&self, req: &CloseIORequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.io()
        {
            io.close_stdin();
        }
        Ok(())
    }

    pub(super) fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        match p.io() {
            Some(io) => io.resize(req.width, req.height),
            None => Ok(()),
        }
    }
}
