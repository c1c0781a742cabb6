//! ContainerStatus, ListContainers, ContainerStats, ListContainerStats.

use std::collections::HashMap;

use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::protobuf::Message as _;
use k8s_cri::v1 as cri;
use prost::Message;

use super::pod_status::labels_match;
use super::{PodError, PodManager, Result, now_ns};
use crate::store::{ContainerRecord, ContainerState};

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
            user: None,
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "id": c.id,
                "sandboxID": c.pod_id,
                "pid": c.pid,
                "bundle": c.bundle,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok((status, info))
    }

    fn containers_matching(
        &self,
        id: &str,
        pod_id: &str,
        state_filter: Option<i32>,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<ContainerRecord>> {
        let mut out: Vec<_> = self
            .store
            .containers()?
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
                && let Ok(m) = Metrics::parse_from_bytes(&any.value)
            {
                if let Some(cpu) = m.cpu.as_ref()
                    && let Some(u) = cpu.usage.as_ref()
                {
                    // The sample's own time (after the shim answered).
                    let at = now_ns();
                    let nano_cores = self.cpu_rates.nano_cores(&c.id, at, u.total);
                    stats.cpu = Some(cri::CpuUsage {
                        timestamp: at,
                        usage_core_nano_seconds: Some(cri::UInt64Value { value: u.total }),
                        usage_nano_cores: Some(cri::UInt64Value { value: nano_cores }),
                    });
                }
                if let Some(mem) = m.memory.as_ref() {
                    let usage = mem.usage.as_ref().map(|u| u.usage).unwrap_or_default();
                    let working = usage.saturating_sub(mem.total_inactive_file);
                    stats.memory = Some(cri::MemoryUsage {
                        timestamp: now,
                        working_set_bytes: Some(cri::UInt64Value { value: working }),
                        available_bytes: None,
                        usage_bytes: Some(cri::UInt64Value { value: usage }),
                        rss_bytes: Some(cri::UInt64Value {
                            value: mem.total_rss,
                        }),
                        page_faults: Some(cri::UInt64Value {
                            value: mem.total_pg_fault,
                        }),
                        major_page_faults: Some(cri::UInt64Value {
                            value: mem.total_pg_maj_fault,
                        }),
                    });
                }
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

/// Bytes (allocated blocks) and inodes under `dir`, not following symlinks
/// nor crossing into other filesystems.
fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
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
