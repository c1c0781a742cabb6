//! Resources through the CRI: UpdateContainerResources on a running
//! container shows in its cgroup files (and an absurd value is refused and
//! changes nothing), `usage_nano_cores` of a busy and an idle container, and
//! a pod's resources plus overhead on the pod cgroup.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::cgroupfs;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{PodEnv, Runtime, container_config, create_container, run_pod};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// (memory limit, cfs quota, cfs period, cpu weight) of a cgroup, read
/// from the hierarchy the machine has (v1 or v2 files).
fn limits(path: &str) -> Result<(i64, i64, i64, i64)> {
    let (quota, period) = cgroupfs::cpu_max(path);
    Ok((
        cgroupfs::memory_limit(path).unwrap_or(-1),
        quota,
        period,
        cgroupfs::cpu_weight(path),
    ))
}

/// What [`limits`] reads for these CRI values on this hierarchy (shares
/// become a v2 weight).
fn expect(memory: i64, quota: i64, period: i64, shares: i64) -> (i64, i64, i64, i64) {
    (memory, quota, period, cgroupfs::expected_cpu_weight(shares))
}

fn resources(memory: i64, quota: i64, period: i64, shares: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_quota: quota,
        cpu_period: period,
        cpu_shares: shares,
        ..Default::default()
    }
}

async fn start(rt: &mut Runtime, id: &str) -> Result<()> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await?;
    Ok(())
}

async fn remove_pod(rt: &mut Runtime, pod: &str) -> Result<()> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await?;
    Ok(())
}

async fn stats(rt: &mut Runtime, id: &str) -> Result<cri::ContainerStats> {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await?
    .into_inner()
    .stats
    .context("no stats")
}

fn nano_cores(cpu: Option<&cri::CpuUsage>) -> Result<u64> {
    Ok(cpu
        .context("no cpu stats")?
        .usage_nano_cores
        .context("no usage_nano_cores")?
        .value)
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_update_nanocores_and_pod_overhead() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-resources", Compression::Gzip);
    let reference = push(&registry, "berth-test/res", "v1", &image).await?;

    let env = PodEnv::new("res", 7)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    // --- Pod resources and overhead on the pod cgroup.
    let mut pod_cfg = env.pod_config("respod", false);
    let linux = pod_cfg.linux.as_mut().unwrap();
    linux.resources = Some(resources(64 << 20, 50_000, 100_000, 512));
    linux.overhead = Some(resources(16 << 20, 5_000, 50_000, 100));
    let pod_cgroup = linux.cgroup_parent.clone();
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    assert_eq!(
        limits(&pod_cgroup)?,
        expect(80 << 20, 60_000, 100_000, 612),
        "pod cgroup = resources + overhead (overhead quota scaled to the period)"
    );

    // A pod asking for an absurd value is refused and leaves nothing.
    let mut bad_cfg = env.pod_config("badpod", false);
    let linux = bad_cfg.linux.as_mut().unwrap();
    linux.resources = Some(resources(-1, 0, 0, 0));
    let bad_cgroup = linux.cgroup_parent.clone();
    let err = run_pod(&mut rt, &bad_cfg).await.unwrap_err();
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("a gRPC error")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        !cgroupfs::exists(&bad_cgroup),
        "no cgroup of the refused pod"
    );
    let mut bad_cfg = env.pod_config("badpod2", false);
    bad_cfg.linux.as_mut().unwrap().resources = Some(resources(0, 50_000, 5_000_000, 0));
    let err = run_pod(&mut rt, &bad_cfg).await.unwrap_err();
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("a gRPC error")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "only the good pod: {pods:?}");

    // --- UpdateContainerResources on a running container.
    let mut cfg = container_config("limited", &reference, "exec sleep 1000");
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(resources(32 << 20, 20_000, 100_000, 256)),
        ..Default::default()
    });
    let limited = create_container(&mut rt, &pod, &pod_cfg, cfg).await?;
    start(&mut rt, &limited).await?;
    let cgroup = cgroupfs::container(&pod_cgroup, &limited);
    assert_eq!(limits(&cgroup)?, expect(32 << 20, 20_000, 100_000, 256));

    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: limited.clone(),
        linux: Some(resources(48 << 20, 30_000, 50_000, 384)),
        windows: None,
        annotations: Default::default(),
    })
    .await?;
    assert_eq!(limits(&cgroup)?, expect(48 << 20, 30_000, 50_000, 384));
    // ContainerStatus reports the resources in force.
    let reported = common::cri_pods::container_status(&mut rt, &limited)
        .await?
        .resources
        .and_then(|r| r.linux)
        .context("resources in ContainerStatus")?;
    assert_eq!(
        (
            reported.memory_limit_in_bytes,
            reported.cpu_quota,
            reported.cpu_period,
            reported.cpu_shares
        ),
        (48 << 20, 30_000, 50_000, 384)
    );

    // Absurd values: refused with InvalidArgument, nothing changed.
    for (what, bad) in [
        ("negative memory", resources(-4096, 0, 0, 0)),
        ("period of 5 s", resources(64 << 20, 30_000, 5_000_000, 0)),
        (
            "shares beyond the kernel's maximum",
            resources(0, 0, 0, 10_000_000),
        ),
        (
            "memory below the current usage, with new cpu limits",
            resources(4096, 90_000, 100_000, 1024),
        ),
        (
            "cpuset that is no list",
            cri::LinuxContainerResources {
                cpuset_cpus: "all-of-them".into(),
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            },
        ),
    ] {
        let err = rt
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: limited.clone(),
                linux: Some(bad),
                windows: None,
                annotations: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(
            limits(&cgroup)?,
            expect(48 << 20, 30_000, 50_000, 384),
            "{what} changed nothing"
        );
        let reported = common::cri_pods::container_status(&mut rt, &limited)
            .await?
            .resources
            .and_then(|r| r.linux)
            .context("resources in ContainerStatus")?;
        assert_eq!(reported.memory_limit_in_bytes, 48 << 20, "{what}");
    }
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(resources(48 << 20, 0, 0, 0)),
            windows: None,
            annotations: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // --- usage_nano_cores: a busy loop and an idle sleep.
    let busy = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("busy", &reference, "while :; do :; done"),
    )
    .await?;
    start(&mut rt, &busy).await?;
    let idle = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("idle", &reference, "exec sleep 1000"),
    )
    .await?;
    start(&mut rt, &idle).await?;
    // First samples (containerd answers 0 for them too).
    stats(&mut rt, &busy).await?;
    stats(&mut rt, &idle).await?;
    rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    // Let the counters move between two samples.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let busy_stats = stats(&mut rt, &busy).await?;
    let idle_stats = stats(&mut rt, &idle).await?;
    let busy_nc = nano_cores(busy_stats.cpu.as_ref())?;
    let idle_nc = nano_cores(idle_stats.cpu.as_ref())?;
    assert!(busy_nc > 0, "a busy loop uses cpu: {busy_stats:?}");
    assert!(
        idle_nc.saturating_mul(10) < busy_nc,
        "an idle sleep uses far less: idle {idle_nc} busy {busy_nc}"
    );
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no pod stats")?;
    let pod_nc = nano_cores(pod_stats.linux.as_ref().and_then(|l| l.cpu.as_ref()))?;
    assert!(pod_nc > 0, "the pod's busy container shows: {pod_stats:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                id: busy.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert!(nano_cores(listed[0].cpu.as_ref())? > 0);

    remove_pod(&mut rt, &pod).await?;
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
