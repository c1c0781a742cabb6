//! The CRI streaming servers side by side, in one run, through the same
//! client (the tests' own SPDY/3.1 client): berthd's and Debian's
//! containerd 1.6 CRI plugin's (exec through runc there), each with a real
//! pod (own network namespace) and a busybox container.
//!
//! - exec round-trip: CRI Exec (`echo hi`, stdout+stderr) + SPDY upgrade
//!   (`v4.channel.k8s.io`) until the exit status arrives; the runtimes take
//!   turns; p50/p99 and ratios;
//! - port-forward throughput: one `portforward.k8s.io` data stream into the
//!   pod, client → a `nc -l` sink in the container, until the pod side has
//!   closed the connection (so all bytes went through); median of runs.
//!
//! Root. `cargo build --release -p containerd-shim-berth-v2 && cargo bench
//! --bench cri_stream`. `BERTH_BENCH_ITERS` (execs, default 50),
//! `BERTH_BENCH_FORWARD_MIB` (per run, default 64), `BERTH_BENCH_FORWARD_RUNS`
//! (default 3).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::berthd::PATIENCE;
use common::cri_bench::{SideBySide, Target, env_usize, ms, pct, preflight};
use common::spdy_client::SpdyClient;
use k8s_cri::v1 as cri;

const SINK_PORT: u16 = 9000;

/// One exec of `echo hi`, from the CRI call to the exit status.
async fn exec_once(t: &mut Target, ctr: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let url =
        t.rt.exec(cri::ExecRequest {
            container_id: ctr.into(),
            cmd: vec!["echo".into(), "hi".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: Exec", t.name))?
        .into_inner()
        .url;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdout.close().await?;
    stderr.close().await?;
    let (out, _, status) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(
            stdout.read_to_end(),
            stderr.read_to_end(),
            error.read_to_end()
        )
    })
    .await
    .with_context(|| format!("{}: exec never finished", t.name))?;
    let took = t0.elapsed();
    ensure!(
        out == b"hi\n",
        "{}: exec printed {:?}, status {:?}",
        t.name,
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&status)
    );
    // v4: success is an empty error stream or a Success status.
    let status = String::from_utf8_lossy(&status);
    ensure!(
        status.is_empty() || status.contains("Success"),
        "{}: exec status {status}",
        t.name
    );
    Ok(took)
}

/// Sends `bytes` through a port-forward stream to the sink; MiB/s.
async fn forward_once(t: &mut Target, pod: &str, bytes: usize) -> Result<f64> {
    let url =
        t.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![SINK_PORT.into()],
        })
        .await
        .with_context(|| format!("{}: PortForward", t.name))?
        .into_inner()
        .url;
    let c = SpdyClient::connect(&url, &["portforward.k8s.io"]).await?;
    let p = SINK_PORT.to_string();
    let mut error = c
        .open(&[("streamType", "error"), ("port", &p), ("requestID", "0")])
        .await?;
    let mut data = c
        .open(&[("streamType", "data"), ("port", &p), ("requestID", "0")])
        .await?;
    let chunk = vec![0x5au8; 32 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        data.write(&chunk).await?;
        sent += chunk.len();
    }
    data.close().await?;
    // The sink exits at EOF and closes its end; the server then ends the
    // stream: every byte has reached the pod.
    let back = tokio::time::timeout(PATIENCE, data.read_to_end())
        .await
        .with_context(|| format!("{}: the forwarded stream never ended", t.name))?;
    let elapsed = start.elapsed();
    ensure!(
        back.is_empty(),
        "{}: the sink answered {} bytes",
        t.name,
        back.len()
    );
    if let Some(code) = data.reset {
        let err = tokio::time::timeout(Duration::from_secs(1), error.read_to_end())
            .await
            .unwrap_or_default();
        anyhow::bail!(
            "{}: data stream reset ({code}): {}",
            t.name,
            String::from_utf8_lossy(&err)
        );
    }
    Ok(sent as f64 / 1048576.0 / elapsed.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !preflight("cri_stream")? {
        return Ok(());
    }
    let execs = env_usize("BERTH_BENCH_ITERS", 50);
    let forward_mib = env_usize("BERTH_BENCH_FORWARD_MIB", 64);
    let forward_runs = env_usize("BERTH_BENCH_FORWARD_RUNS", 3);

    let setup = SideBySide::start("stream", 3, 2).await?;
    let ctd = &setup.ctd;
    let mut targets = setup.targets().await?;
    let result = run(&mut targets, execs, forward_mib, forward_runs).await;
    if result.is_err() {
        eprintln!("containerd log tail:\n{}", ctd.log_tail());
    }
    let _ = ctd.remove_all_pods().await;
    result
}

async fn run(
    targets: &mut [Target; 2],
    execs: usize,
    forward_mib: usize,
    forward_runs: usize,
) -> Result<()> {
    let mut pods = Vec::new();
    let sink = format!("while true; do nc -l -p {SINK_PORT} > /dev/null; done");
    for t in targets.iter_mut() {
        let pod = t.run_pod("streampod", false).await?;
        let ctr = t
            .start_container(&pod, "streampod", false, &["/bin/sh", "-c", &sink])
            .await?;
        pods.push((pod, ctr));
    }
    // The sinks listen.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let warmup = 3;
    let mut times = [vec![], vec![]];
    for i in 0..execs + warmup {
        for (k, t) in targets.iter_mut().enumerate() {
            let d = exec_once(t, &pods[k].1).await?;
            if i >= warmup {
                times[k].push(d);
            }
        }
    }
    println!(
        "exec round-trip (CRI Exec + SPDY v4 `echo hi` to exit status), {execs} each after {warmup} warm-up"
    );
    for (k, t) in targets.iter().enumerate() {
        println!(
            "{:<28} p50 {:>7.2}ms  p99 {:>7.2}ms",
            t.name,
            ms(pct(&times[k], 50)),
            ms(pct(&times[k], 99))
        );
    }
    println!(
        "ratio berthd / containerd: p50 {:.3}, p99 {:.3} (target <= 0.333)",
        ms(pct(&times[0], 50)) / ms(pct(&times[1], 50)),
        ms(pct(&times[0], 99)) / ms(pct(&times[1], 99))
    );

    let bytes = forward_mib * 1048576;
    let mut rates = [vec![], vec![]];
    for _ in 0..forward_runs {
        for (k, t) in targets.iter_mut().enumerate() {
            rates[k].push(forward_once(t, &pods[k].0, bytes).await?);
            // The sink's loop starts the next nc.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "port-forward throughput (client → pod, 1 stream, {forward_mib} MiB per run), median of {forward_runs}"
    );
    let mut med = [0.0; 2];
    for (k, t) in targets.iter().enumerate() {
        med[k] = median(&mut rates[k]);
        println!(
            "{:<28} {:>8.1} MiB/s   (runs: {})",
            t.name,
            med[k],
            rates[k]
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "ratio berthd / containerd throughput: {:.3} (target >= 1)",
        med[0] / med[1]
    );
    for (t, (pod, ctr)) in targets.iter_mut().zip(pods) {
        t.teardown(&pod, Some(&ctr)).await?;
    }
    Ok(())
}
