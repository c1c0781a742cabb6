//! State and Pids: what containerd asks of a container or process.

use crate::sync::Lock;
use std::collections::HashMap;

use containerd_shim::api::{PidsRequest, PidsResponse, StateRequest, StateResponse};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::types::task::ProcessInfo;

use super::Inner;
use super::runtime::{Runtime, RuntimeContainer};
use crate::error::Result;

impl<R: Runtime> Inner<R> {
    pub(super) fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid() as u32,
            status: p.status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    pub(super) fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.container(&req.id)?;
        let execs: HashMap<i32, String> = c
            .execs
            .locked()
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let mut processes = Vec::new();
        for pid in c.runtime.pids()? {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some(exec_id) = execs.get(&pid) {
                let details = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = MessageField::some(Any {
                    type_url: "containerd.runc.v1.ProcessDetails".into(),
                    value: details.write_to_bytes().unwrap_or_default(),
                    ..Default::default()
                });
            }
            processes.push(info);
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }
}
