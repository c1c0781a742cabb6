//! berthd as an operable service: the Prometheus endpoint scraped and
//! parsed strictly as the text exposition while a real image is pulled from
//! a real registry and a real pod and container run; SIGHUP reloading the
//! log level and never stopping berthd; JSON log lines; and the network
//! readiness of `mode = "auto"` before and after a CNI config appears.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::berthd::{Berthd, BerthdDirs, PATIENCE};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, container_config, container_status, create_container, run_pod, stop_and_remove_pod,
};
use common::oci_image::Compression;
use common::prom_text::{self, Exposition};
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// The metrics endpoint's address, from berthd's start-up log line.
fn metrics_address(berthd: &Berthd) -> Result<SocketAddr> {
    berthd.wait_for_log(|l| l.contains("metrics endpoint serving"))?;
    let log = berthd.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("metrics endpoint serving"))
        .context("no metrics line")?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .context("no address= field")?;
    Ok(addr.parse()?)
}

/// GET /metrics over a plain HTTP/1.0 connection; checks the status and
/// content type and parses the body strictly.
fn scrape(addr: SocketAddr) -> Result<Exposition> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: berth\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.0 200"), "status: {head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .context("no content-type")?;
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "content-type {content_type}"
    );
    prom_text::parse(body, true).with_context(|| format!("exposition:\n{body}"))
}

fn value(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no single {name}{labels:?} in {:#?}", m.samples))
}

fn rpc_count(m: &Exposition, method: &str, code: &str) -> f64 {
    m.value(
        "berth_cri_requests_total",
        &[("method", method), ("code", code)],
    )
    .unwrap_or(0.0)
}

#[test]
fn the_test_parser_refuses_what_prometheus_refuses() {
    let good = "# TYPE a counter\na_total{x=\"1\"} 3\n# EOF\n";
    assert!(prom_text::parse(good, true).is_ok());
    for bad in [
        "a_total 3\n# EOF\n",
        "# TYPE a counter\na_total{x=1} 3\n# EOF\n",
        "# TYPE a counter\na_total 3\n",
        "# TYPE a counter\na_total three\n# EOF\n",
        "# TYPE a gauge\n# TYPE a gauge\na 1\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 2\n# EOF\n",
    ] {
        assert!(prom_text::parse(bad, true).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_rpcs_pulls_shims_and_pods() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "metrics", Compression::Gzip);
    let reference = push(&registry, "berth-test/metrics", "v1", &image).await?;

    let env = PodEnv::new("metrics", 6)?;
    let mut config = std::fs::read_to_string(&env.config)?;
    config.push_str("[metrics]\naddress = \"127.0.0.1:0\"\n");
    std::fs::write(&env.config, config)?;
    let berthd = env.start()?;
    let addr = metrics_address(&berthd)?;

    let m = scrape(addr)?;
    assert_eq!(
        value(
            &m,
            "berth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for state in ["ready", "notready"] {
        assert_eq!(value(&m, "berth_pods", &[("state", state)]), 0.0);
    }
    assert_eq!(
        value(&m, "berth_shim_starts_total", &[("result", "success")]),
        0.0
    );

    let mut rt = berthd.runtime().await?;
    for _ in 0..2 {
        rt.version(cri::VersionRequest::default()).await?;
    }
    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    // A reference that does not parse: a failed pull, without any traffic.
    assert!(pull(&mut images, "Not/A//Reference", None).await.is_err());

    let pod_cfg = env.pod_config("metricspod", true);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &reference, "sleep 60"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    assert_eq!(
        container_status(&mut rt, &c).await?.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let m = scrape(addr)?;
    assert_eq!(rpc_count(&m, "Version", "Ok"), 2.0);
    assert_eq!(rpc_count(&m, "CheckpointContainer", "Unimplemented"), 1.0);
    assert_eq!(rpc_count(&m, "PullImage", "Ok"), 1.0);
    assert_eq!(rpc_count(&m, "RunPodSandbox", "Ok"), 1.0);
    let failed_pulls: f64 = m
        .samples
        .iter()
        .filter(|s| {
            s.name == "berth_cri_requests_total"
                && s.labels["method"] == "PullImage"
                && s.labels["code"] != "Ok"
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(failed_pulls, 1.0);
    let version_latency = [
        ("service", "runtime.v1.RuntimeService"),
        ("method", "Version"),
    ];
    assert_eq!(
        value(
            &m,
            "berth_cri_request_duration_seconds_count",
            &version_latency
        ),
        2.0
    );
    assert!(
        value(
            &m,
            "berth_cri_request_duration_seconds_sum",
            &version_latency
        ) > 0.0
    );
    assert_eq!(
        value(&m, "berth_image_pulls_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        value(&m, "berth_image_pulls_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        value(&m, "berth_image_pull_duration_seconds_count", &[]),
        2.0
    );
    let layer_bytes: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    assert_eq!(
        value(&m, "berth_image_pull_bytes_total", &[]),
        layer_bytes as f64,
        "the layers' compressed bytes, each received once"
    );
    assert_eq!(
        value(&m, "berth_shim_starts_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        value(&m, "berth_shim_starts_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(value(&m, "berth_pods", &[("state", "ready")]), 1.0);
    assert_eq!(value(&m, "berth_containers", &[("state", "running")]), 1.0);
    assert_eq!(value(&m, "berth_containers", &[("state", "exited")]), 0.0);

    stop_and_remove_pod(&mut rt, &pod).await?;
    let m = scrape(addr)?;
    assert_eq!(value(&m, "berth_pods", &[("state", "ready")]), 0.0);
    assert_eq!(value(&m, "berth_containers", &[("state", "running")]), 0.0);
    assert_eq!(rpc_count(&m, "RemovePodSandbox", "Ok"), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() -> Result<()> {
    let dirs = BerthdDirs::new("metrics-off")?;
    let berthd = Berthd::start(&dirs)?;
    berthd.serves().await?;
    berthd.wait_for_log(|l| l.contains("berthd serving CRI"))?;
    assert!(
        !berthd.log_text().contains("metrics endpoint serving"),
        "{}",
        berthd.log_text()
    );
    Ok(())
}

/// Writes `level` as the config file's log level.
fn write_config(path: &std::path::Path, level: &str) -> Result<()> {
    std::fs::write(path, format!("log_level = \"{level}\"\n"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_log_level_and_keeps_serving() -> Result<()> {
    let dirs = BerthdDirs::new("sighup")?;
    let file = dirs.tmp.path().join("berthd.toml");
    write_config(&file, "info")?;
    let mut args = dirs.args();
    args.extend(["--config".into(), file.display().to_string()]);
    let mut berthd = Berthd::start_file_logged(&dirs, args, &dirs.socket)?;
    let mut rt = berthd.runtime().await?;
    rt.version(cri::VersionRequest::default()).await?;
    // At info, the per-RPC span (debug) is not logged.
    let rpc_line = |l: &str| l.contains("rpc{rpc=Version") && l.contains("close");
    berthd.wait_for_log(|l| l.contains("berthd serving CRI"))?;
    assert!(
        !berthd.log_text().lines().any(rpc_line),
        "{}",
        berthd.log_text()
    );

    write_config(&file, "debug")?;
    berthd.signal(Signal::SIGHUP)?;
    berthd.wait_for_log(|l| l.contains("log level reloaded") && l.contains("debug"))?;
    berthd.wait_for_log(|l| l.contains("registries.conf reloaded"))?;
    berthd.wait_for_log(|l| l.contains("network config reloaded"))?;
    assert!(
        berthd.alive(),
        "SIGHUP stopped berthd:\n{}",
        berthd.log_text()
    );
    rt.version(cri::VersionRequest::default()).await?;
    berthd.wait_for_log(rpc_line)?;

    // A broken file is reported and changes nothing; berthd keeps serving.
    std::fs::write(&file, "log_level = \n")?;
    berthd.signal(Signal::SIGHUP)?;
    berthd.wait_for_log(|l| l.contains("config file does not load"))?;
    assert!(
        berthd.alive(),
        "SIGHUP stopped berthd:\n{}",
        berthd.log_text()
    );
    rt.version(cri::VersionRequest::default()).await?;

    let status = berthd.stop(Signal::SIGTERM)?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line() -> Result<()> {
    let dirs = BerthdDirs::new("jsonlog")?;
    let file = dirs.tmp.path().join("berthd.toml");
    std::fs::write(&file, "log_format = \"json\"\n")?;
    let mut args = dirs.args();
    args.extend(["--config".into(), file.display().to_string()]);
    let mut berthd = Berthd::start_with(&dirs, args, &dirs.socket)?;
    berthd.serves().await?;
    berthd.wait_for_log(|l| l.contains("berthd serving CRI"))?;
    berthd.stop(Signal::SIGTERM)?;
    let log = berthd.log_text();
    let mut seen_serving = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "berthd serving CRI" {
            assert_eq!(v["fields"]["commit"], berth::GIT_COMMIT, "{line}");
            seen_serving = true;
        }
    }
    assert!(seen_serving, "{log}");
    Ok(())
}

async fn network_condition(berthd: &Berthd) -> Result<cri::RuntimeCondition> {
    let status = berthd
        .runtime()
        .await?
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_waits_for_a_cni_config_like_containerd() -> Result<()> {
    let env = PodEnv::new("netready", 10)?;
    let conf_dir = env.dirs.tmp.path().join("cni-conf");
    let pid = std::process::id();
    std::fs::write(
        &env.config,
        format!(
            "[network]\nmode = \"auto\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\"]\n",
            conf_dir.display()
        ),
    )?;
    let berthd = env.start()?;

    // No CNI config yet: not ready, as containerd says it.
    let c = network_condition(&berthd).await?;
    assert!(!c.status, "{c:?}");
    assert_eq!(c.reason, "NetworkPluginNotReady");
    assert!(c.message.contains("cni plugin not initialized"), "{c:?}");

    // A pod with its own network is refused, and leaves nothing behind.
    let mut rt = berthd.runtime().await?;
    let err = run_pod(&mut rt, &env.pod_config("waitpod", false))
        .await
        .unwrap_err();
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("cni plugin not initialized"),
        "{status:?}"
    );
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    let leases: Vec<_> = std::fs::read_dir(env.dirs.state.join("network"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leases.is_empty(), "built-in leases were taken: {leases:?}");

    // A host-network pod (the CNI daemonset's) still runs.
    let host_pod = run_pod(&mut rt, &env.pod_config("cnids", true)).await?;
    stop_and_remove_pod(&mut rt, &host_pod).await?;

    // The CNI daemonset writes its config: ready without a restart or signal.
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        println!("skipped: the ready half needs the CNI plugins in /usr/lib/cni");
        return Ok(());
    }
    std::fs::create_dir_all(&conf_dir)?;
    let list = common::containerd_cri::cni_conflist(
        &format!("berth-netready-{pid}"),
        &format!("bnr{}", pid % 100_000),
        "10.199.0.0/24",
        "fd99:199::/64",
        &env.dirs.tmp.path().join("ipam"),
    );
    std::fs::write(conf_dir.join("10-test.conflist"), list.to_string())?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = network_condition(&berthd).await?;
        if c.status {
            break;
        }
        if Instant::now() > deadline {
            bail!("NetworkReady stayed false after the CNI config appeared: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_config_file_keeps_the_builtin_network() -> Result<()> {
    // BerthdDirs passes no --config; /etc/berth/berthd.toml would be read
    // if it existed, which a test must not depend on.
    if std::path::Path::new(berth::config::DEFAULT_CONFIG_PATH).exists() {
        println!(
            "skipped: {} exists on this machine",
            berth::config::DEFAULT_CONFIG_PATH
        );
        return Ok(());
    }
    let dirs = BerthdDirs::new("netdefault")?;
    let berthd = Berthd::start(&dirs)?;
    let c = network_condition(&berthd).await?;
    let nft = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").exists()))
        .unwrap_or(false);
    if nft {
        assert!(c.status, "the built-in network is ready: {c:?}");
    } else {
        println!("skipped: nft is not on PATH, so the built-in network is not ready");
    }
    Ok(())
}
