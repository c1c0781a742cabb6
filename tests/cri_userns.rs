//! User-namespaced pods and recursive read-only mounts through the CRI, with
//! an image pulled from a real registry: the pod's root is an unprivileged
//! host uid, its rootfs (an overlay of shared, unchanged image layers seen
//! through idmapped mounts) and its volumes are writable with mapped
//! ownership, two such pods share one snapshot, Status reports the features,
//! and bad mappings are refused without leaving anything behind.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::berthd::Berthd;
use common::cri_images::pull;
use common::cri_pods::{
    PodEnv, Runtime, container_config, container_status, create_container, log_text,
    mounts_containing, processes_with, run_pod, wait_exited,
};
use common::oci_image::LayerBuilder;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

fn userns_image() -> common::oci_image::Image {
    let mut extra = LayerBuilder::new().dir("bin").dir("data");
    for tool in ["id", "stat", "touch", "grep", "cat", "sleep", "ls"] {
        extra = extra.symlink(&format!("bin/{tool}"), "busybox");
    }
    let extra = extra.file("data/owned", b"image file\n", 0o644);
    common::cri_images::busybox_with_layer(extra)
}

fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn userns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids,
        gids,
    }
}

/// A pod config of `env` with its own user namespace.
fn userns_pod(env: &PodEnv, name: &str, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let mut cfg = env.pod_config(name, false);
    let ns = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("namespace options");
    ns.userns_options = Some(u);
    cfg
}

/// Owner of every file under the snapshots of berthd's root.
fn snapshot_owners(root: &Path) -> BTreeMap<PathBuf, (u32, u32)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u32, u32)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            out.insert(p.clone(), (m.uid(), m.gid()));
            if m.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let snapshots = root.join("images").join("snapshots");
    walk(&snapshots, &mut out);
    out
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.ends_with(suffix) {
            return Some(p);
        }
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(f) = find_file(&p, suffix)
        {
            return Some(f);
        }
    }
    None
}

struct Setup {
    env: PodEnv,
    berthd: Berthd,
    rt: Runtime,
    image: String,
    pods: Vec<String>,
    _registry: Registry,
}

async fn setup(test: &str, idx: u32) -> Result<Setup> {
    let registry = Registry::start()?;
    let env = PodEnv::new(test, idx)?;
    let reference =
        common::cri_images::push(&registry, "berth-test/userns", test, &userns_image()).await?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let rt = berthd.runtime().await?;
    Ok(Setup {
        env,
        berthd,
        rt,
        image: reference,
        pods: Vec::new(),
        _registry: registry,
    })
}

impl Setup {
    async fn pod(&mut self, cfg: &cri::PodSandboxConfig) -> Result<String> {
        let id = run_pod(&mut self.rt, cfg).await?;
        self.pods.push(id.clone());
        Ok(id)
    }

    async fn start(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String> {
        let id = create_container(&mut self.rt, pod, pod_cfg, cfg).await?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    async fn run(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<(i32, String)> {
        let id = self.start(pod, pod_cfg, cfg).await?;
        let s = wait_exited(&mut self.rt, &id).await?;
        Ok((s.exit_code, log_text(Path::new(&s.log_path))))
    }

    async fn finish(mut self) -> Result<()> {
        for pod in std::mem::take(&mut self.pods) {
            common::cri_pods::stop_and_remove_pod(&mut self.rt, &pod).await?;
            assert!(mounts_containing(&pod).is_empty(), "no pod mount left");
            assert!(
                processes_with(&pod).is_empty(),
                "no process of the pod left"
            );
        }
        assert!(self.env.remove_cgroup_parent().is_empty(), "no cgroup left");
        self.berthd.stop(Signal::SIGTERM)?;
        Ok(())
    }
}

/// Waits until the container's log holds `text`; returns the log.
async fn wait_log(rt: &mut Runtime, id: &str, text: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = container_status(rt, id).await?;
        let log = log_text(Path::new(&s.log_path));
        if log.contains(text) {
            return Ok(log);
        }
        if s.state == cri::ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            bail!("container {id} never logged {text:?}: {log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn container_pid(rt: &mut Runtime, id: &str) -> Result<i32> {
    let r = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(r.info.get("info").context("no info")?)?;
    info["pid"]
        .as_i64()
        .map(|p| p as i32)
        .context("no pid in the verbose info")
}

/// A host directory with a root-owned file, for a volume.
fn volume_dir(env: &PodEnv) -> Result<PathBuf> {
    let dir = env.dirs.tmp.path().join("vol");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("owned"), "host file\n")?;
    std::os::unix::fs::chown(&dir, Some(0), Some(0))?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_pods_share_unchanged_layers_through_idmapped_mounts() -> Result<()> {
    let mut s = setup("userns", 1).await?;

    // Status reports the features the kernel probes found.
    let status =
        s.rt.status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner();
    let features = status
        .runtime_handlers
        .first()
        .and_then(|h| h.features)
        .context("Status has a runtime handler with features")?;
    assert!(features.user_namespaces, "{status:?}");
    assert!(features.recursive_read_only_mounts, "{status:?}");

    let before = snapshot_owners(&s.env.dirs.root);
    assert!(
        before.len() > 10,
        "the image's layers are on disk: {before:?}"
    );
    assert!(
        before.values().all(|o| *o == (0, 0)),
        "the layers are owned by root on the host"
    );

    // The pods' root on the host must pass through the test's temp dir to
    // berthd's state dir (a real node's /run and /var/lib are 0755).
    std::fs::set_permissions(
        s.env.dirs.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )?;
    let (base_a, base_b) = (300_000u32, 400_000u32);
    let map_a = userns(
        vec![mapping(0, base_a, 65536)],
        vec![mapping(0, base_a, 65536)],
    );
    let cfg_a = userns_pod(&s.env, "usernsa", map_a.clone());
    let pod_a = s.pod(&cfg_a).await?;
    let vol = volume_dir(&s.env)?;

    let script = "cat /proc/self/uid_map; echo uid=$(id -u) gid=$(id -g); \
         stat -c 'bb=%u:%g' /bin/busybox; stat -c 'data=%u:%g' /data/owned; \
         echo hello > /newfile && echo wrote-rootfs; echo more >> /data/owned && echo wrote-lower; \
         stat -c 'vol=%u:%g' /vol/owned; echo x > /vol/fromcontainer && echo wrote-vol; \
         stat -c 'hosts=%u:%g' /etc/hosts; echo 1.2.3.4 extra >> /etc/hosts && echo wrote-hosts; \
         stat -c 'shm=%u:%g' /dev/shm; \
         echo ready; exec sleep 1000";
    let mut c = container_config("main", &s.image, script);
    c.mounts = vec![cri::Mount {
        container_path: "/vol".into(),
        host_path: vol.display().to_string(),
        uid_mappings: map_a.uids.clone(),
        gid_mappings: map_a.gids.clone(),
        ..Default::default()
    }];
    let id_a = s.start(&pod_a, &cfg_a, c).await?;
    let log = wait_log(&mut s.rt, &id_a, "ready").await?;

    // Root inside, an unprivileged uid on the host.
    assert!(log.contains("uid=0 gid=0"), "{log}");
    let pid = container_pid(&mut s.rt, &id_a).await?;
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))?;
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(fields, ["0", "300000", "65536"], "host view of the uid_map");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert_eq!(
        uid_line.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "300000", "300000", "300000", "300000"],
        "{status}"
    );
    // Verbose pod status names the pinned user namespace the container is in.
    let ps =
        s.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_a.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(ps.info.get("info").context("no pod info")?)?;
    let pin = info["userns"]
        .as_str()
        .context("no userns in the verbose pod info")?;
    let pinned = nix::sys::stat::stat(pin)?;
    let theirs = nix::sys::stat::stat(format!("/proc/{pid}/ns/user").as_str())?;
    assert_eq!(
        (pinned.st_dev, pinned.st_ino),
        (theirs.st_dev, theirs.st_ino),
        "{pin} is the container's user namespace"
    );
    // The image's root-owned files are root's inside (idmapped), and the
    // rootfs, the volume and the pod's files are writable.
    assert!(log.contains("bb=0:0"), "{log}");
    assert!(log.contains("data=0:0"), "{log}");
    assert!(log.contains("wrote-rootfs"), "{log}");
    assert!(
        log.contains("wrote-lower"),
        "copy-up of a layer file: {log}"
    );
    assert!(log.contains("vol=0:0"), "the volume is idmapped: {log}");
    assert!(log.contains("wrote-vol"), "{log}");
    assert!(log.contains("hosts=0:0"), "{log}");
    assert!(log.contains("wrote-hosts"), "{log}");
    assert!(
        log.contains("shm=0:0"),
        "the pod's /dev/shm is root's: {log}"
    );

    // An exec joins the pod's user namespace as the container's root.
    let out =
        s.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id_a.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "id -u; cat /newfile".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(stdout, "0\nhello\n", "{out:?}");

    // On the host: new files belong to the mapped uid; the layers are as they were.
    let upper_new = find_file(&s.env.dirs.root, "upper/newfile").context("upper/newfile")?;
    let m = std::fs::metadata(&upper_new)?;
    assert_eq!(
        (m.uid(), m.gid()),
        (base_a, base_a),
        "{}",
        upper_new.display()
    );
    // Through the idmapped volume the pod's root writes as the id it has
    // inside (0), not as its host uid.
    let m = std::fs::metadata(vol.join("fromcontainer"))?;
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(std::fs::metadata(vol.join("owned"))?.uid(), 0);

    // A second user-namespaced pod with other ids uses the same snapshot.
    let map_b = userns(
        vec![mapping(0, base_b, 65536)],
        vec![mapping(0, base_b, 65536)],
    );
    let mut cfg_b = userns_pod(&s.env, "usernsb", map_b);
    // With a shared pid namespace: the pod's init is made inside the user
    // namespace too, or the container could not mount its /proc.
    if let Some(ns) = cfg_b
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    let pod_b = s.pod(&cfg_b).await?;
    let script_b = "cat /proc/self/uid_map; stat -c 'bb=%u:%g' /bin/busybox; \
         grep -q pod-init /proc/1/cmdline && echo pid1-is-pod-init; \
         cat /data/owned; echo hi > /newfile && echo wrote-rootfs";
    let (code, log_b) = s
        .run(
            &pod_b,
            &cfg_b,
            container_config("second", &s.image, script_b),
        )
        .await?;
    assert_eq!(code, 0, "{log_b}");
    assert!(log_b.contains("400000"), "{log_b}");
    assert!(log_b.contains("bb=0:0"), "{log_b}");
    assert!(
        log_b.contains("pid1-is-pod-init"),
        "the pod's init is pid 1: {log_b}"
    );
    assert!(
        !log_b.contains("more"),
        "pod A's copy-up is not in pod B's view: {log_b}"
    );
    assert!(log_b.contains("wrote-rootfs"), "{log_b}");

    let after = snapshot_owners(&s.env.dirs.root);
    assert_eq!(
        before, after,
        "the shared layers keep their files and owners"
    );

    s.rt.stop_container(cri::StopContainerRequest {
        container_id: id_a,
        timeout: 0,
    })
    .await?;
    s.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_user_namespace_mappings_are_refused_cleanly() -> Result<()> {
    let mut s = setup("usernsbad", 2).await?;
    let ok = vec![mapping(0, 500_000, 65536)];
    let cases = [
        ("zero", vec![mapping(0, 500_000, 0)], ok.clone()),
        ("hostroot", vec![mapping(0, 0, 65536)], ok.clone()),
        (
            "overlap",
            vec![mapping(0, 500_000, 1000), mapping(500, 600_000, 1000)],
            ok.clone(),
        ),
        ("nogids", ok.clone(), vec![]),
        ("noroot", vec![mapping(1, 500_000, 1000)], ok.clone()),
    ];
    for (name, uids, gids) in cases {
        let cfg = userns_pod(&s.env, &format!("bad{name}"), userns(uids, gids));
        let err = match run_pod(&mut s.rt, &cfg).await {
            Ok(id) => bail!("pod {name} was created ({id}) but must be refused"),
            Err(e) => e
                .downcast::<tonic::Status>()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?,
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains("user namespace"), "{name}: {err:?}");
    }
    let pods =
        s.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
    assert!(pods.is_empty(), "no refused pod is listed: {pods:?}");
    let left: Vec<_> = std::fs::read_dir(s.env.dirs.state.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "no pod directory is left: {left:?}");
    assert!(
        mounts_containing(&s.env.dirs.tmp.path().display().to_string()).is_empty(),
        "no mount is left"
    );
    s.finish().await
}

/// A host directory with a tmpfs mounted below it; unmounted on drop.
struct Submount {
    dir: PathBuf,
}

impl Submount {
    fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("sub"))?;
        nix::mount::mount(
            Some("tmpfs"),
            &dir.join("sub"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )?;
        Ok(Self { dir })
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.join("sub"), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_mounts_cover_submounts() -> Result<()> {
    let mut s = setup("rro", 3).await?;
    let sub = Submount::new(s.env.dirs.tmp.path().join("rrodir"))?;
    let cfg = s.env.pod_config("rropod", false);
    let pod = s.pod(&cfg).await?;
    let script = "touch /m/top 2>/dev/null && echo top-rw || echo top-ro; \
                  touch /m/sub/x 2>/dev/null && echo sub-rw || echo sub-ro";
    let mount = |rro: bool| cri::Mount {
        container_path: "/m".into(),
        host_path: sub.dir.display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    };

    let mut c = container_config("plainro", &s.image, script);
    c.mounts = vec![mount(false)];
    let (_, log) = s.run(&pod, &cfg, c).await?;
    assert!(log.contains("top-ro"), "{log}");
    assert!(
        log.contains("sub-rw"),
        "a plain read-only bind leaves submounts writable: {log}"
    );

    let mut c = container_config("rro", &s.image, script);
    c.mounts = vec![mount(true)];
    let (_, log) = s.run(&pod, &cfg, c).await?;
    assert!(log.contains("top-ro"), "{log}");
    assert!(
        log.contains("sub-ro"),
        "recursive read-only reaches the submount: {log}"
    );

    // The RuntimeDefault profile is compiled once per node: the shims share
    // the compiled filter through berthd's state dir.
    let cache = s.env.dirs.state.join("seccomp-cache");
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()
    };
    assert!(entries(&cache).is_empty(), "no profile compiled yet");
    let default_sc = || cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    };
    let mut c = container_config("sc1", &s.image, "grep '^Seccomp:' /proc/self/status");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(default_sc()),
        ..Default::default()
    });
    let (_, log) = s.run(&pod, &cfg, c).await?;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    let stored = entries(&cache);
    assert_eq!(
        stored.len(),
        1,
        "one compiled profile is cached: {stored:?}"
    );
    let cfg2 = s.env.pod_config("rropod2", false);
    let pod2 = s.pod(&cfg2).await?;
    let mut c = container_config("sc2", &s.image, "grep '^Seccomp:' /proc/self/status");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(default_sc()),
        ..Default::default()
    });
    let (_, log) = s.run(&pod2, &cfg2, c).await?;
    assert!(
        log.contains("Seccomp:\t2"),
        "another shim installs the cached filter: {log}"
    );
    assert_eq!(entries(&cache), stored, "the second shim reads the cache");

    // recursive_read_only needs readonly and private propagation.
    for (name, m) in [
        (
            "rrorw",
            cri::Mount {
                readonly: false,
                ..mount(true)
            },
        ),
        (
            "rroslave",
            cri::Mount {
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                ..mount(true)
            },
        ),
    ] {
        let mut c = container_config(name, &s.image, "true");
        c.mounts = vec![m];
        let err = match create_container(&mut s.rt, &pod, &cfg, c).await {
            Ok(id) => bail!("{name} was created ({id}) but must be refused"),
            Err(e) => e
                .downcast::<tonic::Status>()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?,
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
    }
    s.finish().await?;
    drop(sub);
    Ok(())
}
