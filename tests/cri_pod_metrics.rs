//! What kubelet's CRI-stats mode reads, through the CRI against a real
//! berthd and real pods (issue 16): PodSandboxStats from the pod's own
//! cgroup (memory with `available_bytes` under the pod's limit, the process
//! count, every interface of the pod's network namespace), and the
//! cAdvisor-named metrics of ListMetricDescriptors / ListPodSandboxMetrics.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::berthd::Berthd;
use common::cri_images::pull;
use common::cri_pods::{PodEnv, Runtime, container_config, create_container, stop_and_remove_pod};
use common::oci_image::LayerBuilder;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

const POD_MEMORY_LIMIT: i64 = 96 << 20;

struct Setup {
    env: PodEnv,
    berthd: Berthd,
    rt: Runtime,
    image: String,
    _registry: Registry,
}

async fn setup(test: &str, idx: u32) -> Result<Setup> {
    let registry = Registry::start()?;
    let env = PodEnv::new(test, idx)?;
    let image = common::cri_images::busybox_with_layer(LayerBuilder::new().dir("tmp"));
    let reference = common::cri_images::push(&registry, "berth-test/metrics", test, &image).await?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let rt = berthd.runtime().await?;
    Ok(Setup {
        env,
        berthd,
        rt,
        image: reference,
        _registry: registry,
    })
}

impl Setup {
    /// A pod with a memory limit on its cgroup (kubelet sends the sum of
    /// its containers' limits as the pod's resources) and one running
    /// container with three processes; returns (pod, container, netns).
    async fn busy_pod(&mut self, name: &str) -> Result<(String, String, String)> {
        let mut cfg = self.env.pod_config(name, false);
        cfg.linux.as_mut().context("linux")?.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: POD_MEMORY_LIMIT,
            ..Default::default()
        });
        let pod = common::cri_pods::run_pod(&mut self.rt, &cfg).await?;
        let ctr = create_container(
            &mut self.rt,
            &pod,
            &cfg,
            container_config(
                "work",
                &self.image,
                "sleep 1000 & sleep 1000 & echo up; wait",
            ),
        )
        .await?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: ctr.clone(),
            })
            .await?;
        let info = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        let v: serde_json::Value = serde_json::from_str(info.get("info").context("info")?)?;
        let netns = v["netns"].as_str().context("netns in info")?.to_owned();
        Ok((pod, ctr, netns))
    }

    async fn pod_stats(&mut self, pod: &str) -> Result<cri::PodSandboxStats> {
        self.rt
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.into(),
            })
            .await?
            .into_inner()
            .stats
            .context("no pod stats")
    }

    async fn finish(mut self, pods: &[&str]) -> Result<()> {
        for p in pods {
            stop_and_remove_pod(&mut self.rt, p).await?;
        }
        assert!(self.env.remove_cgroup_parent().is_empty(), "no cgroup left");
        self.berthd.stop(Signal::SIGTERM)?;
        Ok(())
    }
}

/// Adds a veth pair `name`0 / `name`1 inside the network namespace pinned
/// at `netns` (as a CNI plugin may add interfaces beside the pod's own).
fn add_veth_pair(netns: &str, name: &str) -> Result<()> {
    let (a, b) = (format!("{name}0"), format!("{name}1"));
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net={netns}"),
            "ip",
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip link add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("nsenter")
        .args([&format!("--net={netns}"), "ip", "link", "set", &a, "up"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ip link set up");
    Ok(())
}

fn val(v: Option<&cri::UInt64Value>) -> Option<u64> {
    v.map(|v| v.value)
}

/// Polls until the pod's cgroup counts `n` processes (the container's
/// shell and its two sleeps).
async fn wait_processes(s: &mut Setup, pod: &str, n: u64) -> Result<cri::PodSandboxStats> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.pod_stats(pod).await?;
        let count = st
            .linux
            .as_ref()
            .and_then(|l| l.process.as_ref())
            .and_then(|p| val(p.process_count.as_ref()));
        if count.is_some_and(|c| c >= n) || std::time::Instant::now() > deadline {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_stats_come_from_the_pod_cgroup_and_every_interface() -> Result<()> {
    let mut s = setup("podstats", 1).await?;
    let (pod, ctr, netns) = s.busy_pod("stats").await?;
    add_veth_pair(&netns, "gaps")?;

    let st = wait_processes(&mut s, &pod, 3).await?;
    let linux = st.linux.as_ref().context("linux stats")?;
    // The process count is the pod cgroup's pids.current.
    let processes = linux
        .process
        .as_ref()
        .and_then(|p| val(p.process_count.as_ref()))
        .context("process count")?;
    assert!(processes >= 3, "sh + 2 sleeps: {processes}");
    // Memory is the pod cgroup's, under the pod's limit.
    let mem = linux.memory.as_ref().context("memory")?;
    let ws = val(mem.working_set_bytes.as_ref()).context("working set")?;
    let available = val(mem.available_bytes.as_ref()).context("available bytes")?;
    assert!(ws > 0, "{mem:?}");
    assert_eq!(
        available,
        POD_MEMORY_LIMIT as u64 - ws,
        "available = pod limit - working set: {mem:?}"
    );
    assert!(val(mem.usage_bytes.as_ref()).unwrap_or(0) >= ws, "{mem:?}");
    let cpu = linux.cpu.as_ref().context("cpu")?;
    assert!(
        val(cpu.usage_core_nano_seconds.as_ref()).unwrap_or(0) > 0,
        "{cpu:?}"
    );
    // Every interface of the namespace but lo: eth0 the default, the
    // veth pair among the others.
    let net = linux.network.as_ref().context("network")?;
    assert_eq!(
        net.default_interface.as_ref().map(|i| i.name.as_str()),
        Some("eth0"),
        "{net:?}"
    );
    let names: Vec<&str> = net.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["gaps0", "gaps1"],
        "the others, excluding the default: {net:?}"
    );
    // The container's own stats carry swap usage and available memory.
    let c = linux
        .containers
        .iter()
        .find(|c| c.attributes.as_ref().is_some_and(|a| a.id == ctr))
        .context("container in pod stats")?;
    let swap = c.swap.as_ref().context("container swap")?;
    assert!(swap.swap_usage_bytes.is_some(), "{swap:?}");
    assert!(
        c.memory
            .as_ref()
            .is_some_and(|m| m.available_bytes.is_some()),
        "{c:?}"
    );

    s.finish(&[&pod]).await
}

/// The value of metric `name` whose label `key` is `value` in `metrics`,
/// checked against its descriptor's label keys.
fn metric_value(
    descriptors: &[cri::MetricDescriptor],
    metrics: &[cri::Metric],
    name: &str,
    key: &str,
    value: &str,
) -> Option<(u64, i32)> {
    let d = descriptors.iter().find(|d| d.name == name)?;
    let at = d.label_keys.iter().position(|k| k == key)?;
    metrics
        .iter()
        .filter(|m| m.name == name)
        .inspect(|m| assert_eq!(m.label_values.len(), d.label_keys.len(), "{m:?}"))
        .find(|m| m.label_values[at] == value)
        .map(|m| (m.value.map(|v| v.value).unwrap_or(0), m.metric_type))
}

#[tokio::test(flavor = "multi_thread")]
async fn cadvisor_metrics_from_the_cgroups_and_the_pod_netns() -> Result<()> {
    let mut s = setup("podmetrics", 2).await?;
    let (pod, ctr, netns) = s.busy_pod("metrics").await?;
    add_veth_pair(&netns, "gm")?;
    wait_processes(&mut s, &pod, 3).await?;

    let descriptors =
        s.rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await?
            .into_inner()
            .descriptors;
    let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
    for want in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_fs_usage_bytes",
        "container_processes",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let base = ["id", "image", "namespace", "pod", "container"];
    let net = descriptors
        .iter()
        .find(|d| d.name == "container_network_receive_bytes_total")
        .context("network descriptor")?;
    assert_eq!(net.label_keys, [&base[..], &["interface"]].concat());
    // PSI metrics are described exactly where the cgroups report PSI.
    let psi = common::cgroupfs::unified() && std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    assert_eq!(
        names.iter().any(|n| n.starts_with("container_pressure_")),
        psi,
        "pressure descriptors iff PSI: {names:?}"
    );
    if !psi {
        println!(
            "skipped: container_pressure_* values (no cgroup v2 PSI on this host; the VM lane has it)"
        );
    }

    let all =
        s.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await?
            .into_inner()
            .pod_metrics;
    let pm = all
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .context("the pod's metrics")?;
    // Network: the pod's, one series per interface of its namespace.
    let counter = cri::MetricType::Counter as i32;
    let gauge = cri::MetricType::Gauge as i32;
    for iface in ["eth0", "gm0", "gm1"] {
        let (_, kind) = metric_value(
            &descriptors,
            &pm.metrics,
            "container_network_receive_bytes_total",
            "interface",
            iface,
        )
        .with_context(|| format!("rx bytes of {iface}: {:?}", pm.metrics))?;
        assert_eq!(kind, counter);
    }
    let pod_label = pm
        .metrics
        .iter()
        .find(|m| m.name == "container_network_transmit_bytes_total")
        .map(|m| m.label_values[4].clone());
    assert_eq!(pod_label.as_deref(), Some("POD"));
    // The container's: cgroup and writable layer.
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == ctr)
        .context("the container's metrics")?;
    let (procs, kind) = metric_value(&descriptors, &cm.metrics, "container_processes", "id", &ctr)
        .context("container_processes")?;
    assert!(procs >= 3, "sh + 2 sleeps: {procs}");
    assert_eq!(kind, gauge);
    let (ws, _) = metric_value(
        &descriptors,
        &cm.metrics,
        "container_memory_working_set_bytes",
        "container",
        "work",
    )
    .context("working set")?;
    assert!(ws > 0);
    let (_, kind) = metric_value(
        &descriptors,
        &cm.metrics,
        "container_cpu_usage_seconds_total",
        "cpu",
        "total",
    )
    .context("cpu usage")?;
    assert_eq!(kind, counter);
    let (limit, _) = metric_value(
        &descriptors,
        &cm.metrics,
        "container_fs_limit_bytes",
        "id",
        &ctr,
    )
    .context("fs limit")?;
    assert!(limit > 0);
    assert!(
        metric_value(
            &descriptors,
            &cm.metrics,
            "container_fs_usage_bytes",
            "pod",
            "metrics"
        )
        .is_some(),
        "{:?}",
        cm.metrics
    );
    for m in &cm.metrics {
        assert!(names.contains(&m.name.as_str()), "{} is described", m.name);
    }

    s.finish(&[&pod]).await
}
