//! PodSandboxStats and ListPodSandboxStats: cpu, memory (with
//! `available_bytes`) and the process count from the pod's own cgroup (v1
//! or v2, through the runtime's hierarchy-aware reader), the counters of
//! every interface in the pod's network namespace, and the containers'
//! stats.

use k8s_cri::v1 as cri;

use crate::network::InterfaceStats;
use crate::runtime::Stats;
use crate::runtime::cgroups::CgroupManager;

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
        let filter = cri::ContainerStatsFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        };
        let containers = self.list_container_stats(Some(&filter)).await?;
        let now = now_ns();
        // As containerd and CRI-O: the pod's own cgroup, which holds every
        // process of the pod (also those of containers that exited and of
        // the pod's init), its limits and its pids. Pods without a cgroup
        // parent have none: then the running containers, summed.
        let (cpu, memory, process) = match pod_cgroup_stats(pod).await {
            Some(s) => {
                let cpu_ns = s.cpu_usage_ns;
                let cpu = cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu_ns }),
                    usage_nano_cores: Some(cri::UInt64Value {
                        value: self.cpu_rates.nano_cores(&pod_key(&pod.id), now, cpu_ns),
                    }),
                };
                let process = cri::ProcessUsage {
                    timestamp: now,
                    process_count: Some(cri::UInt64Value {
                        value: s.pids_current,
                    }),
                };
                (Some(cpu), Some(memory_usage(&s, now)), Some(process))
            }
            None => {
                let (cpu, memory) = self.summed(pod, &containers, now);
                (cpu, memory, None)
            }
        };
        let network = self.network_usage(pod, now).await;
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
                cpu,
                memory,
                network,
                process,
                containers,
            }),
            windows: None,
        })
    }

    /// cpu and memory of the running containers, summed (pods without a
    /// cgroup of their own).
    fn summed(
        &self,
        pod: &PodRecord,
        containers: &[cri::ContainerStats],
        now: i64,
    ) -> (Option<cri::CpuUsage>, Option<cri::MemoryUsage>) {
        let mut cpu: Option<cri::UInt64Value> = None;
        let mut working: Option<cri::UInt64Value> = None;
        let mut usage: Option<cri::UInt64Value> = None;
        for c in containers {
            if let Some(u) = &c.cpu {
                cpu = sum(cpu, u.usage_core_nano_seconds.as_ref());
            }
            if let Some(m) = &c.memory {
                working = sum(working, m.working_set_bytes.as_ref());
                usage = sum(usage, m.usage_bytes.as_ref());
            }
        }
        (
            cpu.map(|c| cri::CpuUsage {
                timestamp: now,
                usage_nano_cores: Some(cri::UInt64Value {
                    value: self.cpu_rates.nano_cores(&pod_key(&pod.id), now, c.value),
                }),
                usage_core_nano_seconds: Some(c),
            }),
            working.map(|w| cri::MemoryUsage {
                timestamp: now,
                working_set_bytes: Some(w),
                usage_bytes: usage,
                ..Default::default()
            }),
        )
    }

    /// Every interface of the pod's namespace (but `lo`), the pod's own as
    /// the default; None for host-network pods and gone namespaces.
    async fn network_usage(&self, pod: &PodRecord, now: i64) -> Option<cri::NetworkUsage> {
        let (Some(net), Some(netns)) = (&self.network, &pod.netns) else {
            return None;
        };
        if !pod.network {
            return None;
        }
        let all = match net.all_interface_stats(&pod.id, netns).await {
            Ok(Some(all)) => all,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(pod = %pod.id, error = %e, "no interface counters");
                return None;
            }
        };
        let usage = |s: &InterfaceStats| cri::NetworkInterfaceUsage {
            name: s.name.clone(),
            rx_bytes: Some(cri::UInt64Value { value: s.rx_bytes }),
            rx_errors: Some(cri::UInt64Value { value: s.rx_errors }),
            tx_bytes: Some(cri::UInt64Value { value: s.tx_bytes }),
            tx_errors: Some(cri::UInt64Value { value: s.tx_errors }),
        };
        Some(cri::NetworkUsage {
            timestamp: now,
            default_interface: all.default_interface().map(usage),
            // "all found network interfaces, excluding the default" (CRI).
            interfaces: all
                .interfaces
                .iter()
                .filter(|i| i.name != all.default_name)
                .map(usage)
                .collect(),
        })
    }
}

/// The statistics of the pod's own cgroup, None when it has none (no cgroup
/// parent) or it cannot be read.
pub(crate) async fn pod_cgroup_stats(pod: &PodRecord) -> Option<Stats> {
    let path = pod.cgroup.clone()?;
    let pod_id = pod.id.clone();
    tokio::task::spawn_blocking(move || {
        let read = CgroupManager::new(&path).and_then(|m| m.stats());
        match read {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(pod = %pod_id, cgroup = %path, error = %e, "pod cgroup unreadable");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// CRI memory usage from cgroup statistics: `available_bytes` is the limit
/// minus the working set, 0 without a limit (as containerd's
/// `getAvailableBytes`).
pub(crate) fn memory_usage(s: &Stats, now: i64) -> cri::MemoryUsage {
    let ws = s.memory_working_set_bytes;
    let available = if s.memory_limit_bytes == u64::MAX {
        0
    } else {
        s.memory_limit_bytes.saturating_sub(ws)
    };
    let v2 = |k: &str| {
        s.v2.as_ref()
            .and_then(|x| x.memory_stat.get(k).copied())
            .unwrap_or(0)
    };
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: Some(cri::UInt64Value { value: ws }),
        available_bytes: Some(cri::UInt64Value { value: available }),
        usage_bytes: Some(cri::UInt64Value {
            value: s.memory_usage_bytes,
        }),
        rss_bytes: Some(cri::UInt64Value {
            value: s.memory_rss_bytes,
        }),
        page_faults: Some(cri::UInt64Value {
            value: v2("pgfault"),
        }),
        major_page_faults: Some(cri::UInt64Value {
            value: v2("pgmajfault"),
        }),
    }
}

/// The cpu-rate cache key of a pod (containers are keyed by their own id).
pub(crate) fn pod_key(id: &str) -> String {
    format!("pod/{id}")
}
