//! CRI Exec and PortForward through berthd's streaming server, against a
//! real pod and container from a registry image, with the project's own
//! SPDY client: output and exit codes, stdin, a tty resized and seen by
//! `stty size`, and HTTP fetched from a busybox httpd inside the pod.
//! (Attach and WebSocket exec through berthd: cri_attach.rs.)

mod common;

use anyhow::{Result, ensure};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, processes_with, run_pod,
    stop_and_remove_pod,
};
use common::oci_image::Compression;
use common::registry::Registry;
use common::spdy_client::SpdyClient;
use common::stream_checks::{status_json, wait_until};
use k8s_cri::v1 as cri;
use tonic::Code;

fn exec_req(container: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// Runs a non-tty exec with optional stdin; (stdout, stderr, error stream).
async fn exec(
    rt: &mut Runtime,
    container: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(String, String, Vec<u8>)> {
    let url = rt
        .exec(exec_req(container, cmd, stdin.is_some(), false))
        .await?
        .into_inner()
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    ensure!(c.protocol.as_deref() == Some("v4.channel.k8s.io"));
    let mut error = c.open(&[("streamType", "error")]).await?;
    let input = match stdin {
        Some(_) => Some(c.open(&[("streamType", "stdin")]).await?),
        None => None,
    };
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdout.close().await?;
    stderr.close().await?;
    if let (Some(s), Some(data)) = (&input, stdin) {
        s.write(data).await?;
        s.close().await?;
    }
    let (out, err, status) = tokio::join!(
        stdout.read_to_end(),
        stderr.read_to_end(),
        error.read_to_end()
    );
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_port_forward_into_a_real_pod() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-stream", Compression::Gzip);
    let reference = push(&registry, "berth-test/stream", "v1", &image).await?;

    let env = PodEnv::new("stream", 7)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let pod_cfg = env.pod_config("streampod", false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let web = container_config(
        "web",
        &reference,
        "echo served from the pod > /tmp/index.html; exec /bin/busybox httpd -f -p 8080 -h /tmp",
    );
    let web = create_container(&mut rt, &pod, &pod_cfg, web).await?;

    // Not started yet: Exec is refused before any URL is handed out.
    let err = rt
        .exec(exec_req(&web, &["true"], false, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = rt
        .exec(exec_req("no-such-container", &["true"], false, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    rt.start_container(cri::StartContainerRequest {
        container_id: web.clone(),
    })
    .await?;
    let err = rt
        .exec(exec_req(&web, &[], false, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // 1. Output and exit 0.
    let (out, err, status) = exec(&mut rt, &web, &["echo", "hi"], None).await?;
    assert_eq!(out, "hi\n");
    assert_eq!(err, "");
    assert_eq!(status_json(&status)["status"], "Success");

    // 2. Exit 42 as NonZeroExitCode, stderr separate.
    let (out, err, status) = exec(
        &mut rt,
        &web,
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
        None,
    )
    .await?;
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    let status = status_json(&status);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "42");

    // 3. stdin piped into cat.
    let input = "line one\nline two through the pod shim\n".repeat(500);
    let (out, _, status) = exec(&mut rt, &web, &["cat"], Some(input.as_bytes())).await?;
    assert_eq!(out.len(), input.len());
    assert_eq!(out, input);
    assert_eq!(status_json(&status)["status"], "Success");

    // 4. A tty resized: the size shows in `stty size` (asked once per
    // line sent, until the resize, sent on its own stream, has landed).
    let url = rt
        .exec(exec_req(
            &web,
            &[
                "sh",
                "-c",
                "stty -echo; echo ready; while read l; do [ \"$l\" = q ] && exit 3; stty size; done",
            ],
            true,
            true,
        ))
        .await?
        .into_inner()
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let resize = c.open(&[("streamType", "resize")]).await?;
    // Lines sent before the shell turned echo off would only be echoed.
    let ready = stdout.read_until("ready").await;
    assert!(ready.contains("ready"), "{ready:?}");
    resize.write(br#"{"Width":100,"Height":33}"#).await?;
    let mut seen = String::new();
    for _ in 0..500 {
        stdin.write(b"size\n").await?;
        seen.push_str(&stdout.read_until("\n").await);
        if seen.contains("33 100") {
            break;
        }
    }
    assert!(seen.contains("33 100"), "stty size printed {seen:?}");
    stdin.write(b"q\n").await?;
    let _ = stdout.read_to_end().await;
    let status = status_json(&error.read_to_end().await);
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // 5. PortForward to the httpd in the pod, several connections at once.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await?
        .into_inner()
        .url;
    let c = std::sync::Arc::new(SpdyClient::connect(&url, &["portforward.k8s.io"]).await?);
    assert_eq!(c.protocol.as_deref(), Some("portforward.k8s.io"));
    let mut set = tokio::task::JoinSet::new();
    for request in 0..4 {
        let c = c.clone();
        set.spawn(async move {
            let id = request.to_string();
            let mut error = c
                .open(&[
                    ("streamType", "error"),
                    ("port", "8080"),
                    ("requestID", &id),
                ])
                .await?;
            let mut data = c
                .open(&[("streamType", "data"), ("port", "8080"), ("requestID", &id)])
                .await?;
            data.write(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
                .await?;
            let resp = String::from_utf8(data.read_to_end().await)?;
            let err = error.read_to_end().await;
            ensure!(
                resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
                "response {resp:?}; error stream {:?}",
                String::from_utf8_lossy(&err)
            );
            ensure!(resp.ends_with("\r\n\r\nserved from the pod\n"), "{resp:?}");
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let err = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![8080],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // 6. A client that vanishes mid-exec: the process is killed and its
    // fifos are removed.
    let n = 900_000 + std::process::id() % 90_000;
    let marker = format!("sleep\0{n}");
    let url = rt
        .exec(exec_req(&web, &["sleep", &n.to_string()], true, false))
        .await?
        .into_inner()
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let _error = c.open(&[("streamType", "error")]).await?;
    let _stdin = c.open(&[("streamType", "stdin")]).await?;
    let _stdout = c.open(&[("streamType", "stdout")]).await?;
    let _stderr = c.open(&[("streamType", "stderr")]).await?;
    wait_until(
        || !processes_with(&marker).is_empty(),
        "the exec'd sleep to run",
    )
    .await?;
    let execs = env.dirs.state.join("containers").join(&web).join("execs");
    ensure!(
        std::fs::read_dir(&execs)?.count() == 3,
        "stdin, stdout and stderr fifos while the exec runs"
    );
    drop((_error, _stdin, _stdout, _stderr, c));
    wait_until(
        || processes_with(&marker).is_empty(),
        "the sleep to be killed",
    )
    .await?;
    wait_until(
        || {
            std::fs::read_dir(&execs)
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        },
        "the exec fifos to be removed",
    )
    .await?;

    stop_and_remove_pod(&mut rt, &pod).await?;
    Ok(())
}
