//! Streaming server figures: exec round-trip (`echo hi` over SPDY v4, from
//! the upgrade request to the exit status) and port-forward throughput
//! (one SPDY stream pair into a netns, to a TCP sink) through berth's
//! server, with the tests' local-process backend.
//!
//! The side-by-side run against containerd 1.6's streaming server (same
//! client, real pods and containers behind berthd and containerd's CRI
//! plugin) is `benches/cri_stream.rs`.
//!
//! `cargo bench --bench stream_exec` (root: makes a netns).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use berth::stream::{StreamConfig, StreamServer};
use common::local_backend::{LocalProcessBackend, connect_in_netns};
use common::netns::TestNetns;
use common::spdy_client::SpdyClient;
use k8s_cri::v1 as cri;

const EXECS: usize = 200;
const FORWARD_BYTES: usize = 256 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let backend = LocalProcessBackend::new();
    let srv = StreamServer::start(&StreamConfig::default(), backend.clone()).await?;

    // Exec round-trip.
    let req = cri::ExecRequest {
        container_id: "local".into(),
        cmd: vec!["/bin/echo".into(), "hi".into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut times = Vec::with_capacity(EXECS);
    for _ in 0..EXECS {
        let start = Instant::now();
        let url = srv.get_exec(&req)?.url;
        let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
        let mut error = c.open(&[("streamType", "error")]).await?;
        let mut out = c.open(&[("streamType", "stdout")]).await?;
        let mut err = c.open(&[("streamType", "stderr")]).await?;
        let (o, _, s) = tokio::join!(out.read_to_end(), err.read_to_end(), error.read_to_end());
        anyhow::ensure!(o == b"hi\n" && !s.is_empty());
        times.push(start.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    println!("exec round-trip (echo hi, SPDY v4), {EXECS} runs: median {median:?}, p90 {p90:?}");

    // Port-forward throughput: the pod side is a netcat sink in a netns.
    let ns = TestNetns::create("streambench")?;
    let port = 9000;
    let mut sink = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "/bin/busybox", "nc", "-l", "-p"])
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    while connect_in_netns(&ns.path, port).is_err() {
        // busybox nc -l serves one connection: the probe used it, restart.
        if let Ok(Some(_)) = sink.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let mut sink = common::netns::KillOnDrop(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "/bin/busybox", "nc", "-l", "-p"])
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    backend
        .pods
        .lock()
        .unwrap()
        .insert("bench".into(), ns.path.clone());
    let url = srv
        .get_port_forward(&cri::PortForwardRequest {
            pod_sandbox_id: "bench".into(),
            port: vec![port.into()],
        })?
        .url;
    let c = Arc::new(SpdyClient::connect(&url, &["portforward.k8s.io"]).await?);
    let p = port.to_string();
    let _error = c
        .open(&[("streamType", "error"), ("port", &p), ("requestID", "0")])
        .await?;
    let data = c
        .open(&[("streamType", "data"), ("port", &p), ("requestID", "0")])
        .await?;
    let chunk = vec![0x5au8; 32 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < FORWARD_BYTES {
        data.write(&chunk).await?;
        sent += chunk.len();
    }
    data.close().await?;
    // The sink exits once it has read everything and seen EOF.
    let status = tokio::task::spawn_blocking(move || sink.0.wait()).await??;
    let elapsed = start.elapsed();
    println!(
        "port-forward throughput (client → pod, 1 stream): {:.0} MiB/s ({} MiB in {elapsed:?}, sink {status})",
        FORWARD_BYTES as f64 / 1048576.0 / elapsed.as_secs_f64(),
        FORWARD_BYTES / 1048576
    );
    println!("containerd 1.6 comparison: `cargo bench --bench cri_stream`");
    Ok(())
}
