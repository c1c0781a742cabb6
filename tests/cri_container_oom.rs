//! A container that allocates past its memory limit is OOM-killed and
//! reported with reason OOMKilled (and exit code 137).

mod common;

use anyhow::Result;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{PodEnv, container_config, create_container, run_pod, wait_exited};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_is_oom_killed() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-oom", Compression::Gzip);
    let reference = push(&registry, "berth-test/oom", "v1", &image).await?;
    let env = PodEnv::new("oom", 3)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let pod_cfg = env.pod_config("oompod", true);
    let pod = run_pod(&mut rt, &pod_cfg).await?;

    let mut cfg = container_config(
        "hog",
        &reference,
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = create_container(&mut rt, &pod, &pod_cfg, cfg).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &c).await?;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    assert_ne!(s.exit_code, 0);

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
