//! berthd killed with SIGKILL while containers run: a container that exits
//! while berthd is down is reported EXITED with its exit code after the
//! restart; a container that exits after the restart is seen at once, as a
//! CONTAINER_STOPPED_EVENT on GetContainerEvents, because its shim
//! reconnected to the new berthd's events endpoint and published the exit.
//! A clean SIGTERM shutdown then leaves no socket in the state dir.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::berthd::PATIENCE;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, container_status, create_container, run_pod,
    stop_and_remove_pod, wait_log,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// Waits until the process `pid` is gone (reaped by its shim).
async fn wait_gone(pid: i32) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            bail!("process {pid} still there");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn pid_of(rt: &mut Runtime, id: &str) -> Result<i32> {
    let info = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(info.get("info").context("verbose info")?)?;
    let pid = v["pid"].as_i64().context("pid in the verbose info")?;
    Ok(pid as i32)
}

/// Every unix socket under `dir`.
fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_socket() {
                out.push(e.path());
            } else if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// A container that says "ready", waits for /ctl/<name> and exits `code`.
fn waiter(name: &str, code: i32) -> String {
    format!("echo ready; while [ ! -e /ctl/{name} ]; do sleep 0.1; done; echo bye; exit {code}")
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_while_down_and_after_restart_are_seen() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-restart-exits", Compression::Gzip);
    let reference = push(&registry, "berth-test/restart-exits", "v1", &image).await?;

    let env = PodEnv::new("rexit", 9)?;
    let ctl = env.dirs.tmp.path().join("ctl");
    std::fs::create_dir_all(&ctl)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let pod_cfg = env.pod_config("rexitpod", false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let mut ids = Vec::new();
    for (name, code) in [("a", 7), ("b", 9)] {
        let mut cfg = container_config(name, &reference, &waiter(name, code));
        cfg.mounts = vec![cri::Mount {
            container_path: "/ctl".into(),
            host_path: ctl.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        let id = create_container(&mut rt, &pod, &pod_cfg, cfg).await?;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        wait_log(
            &env.log_dir.join("rexitpod").join(format!("{name}/0.log")),
            "ready",
        )
        .await?;
        ids.push(id);
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let pid_a = pid_of(&mut rt, &a).await?;
    // The shim's own log reaches berthd's (its `log` FIFO, as containerd's).
    berthd.wait_for_log(|l| l.contains("shim log") && l.contains("created") && l.contains(&a))?;

    // berthd dies; container a exits while it is down.
    drop(rt);
    drop(images);
    berthd.stop(Signal::SIGKILL)?;
    std::fs::write(ctl.join("a"), b"")?;
    wait_log(&env.log_dir.join("rexitpod").join("a/0.log"), "bye").await?;
    wait_gone(pid_a).await?;

    let mut berthd = env.start()?;
    let mut rt = berthd.runtime().await?;
    let s = container_status(&mut rt, &a).await?;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.exit_code, 7, "{s:?}");
    assert_eq!(s.reason, "Error");
    let s = container_status(&mut rt, &b).await?;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );

    // Container b exits after the restart: the event stream says so,
    // without anyone polling its status.
    let mut stream = rt
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner();
    std::fs::write(ctl.join("b"), b"")?;
    let stopped = tokio::time::timeout(PATIENCE, async {
        while let Some(ev) = stream.message().await? {
            if ev.container_id == b
                && ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32
            {
                return Ok::<_, anyhow::Error>(ev);
            }
        }
        bail!("event stream ended")
    })
    .await
    .context("no STOPPED event for b")??;
    let st = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == b)
        .context("b's status in the event")?;
    assert_eq!(st.exit_code, 9);
    // The shim published b's exit to the new berthd.
    berthd.wait_for_log(|l| l.contains("exit event") && l.contains(&b))?;
    // And the shim's log reaches the new berthd.
    berthd.wait_for_log(|l| {
        l.contains("shim log") && l.contains("process exited") && l.contains(&b)
    })?;
    let s = container_status(&mut rt, &b).await?;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 9);

    stop_and_remove_pod(&mut rt, &pod).await?;
    drop(stream);
    drop(rt);
    let status = berthd.stop(Signal::SIGTERM)?;
    assert!(status.success(), "clean exit: {status}");
    let left = sockets_under(&env.dirs.state);
    assert!(left.is_empty(), "sockets left in the state dir: {left:?}");
    assert!(!env.dirs.socket.exists(), "the CRI socket is removed");
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    Ok(())
}
