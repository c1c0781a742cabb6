//! berthd with `[cgroup] driver = "systemd"` against a real systemd: kubelet's
//! pod slice (`<parent>-pod<uid>.slice`) made by berthd, each container a
//! delegated `berth-<id>.scope` in it with its limits, RuntimeConfig
//! answering systemd, cgroupfs parents refused, and nothing left after
//! RemovePodSandbox. Runs in the VM lane (systemd as pid 1, pure cgroup v2);
//! elsewhere it prints "skipped: <why>".

mod common;

use std::process::Command;

use anyhow::{Result, ensure};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{PodEnv, container_config, create_container, run_pod};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

fn systemctl_show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", prop, "--value", unit])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_slices_and_containers_delegated_scopes() -> Result<()> {
    use berth::runtime::cgroups::{Hierarchy, systemd};
    if !systemd::booted() || !Hierarchy::detect().is_v2() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: needs systemd as pid 1 on cgroup v2 (the VM lane, tests/vm/, runs this test)"
        );
        return Ok(());
    }
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-systemd", Compression::Gzip);
    let reference = push(&registry, "berth-test/systemd", "v1", &image).await?;
    let env = PodEnv::new("sysd", 7)?;
    let cfg = std::fs::read_to_string(&env.config)?
        .replace("driver = \"cgroupfs\"", "driver = \"systemd\"");
    std::fs::write(&env.config, cfg)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await?
        .into_inner();
    ensure!(
        rc.linux.map(|l| l.cgroup_driver) == Some(cri::CgroupDriver::Systemd as i32),
        "RuntimeConfig does not answer systemd"
    );

    // A cgroupfs parent is refused under the systemd driver.
    let mut bad = env.pod_config("bad", true);
    bad.linux.as_mut().unwrap().cgroup_parent = "/berth-test-not-a-slice".into();
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");

    let pid = std::process::id();
    let parent = format!("berthtest{pid}.slice");
    let pod_slice = format!("berthtest{pid}-pod1.slice");
    let mut pod_cfg = env.pod_config("sd", true);
    pod_cfg.linux.as_mut().unwrap().cgroup_parent = pod_slice.clone();
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let pod_dir = root.join(&parent).join(&pod_slice);
    ensure!(pod_dir.is_dir(), "pod slice {} missing", pod_dir.display());
    ensure!(systemctl_show(&pod_slice, "ActiveState") == "active");

    let mut cfg = container_config("sleeper", &reference, "sleep 1000");
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = create_container(&mut rt, &pod, &pod_cfg, cfg).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let scope = format!("berth-{c}.scope");
    let dir = pod_dir.join(&scope);
    ensure!(dir.is_dir(), "container scope {} missing", dir.display());
    let memory_max = std::fs::read_to_string(dir.join("memory.max"))?;
    ensure!(
        memory_max.trim() == (64u64 << 20).to_string(),
        "memory.max {memory_max:?}"
    );
    ensure!(systemctl_show(&scope, "Delegate") == "yes");
    ensure!(systemctl_show(&scope, "Slice") == pod_slice);
    ensure!(systemctl_show(&scope, "MemoryMax") == (64u64 << 20).to_string());
    // The container sees its own cgroup as / (a cgroup namespace on v2).
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["cat".into(), "/proc/self/cgroup".into()],
            timeout: 30,
        })
        .await?
        .into_inner();
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.trim() == "0::/",
        "/proc/self/cgroup in the container: {text:?}"
    );
    // Stats come from the v2 files through the shim's v2 metrics.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: c.clone(),
        })
        .await?
        .into_inner();
    let usage = stats
        .stats
        .and_then(|s| s.memory)
        .and_then(|m| m.usage_bytes)
        .map(|u| u.value)
        .unwrap_or(0);
    ensure!(usage > 0, "no memory usage in ContainerStats");

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    ensure!(!dir.exists(), "container scope left behind");
    ensure!(!pod_dir.exists(), "pod slice left behind");
    ensure!(systemctl_show(&pod_slice, "ActiveState") == "inactive");
    berthd.stop(Signal::SIGTERM)?;
    let _ = Command::new("systemctl").args(["stop", &parent]).status();
    Ok(())
}
