//! GetContainerEvents and the image's STOPSIGNAL through berthd: a client
//! streaming events sees, in order, the pod sandbox's CREATED and STARTED,
//! each container's CREATED, STARTED, STOPPED, DELETED (with the pod's
//! status and its containers' statuses, as containerd sends them), then the
//! sandbox's STOPPED and DELETED; StopContainer sends the image's
//! STOPSIGNAL (SIGUSR1 here) first, SIGTERM when the image names none.

mod common;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use common::berthd::PATIENCE;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{PodEnv, Runtime, container_config, create_container, run_pod, wait_log};
use common::oci_image::{Compression, Format, LayerBuilder, host_arch, image_with_config};
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use cri::ContainerEventType as Ev;

/// Streams GetContainerEvents into a channel.
async fn subscribe(
    rt: &mut Runtime,
) -> Result<mpsc::UnboundedReceiver<cri::ContainerEventResponse>> {
    let mut stream = rt
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Receives events until one of `kind` for `id` came; returns all received.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<cri::ContainerEventResponse>,
    seen: &mut Vec<cri::ContainerEventResponse>,
    id: &str,
    kind: Ev,
) -> Result<cri::ContainerEventResponse> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("event stream ended; seen {seen:?}"),
            Err(_) => bail!("no {kind:?} event for {id}; seen {seen:?}"),
        };
        seen.push(ev.clone());
        if ev.container_id == id && ev.container_event_type == kind as i32 {
            return Ok(ev);
        }
    }
}

/// The kinds of the events of `id`, in the order received.
fn kinds_of(seen: &[cri::ContainerEventResponse], id: &str) -> Vec<Ev> {
    seen.iter()
        .filter(|e| e.container_id == id)
        .map(|e| Ev::try_from(e.container_event_type).expect("a known event type"))
        .collect()
}

/// A script that exits `code` on `signal` and says "ready" once trapped.
fn trapper(signal: &str, code: i32) -> String {
    format!(
        "trap 'echo got {signal}; exit {code}' {signal}; echo ready; while :; do sleep 0.1; done"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn container_events_in_order_and_image_stop_signal() -> Result<()> {
    let registry = Registry::start()?;
    let plain = busybox_image("0", "cri-events", Compression::Gzip);
    let plain_ref = push(&registry, "berth-test/events", "plain", &plain).await?;
    let usr1 = image_with_config(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
        serde_json::json!({
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "StopSignal": "SIGUSR1",
        }),
    );
    let usr1_ref = push(&registry, "berth-test/events", "usr1", &usr1).await?;

    let env = PodEnv::new("events", 8)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &plain_ref, None).await?;
    pull(&mut images, &usr1_ref, None).await?;
    let mut rt = berthd.runtime().await?;
    let mut rx = subscribe(&mut rt).await?;
    let mut seen = Vec::new();

    let pod_cfg = env.pod_config("evpod", false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let ev = until(&mut rx, &mut seen, &pod, Ev::ContainerStartedEvent).await?;
    let ps = ev
        .pod_sandbox_status
        .as_ref()
        .context("pod status in the event")?;
    assert_eq!(ps.id, pod);
    assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32);

    // A container from the image whose STOPSIGNAL is SIGUSR1.
    let c1 = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("usr1", &usr1_ref, &trapper("USR1", 42)),
    )
    .await?;
    let ev = until(&mut rx, &mut seen, &c1, Ev::ContainerCreatedEvent).await?;
    let st = ev
        .containers_statuses
        .iter()
        .find(|s| s.id == c1)
        .context("the container's status in its CREATED event")?;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(cri::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await?;
    until(&mut rx, &mut seen, &c1, Ev::ContainerStartedEvent).await?;
    let log1 = env.log_dir.join("evpod").join("usr1/0.log");
    wait_log(&log1, "ready").await?;
    rt.stop_container(cri::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 60,
    })
    .await?;
    let ev = until(&mut rx, &mut seen, &c1, Ev::ContainerStoppedEvent).await?;
    let st = ev
        .containers_statuses
        .iter()
        .find(|s| s.id == c1)
        .context("the container's status in its STOPPED event")?;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 42, "the trap of SIGUSR1 ran: {st:?}");
    assert!(std::fs::read_to_string(&log1)?.contains("got USR1"));
    assert_eq!(
        ev.pod_sandbox_status.as_ref().map(|p| p.state),
        Some(cri::PodSandboxState::SandboxReady as i32)
    );

    // The image without STOPSIGNAL: SIGTERM.
    let c2 = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("term", &plain_ref, &trapper("TERM", 43)),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await?;
    let log2 = env.log_dir.join("evpod").join("term/0.log");
    wait_log(&log2, "ready").await?;
    rt.stop_container(cri::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 60,
    })
    .await?;
    let ev = until(&mut rx, &mut seen, &c2, Ev::ContainerStoppedEvent).await?;
    let st = ev.containers_statuses.iter().find(|s| s.id == c2).unwrap();
    assert_eq!(st.exit_code, 43, "the trap of SIGTERM ran: {st:?}");
    // Both containers' statuses come with an event of the pod.
    assert!(ev.containers_statuses.iter().any(|s| s.id == c1));

    for c in [&c1, &c2] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.to_string(),
        })
        .await?;
        until(&mut rx, &mut seen, c, Ev::ContainerDeletedEvent).await?;
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    let ev = until(&mut rx, &mut seen, &pod, Ev::ContainerStoppedEvent).await?;
    assert_eq!(
        ev.pod_sandbox_status.as_ref().map(|p| p.state),
        Some(cri::PodSandboxState::SandboxNotready as i32)
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    until(&mut rx, &mut seen, &pod, Ev::ContainerDeletedEvent).await?;

    let lifecycle = vec![
        Ev::ContainerCreatedEvent,
        Ev::ContainerStartedEvent,
        Ev::ContainerStoppedEvent,
        Ev::ContainerDeletedEvent,
    ];
    assert_eq!(kinds_of(&seen, &c1), lifecycle);
    assert_eq!(kinds_of(&seen, &c2), lifecycle);
    assert_eq!(kinds_of(&seen, &pod), lifecycle, "the sandbox's own events");
    // Every event names its pod.
    for e in &seen {
        assert_eq!(
            e.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
            if e.container_id == pod && e.container_event_type == Ev::ContainerDeletedEvent as i32 {
                None
            } else {
                Some(pod.as_str())
            },
            "{e:?}"
        );
        assert!(e.created_at > 0);
    }
    // The sandbox's events come first and last.
    assert_eq!(
        seen.first().map(|e| e.container_id.as_str()),
        Some(pod.as_str())
    );
    assert_eq!(
        seen.last().map(|e| e.container_id.as_str()),
        Some(pod.as_str())
    );

    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
