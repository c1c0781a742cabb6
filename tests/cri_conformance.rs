//! What the field's CRI validation suite (critest) expects of a runtime and
//! containerd does (issue 14): the node's hostname for a pod that names
//! none, idempotent Stop/Remove of containers and pods, and
//! DEADLINE_EXCEEDED for a PullImage that outlives the client's deadline.

mod common;

use anyhow::{Context, Result};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, container_config, create_container, run_pod, stop_and_remove_pod, wait_exited,
};
use common::gate_proxy::GateProxy;
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use tonic::Code;

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .into_string()
        .expect("a UTF-8 hostname")
}

/// critest names its pods after the spec and a uuid, often past 64 bytes,
/// and sends no hostname: containerd then gives the pod the node's
/// hostname (uname and /etc/hostname), so must berth.
#[tokio::test(flavor = "multi_thread")]
async fn pod_without_hostname_gets_the_nodes_even_with_a_long_name() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "conf-hostname", Compression::Gzip);
    let reference = push(&registry, "berth-test/conf-host", "v1", &image).await?;

    let env = PodEnv::new("confhost", 20)?;
    let berthd = env.start()?;
    pull(&mut berthd.images().await?, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let name = format!(
        "pod-sandbox-with-a-name-longer-than-any-hostname-{}",
        "0123456789abcdef0123456789abcdef"
    );
    assert!(name.len() > 64);
    let mut cfg = env.pod_config(&name, false);
    cfg.hostname.clear();
    let pod = run_pod(&mut rt, &cfg).await?;

    let c = create_container(
        &mut rt,
        &pod,
        &cfg,
        container_config(
            "host",
            &reference,
            "echo uts=$(hostname); echo file=$(cat /etc/hostname); echo env=$HOSTNAME",
        ),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &c).await?;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = common::cri_pods::log_text(&env.log_dir.join(&name).join("host/0.log"));
    let host = node_hostname();
    for want in [
        format!("uts={host}"),
        format!("file={host}"),
        format!("env={host}"),
    ] {
        assert!(log.contains(&want), "{want:?} in {log}");
    }
    stop_and_remove_pod(&mut rt, &pod).await?;

    // A hostname the client gives is still checked.
    let mut bad = env.pod_config("badhost", false);
    bad.hostname = "not_a_hostname".into();
    let err = run_pod(&mut rt, &bad).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not_a_hostname"), "{status:?}");
    Ok(())
}

async fn stop_container(rt: &mut common::cri_pods::Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .map(|_| ())
}

async fn remove_container(
    rt: &mut common::cri_pods::Runtime,
    id: &str,
) -> Result<(), tonic::Status> {
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn stop_pod(rt: &mut common::cri_pods::Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn remove_pod(rt: &mut common::cri_pods::Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

/// api.proto: Stop and Remove "must not return an error" for a container
/// or sandbox that is already stopped or removed; containerd answers
/// success for an id it does not know.
#[tokio::test(flavor = "multi_thread")]
async fn stop_and_remove_of_absent_ids_succeed() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "conf-idem", Compression::Gzip);
    let reference = push(&registry, "berth-test/conf-idem", "v1", &image).await?;

    let env = PodEnv::new("confidem", 21)?;
    let berthd = env.start()?;
    pull(&mut berthd.images().await?, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    // Never there.
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    stop_container(&mut rt, unknown).await?;
    remove_container(&mut rt, unknown).await?;
    stop_pod(&mut rt, unknown).await?;
    remove_pod(&mut rt, unknown).await?;

    // No longer there.
    let cfg = env.pod_config("idem", false);
    let pod = run_pod(&mut rt, &cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &cfg,
        container_config("sleeper", &reference, "sleep 600"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    stop_container(&mut rt, &c).await?;
    remove_container(&mut rt, &c).await?;
    stop_container(&mut rt, &c).await?;
    remove_container(&mut rt, &c).await?;
    stop_pod(&mut rt, &pod).await?;
    remove_pod(&mut rt, &pod).await?;
    stop_pod(&mut rt, &pod).await?;
    remove_pod(&mut rt, &pod).await?;
    // Gone all the same.
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: c.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    Ok(())
}
