//! CRI Attach through berthd's streaming server, and exec over WebSocket
//! through berthd, against real pods from a registry image, with the
//! project's own SPDY and WebSocket clients: a container echoing its stdin
//! (SPDY, WebSocket v5/v4/base64), a tty resized and seen by `stty size`,
//! `stdin_once` (the container reads EOF when the session's stdin ends),
//! a client dropped mid-stream (the container goes on; the shim holds no
//! more fds than before), and a client that never reads (the container is
//! never held up; the shim drops that client).

mod common;

use anyhow::{Context, Result, ensure};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, container_status, create_container, processes_with, run_pod,
    wait_exited,
};
use common::oci_image::Compression;
use common::registry::Registry;
use common::spdy_client::SpdyClient;
use common::stream_checks::{status_json, wait_until};
use common::ws_client::WsClient;
use k8s_cri::v1 as cri;

/// A registry with the test image, a berthd and a running pod.
struct Setup {
    _registry: Registry,
    env: PodEnv,
    _berthd: common::berthd::Berthd,
    rt: Runtime,
    reference: String,
    pod: String,
    pod_cfg: cri::PodSandboxConfig,
}

async fn setup(test: &str, idx: u32) -> Result<Setup> {
    let registry = Registry::start()?;
    let image = busybox_image("0", test, Compression::Gzip);
    let reference = push(&registry, &format!("berth-test/{test}"), "v1", &image).await?;
    let env = PodEnv::new(test, idx)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let pod_cfg = env.pod_config(&format!("{test}pod"), false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    Ok(Setup {
        _registry: registry,
        env,
        _berthd: berthd,
        rt,
        reference,
        pod,
        pod_cfg,
    })
}

impl Setup {
    /// Creates and starts a container running `script`.
    async fn start(
        &mut self,
        name: &str,
        script: &str,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
    ) -> Result<String> {
        let mut cfg = container_config(name, &self.reference, script);
        cfg.stdin = stdin;
        cfg.stdin_once = stdin_once;
        cfg.tty = tty;
        let id = create_container(&mut self.rt, &self.pod, &self.pod_cfg, cfg).await?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    async fn attach_url(&mut self, id: &str, stdin: bool, tty: bool) -> Result<String> {
        Ok(self
            .rt
            .attach(cri::AttachRequest {
                container_id: id.into(),
                stdin,
                tty,
                stdout: true,
                stderr: !tty,
            })
            .await?
            .into_inner()
            .url)
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], stdin: bool) -> Result<String> {
        Ok(self
            .rt
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                tty: false,
                stdin,
                stdout: true,
                stderr: true,
            })
            .await?
            .into_inner()
            .url)
    }

    /// The pod's shim (its command line names the test's temp dir).
    fn shim_pid(&self) -> Result<i32> {
        let tmp = self.env.dirs.tmp.path().display().to_string();
        processes_with(&tmp)
            .into_iter()
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "containerd-shim")
            })
            .context("no shim process for the test's pod")
    }

    async fn finish(mut self) -> Result<()> {
        common::cri_pods::stop_and_remove_pod(&mut self.rt, &self.pod).await?;
        Ok(())
    }
}

fn fd_count(pid: i32) -> usize {
    fds(pid).len()
}

/// What the process' fds point to.
fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    v.sort();
    v
}

async fn is_running(rt: &mut Runtime, id: &str) -> Result<bool> {
    Ok(container_status(rt, id).await?.state == cri::ContainerState::ContainerRunning as i32)
}

const ECHO: &str = "while read l; do echo got:$l; echo err:$l >&2; done";

#[tokio::test(flavor = "multi_thread")]
async fn attach_to_running_containers() -> Result<()> {
    let mut s = setup("attach", 8).await?;
    let echo = s.start("echo", ECHO, true, false, false).await?;
    let ticker = s
        .start(
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); usleep 20000; done",
            false,
            false,
            false,
        )
        .await?;
    let shim = s.shim_pid()?;
    // Once the containers run, the shim's fds are what a session must
    // leave behind.
    let baseline = fd_count(shim);
    let baseline_fds = fds(shim);

    // 1. SPDY v4: stdin in, stdout and stderr out, separately.
    let url = s.attach_url(&echo, true, false).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdin.write(b"one\n").await?;
    let out = stdout.read_until("got:one\n").await;
    assert!(out.ends_with("got:one\n"), "stdout {out:?}");
    let err = stderr.read_until("err:one\n").await;
    assert!(err.ends_with("err:one\n"), "stderr {err:?}");
    // The end of this session's stdin is not the container's (no stdin_once).
    stdin.close().await?;
    drop((error, stdin, stdout, stderr, c));

    // 2. WebSocket v5, v4 and base64: the same container, still reading.
    for protocol in [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "base64.channel.k8s.io",
    ] {
        let url = s.attach_url(&echo, true, false).await?;
        let mut ws = WsClient::connect(&url, protocol).await?;
        let word = protocol.split('.').next().unwrap_or("x");
        // Sent before or after the session has joined the container, the
        // line is delivered (the session subscribes before passing stdin on).
        ws.send(0, format!("{word}\n").as_bytes()).await?;
        let out = ws.read_stdout_until(&format!("got:{word}\n")).await?;
        assert!(
            out.contains(&format!("got:{word}\n")),
            "{protocol}: {out:?}"
        );
        if protocol.starts_with("v5") {
            ws.close_channel(0).await?;
        }
        drop(ws);
    }
    assert!(is_running(&mut s.rt, &echo).await?, "echo still runs");

    // 3. A client dropped mid-stream: the container goes on, its log goes
    // on, and the shim is back to its fds.
    let url = s.attach_url(&ticker, false, false).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let _error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let _stderr = c.open(&[("streamType", "stderr")]).await?;
    let first = stdout.read_until("tick").await;
    let seen = stdout.read_until("\n").await;
    assert!(first.contains("tick"), "{first:?}");
    ensure!(!seen.is_empty(), "the output goes on while attached");
    drop((_error, stdout, _stderr, c));
    let log = s.env.log_dir.join("attachpod").join("ticker").join("0.log");
    let size = std::fs::metadata(&log)?.len();
    wait_until(
        || std::fs::metadata(&log).is_ok_and(|m| m.len() > size),
        "the ticker's log to grow after the client left",
    )
    .await?;
    assert!(is_running(&mut s.rt, &ticker).await?, "ticker still runs");
    wait_until(
        || fd_count(shim) <= baseline,
        "the shim to close the sessions' fds",
    )
    .await
    .with_context(|| {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{shim}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| {
                let p = t.path();
                format!(
                    "{} {}",
                    std::fs::read_to_string(p.join("comm"))
                        .unwrap_or_default()
                        .trim(),
                    std::fs::read_to_string(p.join("wchan")).unwrap_or_default()
                )
            })
            .collect();
        format!(
            "shim fds {:?} vs {baseline_fds:?} before; threads {threads:?}",
            fds(shim)
        )
    })?;

    // 4. Attach to a container without stdin: output only, stdin ignored.
    let url = s.attach_url(&ticker, true, false).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let _error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let _stderr = c.open(&[("streamType", "stderr")]).await?;
    stdin.write(b"ignored\n").await?;
    let got = stdout.read_until("tick").await;
    assert!(got.contains("tick"), "{got:?}");
    drop((_error, stdin, stdout, _stderr, c));
    wait_until(
        || fd_count(shim) <= baseline,
        "the shim to close the last session's fds",
    )
    .await?;

    // 5. Unknown containers are refused before any URL.
    let err = s.attach_url("no-such-container", false, false).await;
    assert!(err.is_err());

    // 6. A client that never reads, attached to a container writing as
    // fast as it can: the container and its log go on, far beyond every
    // buffer on the way, and the shim lets go of the client (its session
    // fds are closed while the client is still connected).
    let line = "flood ".repeat(40);
    let flood = s
        .start("flood", &format!("exec yes '{line}'"), false, false, false)
        .await?;
    let log = s.env.log_dir.join("attachpod").join("flood").join("0.log");
    wait_until(
        || std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "the flood to start",
    )
    .await?;
    let baseline = fd_count(shim);
    let url = s.attach_url(&flood, false, false).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let stderr = c.open(&[("streamType", "stderr")]).await?;
    // Attached (the first output arrives); from here on nothing is read.
    let first = stdout.recv().await.context("no output from the flood")?;
    ensure!(String::from_utf8_lossy(&first).contains("flood"));
    let start = std::fs::metadata(&log)?.len();
    wait_until(
        || std::fs::metadata(&log).is_ok_and(|m| m.len() > start + (64 << 20)),
        "64 MiB more of log while the client reads nothing",
    )
    .await?;
    wait_until(
        || fd_count(shim) <= baseline,
        "the shim to drop the client that does not read",
    )
    .await?;
    drop((error, stdout, stderr, c));
    s.rt.stop_container(cri::StopContainerRequest {
        container_id: flood.clone(),
        timeout: 0,
    })
    .await?;
    s.rt.remove_container(cri::RemoveContainerRequest {
        container_id: flood,
    })
    .await?;

    s.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_stdin_once_and_tty() -> Result<()> {
    let mut s = setup("attachonce", 9).await?;

    // 1. stdin_once: the session's stdin ends, the container reads EOF,
    // exits, and the session ends with Success.
    let once = s
        .start(
            "once",
            "while read l; do echo got:$l; done; echo eof-seen; exit 7",
            true,
            true,
            false,
        )
        .await?;
    let url = s.attach_url(&once, true, false).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    stdin.write(b"x\n").await?;
    let out = stdout.read_until("got:x\n").await;
    assert!(out.ends_with("got:x\n"), "{out:?}");
    stdin.close().await?;
    let rest = String::from_utf8(stdout.read_to_end().await)?;
    assert_eq!(rest, "eof-seen\n");
    let _ = stderr.read_to_end().await;
    assert_eq!(status_json(&error.read_to_end().await)["status"], "Success");
    let status = wait_exited(&mut s.rt, &once).await?;
    assert_eq!(status.exit_code, 7);
    drop(c);

    // 2. A tty: resizes land on the container's terminal (`stty size`,
    // asked once per line sent until the resize has landed).
    let tty = s
        .start(
            "tty",
            "stty -echo; echo ready; while read l; do stty size; done",
            true,
            false,
            true,
        )
        .await?;
    // Attached before `stty -echo` ran, the lines sent would only be echoed.
    let log = s
        .env
        .log_dir
        .join("attachoncepod")
        .join("tty")
        .join("0.log");
    wait_until(
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready")),
        "the tty container to turn echo off",
    )
    .await?;
    let url = s.attach_url(&tty, true, true).await?;
    let c = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await?;
    let error = c.open(&[("streamType", "error")]).await?;
    let stdin = c.open(&[("streamType", "stdin")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let resize = c.open(&[("streamType", "resize")]).await?;
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
    drop((error, stdin, stdout, resize, c));

    // The same over WebSocket v5 (resize on channel 4).
    let url = s.attach_url(&tty, true, true).await?;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    ws.send(4, br#"{"Width":91,"Height":27}"#).await?;
    let mut seen = String::new();
    for _ in 0..500 {
        ws.send(0, b"size\n").await?;
        seen.push_str(&ws.read_stdout_until("\n").await?);
        if seen.contains("27 91") {
            break;
        }
    }
    assert!(seen.contains("27 91"), "stty size printed {seen:?}");
    drop(ws);
    assert!(
        is_running(&mut s.rt, &tty).await?,
        "tty container still runs"
    );

    s.finish().await
}

/// Exec over WebSocket through berthd: v5 and v4, exit codes 0 and 42,
/// stdin closed with the v5 close signal.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_exec_through_berthd() -> Result<()> {
    let mut s = setup("wsexec", 10).await?;
    let web = s
        .start("web", "exec sleep 100000", false, false, false)
        .await?;
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let url = s.exec_url(&web, &["echo", "hi"], false).await?;
        let mut ws = WsClient::connect(&url, protocol).await?;
        let got = ws.collect().await?;
        assert_eq!(String::from_utf8_lossy(&got.stdout), "hi\n", "{protocol}");
        assert_eq!(status_json(&got.error)["status"], "Success", "{protocol}");
        assert!(got.closed);

        let url = s
            .exec_url(
                &web,
                &["sh", "-c", "echo out; echo err >&2; exit 42"],
                false,
            )
            .await?;
        let mut ws = WsClient::connect(&url, protocol).await?;
        let got = ws.collect().await?;
        assert_eq!(String::from_utf8_lossy(&got.stdout), "out\n", "{protocol}");
        assert_eq!(String::from_utf8_lossy(&got.stderr), "err\n", "{protocol}");
        let status = status_json(&got.error);
        assert_eq!(status["status"], "Failure", "{protocol}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{protocol}");
        assert_eq!(
            status["details"]["causes"][0]["message"], "42",
            "{protocol}"
        );
    }
    // stdin through v5, ended by the close signal.
    let url = s.exec_url(&web, &["cat"], true).await?;
    let mut ws = WsClient::connect(&url, "v5.channel.k8s.io").await?;
    let input = "through the websocket\n".repeat(300);
    ws.send(0, input.as_bytes()).await?;
    ws.close_channel(0).await?;
    let got = ws.collect().await?;
    assert_eq!(String::from_utf8_lossy(&got.stdout), input);
    assert_eq!(status_json(&got.error)["status"], "Success");
    s.finish().await
}
