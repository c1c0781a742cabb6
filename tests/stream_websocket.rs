//! The streaming server over WebSocket (exec and attach), driven by the
//! project's own channel-protocol client on top of tungstenite's framing.

mod common;

use std::sync::Arc;

use anyhow::Result;
use berth::stream::{StreamConfig, StreamServer, TerminalSize};
use common::local_backend::LocalProcessBackend;
use common::ws_client::WsClient;
use k8s_cri::v1 as cri;

async fn server(backend: Arc<LocalProcessBackend>) -> Result<StreamServer> {
    Ok(StreamServer::start(&StreamConfig::default(), backend).await?)
}

fn exec_req(cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: "local".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn v5_stdin_with_close_signal_and_success() -> Result<()> {
    let srv = server(LocalProcessBackend::new()).await?;
    let url = srv
        .get_exec(&exec_req(
            &["/bin/sh", "-c", "cat; echo done >&2"],
            true,
            false,
        ))?
        .url;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(0, b"over websocket\n").await?;
    // Without the close signal cat would wait for more input forever.
    ws.close_channel(0).await?;
    let got = ws.collect().await?;
    assert_eq!(String::from_utf8_lossy(&got.stdout), "over websocket\n");
    assert_eq!(String::from_utf8_lossy(&got.stderr), "done\n");
    assert_eq!(json(&got.error)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn v4_exit_42_is_reported_with_the_code() -> Result<()> {
    let srv = server(LocalProcessBackend::new()).await?;
    let url = srv
        .get_exec(&exec_req(
            &["/bin/sh", "-c", "echo x; exit 42"],
            false,
            false,
        ))?
        .url;
    let mut ws = WsClient::connect(&url, "v4.channel.k8s.io").await?;
    let got = ws.collect().await?;
    assert_eq!(String::from_utf8_lossy(&got.stdout), "x\n");
    let status = json(&got.error);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "42");
    Ok(())
}

#[tokio::test]
async fn channel_and_base64_protocols() -> Result<()> {
    let srv = server(LocalProcessBackend::new()).await?;
    for protocol in ["channel.k8s.io", "base64.channel.k8s.io"] {
        let url = srv
            .get_exec(&exec_req(
                &["/bin/sh", "-c", "printf 'a\\001b'; exit 7"],
                false,
                false,
            ))?
            .url;
        let mut ws = WsClient::connect(&url, protocol).await?;
        let got = ws.collect().await?;
        assert_eq!(got.stdout, b"a\x01b", "{protocol}");
        // Before v4 the error channel carries plain text.
        let text = String::from_utf8_lossy(&got.error);
        assert!(
            text.contains('7') && !text.starts_with('{'),
            "{protocol}: {text}"
        );

        let url = srv.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
        let mut ws = WsClient::connect(&url, protocol).await?;
        let got = ws.collect().await?;
        assert!(got.error.is_empty(), "{protocol}: success says nothing");
    }
    Ok(())
}

#[tokio::test]
async fn tty_resize_over_channel_4() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "read line; /bin/busybox stty size",
            ],
            true,
            true,
        ))?
        .url;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(4, br#"{"Width":91,"Height":17}"#).await?;
    backend
        .wait_resize(TerminalSize {
            width: 91,
            height: 17,
        })
        .await;
    ws.send(0, b"go\n").await?;
    let got = ws.collect().await?;
    let out = String::from_utf8_lossy(&got.stdout);
    assert!(out.contains("17 91"), "{out:?}");
    assert_eq!(json(&got.error)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn attach_over_websocket_echoes() -> Result<()> {
    let backend = LocalProcessBackend::new();
    backend
        .containers
        .lock()
        .unwrap()
        .insert("echoer".into(), vec!["/bin/cat".into()]);
    let srv = server(backend).await?;
    let url = srv
        .get_attach(&cri::AttachRequest {
            container_id: "echoer".into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: false,
        })?
        .url;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(0, b"first\n").await?;
    assert!(ws.read_stdout_until("first\n").await?.contains("first"));
    ws.send(0, b"second\n").await?;
    assert!(ws.read_stdout_until("second\n").await?.contains("second"));
    ws.close_channel(0).await?;
    let got = ws.collect().await?;
    assert_eq!(json(&got.error)["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn unknown_subprotocol_is_refused() -> Result<()> {
    let srv = server(LocalProcessBackend::new()).await?;
    let url = srv.get_exec(&exec_req(&["/bin/true"], false, false))?.url;
    let err = WsClient::connect(&url, "v9.channel.k8s.io")
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("403"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn client_leaving_kills_the_process() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = server(backend.clone()).await?;
    let url = srv
        .get_exec(&exec_req(
            &["/bin/sh", "-c", "echo up; exec sleep 1000"],
            true,
            false,
        ))?
        .url;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    assert!(ws.read_stdout_until("up").await?.contains("up"));
    let pid = *backend.pids.lock().unwrap().last().unwrap();
    drop(ws);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} outlived its client"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
