//! Containers through the CRI, in a pod, from an image pulled from a real
//! registry: logs in the CRI format and exit codes, ExecSync, StopContainer
//! on a process that ignores SIGTERM, a berthd restart with a container
//! running, and no shim, mount or cgroup left after RemovePodSandbox.

mod common;

use anyhow::Result;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, container_config, container_status, create_container, mounts_containing,
    processes_with, run_pod, stop_and_remove_pod, wait_exited,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// The records of a CRI log file: (stream, tag, text).
fn log_records(path: &std::path::Path) -> Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(4, ' ');
        let ts = it.next().unwrap_or_default();
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "RFC3339Nano UTC timestamp: {line:?}"
        );
        out.push((
            it.next().unwrap_or_default().to_string(),
            it.next().unwrap_or_default().to_string(),
            it.next().unwrap_or_default().to_string(),
        ));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_run_log_exec_stop_and_survive_restart() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "cri-container", Compression::Gzip);
    let reference = push(&registry, "berth-test/ctr", "v1", &image).await?;

    let env = PodEnv::new("ctr", 2)?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let pod_cfg = env.pod_config("ctrpod", false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;

    // 1. A container that writes to both streams and exits 3.
    let c1 = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "writer",
            &reference,
            "echo hello out; echo hello err >&2; printf partial; hostname >&2; exit 3",
        ),
    )
    .await?;
    let s = container_status(&mut rt, &c1).await?;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(cri::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &c1).await?;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    assert_eq!(s.image.as_ref().unwrap().image, reference);
    assert_eq!(s.image_id, image.config_digest.as_str());
    let log = env.log_dir.join("ctrpod").join("writer/0.log");
    assert_eq!(s.log_path, log.display().to_string());
    let mut recs = log_records(&log)?;
    // stdout and stderr are separate pipes: order only within a stream.
    recs.sort();
    assert_eq!(
        recs,
        vec![
            ("stderr".into(), "F".into(), "ctrpod".into()),
            ("stderr".into(), "F".into(), "hello err".into()),
            ("stdout".into(), "F".into(), "hello out".into()),
            ("stdout".into(), "F".into(), "partial".into()),
        ]
    );

    // 2. A long-running container: ExecSync, then a stop that needs SIGKILL.
    let c2 = create_container(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "sleeper",
            &reference,
            "trap 'echo ignoring TERM' TERM; echo ready; while true; do sleep 1; done",
        ),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await?;
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c2.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo out; echo err >&2; cat /etc/berth-test-image; exit 42".into(),
            ],
            timeout: 30,
        })
        .await?
        .into_inner();
    assert_eq!(exec.exit_code, 42);
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "out\ncri-container\n"
    );
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "err\n");
    let timed_out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c2.clone(),
            cmd: vec!["/bin/sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        timed_out.code(),
        tonic::Code::DeadlineExceeded,
        "{timed_out:?}"
    );

    // A container that logs, waits for a file from the host, logs, exits 7.
    let shared = env.dirs.tmp.path().join("shared");
    std::fs::create_dir_all(&shared)?;
    let mut waiter_cfg = container_config(
        "waiter",
        &reference,
        "echo before; until [ -f /shared/go ]; do sleep 0.05; done; echo after; exit 7",
    );
    waiter_cfg.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared.display().to_string(),
        ..Default::default()
    }];
    let c3 = create_container(&mut rt, &pod, &pod_cfg, waiter_cfg).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c3.clone(),
    })
    .await?;
    let c3_log = env.log_dir.join("ctrpod").join("waiter/0.log");
    let deadline = std::time::Instant::now() + common::berthd::PATIENCE;
    while !std::fs::read_to_string(&c3_log)
        .unwrap_or_default()
        .contains("before")
    {
        assert!(std::time::Instant::now() < deadline, "no log line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // kubelet's log rotation: rename, then ReopenContainerLog.
    let rotated = c3_log.with_extension("log.1");
    std::fs::rename(&c3_log, &rotated)?;
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: c3.clone(),
    })
    .await?;
    let c3_pid: i32 = {
        let info = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c3.clone(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        let v: serde_json::Value = serde_json::from_str(&info["info"])?;
        v["pid"].as_i64().expect("pid in the verbose info") as i32
    };

    // 3. berthd is SIGKILLed and restarted: the container runs on.
    let listed_before = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .len();
    berthd.stop(Signal::SIGKILL).ok();
    // While berthd is down, the waiter exits.
    std::fs::write(shared.join("go"), "")?;
    let pid = nix::unistd::Pid::from_raw(c3_pid);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut berthd = env.start()?;
    let mut rt = berthd.runtime().await?;
    let s = wait_exited(&mut rt, &c3).await?;
    assert_eq!(s.exit_code, 7, "an exit while berthd was down is reported");
    assert_eq!(s.reason, "Error");
    let old_log = log_records(&rotated)?;
    let new_log = log_records(&c3_log)?;
    assert_eq!(
        old_log,
        vec![("stdout".into(), "F".into(), "before".into())]
    );
    assert_eq!(new_log, vec![("stdout".into(), "F".into(), "after".into())]);
    let s = container_status(&mut rt, &c2).await?;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1, "only the sleeper runs");
    assert_eq!(listed[0].id, c2);
    assert_eq!(
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers
            .len(),
        listed_before
    );
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c2.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "exit 42".into()],
            timeout: 30,
        })
        .await?
        .into_inner();
    assert_eq!(exec.exit_code, 42, "exec works after the restart");

    // SIGTERM is ignored: after the 1 s timeout, SIGKILL.
    rt.stop_container(cri::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 1,
    })
    .await?;
    let s = container_status(&mut rt, &c2).await?;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "killed by SIGKILL");
    let log = std::fs::read_to_string(env.log_dir.join("ctrpod").join("sleeper/0.log"))?;
    assert!(log.contains("stdout F ready"), "{log}");
    assert!(log.contains("stdout F ignoring TERM"), "{log}");

    // 4. Remove the pod: every container, the shim, mounts and cgroups go.
    let shims = processes_with(&pod);
    assert!(!shims.is_empty(), "the pod's shim runs");
    stop_and_remove_pod(&mut rt, &pod).await?;
    assert!(
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(processes_with(&pod).is_empty(), "no shim left");
    assert!(mounts_containing(&pod).is_empty());
    for c in [&c1, &c2, &c3] {
        assert!(mounts_containing(c).is_empty(), "no mount of {c} left");
    }
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
