//! Namespaces of containers in a pod: the pod's UTS namespace (hostname),
//! and NamespaceMode TARGET (a container in another container's pid
//! namespace, as ephemeral debug containers are).

mod common;

use anyhow::Result;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, container_config, container_status, create_container, run_pod, wait_exited,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn target_pid_namespace_and_pod_hostname() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-ns", Compression::Gzip);
    let reference = push(&registry, "berth-test/ns", "v1", &image).await?;
    let env = PodEnv::new("ns", 4)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let pod_cfg = env.pod_config("nspod", false);
    let t0 = std::time::Instant::now();
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let t_pod = t0.elapsed();

    let t1 = std::time::Instant::now();
    let main = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("main", &reference, "exec sleep 1000"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: main.clone(),
    })
    .await?;
    // Figures only (never asserted): a debug build, first shim of the pod.
    eprintln!(
        "RunPodSandbox (own netns + built-in network): {:?}; CreateContainer+StartContainer (shim start included): {:?}",
        t_pod,
        t1.elapsed()
    );
    assert_eq!(
        container_status(&mut rt, &main).await?.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let mut debug = container_config(
        "debug",
        &reference,
        "tr '\\0' ' ' < /proc/1/cmdline; echo; hostname",
    );
    debug.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Pod as i32,
                pid: cri::NamespaceMode::Target as i32,
                ipc: cri::NamespaceMode::Pod as i32,
                target_id: main.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let dbg = create_container(&mut rt, &pod, &pod_cfg, debug).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: dbg.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &dbg).await?;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = std::fs::read_to_string(env.log_dir.join("nspod").join("debug/0.log"))?;
    assert!(
        log.contains("stdout F sleep 1000"),
        "pid 1 of the target's namespace is the target's process: {log}"
    );
    assert!(log.contains("stdout F nspod"), "the pod's hostname: {log}");

    // Stats: the running container's cgroup, the pod's interface.
    let cs = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: main.clone(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap();
    assert!(cs.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(cs.memory.unwrap().working_set_bytes.is_some());
    let wl = cs.writable_layer.unwrap();
    assert!(wl.inodes_used.is_some() && wl.used_bytes.is_some());
    let ps = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    assert_eq!(ps.containers.len(), 2);
    let net = ps
        .network
        .expect("network usage of a pod with its own netns");
    assert_eq!(net.default_interface.unwrap().name, "eth0");
    let listed = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_pid_namespace_has_a_built_in_init() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-pidns", Compression::Gzip);
    let reference = push(&registry, "berth-test/pidns", "v1", &image).await?;
    let env = PodEnv::new("pidns", 5)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let mut pod_cfg = env.pod_config("pidpod", true);
    let ns = pod_cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.pid = cri::NamespaceMode::Pod as i32;
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let inits = common::cri_pods::processes_with(&pod);
    assert!(!inits.is_empty(), "the pod's init runs");

    let sleeper = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &reference, "exec sleep 1000"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: sleeper.clone(),
    })
    .await?;
    let looker = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "looker",
            &reference,
            "tr '\\0' ' ' < /proc/1/cmdline; echo; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
        ),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: looker.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &looker).await?;
    assert_eq!(s.exit_code, 0);
    let log = std::fs::read_to_string(env.log_dir.join("pidpod").join("looker/0.log"))?;
    let first = log.lines().next().unwrap_or_default();
    assert!(first.contains("pod-init"), "pid 1 is the pod's init: {log}");
    assert!(
        log.contains("stdout F sleep 1000"),
        "the other container's process is visible: {log}"
    );

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert!(
        common::cri_pods::processes_with(&pod).is_empty(),
        "no init or shim left"
    );
    assert!(common::cri_pods::mounts_containing(&pod).is_empty());
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
