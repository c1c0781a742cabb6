//! containerd 2.x's CRI with berth's shim as a RuntimeClass handler
//! (`berth` → `io.containerd.berth.v2`), as critest drives it (issue 14
//! cause 7): containerd runs the pod's pause container as a task of the
//! shim and the app containers join its namespaces. Checked here:
//! - the runtime handler's features in Status come from the shim's `-info`
//!   (user namespaces, recursive read-only mounts);
//! - a server in one container of the pod is reachable from another
//!   container of the pod (loopback of the pod network namespace) and from
//!   the host at the pod IP (the bridge the test's CNI conf list made);
//! - "drop ALL capabilities" leaves an empty bounding set.
//!
//! containerd 2.x is Debian unstable's, extracted by
//! tests/setup-containerd2.sh; without it the test prints "skipped".

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::containerd_cri::{BERTH_HANDLER, ContainerdCri, CriOptions, push_bench_images};
use common::cri_images::pull;
use common::cri_pods::{container_config, create_container, pod_status, stop_and_remove_pod};
use common::registry::Registry;
use k8s_cri::v1 as cri;

fn containerd2_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_CONTAINERD2_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth-test/containerd2/usr/bin"));
    dir.join("containerd").exists().then_some(dir)
}

fn shim_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_SHIM_BIN") {
        return std::fs::canonicalize(bin).expect("BERTH_SHIM_BIN");
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join("containerd-shim-berth-v2");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p containerd-shim-berth-v2",
        bin.display()
    );
    bin
}

async fn exec(rt: &mut common::cri_pods::Runtime, id: &str, cmd: &[&str]) -> Result<String> {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await?
        .into_inner();
    ensure!(
        r.exit_code == 0,
        "{cmd:?} exited {}: {}",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

async fn start(rt: &mut common::cri_pods::Runtime, id: &str) -> Result<()> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await?;
    Ok(())
}

/// One connection to `addr`: what the server says first (it may keep the
/// connection open).
fn read_once(addr: &str) -> std::io::Result<String> {
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads what the server at `addr` says, retrying until it listens.
fn read_from(addr: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read_once(addr) {
            Ok(out) if !out.is_empty() => return Ok(out),
            other if Instant::now() > deadline => bail!("nothing from {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 14 cause 7 is not fixed yet: under containerd 2.1 CRI the handler reads no features from -info and the pod network is undiagnosed; run with --ignored"]
async fn pod_network_capabilities_and_features_under_containerd2() -> Result<()> {
    let Some(bin_dir) = containerd2_dir() else {
        eprintln!("skipped: containerd 2.x is not extracted (run tests/setup-containerd2.sh)");
        return Ok(());
    };
    let registry = Registry::start()?;
    let (pause, image) = push_bench_images(&registry).await?;
    let ctd = ContainerdCri::start_with(
        21,
        &registry.host,
        &pause,
        CriOptions {
            bin_dir: Some(bin_dir),
            berth_shim: Some(shim_binary()),
        },
    )?;
    ctd.wait_cri_ready().await?;
    let mut rt = ctd.runtime().await?;

    // The handler's features: containerd read them from `-info`.
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let handler = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == BERTH_HANDLER)
        .with_context(|| format!("no handler {BERTH_HANDLER}: {:?}", status.runtime_handlers))?;
    let features = handler.features.unwrap_or_default();
    ensure!(
        features.user_namespaces && features.recursive_read_only_mounts,
        "berth's features as containerd read them from -info: {features:?}; log:\n{}",
        ctd.log_tail()
    );

    let mut images = ctd.images().await?;
    for i in [&pause, &image] {
        pull(&mut images, i, None)
            .await
            .with_context(|| format!("pull {i}; log:\n{}", ctd.log_tail()))?;
    }
    let pod_config = ctd.pod_config("net", false);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: BERTH_HANDLER.into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox; log:\n{}", ctd.log_tail()))?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let ip = pod_status(&mut rt, &pod)
            .await?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .context("the pod has no IP")?;

        // A server in one container; a client in another; the host.
        let server = create_container(
            &mut rt,
            &pod,
            &pod_config,
            container_config(
                "server",
                &image,
                "while true; do echo hello-from-pod | nc -l -p 8080; done",
            ),
        )
        .await?;
        start(&mut rt, &server).await?;
        let mut drop_all = container_config("client", &image, "sleep 1000");
        drop_all
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .capabilities = Some(cri::Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        let client = create_container(&mut rt, &pod, &pod_config, drop_all).await?;
        start(&mut rt, &client).await?;

        let status = exec(&mut rt, &client, &["cat", "/proc/self/status"]).await?;
        let capbnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(str::trim)
            .context("no CapBnd")?;
        ensure!(
            capbnd == "0000000000000000",
            "drop ALL left CapBnd {capbnd}"
        );

        let deadline = Instant::now() + Duration::from_secs(30);
        let via_loopback = loop {
            let r = exec(
                &mut rt,
                &client,
                &["sh", "-c", "nc -w 2 127.0.0.1 8080 </dev/null"],
            )
            .await;
            match r {
                Ok(out) if out.contains("hello-from-pod") => break out,
                other if Instant::now() > deadline => {
                    bail!("container to container over the pod's loopback: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        ensure!(via_loopback.contains("hello-from-pod"));
        let addr = format!("{ip}:8080");
        let from_host = tokio::task::spawn_blocking(move || read_from(&addr)).await??;
        ensure!(
            from_host.contains("hello-from-pod"),
            "host to pod IP {ip}: {from_host:?}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let teardown = stop_and_remove_pod(&mut rt, &pod).await;
    result.with_context(|| format!("containerd log:\n{}", ctd.log_tail()))?;
    teardown?;
    Ok(())
}
