//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metric
//! names kubelet's CRI-stats mode (`PodAndContainerStatsFromCRI`) serves on
//! /metrics/cadvisor, from the pod's and the containers' cgroups (read by
//! berthd itself, v1 or v2), their writable layers, and the interfaces of
//! the pod's network namespace.
//!
//! containerd 2.x answers both calls Unimplemented; CRI-O's stats server
//! (`internal/lib/statsserver`) is the implementation kubelet is tested
//! against, so names, help texts, label keys, types and units are CRI-O's:
//! the label keys are `id, image, namespace, pod, container` (+ one per
//! metric such as `interface` or `cpu`), network metrics are the pod's
//! (container `POD`), and seconds are whole seconds (the CRI value is an
//! integer). Pressure metrics are described only where the kernel has PSI.

use k8s_cri::v1 as cri;

use super::{PodManager, Result, now_ns};
use crate::network::InterfaceStats;
use crate::runtime::Stats;
use crate::runtime::cgroups::CgroupManager;
use crate::store::{ContainerRecord, ContainerState, PodRecord};

const BASE_LABELS: &[&str] = &["id", "image", "namespace", "pod", "container"];

/// One metric kind: name, help, the labels it adds to [`BASE_LABELS`].
struct Desc {
    name: &'static str,
    help: &'static str,
    extra: &'static [&'static str],
}

const fn d(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Desc {
    Desc { name, help, extra }
}

const NET: &[&str] = &["interface"];
const DEV: &[&str] = &["device"];

/// Every metric berth serves (pressure ones apart: [`PRESSURE`]).
const DESCRIPTORS: &[Desc] = &[
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter",
        &[],
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        &[],
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        &[],
    ),
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        &["cpu"],
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        &[],
    ),
    d("container_fs_inodes_free", "Number of free inodes.", &[]),
    d("container_fs_inodes_total", "Total number of inodes.", &[]),
    d(
        "container_fs_limit_bytes",
        "Filesystem limit in bytes.",
        &[],
    ),
    d(
        "container_fs_usage_bytes",
        "Current filesystem usage in bytes.",
        &[],
    ),
    d(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read",
        DEV,
    ),
    d(
        "container_fs_reads_total",
        "Cumulative count of reads completed",
        DEV,
    ),
    d(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written",
        DEV,
    ),
    d(
        "container_fs_writes_total",
        "Cumulative count of writes completed",
        DEV,
    ),
    d(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        &[],
    ),
    d("container_memory_rss", "Size of RSS in bytes.", &[]),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        &[],
    ),
    d(
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        &[],
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        &[],
    ),
    d(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        &[],
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        &[],
    ),
    d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        NET,
    ),
    d(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        NET,
    ),
    d(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        NET,
    ),
    d(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        NET,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        NET,
    ),
    d(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        NET,
    ),
    d(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        NET,
    ),
    d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        NET,
    ),
    d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        &[],
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        &[],
    ),
    d(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
        &[],
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container in bytes.",
        &[],
    ),
    d(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        &[],
    ),
];

/// PSI, where the kernel has it (cgroup v2 with CONFIG_PSI and psi=1).
const PRESSURE: &[Desc] = &[
    d(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        &[],
    ),
    d(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        &[],
    ),
    d(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        &[],
    ),
    d(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        &[],
    ),
    d(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        &[],
    ),
    d(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        &[],
    ),
];

fn descriptor(d: &Desc) -> cri::MetricDescriptor {
    cri::MetricDescriptor {
        name: d.name.into(),
        help: d.help.into(),
        label_keys: BASE_LABELS
            .iter()
            .chain(d.extra.iter())
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

/// The descriptors berth serves; the pressure ones only when `psi`.
pub(crate) fn descriptors(psi: bool) -> Vec<cri::MetricDescriptor> {
    let pressure: &[Desc] = if psi { PRESSURE } else { &[] };
    DESCRIPTORS.iter().chain(pressure).map(descriptor).collect()
}

/// Whether the machine's cgroups report PSI: cgroup v2 and a readable
/// /proc/pressure (missing without CONFIG_PSI, EOPNOTSUPP with psi=0).
pub(crate) fn host_has_psi() -> bool {
    crate::runtime::cgroups::Hierarchy::detect().is_v2()
        && std::fs::read_to_string("/proc/pressure/cpu").is_ok()
}

/// Builds metrics with one set of base label values.
struct Out {
    base: Vec<String>,
    at: i64,
    metrics: Vec<cri::Metric>,
}

impl Out {
    fn new(base: [&str; 5], at: i64) -> Self {
        Self {
            base: base.iter().map(|s| (*s).to_owned()).collect(),
            at,
            metrics: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, kind: cri::MetricType, extra: &[&str], value: u64) {
        let mut label_values = self.base.clone();
        label_values.extend(extra.iter().map(|s| (*s).to_owned()));
        self.metrics.push(cri::Metric {
            name: name.into(),
            timestamp: self.at,
            metric_type: kind as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }

    fn counter(&mut self, name: &str, value: u64) {
        self.push(name, cri::MetricType::Counter, &[], value);
    }

    fn gauge(&mut self, name: &str, value: u64) {
        self.push(name, cri::MetricType::Gauge, &[], value);
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// The writable layer's usage and its filesystem's size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsUsage {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// The metrics of one container from its cgroup statistics (pure).
/// `devices` names block devices by major:minor for the io metrics.
pub(crate) fn container_metrics(
    base: [&str; 5],
    at: i64,
    s: &Stats,
    fs: Option<FsUsage>,
    started_at_ns: i64,
    devices: &dyn Fn(u64, u64) -> String,
) -> Vec<cri::Metric> {
    use cri::MetricType::Counter;
    let mut o = Out::new(base, at);
    o.gauge("container_last_seen", (at.max(0) as u64) / NS_PER_S);
    o.counter("container_cpu_user_seconds_total", s.cpu_user_ns / NS_PER_S);
    o.counter(
        "container_cpu_system_seconds_total",
        s.cpu_system_ns / NS_PER_S,
    );
    o.push(
        "container_cpu_usage_seconds_total",
        Counter,
        &["total"],
        s.cpu_usage_ns / NS_PER_S,
    );
    // v1's cpu.stat periods are not in the runtime's Stats; v2's are.
    if let Some(p) = s.v2.as_ref().and_then(|x| x.cpu_stat.get("nr_periods")) {
        o.counter("container_cpu_cfs_periods_total", *p);
    }
    o.counter(
        "container_cpu_cfs_throttled_periods_total",
        s.cpu_throttled_periods,
    );
    o.counter(
        "container_cpu_cfs_throttled_seconds_total",
        s.cpu_throttled_time_ns / NS_PER_S,
    );
    o.gauge("container_memory_cache", s.memory_cache_bytes);
    o.gauge("container_memory_rss", s.memory_rss_bytes);
    o.gauge("container_memory_swap", s.memory_swap_bytes);
    o.counter("container_memory_failcnt", s.memory_failcnt);
    o.gauge("container_memory_usage_bytes", s.memory_usage_bytes);
    // memory.peak (v2, kernel 5.19+).
    if let Some(peak) =
        s.v2.as_ref()
            .map(|x| x.memory_peak_bytes)
            .filter(|p| *p > 0)
    {
        o.gauge("container_memory_max_usage_bytes", peak);
    }
    o.gauge(
        "container_memory_working_set_bytes",
        s.memory_working_set_bytes,
    );
    o.counter("container_oom_events_total", s.oom_kills);
    o.gauge("container_processes", s.pids_current);
    // cAdvisor: 0 is "no limit".
    let threads_max = if s.pids_limit == u64::MAX {
        0
    } else {
        s.pids_limit
    };
    o.gauge("container_threads_max", threads_max);
    let mem_limit = if s.memory_limit_bytes == u64::MAX {
        0
    } else {
        s.memory_limit_bytes
    };
    o.gauge("container_spec_memory_limit_bytes", mem_limit);
    if started_at_ns > 0 {
        o.gauge(
            "container_start_time_seconds",
            started_at_ns as u64 / NS_PER_S,
        );
    }
    if let Some(fs) = fs {
        o.gauge("container_fs_usage_bytes", fs.used_bytes);
        o.gauge("container_fs_limit_bytes", fs.limit_bytes);
        o.gauge("container_fs_inodes_total", fs.inodes_total);
        o.gauge("container_fs_inodes_free", fs.inodes_free);
    }
    if let Some(x) = &s.v2 {
        for e in &x.io {
            let dev = devices(e.major, e.minor);
            o.push("container_fs_reads_bytes_total", Counter, &[&dev], e.rbytes);
            o.push("container_fs_reads_total", Counter, &[&dev], e.rios);
            o.push(
                "container_fs_writes_bytes_total",
                Counter,
                &[&dev],
                e.wbytes,
            );
            o.push("container_fs_writes_total", Counter, &[&dev], e.wios);
        }
        // PSI totals are microseconds.
        let psi = [
            ("cpu", &x.cpu_pressure),
            ("memory", &x.memory_pressure),
            ("io", &x.io_pressure),
        ];
        for (what, p) in psi {
            if let Some(p) = p {
                o.counter(
                    &format!("container_pressure_{what}_stalled_seconds_total"),
                    p.full.total / 1_000_000,
                );
                o.counter(
                    &format!("container_pressure_{what}_waiting_seconds_total"),
                    p.some.total / 1_000_000,
                );
            }
        }
    }
    o.metrics
}

/// The pod's network metrics, one set per interface (pure).
pub(crate) fn network_metrics(
    base: [&str; 5],
    at: i64,
    ifaces: &[InterfaceStats],
) -> Vec<cri::Metric> {
    use cri::MetricType::Counter;
    let mut o = Out::new(base, at);
    for i in ifaces {
        let l: &[&str] = &[&i.name];
        o.push(
            "container_network_receive_bytes_total",
            Counter,
            l,
            i.rx_bytes,
        );
        o.push(
            "container_network_receive_packets_total",
            Counter,
            l,
            i.rx_packets,
        );
        o.push(
            "container_network_receive_packets_dropped_total",
            Counter,
            l,
            i.rx_dropped,
        );
        o.push(
            "container_network_receive_errors_total",
            Counter,
            l,
            i.rx_errors,
        );
        o.push(
            "container_network_transmit_bytes_total",
            Counter,
            l,
            i.tx_bytes,
        );
        o.push(
            "container_network_transmit_packets_total",
            Counter,
            l,
            i.tx_packets,
        );
        o.push(
            "container_network_transmit_packets_dropped_total",
            Counter,
            l,
            i.tx_dropped,
        );
        o.push(
            "container_network_transmit_errors_total",
            Counter,
            l,
            i.tx_errors,
        );
    }
    o.metrics
}

/// `/dev/<name>` of block device major:minor (from sysfs), else "major:minor".
fn device_name(major: u64, minor: u64) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// The writable layer's usage and its filesystem's capacity.
fn fs_usage(upper: &std::path::Path) -> Option<FsUsage> {
    let st = nix::sys::statvfs::statvfs(upper).ok()?;
    let (used_bytes, _) = super::container_status::dir_usage(upper);
    let frsize = st.fragment_size() as u64;
    Some(FsUsage {
        used_bytes,
        limit_bytes: st.blocks() as u64 * frsize,
        inodes_total: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

impl PodManager {
    /// ListMetricDescriptors.
    pub fn metric_descriptors(&self) -> Vec<cri::MetricDescriptor> {
        descriptors(host_has_psi())
    }

    /// ListPodSandboxMetrics: every ready pod, its network metrics, and the
    /// metrics of its running containers (as CRI-O: stopped ones have none).
    pub async fn list_pod_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>> {
        let mut out = Vec::new();
        for pod in self.store.pods()? {
            out.push(self.metrics_of_pod(&pod).await?);
        }
        Ok(out)
    }

    async fn metrics_of_pod(&self, pod: &PodRecord) -> Result<cri::PodSandboxMetrics> {
        let at = now_ns();
        let mut metrics = Vec::new();
        if let (Some(net), Some(netns)) = (&self.network, &pod.netns)
            && pod.network
            && let Ok(Some(all)) = net.all_interface_stats(&pod.id, netns).await
        {
            let base = [
                pod.id.as_str(),
                "",
                pod.namespace.as_str(),
                pod.name.as_str(),
                "POD",
            ];
            metrics = network_metrics(base, at, &all.interfaces);
        }
        let mut container_metrics = Vec::new();
        for c in self.store.containers()? {
            if c.pod_id != pod.id || c.state != ContainerState::Running {
                continue;
            }
            if let Some(m) = self.metrics_of_container(pod, &c).await {
                container_metrics.push(m);
            }
        }
        Ok(cri::PodSandboxMetrics {
            pod_sandbox_id: pod.id.clone(),
            metrics,
            container_metrics,
        })
    }

    async fn metrics_of_container(
        &self,
        pod: &PodRecord,
        c: &ContainerRecord,
    ) -> Option<cri::ContainerMetrics> {
        let path = c.cgroup.clone()?;
        let upper = c.upper_dir.clone();
        let id = c.id.clone();
        let (stats, fs) = tokio::task::spawn_blocking(move || {
            let stats = CgroupManager::new(&path).and_then(|m| m.stats());
            let fs = upper.as_deref().and_then(fs_usage);
            (stats, fs)
        })
        .await
        .ok()?;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "container cgroup unreadable");
                return None;
            }
        };
        let image = if c.image.is_empty() {
            &c.image_ref
        } else {
            &c.image
        };
        let base = [
            c.id.as_str(),
            image.as_str(),
            pod.namespace.as_str(),
            pod.name.as_str(),
            c.name.as_str(),
        ];
        Some(cri::ContainerMetrics {
            container_id: c.id.clone(),
            metrics: container_metrics(base, now_ns(), &stats, fs, c.started_at, &device_name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{IoUsage, Pressure, StatsV2};

    const BASE: [&str; 5] = ["c1", "img", "ns", "pod", "ctr"];

    fn find<'a>(m: &'a [cri::Metric], name: &str) -> Vec<&'a cri::Metric> {
        m.iter().filter(|x| x.name == name).collect()
    }

    fn v2_stats() -> Stats {
        Stats {
            cpu_usage_ns: 2_600_000_000,
            cpu_user_ns: 1_900_000_000,
            memory_usage_bytes: 4096,
            memory_working_set_bytes: 2048,
            memory_limit_bytes: u64::MAX,
            pids_current: 3,
            pids_limit: 100,
            v2: Some(StatsV2 {
                cpu_stat: [("nr_periods".to_owned(), 9)].into(),
                io: vec![IoUsage {
                    major: 8,
                    minor: 0,
                    rbytes: 512,
                    wbytes: 1024,
                    rios: 1,
                    wios: 2,
                }],
                memory_pressure: Some(Pressure::default()),
                ..StatsV2::default()
            }),
            ..Stats::default()
        }
    }

    #[test]
    fn every_metric_served_is_described_with_as_many_labels() {
        let all = descriptors(true);
        let fs = FsUsage {
            used_bytes: 1,
            limit_bytes: 2,
            inodes_total: 3,
            inodes_free: 4,
        };
        let mut served = container_metrics(BASE, 1, &v2_stats(), Some(fs), 5, &|a, b| {
            format!("{a}:{b}")
        });
        let iface = InterfaceStats {
            name: "eth0".into(),
            ..Default::default()
        };
        served.extend(network_metrics(BASE, 1, &[iface]));
        for m in &served {
            let d = all
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} is not described", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        // Without PSI there are no pressure descriptors.
        assert!(
            descriptors(false)
                .iter()
                .all(|d| !d.name.starts_with("container_pressure_"))
        );
        assert_eq!(descriptors(true).len(), descriptors(false).len() + 6);
    }

    #[test]
    fn units_labels_and_types_are_cri_o_s() {
        let m = container_metrics(BASE, 7_000_000_000, &v2_stats(), None, 0, &|a, b| {
            format!("{a}:{b}")
        });
        let cpu = find(&m, "container_cpu_usage_seconds_total");
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].value.unwrap().value, 2, "whole seconds");
        assert_eq!(
            cpu[0].label_values,
            ["c1", "img", "ns", "pod", "ctr", "total"]
        );
        assert_eq!(cpu[0].metric_type, cri::MetricType::Counter as i32);
        let ws = find(&m, "container_memory_working_set_bytes");
        assert_eq!(ws[0].metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(ws[0].value.unwrap().value, 2048);
        assert_eq!(find(&m, "container_processes")[0].value.unwrap().value, 3);
        assert_eq!(
            find(&m, "container_threads_max")[0].value.unwrap().value,
            100
        );
        // No memory limit reads 0, as cAdvisor.
        assert_eq!(
            find(&m, "container_spec_memory_limit_bytes")[0]
                .value
                .unwrap()
                .value,
            0
        );
        assert_eq!(
            find(&m, "container_cpu_cfs_periods_total")[0]
                .value
                .unwrap()
                .value,
            9
        );
        let reads = find(&m, "container_fs_reads_bytes_total");
        assert_eq!(reads[0].label_values[5], "8:0");
        assert_eq!(reads[0].value.unwrap().value, 512);
        // PSI only for what the cgroup reports (memory here).
        assert_eq!(
            find(&m, "container_pressure_memory_waiting_seconds_total").len(),
            1
        );
        assert!(find(&m, "container_pressure_cpu_waiting_seconds_total").is_empty());
        // No writable layer: no fs metrics; not started: no start time.
        assert!(find(&m, "container_fs_usage_bytes").is_empty());
        assert!(find(&m, "container_start_time_seconds").is_empty());
        assert_eq!(find(&m, "container_last_seen")[0].value.unwrap().value, 7);
    }

    #[test]
    fn network_metrics_are_per_interface() {
        let a = InterfaceStats {
            name: "eth0".into(),
            rx_bytes: 10,
            tx_dropped: 1,
            ..Default::default()
        };
        let b = InterfaceStats {
            name: "net1".into(),
            rx_bytes: 20,
            ..Default::default()
        };
        let m = network_metrics(["p1", "", "ns", "pod", "POD"], 1, &[a, b]);
        assert_eq!(m.len(), 16);
        let rx = find(&m, "container_network_receive_bytes_total");
        let got: Vec<(&str, u64)> = rx
            .iter()
            .map(|x| (x.label_values[5].as_str(), x.value.unwrap().value))
            .collect();
        assert_eq!(got, [("eth0", 10), ("net1", 20)]);
        assert_eq!(
            find(&m, "container_network_transmit_packets_dropped_total")[0]
                .value
                .unwrap()
                .value,
            1
        );
    }
}
