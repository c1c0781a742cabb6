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

/// A TaskOOM that reaches berthd after the exit it caused (the shim's OOM
/// watcher and its reaper race; so do Task.Wait and the events) still makes
/// the reason OOMKilled, as containerd sets it on TaskOOM whatever the
/// state. The event is sent to berthd's real events endpoint, as a shim
/// sends it, after the exit was recorded as "Error".
#[tokio::test(flavor = "multi_thread")]
async fn oom_event_after_the_exit_sets_the_reason() -> Result<()> {
    use containerd_shim_protos::events::task::TaskOOM;
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::shim::events::ForwardRequest;
    use containerd_shim_protos::shim_async::EventsClient;
    use containerd_shim_protos::ttrpc::{asynchronous::Client, context};

    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-oom-late", Compression::Gzip);
    let reference = push(&registry, "berth-test/oom-late", "v1", &image).await?;
    let env = PodEnv::new("oomlate", 4)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let pod_cfg = env.pod_config("oomlatepod", true);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("late", &reference, "exit 137"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &c).await?;
    assert_eq!(s.reason, "Error", "{s:?}");

    let address = format!("unix://{}", env.dirs.state.join("events.sock").display());
    let events = EventsClient::new(Client::connect(&address).await?);
    let oom = TaskOOM {
        container_id: c.clone(),
        ..Default::default()
    };
    let mut any = Any::new();
    any.type_url = "containerd.events.TaskOOM".into();
    any.value = oom.write_to_bytes()?;
    let mut envelope = containerd_shim_protos::shim::event::Envelope::new();
    envelope.topic = "/tasks/oom".into();
    envelope.namespace = "k8s.io".into();
    envelope.event = Some(any).into();
    let req = ForwardRequest {
        envelope: Some(envelope).into(),
        ..Default::default()
    };
    events
        .forward(context::with_timeout(5_000_000_000), &req)
        .await?;

    let mut reason = String::new();
    for _ in 0..100 {
        reason = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .map(|s| s.reason)
            .unwrap_or_default();
        if reason == "OOMKilled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(reason, "OOMKilled", "a late TaskOOM must set the reason");

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
