//! `runtime.v1.RuntimeService`: thin adapters from CRI messages to
//! [`crate::pod::PodManager`]. Exec, Attach and PortForward check the
//! container or pod and hand out a URL of the streaming server
//! ([`crate::stream::StreamServer`]); CheckpointContainer dumps with CRIU
//! and CreateContainer from its archive restores
//! (`pod/container_checkpoint.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::cri::error::invalid_argument;
use crate::cri::{RUNTIME_API_VERSION, RUNTIME_NAME};
use crate::pod::{PodError, PodManager};
use crate::stream::StreamServer;

/// CRI condition type: the runtime can run host-network containers.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// CRI condition type: pod networking is ready.
pub const NETWORK_READY: &str = "NetworkReady";
/// The kubelet runtime API version berthd answers in `Version.version`
/// (the value containerd and CRI-O report).
const KUBELET_API_VERSION: &str = "0.1.0";

/// StopContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox are
/// idempotent: api.proto says they "must not return an error" when the
/// container or sandbox is already stopped or removed, and containerd
/// answers success for an id it does not know (`container_stop.go`). A
/// NotFound from the pod manager, whether the id was never there or went
/// away meanwhile, is therefore success.
fn already_gone_is_done(result: Result<(), PodError>) -> Result<(), Status> {
    match result {
        Ok(()) => Ok(()),
        Err(PodError::NotFound(what)) => {
            tracing::debug!(%what, "already gone; nothing to do");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The CRI RuntimeService of berthd.
#[derive(Debug, Clone)]
pub struct CriRuntimeService {
    config: Arc<Config>,
    pods: Arc<PodManager>,
    stream: Option<Arc<StreamServer>>,
}

impl CriRuntimeService {
    /// The runtime handlers of berthd's config (`[runtimes.<name>]`), each
    /// with its features: the kernel probes, narrowed by the handler's
    /// policy. The default handler is listed twice, as containerd does:
    /// under its name and under "" (what kubelet sends for pods without a
    /// RuntimeClass).
    fn runtime_handlers(&self) -> Vec<cri::RuntimeHandler> {
        let f = self.pods.host_features();
        let mut out = Vec::new();
        for (name, h) in &self.config.runtimes {
            let handler = cri::RuntimeHandler {
                name: name.clone(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: f.recursive_read_only,
                    user_namespaces: f.user_namespaces && h.user_namespaces,
                }),
            };
            if *name == self.config.default_runtime {
                out.insert(
                    0,
                    cri::RuntimeHandler {
                        name: String::new(),
                        features: handler.features,
                    },
                );
            }
            out.push(handler);
        }
        out
    }

    pub fn new(config: Arc<Config>, pods: Arc<PodManager>) -> Self {
        Self {
            config,
            pods,
            stream: None,
        }
    }

    /// Serves Exec, Attach and PortForward through `stream`.
    pub fn with_stream(mut self, stream: Arc<StreamServer>) -> Self {
        self.stream = Some(stream);
        self
    }

    fn stream(&self, call: &str) -> Result<&StreamServer, Status> {
        self.stream.as_deref().ok_or_else(|| {
            Status::unimplemented(format!(
                "berth: {call} needs the streaming server, which this berthd was started without"
            ))
        })
    }

    async fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        let (ready, reason, message) = match self.pods.network() {
            Some(net) => {
                let r = net.status().await;
                (r.ready, r.reason, r.message)
            }
            None => (
                false,
                "NetworkPluginNotReady".to_owned(),
                "berth: pod networking could not be set up (see berthd's log); only host-network pods can run".to_owned(),
            ),
        };
        vec![
            cri::RuntimeCondition {
                r#type: RUNTIME_READY.to_owned(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: NETWORK_READY.to_owned(),
                status: ready,
                reason,
                message,
            },
        ]
    }

    fn verbose_info(&self) -> HashMap<String, String> {
        let config = serde_json::to_string(&*self.config)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        let daemon = serde_json::json!({
            "name": RUNTIME_NAME,
            "version": crate::VERSION,
            "commit": crate::GIT_COMMIT,
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
                conditions: self.conditions().await,
            }),
            info,
            runtime_handlers: self.runtime_handlers(),
            // spec/user.rs implements Merge and Strict, and ContainerStatus
            // reports the process's identity: kubelet admits Strict pods.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.pods.events().subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "container events subscriber lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| invalid_argument("RunPodSandbox: config is required"))?;
        let id = self.pods.run_pod(config, &req.runtime_handler).await?;
        tracing::Span::current().record("pod", id.as_str());
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let req = request.into_inner();
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
        already_gone_is_done(self.pods.stop_pod(&req.pod_sandbox_id).await)?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let req = request.into_inner();
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
        already_gone_is_done(self.pods.remove_pod(&req.pod_sandbox_id).await)?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        let (status, info) = self.pods.pod_status(&req.pod_sandbox_id, req.verbose)?;
        // Kubelet's evented PLEG reads the pod's containers from here.
        let containers_statuses = self.pods.pod_container_statuses(&status.id)?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: crate::pod::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let items = self.pods.list_pods(req.filter.as_ref())?;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        let config = req
            .config
            .ok_or_else(|| invalid_argument("CreateContainer: config is required"))?;
        tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
        let id = self
            .pods
            .create_container(&req.pod_sandbox_id, config, req.sandbox_config)
            .await?;
        tracing::Span::current().record("container", id.as_str());
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        self.pods.start_container(&req.container_id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        already_gone_is_done(
            self.pods
                .stop_container(&req.container_id, req.timeout)
                .await,
        )?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        already_gone_is_done(self.pods.remove_container(&req.container_id).await)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let req = request.into_inner();
        let containers = self.pods.list_containers(req.filter.as_ref())?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        let (status, info) = self.pods.container_status(&req.container_id, req.verbose)?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        self.pods
            .update_container_resources(&req.container_id, req.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        self.pods.reopen_container_log(&req.container_id)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        let out = self
            .pods
            .exec_sync(&req.container_id, req.cmd, req.timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let mut req = request.into_inner();
        let stream = self.stream("Exec")?;
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        req.container_id = self.pods.running_container(&req.container_id)?.id;
        Ok(Response::new(stream.get_exec(&req)?))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let mut req = request.into_inner();
        let stream = self.stream("Attach")?;
        need("container_id", &req.container_id)?;
        tracing::Span::current().record("container", req.container_id.as_str());
        req.container_id = self.pods.running_container(&req.container_id)?.id;
        Ok(Response::new(stream.get_attach(&req)?))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let mut req = request.into_inner();
        let stream = self.stream("PortForward")?;
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
        req.pod_sandbox_id = self.pods.ready_pod(&req.pod_sandbox_id)?.id;
        Ok(Response::new(stream.get_port_forward(&req)?))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let req = request.into_inner();
        need("container_id", &req.container_id)?;
        let stats = self.pods.container_stats(&req.container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self.pods.list_container_stats(req.filter.as_ref()).await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        need("pod_sandbox_id", &req.pod_sandbox_id)?;
        let stats = self.pods.pod_stats(&req.pod_sandbox_id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self.pods.list_pod_stats(req.filter.as_ref()).await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let req = request.into_inner();
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            let net = self.pods.network().ok_or_else(|| {
                Status::failed_precondition(
                    "pod networking is unavailable; cannot set the pod CIDR",
                )
            })?;
            // A comma-separated list for dual stack.
            net.set_pod_cidr(&cidr)
                .await
                .map_err(crate::pod::PodError::from)?;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn checkpoint_container(
        &self,
        request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        let req = request.into_inner();
        self.pods
            .checkpoint_container(&req.container_id, &req.location)
            .await?;
        Ok(Response::new(cri::CheckpointContainerResponse {}))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: self.pods.metric_descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self.pods.list_pod_metrics().await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                // The driver in use ([cgroup] driver): kubelet 1.28+ takes
                // its cgroupDriver from here.
                cgroup_driver: if self.pods.cgroup_systemd() {
                    cri::CgroupDriver::Systemd as i32
                } else {
                    cri::CgroupDriver::Cgroupfs as i32
                },
            }),
        }))
    }
}

/// A required string field of a request.
fn need(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// A service on temp dirs, without pod networking.
    async fn service_in(dir: &std::path::Path) -> CriRuntimeService {
        let config = Arc::new(Config {
            root: dir.join("root"),
            state: dir.join("state"),
            ..Config::default()
        });
        let images = Arc::new(
            crate::image::ImageStore::open(&config.root.join("images"), &config.image)
                .await
                .unwrap(),
        );
        let pods = PodManager::open(config.clone(), images, None)
            .await
            .unwrap();
        CriRuntimeService::new(config, pods)
    }

    #[tokio::test]
    async fn version_names_berth() {
        let dir = tempfile::tempdir().unwrap();
        let v = service_in(dir.path())
            .await
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
        let dir = tempfile::tempdir().unwrap();
        let s = service_in(dir.path()).await;
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
        assert_eq!(
            config["root"],
            dir.path().join("root").display().to_string()
        );
    }

    #[tokio::test]
    async fn status_lists_each_handler_and_the_default_as_empty_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = service_in(dir.path()).await;
        let mut config = (*s.config).clone();
        config.runtimes.insert(
            "nouserns".to_owned(),
            crate::config::RuntimeHandlerConfig {
                user_namespaces: false,
                default_seccomp: true,
            },
        );
        s.config = Arc::new(config);
        let st = s
            .status(Request::new(cri::StatusRequest { verbose: false }))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = st
            .runtime_handlers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["", "berth", "nouserns"]);
        let probed = s.pods.host_features().user_namespaces;
        let userns = |i: usize| st.runtime_handlers[i].features.unwrap().user_namespaces;
        assert_eq!((userns(0), userns(1), userns(2)), (probed, probed, false));
        assert!(st.features.unwrap().supplemental_groups_policy);
    }

    #[tokio::test]
    async fn unknown_runtime_handler_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let s = service_in(dir.path()).await;
        let err = s
            .run_pod_sandbox(Request::new(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: "p".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                runtime_handler: "kata".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("kata"), "{err:?}");
    }

    #[tokio::test]
    async fn unbuilt_calls_are_unimplemented() {
        let dir = tempfile::tempdir().unwrap();
        let s = service_in(dir.path()).await;
        let err = s
            .exec(Request::new(cri::ExecRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("Exec"));
        let err = s
            .run_pod_sandbox(Request::new(cri::RunPodSandboxRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "a pod needs a config");
    }
}
