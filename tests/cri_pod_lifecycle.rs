//! Pod sandboxes through the CRI: run, status, list with filters, stop and
//! remove (both idempotent), and nothing left behind: no namespace pin, no
//! mount, no cgroup, no pod directory. Also bad requests, which must leave
//! nothing either.

mod common;

use anyhow::Result;
use common::cri_pods::{PodEnv, mounts_containing, pod_status, run_pod};
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

async fn stop_remove(rt: &mut common::cri_pods::Runtime, id: &str) -> Result<()> {
    for _ in 0..2 {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    }
    let s = pod_status(rt, id).await?;
    assert_eq!(s.state, cri::PodSandboxState::SandboxNotready as i32);
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    }
    let err = pod_status(rt, id).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_lifecycle_leaves_nothing() -> Result<()> {
    let env = PodEnv::new("podlife", 0)?;
    let mut berthd = env.start()?;
    let mut rt = berthd.runtime().await?;

    // A pod with its own network, ipc and uts namespaces.
    let cfg = env.pod_config("web", false);
    let id = run_pod(&mut rt, &cfg).await?;
    let pod_dir = env.dirs.state.join("pods").join(&id);
    let s = pod_status(&mut rt, &id).await?;
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.metadata.as_ref().unwrap().name, "web");
    assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(s.annotations.get("note").map(String::as_str), Some("berth"));
    let ip = s.network.as_ref().unwrap().ip.clone();
    assert!(
        ip.starts_with("10.180."),
        "pod IP {ip:?} from the test subnet"
    );
    let ns = s.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
    for f in ["netns", "ipcns", "utsns"] {
        assert!(
            mounts_containing(&pod_dir.join(f).display().to_string()).len() == 1,
            "{f} is pinned"
        );
    }
    assert!(!mounts_containing(&pod_dir.join("shm").display().to_string()).is_empty());
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf"))?;
    assert!(resolv.contains("nameserver 10.0.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    let hosts = std::fs::read_to_string(pod_dir.join("hosts"))?;
    assert!(hosts.contains(&ip) && hosts.contains("web"), "{hosts}");
    let cg = common::cgroupfs::dir("memory", &env.pod_cgroup("web"));
    assert!(cg.is_dir(), "pod cgroup {} exists", cg.display());

    // A host-network pod next to it.
    let host_cfg = env.pod_config("hostnet", true);
    let host_id = run_pod(&mut rt, &host_cfg).await?;
    let hs = pod_status(&mut rt, &host_id).await?;
    assert_eq!(
        hs.linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        cri::NamespaceMode::Node as i32
    );
    assert!(
        !env.dirs
            .state
            .join("pods")
            .join(&host_id)
            .join("netns")
            .exists()
    );

    // The same name again is refused.
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // Filters.
    let list = |f: cri::PodSandboxFilter| {
        let mut rt = rt.clone();
        async move {
            let items = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(f) })
                .await?
                .into_inner()
                .items;
            anyhow::Ok(items.into_iter().map(|p| p.id).collect::<Vec<_>>())
        }
    };
    assert_eq!(list(Default::default()).await?.len(), 2);
    assert_eq!(
        list(cri::PodSandboxFilter {
            id: id[..12].to_string(),
            ..Default::default()
        })
        .await?,
        vec![id.clone()]
    );
    assert_eq!(
        list(cri::PodSandboxFilter {
            label_selector: [("app".to_string(), "hostnet".to_string())].into(),
            ..Default::default()
        })
        .await?,
        vec![host_id.clone()]
    );

    // berthd restarts: the pods are still there.
    berthd.stop(Signal::SIGKILL).ok();
    let mut berthd = env.start()?;
    let mut rt = berthd.runtime().await?;
    assert_eq!(
        pod_status(&mut rt, &id).await?.state,
        cri::PodSandboxState::SandboxReady as i32
    );

    stop_remove(&mut rt, &id).await?;
    let not_ready = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    assert_eq!(not_ready.len(), 1, "only the host-network pod is ready");
    stop_remove(&mut rt, &host_id).await?;

    assert!(!pod_dir.exists(), "pod dir removed");
    assert!(
        mounts_containing(&id).is_empty(),
        "no mount of the pod left"
    );
    assert!(!cg.exists(), "pod cgroup removed");
    assert!(env.remove_cgroup_parent().is_empty());
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pod_requests_leave_nothing() -> Result<()> {
    let env = PodEnv::new("podbad", 1)?;
    let mut berthd = env.start()?;
    let mut rt = berthd.runtime().await?;

    let mut no_meta = env.pod_config("x", true);
    no_meta.metadata = None;
    let mut slice = env.pod_config("y", true);
    // A parent in the other driver's form.
    slice.linux.as_mut().unwrap().cgroup_parent = if common::cgroupfs::systemd_driver() {
        "/kubepods/besteffort".into()
    } else {
        "kubepods-besteffort.slice".into()
    };
    let mut bad_dns = env.pod_config("z", false);
    bad_dns.dns_config.as_mut().unwrap().servers = vec!["not-an-ip".into()];
    let mut bad_host = env.pod_config("w", false);
    bad_host.hostname = "no spaces allowed".into();
    for (cfg, code) in [
        (no_meta, tonic::Code::InvalidArgument),
        (slice, tonic::Code::InvalidArgument),
        (bad_dns, tonic::Code::InvalidArgument),
        (bad_host, tonic::Code::InvalidArgument),
    ] {
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(!err.message().is_empty());
    }
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    assert!(items.is_empty(), "no pod recorded: {items:?}");
    let pods = env.dirs.state.join("pods");
    let left: Vec<_> = std::fs::read_dir(&pods)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no pod dir left: {left:?}");
    assert!(mounts_containing(&env.dirs.state.display().to_string()).is_empty());
    assert!(env.remove_cgroup_parent().is_empty());

    // Unknown ids: stop/remove succeed (idempotent), status is NotFound.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await?;
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
