//! The ttrpc `Task` trait onto the operations: each RPC runs under
//! [`rpc`] (a panic becomes INTERNAL, failures are logged).

use crate::sync::Lock;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};

use super::runtime::{Runtime, RuntimeContainer};
use super::{IO_DRAIN, TaskService};
use crate::error::Result;
use crate::metrics;

/// Runs one RPC: a panic becomes an Internal error instead of a request
/// containerd waits on forever; failures are logged.
fn rpc<T>(rpc: &str, id: &str, f: impl FnOnce() -> Result<T>) -> TtrpcResult<T> {
    let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!(rpc, container = %id, panic = %msg, "rpc panicked");
            return Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
                containerd_shim::protos::ttrpc::get_status(
                    containerd_shim::protos::ttrpc::Code::INTERNAL,
                    format!("{rpc} panicked: {msg}"),
                ),
            ));
        }
    };
    if let Err(e) = &r {
        tracing::warn!(rpc, container = %id, error = %e, "rpc failed");
    }
    r.map_err(Into::into)
}

/// Gives the heap's free pages back to the kernel. A shim idles for its
/// containers' whole life after Start; what parsing the spec and setting up
/// the container allocated is free by then but still resident.
fn release_free_heap() {
    // SAFETY: malloc_trim only hands free allocator memory back to the kernel.
    unsafe { libc::malloc_trim(0) };
}

impl<R: Runtime> Task for TaskService<R> {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        rpc("Create", &req.id, || self.inner.create(&req))
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let r = rpc("Start", &req.id, || self.inner.start(&req));
        release_free_heap();
        r
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let r = rpc("Delete", &req.id, || self.inner.delete(&req));
        release_free_heap();
        r
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        rpc("Exec", &req.id, || {
            self.inner.exec(&req).map(|()| Empty::new())
        })
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        rpc("ResizePty", &req.id, || {
            self.inner.resize_pty(&req).map(|()| Empty::new())
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        rpc("CloseIO", &req.id, || {
            self.inner.close_io(&req).map(|()| Empty::new())
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        rpc("Kill", &req.id, || {
            self.inner.kill(&req).map(|()| Empty::new())
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        rpc("Pids", &req.id, || self.inner.pids(&req))
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        rpc("State", &req.id, || self.inner.state(&req))
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        rpc("Pause", &req.id, || {
            self.inner.pause(&req.id).map(|()| Empty::new())
        })
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        rpc("Resume", &req.id, || {
            self.inner.resume(&req.id).map(|()| Empty::new())
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        rpc("Update", &req.id, || {
            self.inner.update(&req).map(|()| Empty::new())
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        rpc("Wait", &req.id, || {
            let p = self.inner.container(&req.id)?.process(&req.exec_id)?;
            let exit = p.wait();
            if let Some(io) = p.io() {
                io.drain_output(IO_DRAIN);
            }
            Ok(WaitResponse {
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            })
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        rpc("Stats", &req.id, || {
            let stats = self.inner.container(&req.id)?.runtime.stats()?;
            Ok(StatsResponse {
                stats: MessageField::some(metrics::to_any(&stats)?),
                ..Default::default()
            })
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.runtime.pid() as u32)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: berth::VERSION.to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let left = self.inner.containers.locked().len();
        if left == 0 || req.now {
            tracing::info!(namespace = %self.inner.namespace, "shutting down");
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        rpc("Checkpoint", &req.id, || {
            self.inner.checkpoint(&req).map(|()| Empty::new())
        })
    }
}
