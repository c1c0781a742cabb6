//! ContainerStatus, ListContainers, ContainerStats, ListContainerStats.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as MetricsV2;
use containerd_shim_protos::protobuf::Message as _;
use k8s_cri::v1 as cri;
use prost::Message;

use super::pod_status::labels_match;
use super::{PodError, PodManager, Result, now_ns};
use crate::store::{ContainerRecord, ContainerState};

/// The shim's runtime type (containerd's name for it), in verbose status.
const RUNTIME_TYPE: &str = "io.containerd.berth.v2";

fn state(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }) as i32
}

fn metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image.clone(),
        ..Default::default()
    }
}

impl PodManager {
    /// The status of one container.
    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let c = self
            .resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        let config = cri::ContainerConfig::decode(c.config.as_slice()).unwrap_or_default();
        // The runtime spec the container was created with: its process's
        // identity is ContainerStatus.user, as containerd reports it.
        let runtime_spec = read_runtime_spec(&c.bundle);
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(metadata(&c)),
            state: state(c.state),
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(image_spec(&c)),
            image_ref: c.image_ref.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: c.image_id.clone(),
            user: runtime_spec
                .as_ref()
                .and_then(crate::spec::linux_container_user)
                .map(|linux| cri::ContainerUser { linux: Some(linux) }),
        };
        let mut info = HashMap::new();
        if verbose {
            // containerd's ContainerInfo keys (what `crictl inspect` shows).
            let v = serde_json::json!({
                "id": c.id,
                "sandboxID": c.pod_id,
                "pid": c.pid,
                "removing": false,
                "snapshotKey": c.id,
                "snapshotter": "overlayfs",
                "runtimeType": RUNTIME_TYPE,
                "bundle": c.bundle,
                "runtimeSpec": runtime_spec,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok((status, info))
    }

    /// The statuses of every container of pod `pod_id` (PodSandboxStatus's
    /// `containers_statuses`).
    pub fn pod_container_statuses(&self, pod_id: &str) -> Result<Vec<cri::ContainerStatus>> {
        let mut out = Vec::new();
        for c in self.containers_matching("", pod_id, None, &HashMap::new())? {
            if c.pod_id == pod_id {
                out.push(self.container_status(&c.id, false)?.0);
            }
        }
        Ok(out)
    }

    fn containers_matching(
        &self,
        id: &str,
        pod_id: &str,
        state_filter: Option<i32>,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Arc<ContainerRecord>>> {
        // Shared with the store: a list copies only what it answers.
        let mut out: Vec<_> = self
            .store
            .containers_shared()
            .into_iter()
            .filter(|c| id.is_empty() || c.id.starts_with(id))
            .filter(|c| pod_id.is_empty() || c.pod_id.starts_with(pod_id))
            .filter(|c| state_filter.is_none_or(|s| s == state(c.state)))
            .filter(|c| labels_match(labels, &c.labels))
            .collect();
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    /// Containers matching `filter`.
    pub fn list_containers(
        &self,
        filter: Option<&cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let f = filter.cloned().unwrap_or_default();
        let list = self.containers_matching(
            &f.id,
            &f.pod_sandbox_id,
            f.state.map(|s| s.state),
            &f.label_selector,
        )?;
        Ok(list
            .into_iter()
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: Some(metadata(&c)),
                image: Some(image_spec(&c)),
                image_ref: c.image_ref.clone(),
                state: state(c.state),
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect())
    }

    /// Stats of one container.
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let c = self
            .resolve_container(id)?
            .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
        self.stats_of(&c).await
    }

    /// Stats of the containers matching `filter`.
    pub async fn list_container_stats(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.cloned().unwrap_or_default();
        let list = self.containers_matching(&f.id, &f.pod_sandbox_id, None, &f.label_selector)?;
        let mut out = Vec::new();
        for c in list {
            out.push(self.stats_of(&c).await?);
        }
        Ok(out)
    }

    async fn stats_of(&self, c: &ContainerRecord) -> Result<cri::ContainerStats> {
        let now = now_ns();
        let mut stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: Some(metadata(c)),
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
            }),
            ..Default::default()
        };
        if c.state == ContainerState::Running {
            let shim = self.shim_of(&c.pod_id).await?;
            let res = shim.stats(&c.id).await;
            if let Ok(resp) = res
                && let Some(any) = resp.stats.as_ref()
                && let Some(u) = ShimUsage::decode(&any.type_url, &any.value)
            {
                // The sample's own time (after the shim answered).
                let at = now_ns();
                let nano_cores = self.cpu_rates.nano_cores(&c.id, at, u.cpu_ns);
                stats.cpu = Some(cri::CpuUsage {
                    timestamp: at,
                    usage_core_nano_seconds: Some(cri::UInt64Value { value: u.cpu_ns }),
                    usage_nano_cores: Some(cri::UInt64Value { value: nano_cores }),
                });
                stats.memory = Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(cri::UInt64Value {
                        value: u.memory_usage.saturating_sub(u.inactive_file),
                    }),
                    // The limit minus the working set, 0 without a limit
                    // (containerd's getAvailableBytes).
                    available_bytes: Some(cri::UInt64Value {
                        value: match u.memory_limit {
                            0 | u64::MAX => 0,
                            l => l.saturating_sub(u.memory_usage.saturating_sub(u.inactive_file)),
                        },
                    }),
                    usage_bytes: Some(cri::UInt64Value {
                        value: u.memory_usage,
                    }),
                    rss_bytes: Some(cri::UInt64Value { value: u.rss }),
                    page_faults: Some(cri::UInt64Value {
                        value: u.page_faults,
                    }),
                    major_page_faults: Some(cri::UInt64Value {
                        value: u.major_page_faults,
                    }),
                });
                // As CRI-O: available is the limit minus the usage, 0
                // without a limit.
                let available = match u.swap_limit {
                    0 | u64::MAX => 0,
                    l => l.saturating_sub(u.swap),
                };
                stats.swap = Some(cri::SwapUsage {
                    timestamp: at,
                    swap_usage_bytes: Some(cri::UInt64Value { value: u.swap }),
                    swap_available_bytes: Some(cri::UInt64Value { value: available }),
                });
            }
        }
        let (bytes, inodes) = match c.upper_dir.clone() {
            Some(dir) => tokio::task::spawn_blocking(move || dir_usage(&dir))
                .await
                .unwrap_or_default(),
            None => (0, 0),
        };
        stats.writable_layer = Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: None,
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        });
        Ok(stats)
    }
}

/// The OCI spec in a container's bundle (None when it is gone or unreadable).
fn read_runtime_spec(bundle: &std::path::Path) -> Option<oci_spec::runtime::Spec> {
    let bytes = std::fs::read(bundle.join("config.json")).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(bundle = %bundle.display(), error = %e, "unreadable config.json");
            None
        }
    }
}

/// Bytes (allocated blocks) and inodes under `dir`, not following symlinks
/// nor crossing into other filesystems.
pub(crate) fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// What the CRI stats take from a shim's metrics, cgroups v1
/// (`io.containerd.cgroups.v1.Metrics`) or v2 (`...v2.Metrics`), as
/// containerd's CRI reads them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ShimUsage {
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub inactive_file: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The memory limit (u64::MAX or 0: none).
    pub memory_limit: u64,
    /// Swap in use (berth's shim reports the swap part alone on v1 too).
    pub swap: u64,
    /// The swap limit, u64::MAX or 0 when there is none (v1 reports none).
    pub swap_limit: u64,
}

impl ShimUsage {
    pub(crate) fn decode(type_url: &str, value: &[u8]) -> Option<Self> {
        if type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
            let m = MetricsV2::parse_from_bytes(value).ok()?;
            let mem = m.memory.as_ref();
            return Some(Self {
                cpu_ns: m.cpu.as_ref().map(|c| c.usage_usec * 1000).unwrap_or(0),
                memory_usage: mem.map(|m| m.usage).unwrap_or(0),
                inactive_file: mem.map(|m| m.inactive_file).unwrap_or(0),
                rss: mem.map(|m| m.anon).unwrap_or(0),
                page_faults: mem.map(|m| m.pgfault).unwrap_or(0),
                major_page_faults: mem.map(|m| m.pgmajfault).unwrap_or(0),
                memory_limit: mem.map(|m| m.usage_limit).unwrap_or(0),
                swap: mem.map(|m| m.swap_usage).unwrap_or(0),
                swap_limit: mem.map(|m| m.swap_limit).unwrap_or(0),
            });
        }
        let m = Metrics::parse_from_bytes(value).ok()?;
        let mem = m.memory.as_ref();
        Some(Self {
            cpu_ns: m
                .cpu
                .as_ref()
                .and_then(|c| c.usage.as_ref())
                .map(|u| u.total)
                .unwrap_or(0),
            memory_usage: mem
                .and_then(|m| m.usage.as_ref())
                .map(|u| u.usage)
                .unwrap_or(0),
            inactive_file: mem.map(|m| m.total_inactive_file).unwrap_or(0),
            rss: mem.map(|m| m.total_rss).unwrap_or(0),
            page_faults: mem.map(|m| m.total_pg_fault).unwrap_or(0),
            major_page_faults: mem.map(|m| m.total_pg_maj_fault).unwrap_or(0),
            memory_limit: mem
                .and_then(|m| m.usage.as_ref())
                .map(|u| u.limit)
                .unwrap_or(0),
            swap: mem
                .and_then(|m| m.swap.as_ref())
                .map(|s| s.usage)
                .unwrap_or(0),
            swap_limit: mem
                .and_then(|m| m.swap.as_ref())
                .map(|s| s.limit)
                .unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod shim_usage_tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn v2_metrics_decode_to_the_cri_usage() {
        let mut m = MetricsV2::new();
        let mut mem = containerd_shim_protos::cgroups_v2::metrics::MemoryStat::new();
        mem.usage = 1000;
        mem.inactive_file = 300;
        mem.anon = 600;
        mem.pgmajfault = 2;
        m.memory = Some(mem).into();
        let mut cpu = containerd_shim_protos::cgroups_v2::metrics::CPUStat::new();
        cpu.usage_usec = 7;
        m.cpu = Some(cpu).into();
        let u = ShimUsage::decode(
            "io.containerd.cgroups.v2.Metrics",
            &m.write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(
            u,
            ShimUsage {
                cpu_ns: 7000,
                memory_usage: 1000,
                inactive_file: 300,
                rss: 600,
                page_faults: 0,
                major_page_faults: 2,
                memory_limit: 0,
                swap: 0,
                swap_limit: 0,
            }
        );
    }
}
