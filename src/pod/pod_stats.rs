//! PodSandboxStats and ListPodSandboxStats: the pod's containers' stats,
//! their cpu and memory summed, and the pod interface's counters.

use k8s_cri::v1 as cri;

use super::pod_status::labels_match;
use super::{PodError, PodManager, Result, now_ns};
use crate::store::PodRecord;

fn sum(a: Option<cri::UInt64Value>, b: Option<&cri::UInt64Value>) -> Option<cri::UInt64Value> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(cri::UInt64Value {
            value: a.map_or(0, |v| v.value) + b.map_or(0, |v| v.value),
        }),
    }
}

impl PodManager {
    /// Stats of one pod.
    pub async fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let pod = self
            .resolve_pod(id)?
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id}")))?;
        self.stats_of_pod(&pod).await
    }

    /// Stats of the pods matching `filter`.
    pub async fn list_pod_stats(
        &self,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.cloned().unwrap_or_default();
        let mut out = Vec::new();
        for p in self.store.pods()? {
            if (!f.id.is_empty() && !p.id.starts_with(&f.id))
                || !labels_match(&f.label_selector, &p.labels)
            {
                continue;
            }
            out.push(self.stats_of_pod(&p).await?);
        }
        Ok(out)
    }

    async fn stats_of_pod(&self, pod: &PodRecord) -> Result<cri::PodSandboxStats> {
        let now = now_ns();
        let filter = cri::ContainerStatsFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        let containers = self.list_container_stats(Some(&filter)).await?;
        let mut cpu: Option<cri::UInt64Value> = None;
        let mut working: Option<cri::UInt64Value> = None;
        let mut usage: Option<cri::UInt64Value> = None;
        for c in &containers {
            if let Some(u) = &c.cpu {
                cpu = sum(cpu, u.usage_core_nano_seconds.as_ref());
            }
            if let Some(m) = &c.memory {
                working = sum(working, m.working_set_bytes.as_ref());
                usage = sum(usage, m.usage_bytes.as_ref());
            }
        }
        let mut network = None;
        if let (Some(net), Some(netns)) = (&self.network, &pod.netns)
            && pod.network
            && let Ok(Some(s)) = net.interface_stats(&pod.id, netns).await
        {
            let iface = cri::NetworkInterfaceUsage {
                name: s.name.clone(),
                rx_bytes: Some(cri::UInt64Value { value: s.rx_bytes }),
                rx_errors: Some(cri::UInt64Value { value: s.rx_errors }),
                tx_bytes: Some(cri::UInt64Value { value: s.tx_bytes }),
                tx_errors: Some(cri::UInt64Value { value: s.tx_errors }),
            };
            network = Some(cri::NetworkUsage {
                timestamp: now,
                default_interface: Some(iface.clone()),
                interfaces: vec![iface],
            });
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                    namespace: pod.namespace.clone(),
                    attempt: pod.attempt,
                }),
                labels: pod.labels.clone(),
                annotations: pod.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: cpu.map(|c| cri::CpuUsage {
                    timestamp: now,
                    usage_nano_cores: Some(cri::UInt64Value {
                        value: self.cpu_rates.nano_cores(&pod_key(&pod.id), now, c.value),
                    }),
                    usage_core_nano_seconds: Some(c),
                }),
                memory: working.map(|w| cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(w),
                    usage_bytes: usage,
                    ..Default::default()
                }),
                network,
                process: None,
                containers,
            }),
            windows: None,
        })
    }
}

/// The cpu-rate cache key of a pod (containers are keyed by their own id).
pub(crate) fn pod_key(id: &str) -> String {
    format!("pod/{id}")
}
