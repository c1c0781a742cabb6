//! `runtime.v1.RuntimeService`: Version and Status are real; the pod and
//! container calls answer `Unimplemented`, naming the call, until they are
//! built.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::cri::error::unimplemented;
use crate::cri::{RUNTIME_API_VERSION, RUNTIME_NAME};

/// CRI condition type: the runtime can run host-network containers.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// CRI condition type: pod networking is ready.
pub const NETWORK_READY: &str = "NetworkReady";
/// The kubelet runtime API version berthd answers in `Version.version`
/// (the value containerd and CRI-O report).
const KUBELET_API_VERSION: &str = "0.1.0";

/// The CRI RuntimeService of berthd.
#[derive(Debug, Clone)]
pub struct CriRuntimeService {
    config: Arc<Config>,
}

impl CriRuntimeService {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }

    fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        vec![
            cri::RuntimeCondition {
                r#type: RUNTIME_READY.to_owned(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: NETWORK_READY.to_owned(),
                status: false,
                reason: "NetworkPluginNotReady".to_owned(),
                message: "berth: pod networking is not built yet; only host-network pods could run"
                    .to_owned(),
            },
        ]
    }

    fn verbose_info(&self) -> HashMap<String, String> {
        let config = serde_json::to_string(&*self.config)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        let daemon = serde_json::json!({
            "name": RUNTIME_NAME,
            "version": crate::VERSION,
            "pid": std::process::id(),
        });
        HashMap::from([
            ("config".to_owned(), config),
            ("daemon".to_owned(), daemon.to_string()),
        ])
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for CriRuntimeService {
    type GetContainerEventsStream = EventStream;

    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBELET_API_VERSION.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: crate::VERSION.to_owned(),
            runtime_api_version: RUNTIME_API_VERSION.to_owned(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let info = if request.get_ref().verbose {
            self.verbose_info()
        } else {
            HashMap::new()
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: self.conditions(),
            }),
            info,
            runtime_handlers: Vec::new(),
            features: None,
        }))
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(unimplemented("GetContainerEvents"))
    }

    async fn run_pod_sandbox(
        &self,
        _request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        Err(unimplemented("RunPodSandbox"))
    }

    async fn stop_pod_sandbox(
        &self,
        _request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        Err(unimplemented("StopPodSandbox"))
    }

    async fn remove_pod_sandbox(
        &self,
        _request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        Err(unimplemented("RemovePodSandbox"))
    }

    async fn pod_sandbox_status(
        &self,
        _request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        Err(unimplemented("PodSandboxStatus"))
    }

    async fn list_pod_sandbox(
        &self,
        _request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Err(unimplemented("ListPodSandbox"))
    }

    async fn create_container(
        &self,
        _request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        Err(unimplemented("CreateContainer"))
    }

    async fn start_container(
        &self,
        _request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        Err(unimplemented("StartContainer"))
    }

    async fn stop_container(
        &self,
        _request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        Err(unimplemented("StopContainer"))
    }

    async fn remove_container(
        &self,
        _request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        Err(unimplemented("RemoveContainer"))
    }

    async fn list_containers(
        &self,
        _request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Err(unimplemented("ListContainers"))
    }

    async fn container_status(
        &self,
        _request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        Err(unimplemented("ContainerStatus"))
    }

    async fn update_container_resources(
        &self,
        _request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        Err(unimplemented("UpdateContainerResources"))
    }

    async fn reopen_container_log(
        &self,
        _request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        Err(unimplemented("ReopenContainerLog"))
    }

    async fn exec_sync(
        &self,
        _request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        Err(unimplemented("ExecSync"))
    }

    async fn exec(
        &self,
        _request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        Err(unimplemented("Exec"))
    }

    async fn attach(
        &self,
        _request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        Err(unimplemented("Attach"))
    }

    async fn port_forward(
        &self,
        _request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        Err(unimplemented("PortForward"))
    }

    async fn container_stats(
        &self,
        _request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        Err(unimplemented("ContainerStats"))
    }

    async fn list_container_stats(
        &self,
        _request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        Err(unimplemented("ListContainerStats"))
    }

    async fn pod_sandbox_stats(
        &self,
        _request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        Err(unimplemented("PodSandboxStats"))
    }

    async fn list_pod_sandbox_stats(
        &self,
        _request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        Err(unimplemented("ListPodSandboxStats"))
    }

    async fn update_runtime_config(
        &self,
        _request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        Err(unimplemented("UpdateRuntimeConfig"))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Err(unimplemented("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Err(unimplemented("RuntimeConfig"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn service() -> CriRuntimeService {
        CriRuntimeService::new(Arc::new(Config::default()))
    }

    #[tokio::test]
    async fn version_names_berth() {
        let v = service()
            .version(Request::new(cri::VersionRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.runtime_name, "berth");
        assert_eq!(v.runtime_version, crate::VERSION);
        assert_eq!(v.runtime_api_version, "v1");
    }

    #[tokio::test]
    async fn status_conditions_and_verbose() {
        let s = service();
        let quiet = s
            .status(Request::new(cri::StatusRequest { verbose: false }))
            .await
            .unwrap()
            .into_inner();
        assert!(quiet.info.is_empty());
        let conditions = quiet.status.unwrap().conditions;
        let runtime = conditions
            .iter()
            .find(|c| c.r#type == RUNTIME_READY)
            .unwrap();
        assert!(runtime.status);
        let network = conditions
            .iter()
            .find(|c| c.r#type == NETWORK_READY)
            .unwrap();
        assert!(!network.status);
        assert_eq!(network.reason, "NetworkPluginNotReady");
        assert!(!network.message.is_empty());

        let verbose = s
            .status(Request::new(cri::StatusRequest { verbose: true }))
            .await
            .unwrap()
            .into_inner();
        let config: serde_json::Value = serde_json::from_str(&verbose.info["config"]).unwrap();
        assert_eq!(config["root"], "/var/lib/berth");
    }

    #[tokio::test]
    async fn unbuilt_calls_are_unimplemented() {
        let err = service()
            .run_pod_sandbox(Request::new(cri::RunPodSandboxRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("RunPodSandbox"));
    }
}
