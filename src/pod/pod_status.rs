//! PodSandboxStatus and ListPodSandbox.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use prost::Message;

use super::pod_run::namespace_options;
use super::{PodError, PodManager, Result};
use crate::store::{PodRecord, PodState};

fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: p.name.clone(),
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        attempt: p.attempt,
    }
}

/// Whether every key/value of `selector` is among `labels`.
pub(crate) fn labels_match(
    selector: &HashMap<String, String>,
    labels: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl PodManager {
    /// The status of one pod (full id or unique prefix).
    pub fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let pod = self
            .resolve_pod(id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id}")))?;
        let config = cri::PodSandboxConfig::decode(pod.config.as_slice()).unwrap_or_default();
        let ns = namespace_options(&config);
        let mut ips = pod.ips.iter();
        let network = cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        };
        let status = cri::PodSandboxStatus {
            id: pod.id.clone(),
            metadata: Some(metadata(&pod)),
            state: pod_state(super::pod_reality::checked_state(&pod)),
            created_at: pod.created_at,
            network: Some(network),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: Some(ns) }),
            }),
            labels: pod.labels.clone(),
            annotations: pod.annotations.clone(),
            runtime_handler: pod.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "id": pod.id,
                "dir": pod.dir,
                "netns": pod.netns,
                "ipcns": pod.ipcns,
                "utsns": pod.utsns,
                "pidns": pod.pidns,
                "userns": pod.userns,
                "init_pid": pod.init_pid,
                "cgroup": pod.cgroup,
                "shim": pod.shim_address,
                "hostname": config.hostname,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok((status, info))
    }

    /// Pods matching `filter`.
    pub fn list_pods(
        &self,
        filter: Option<&cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let mut out = Vec::new();
        for p in self.store.pods_shared() {
            let state = super::pod_reality::checked_state(&p);
            if let Some(f) = filter {
                if !f.id.is_empty() && !p.id.starts_with(&f.id) {
                    continue;
                }
                if let Some(s) = &f.state
                    && s.state != pod_state(state)
                {
                    continue;
                }
                if !labels_match(&f.label_selector, &p.labels) {
                    continue;
                }
            }
            out.push(cri::PodSandbox {
                id: p.id.clone(),
                metadata: Some(metadata(&p)),
                state: pod_state(state),
                created_at: p.created_at,
                labels: p.labels.clone(),
                annotations: p.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            });
        }
        out.sort_by_key(|p| p.created_at);
        Ok(out)
    }
}
