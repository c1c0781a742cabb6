//! What kubelet relies on beyond the pod lifecycle, through the CRI against a
//! real berthd and real pods (issue 16): RuntimeClass handlers from berthd's
//! `[runtimes.<name>]` tables, Status features, ContainerStatus.user and the
//! verbose runtime spec, oom_score_adj clamping only without
//! CAP_SYS_RESOURCE, missing hostPaths created as directories, AppArmor on a
//! host without it, and CDI devices.

mod common;

use std::path::Path;

use anyhow::{Context, Result};
use common::berthd::Berthd;
use common::cri_images::pull;
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, log_text, stop_and_remove_pod, wait_exited,
};
use common::oci_image::LayerBuilder;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// One berthd with a second handler (`secure`: RuntimeDefault seccomp for
/// containers that select none, no user namespaces) and busybox pulled.
struct Setup {
    env: PodEnv,
    berthd: Berthd,
    rt: Runtime,
    image: String,
    _registry: Registry,
}

async fn setup(test: &str, idx: u32, extra_config: &str) -> Result<Setup> {
    let registry = Registry::start()?;
    let env = PodEnv::new(test, idx)?;
    let mut extra = LayerBuilder::new().dir("bin");
    for tool in ["grep", "id", "touch", "stat"] {
        extra = extra.symlink(&format!("bin/{tool}"), "busybox");
    }
    let image = common::cri_images::busybox_with_layer(extra);
    let reference = common::cri_images::push(&registry, "berth-test/gaps", test, &image).await?;
    let mut config = std::fs::read_to_string(&env.config)?;
    config.push_str(
        "\n[runtimes.berth]\n\n[runtimes.secure]\ndefault_seccomp = true\nuser_namespaces = false\n",
    );
    config.push_str(extra_config);
    std::fs::write(&env.config, config)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let rt = berthd.runtime().await?;
    Ok(Setup {
        env,
        berthd,
        rt,
        image: reference,
        _registry: registry,
    })
}

impl Setup {
    async fn run_pod(
        &mut self,
        name: &str,
        handler: &str,
    ) -> Result<(String, cri::PodSandboxConfig)> {
        let cfg = self.env.pod_config(name, false);
        let id = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: handler.into(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        Ok((id, cfg))
    }

    /// Creates and starts `cfg` in `pod`, waits for its exit; returns its
    /// id, exit code and log.
    async fn run(
        &mut self,
        pod: &(String, cri::PodSandboxConfig),
        cfg: cri::ContainerConfig,
    ) -> Result<(String, i32, String)> {
        let id = create_container(&mut self.rt, &pod.0, &pod.1, cfg).await?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        let s = wait_exited(&mut self.rt, &id).await?;
        Ok((id, s.exit_code, log_text(Path::new(&s.log_path))))
    }

    async fn finish(mut self, pods: &[&str]) -> Result<()> {
        for p in pods {
            stop_and_remove_pod(&mut self.rt, p).await?;
        }
        assert!(self.env.remove_cgroup_parent().is_empty(), "no cgroup left");
        self.berthd.stop(Signal::SIGTERM)?;
        Ok(())
    }
}

fn status_code(e: anyhow::Error) -> Result<tonic::Status> {
    e.downcast::<tonic::Status>()
        .map_err(|e| anyhow::anyhow!("not a gRPC status: {e:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_handlers_status_features_and_container_user() -> Result<()> {
    let mut s = setup("gapsrt", 1, "").await?;

    // Status: every handler, the default also as "", and the features.
    let st =
        s.rt.status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
    let names: Vec<_> = st
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "berth", "secure"], "{st:?}");
    let features = |i: usize| st.runtime_handlers[i].features.unwrap();
    assert_eq!(
        features(0),
        features(1),
        "\"\" is the default handler, berth"
    );
    assert!(
        !features(2).user_namespaces,
        "secure allows no user namespaces"
    );
    assert!(
        st.features.is_some_and(|f| f.supplemental_groups_policy),
        "supplemental_groups_policy is advertised: {st:?}"
    );

    // An unknown handler is refused and leaves no pod.
    let err = status_code(s.run_pod("gapsbad", "kata").await.unwrap_err())?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kata"), "{err:?}");
    let pods =
        s.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
    assert!(pods.is_empty(), "a refused pod is not listed: {pods:?}");

    // A user-namespaced pod is refused by a handler that does not allow it.
    let mut userns_cfg = s.env.pod_config("gapsuserns", false);
    userns_cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|sc| sc.namespace_options.as_mut())
        .unwrap()
        .userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![cri::IdMapping {
            host_id: 200_000,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![cri::IdMapping {
            host_id: 200_000,
            container_id: 0,
            length: 65536,
        }],
    });
    let err =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(userns_cfg),
            runtime_handler: "secure".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("secure"), "{err:?}");

    // Pods of the default and the secure handler; status and list say which.
    let plain = s.run_pod("gapsplain", "").await?;
    let secure = s.run_pod("gapssecure", "secure").await?;
    for (id, handler) in [(&plain.0, ""), (&secure.0, "secure")] {
        let st = common::cri_pods::pod_status(&mut s.rt, id).await?;
        assert_eq!(st.runtime_handler, handler);
    }
    let listed =
        s.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
    let handler_of = |id: &str| {
        listed
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.runtime_handler.clone())
    };
    assert_eq!(handler_of(&plain.0).as_deref(), Some(""));
    assert_eq!(handler_of(&secure.0).as_deref(), Some("secure"));

    // default_seccomp: a container that selects no profile gets
    // RuntimeDefault under `secure`, none under the default handler.
    let script = "grep '^Seccomp:' /proc/self/status";
    let (_, code, log) = s
        .run(&plain, container_config("seccomp", &s.image, script))
        .await?;
    assert_eq!((code, log.trim()), (0, "Seccomp:\t0"), "{log}");
    let (_, code, log) = s
        .run(&secure, container_config("seccomp", &s.image, script))
        .await?;
    assert_eq!((code, log.trim()), (0, "Seccomp:\t2"), "{log}");
    let mut unconfined = container_config("unconfined", &s.image, script);
    unconfined.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, _, log) = s.run(&secure, unconfined).await?;
    assert_eq!(
        log.trim(),
        "Seccomp:\t0",
        "an explicit Unconfined stays: {log}"
    );

    // ContainerStatus.user: the identity the process was given, Strict
    // groups (no image groups merged).
    let mut user = container_config("user", &s.image, "id");
    user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            run_as_group: Some(cri::Int64Value { value: 2345 }),
            supplemental_groups: vec![3456, 4567],
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (id, code, log) = s.run(&plain, user).await?;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("uid=1234 gid=2345"), "{log}");
    let resp =
        s.rt.container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let linux = resp
        .status
        .as_ref()
        .and_then(|st| st.user.as_ref())
        .and_then(|u| u.linux.as_ref())
        .context("ContainerStatus.user.linux")?;
    assert_eq!((linux.uid, linux.gid), (1234, 2345));
    assert_eq!(linux.supplemental_groups, [2345, 3456, 4567]);
    // Verbose: containerd's info, with the runtime spec crictl shows.
    let info: serde_json::Value = serde_json::from_str(resp.info.get("info").context("info key")?)?;
    assert_eq!(info["sandboxID"], plain.0.as_str());
    assert_eq!(info["runtimeSpec"]["process"]["args"][2], "id", "{info}");
    assert_eq!(
        info["runtimeSpec"]["process"]["user"]["uid"], 1234,
        "{info}"
    );

    s.finish(&[&plain.0, &secure.0]).await
}

/// Whether berthd (started by this test, with this process's capabilities)
/// holds CAP_SYS_RESOURCE.
fn have_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|m| m & (1 << 24) != 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_score_adj_and_missing_host_path() -> Result<()> {
    let mut s = setup("gapsoom", 2, "").await?;
    let pod = s.run_pod("gapsoom", "").await?;
    let berthd_adj: i32 =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", s.berthd.pid()))?
            .trim()
            .parse()?;

    let image = s.image.clone();
    let with_adj = |name: &str, adj: i64| {
        let mut c = container_config(name, &image, "cat /proc/self/oom_score_adj");
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: adj,
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let (_, code, log) = s.run(&pod, with_adj("high", 873)).await?;
    assert_eq!(
        (code, log.trim()),
        (0, "873"),
        "a higher score is always kept"
    );
    let (_, code, log) = s.run(&pod, with_adj("low", -997)).await?;
    assert_eq!(code, 0, "{log}");
    if have_cap_sys_resource() {
        assert_eq!(
            log.trim(),
            "-997",
            "with CAP_SYS_RESOURCE the request is kept"
        );
    } else {
        println!("note: no CAP_SYS_RESOURCE here: -997 is clamped to berthd's {berthd_adj}");
        assert_eq!(
            log.trim(),
            berthd_adj.to_string(),
            "clamped to berthd's own value"
        );
        assert!(
            s.berthd
                .log_text()
                .contains("berthd lacks CAP_SYS_RESOURCE"),
            "the clamp is logged"
        );
    }

    // A hostPath that does not exist is created as a directory (as
    // containerd does), and the container writes into it.
    let missing = s.env.dirs.tmp.path().join("hostpath/not/yet");
    assert!(!missing.exists());
    let mut c = container_config("hostpath", &s.image, "touch /data/written && echo ok");
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: missing.display().to_string(),
        ..Default::default()
    }];
    let (_, code, log) = s.run(&pod, c).await?;
    assert_eq!((code, log.trim()), (0, "ok"), "{log}");
    assert!(missing.is_dir(), "the host path was made a directory");
    assert!(
        missing.join("written").is_file(),
        "the container wrote into it"
    );

    s.finish(&[&pod.0]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_devices_from_the_configured_spec_dirs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec_dir = tmp.path().join("cdi");
    let lib_dir = tmp.path().join("vendor-lib");
    std::fs::create_dir_all(&spec_dir)?;
    std::fs::create_dir_all(&lib_dir)?;
    std::fs::write(lib_dir.join("marker"), "vendor-lib\n")?;
    // A null-like character device (1:3) the spec points at.
    let node = tmp.path().join("berth-null");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )?;
    std::fs::write(
        spec_dir.join("berth-test.json"),
        serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "test.berth.dev/null",
            "containerEdits": {"env": ["BERTH_CDI_VENDOR=1"]},
            "devices": [{
                "name": "n0",
                "containerEdits": {
                    "env": ["BERTH_CDI=n0"],
                    "deviceNodes": [{"path": "/dev/berth-null", "hostPath": node.display().to_string()}],
                    "mounts": [{
                        "hostPath": lib_dir.display().to_string(),
                        "containerPath": "/opt/vendor",
                        "options": ["ro", "rbind"]
                    }]
                }
            }]
        })
        .to_string(),
    )?;
    let mut s = setup(
        "gapscdi",
        3,
        &format!("\n[cdi]\nspec_dirs = [\"{}\"]\n", spec_dir.display()),
    )
    .await?;
    let pod = s.run_pod("gapscdi", "").await?;
    let script = "test -c /dev/berth-null && echo dev-ok; echo x > /dev/berth-null && echo write-ok; \
                  echo env=$BERTH_CDI,$BERTH_CDI_VENDOR; cat /opt/vendor/marker; \
                  touch /opt/vendor/w 2>/dev/null || echo ro-ok";
    let mut c = container_config("cdi", &s.image, script);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "test.berth.dev/null=n0".into(),
    }];
    let (_, code, log) = s.run(&pod, c).await?;
    assert_eq!(code, 0, "{log}");
    for want in ["dev-ok", "write-ok", "env=n0,1", "vendor-lib", "ro-ok"] {
        assert!(log.lines().any(|l| l == want), "{want} missing: {log}");
    }
    // Without the device, none of it.
    let (_, _, log) = s
        .run(&pod, container_config("nocdi", &s.image, script))
        .await?;
    assert!(!log.contains("dev-ok") && log.contains("env=,"), "{log}");

    // An unknown device is the request's error, and nothing is created.
    let mut c = container_config("unknown", &s.image, "true");
    c.cdi_devices = vec![cri::CdiDevice {
        name: "test.berth.dev/null=n9".into(),
    }];
    let err = status_code(
        create_container(&mut s.rt, &pod.0, &pod.1, c)
            .await
            .unwrap_err(),
    )?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("test.berth.dev/null=n9"), "{err:?}");
    s.finish(&[&pod.0]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_status_rechecks_the_namespaces_and_lists_containers() -> Result<()> {
    let mut s = setup("gapsreal", 4, "").await?;
    let pod = s.run_pod("gapsreal", "").await?;
    let id = create_container(
        &mut s.rt,
        &pod.0,
        &pod.1,
        container_config("sleeper", &s.image, "sleep 300"),
    )
    .await?;
    s.rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let resp =
        s.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.0.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    assert!(resp.timestamp > 0);
    let listed: Vec<_> = resp
        .containers_statuses
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        listed,
        [id.as_str()],
        "containers_statuses holds the pod's container"
    );
    assert_eq!(
        resp.containers_statuses[0].state,
        cri::ContainerState::ContainerRunning as i32
    );
    let st = resp.status.context("status")?;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);

    // What a reboot leaves: the pod's pins are no namespaces any more.
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"])?;
    let uts = info["utsns"].as_str().context("utsns pin")?.to_owned();
    nix::mount::umount2(uts.as_str(), nix::mount::MntFlags::MNT_DETACH)?;
    let st = common::cri_pods::pod_status(&mut s.rt, &pod.0).await?;
    assert_eq!(
        st.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "a pod whose namespace is gone is NOTREADY"
    );
    let listed =
        s.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxNotready as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    assert!(
        listed.iter().any(|p| p.id == pod.0),
        "listed NOTREADY: {listed:?}"
    );
    assert!(
        s.berthd.log_text().contains("uts namespace pin"),
        "the reason is logged"
    );
    // kubelet then stops and removes it: that must still work.
    s.finish(&[&pod.0]).await
}
