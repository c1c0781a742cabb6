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

/// PullImage over a bare HTTP/2 stream with `grpc-timeout: {timeout}`:
/// the server's own grpc-status. (tonic's client enforces the header
/// itself and answers CANCELLED locally; grpc-go's, critest's, answers
/// DEADLINE_EXCEEDED locally, unless the server's answer is there first.)
async fn pull_status_with_timeout(
    socket: &std::path::Path,
    image: &str,
    timeout: &str,
) -> Result<String> {
    use prost::Message;
    use tonic::codegen::http;
    let io = tokio::net::UnixStream::connect(socket).await?;
    let (client, connection) = h2::client::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let message = cri::PullImageRequest {
        image: common::cri_images::spec(image),
        ..Default::default()
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let request = http::Request::post("http://localhost/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())?;
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(body.into(), true)?;
    let (parts, mut body) = response.await?.into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return Ok(status.to_str()?.to_owned());
    }
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await?.context("no trailers")?;
    Ok(trailers
        .get("grpc-status")
        .context("no grpc-status")?
        .to_str()?
        .to_owned())
}

/// critest "public image should timeout if requested": a PullImage with a
/// deadline it cannot meet answers DEADLINE_EXCEEDED (4), not CANCELLED
/// (1). The registry sits behind a proxy that holds the blobs, so the pull
/// certainly outlives the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_past_the_clients_deadline_is_deadline_exceeded() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "conf-deadline", Compression::Gzip);
    push(&registry, "berth-test/conf-deadline", "v1", &image).await?;
    let proxy = GateProxy::start(&registry.host)?;
    let reference = format!("{}/berth-test/conf-deadline:v1", proxy.addr);

    let dirs = common::berthd::BerthdDirs::new("conf-deadline")?;
    let berthd = common::berthd::Berthd::start(&dirs)?;
    for timeout in ["1m", "300m", "999999u"] {
        let status = pull_status_with_timeout(&berthd.socket, &reference, timeout).await?;
        assert_eq!(
            status,
            (Code::DeadlineExceeded as i32).to_string(),
            "grpc-timeout {timeout}"
        );
    }
    // The pull itself went on and finishes once the registry answers.
    tokio::task::block_in_place(|| proxy.wait_blob_requested())?;
    proxy.release();
    let mut images = berthd.images().await?;
    let id = pull(&mut images, &reference, None).await?;
    assert_eq!(id, image.config_digest.as_str());
    Ok(())
}
