//! Faults a node meets every week (issue 18), each reproduced for real
//! against a berthd started by the test: the metadata database's disk fills
//! up and is freed again (a tmpfs of a few MiB), berthd's executable is
//! replaced on disk while it runs, hostile log paths, and CRI values
//! Kubernetes itself could never send.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use common::berthd::Berthd;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, run_pod, stop_and_remove_pod, wait_exited,
    wait_log,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use tonic::Code;

/// The names of the pods berthd lists.
async fn pod_names(rt: &mut Runtime) -> Result<Vec<String>> {
    Ok(rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.map(|m| m.name))
        .collect())
}

async fn start_container(rt: &mut Runtime, id: &str) -> Result<()> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await?;
    Ok(())
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .with_context(|| format!("mount a tmpfs on {}", dir.display()))?;
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `path` until the filesystem has no block left (ENOSPC).
fn fill(path: &Path) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let buf = vec![0x5au8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    f.sync_all().ok();
    Ok(written)
}

/// Issue 18, item 2: berthd's root (metadata database, images) on a tmpfs
/// that the test fills up. Calls fail while it is full, a failed
/// RunPodSandbox is not listed, and once the space is freed every call
/// works again without a berthd restart (redb refuses every transaction
/// after one I/O error until the database is reopened).
#[tokio::test(flavor = "multi_thread")]
async fn metadata_database_survives_a_full_disk() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "faults-enospc", Compression::Gzip);
    let reference = push(&registry, "berth-test/enospc", "v1", &image).await?;
    let env = PodEnv::new("enospc", 40)?;
    let _tmpfs = Tmpfs::mount(&env.dirs.root, "24m")?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let a_cfg = env.pod_config("enospc-a", false);
    let a = run_pod(&mut rt, &a_cfg).await?;

    let filler = env.dirs.root.join("filler");
    let filled = fill(&filler)?;
    eprintln!("filled the root with {filled} bytes");
    // Large records need fresh pages of the database file: some attempt
    // meets ENOSPC (redb may still have free pages for the first ones).
    let big = "x".repeat(200 << 10);
    let mut failed = None;
    let mut made = Vec::new();
    for i in 0..8 {
        let mut cfg = env.pod_config(&format!("enospc-full{i}"), true);
        cfg.annotations.insert("big".into(), big.clone());
        match rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
        {
            Ok(r) => made.push(r.into_inner().pod_sandbox_id),
            Err(st) => {
                failed = Some((i, st));
                break;
            }
        }
    }
    let (i, st) = failed.context("no RunPodSandbox failed on a full disk")?;
    eprintln!(
        "RunPodSandbox on the full disk: {:?} {}",
        st.code(),
        st.message()
    );
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message().contains("No space left on device"),
        "{}",
        st.message()
    );
    // The failed pod left no record behind, also while nothing can be written.
    let names = pod_names(&mut rt).await?;
    assert!(
        !names.contains(&format!("enospc-full{i}")),
        "a failed RunPodSandbox is listed: {names:?}"
    );
    assert!(names.contains(&"enospc-a".to_string()), "{names:?}");

    std::fs::remove_file(&filler)?;
    // Space is back: everything works again, without a restart.
    for id in &made {
        stop_and_remove_pod(&mut rt, id).await?;
    }
    let names = pod_names(&mut rt).await?;
    assert_eq!(names, vec!["enospc-a".to_string()]);
    let c = create_container(
        &mut rt,
        &a,
        &a_cfg,
        container_config("after", &reference, "echo after the disk was full"),
    )
    .await?;
    start_container(&mut rt, &c).await?;
    assert_eq!(wait_exited(&mut rt, &c).await?.exit_code, 0);
    let b_cfg = env.pod_config("enospc-b", false);
    let b = run_pod(&mut rt, &b_cfg).await?;
    stop_and_remove_pod(&mut rt, &a).await?;
    stop_and_remove_pod(&mut rt, &b).await?;
    assert!(pod_names(&mut rt).await?.is_empty());
    assert!(
        berthd.log_text().contains("metadata database reopened"),
        "no reopen in the log"
    );
    Ok(())
}

/// Issue 18, item 5: berthd's executable is replaced on disk (an upgrade
/// renames a new file over it) while berthd runs. Pods that need berthd to
/// execute itself again (the pod init of a shared pid namespace) still
/// start, and new pods get the shim now on disk.
#[tokio::test(flavor = "multi_thread")]
async fn pods_start_after_the_binary_is_replaced() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "faults-upgrade", Compression::Gzip);
    let reference = push(&registry, "berth-test/upgrade", "v1", &image).await?;
    let env = PodEnv::new("upgrade", 41)?;
    let bin_dir = env.dirs.tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let built = Path::new(common::berthd::berthd_bin());
    let shim_name = "containerd-shim-berth-v2";
    let built_shim = built.with_file_name(shim_name);
    let bin = bin_dir.join("berthd");
    std::fs::copy(built, &bin)?;
    std::fs::copy(&built_shim, bin_dir.join(shim_name))?;
    let mut args = env.dirs.args();
    args.extend(["--config".into(), env.config.display().to_string()]);
    let berthd = Berthd::start_binary(&bin, &env.dirs, args, &env.dirs.socket, "debug")?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let shared_pid = |mut cfg: cri::PodSandboxConfig| {
        let ns = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .expect("namespace options");
        ns.pid = cri::NamespaceMode::Pod as i32;
        cfg
    };
    let before_cfg = shared_pid(env.pod_config("before", false));
    let before = run_pod(&mut rt, &before_cfg).await?;

    // The upgrade: new files renamed over the old ones.
    for (from, name) in [(built, "berthd"), (built_shim.as_path(), shim_name)] {
        let new = bin_dir.join(format!("{name}.new"));
        std::fs::copy(from, &new)?;
        std::fs::rename(&new, bin_dir.join(name))?;
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", berthd.pid()))?;
    assert!(
        exe.to_string_lossy().ends_with("(deleted)"),
        "berthd's executable was not replaced: {}",
        exe.display()
    );

    let after_cfg = shared_pid(env.pod_config("after", false));
    let after = run_pod(&mut rt, &after_cfg).await?;
    let c = create_container(
        &mut rt,
        &after,
        &after_cfg,
        container_config("upgraded", &reference, "echo pid $$"),
    )
    .await?;
    start_container(&mut rt, &c).await?;
    let st = wait_exited(&mut rt, &c).await?;
    assert_eq!(st.exit_code, 0);
    // pid 1 of the shared namespace is the pod init: the container is not.
    wait_log(Path::new(&st.log_path), "pid ").await?;
    assert!(
        !common::cri_pods::log_text(Path::new(&st.log_path)).contains("pid 1\n"),
        "the container is pid 1: no pod init"
    );
    // The new pod's shim runs the file now on disk, not the deleted one.
    let shim_exes: Vec<String> = common::cri_pods::processes_with(&after)
        .into_iter()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(shim_name))
        .collect();
    assert!(!shim_exes.is_empty(), "no shim of pod {after} found");
    assert!(
        shim_exes.iter().all(|p| !p.ends_with("(deleted)")),
        "{shim_exes:?}"
    );
    stop_and_remove_pod(&mut rt, &before).await?;
    stop_and_remove_pod(&mut rt, &after).await?;
    Ok(())
}

/// Issue 18, item 4: `log_path` is joined under the pod's `log_directory`
/// as containerd joins it (an absolute path lands inside it); a path that
/// resolves outside, and a relative log directory, are InvalidArgument.
#[tokio::test(flavor = "multi_thread")]
async fn log_paths_stay_in_the_pod_log_directory() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "faults-logs", Compression::Gzip);
    let reference = push(&registry, "berth-test/logs", "v1", &image).await?;
    let env = PodEnv::new("logpath", 42)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    let mut bad = env.pod_config("relative-logs", true);
    bad.log_directory = "relative/logs".into();
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a relative log directory was accepted");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(pod_names(&mut rt).await?.is_empty());

    let cfg = env.pod_config("logs", true);
    let pod = run_pod(&mut rt, &cfg).await?;
    let pod_logs = PathBuf::from(&cfg.log_directory);
    let outside = env.dirs.tmp.path().join("elsewhere");
    let mut abs = container_config("abs", &reference, "echo absolute");
    abs.log_path = outside.join("abs.log").display().to_string();
    let c = create_container(&mut rt, &pod, &cfg, abs).await?;
    start_container(&mut rt, &c).await?;
    let st = wait_exited(&mut rt, &c).await?;
    let expected = pod_logs.join(outside.strip_prefix("/")?).join("abs.log");
    assert_eq!(st.log_path, expected.display().to_string());
    wait_log(&expected, "absolute").await?;
    assert!(!outside.exists(), "{} was written", outside.display());

    let escape_dir = env.dirs.tmp.path().join("x");
    let depth = pod_logs
        .strip_prefix(env.dirs.tmp.path())?
        .components()
        .count();
    let mut dotdot = container_config("dotdot", &reference, "echo escaped");
    dotdot.log_path = format!("{}x/dd.log", "../".repeat(depth));
    let err = create_container(&mut rt, &pod, &cfg, dotdot)
        .await
        .expect_err("a log path outside the log directory was accepted");
    let st = err
        .downcast_ref::<tonic::Status>()
        .context("not a status")?;
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    assert!(!escape_dir.exists(), "{} was made", escape_dir.display());
    stop_and_remove_pod(&mut rt, &pod).await?;
    if outside.exists() {
        bail!("log written outside the log directory");
    }
    Ok(())
}

/// Issue 18, item 6: values Kubernetes could never send are InvalidArgument
/// with the limit in the message, and leave nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn values_kubernetes_never_sends_are_invalid_arguments() -> Result<()> {
    let env = PodEnv::new("limits", 44)?;
    let berthd = env.start()?;
    let mut rt = berthd.runtime().await?;
    let refused = |cfg: cri::PodSandboxConfig, what: &'static str, needle: &'static str| {
        let mut rt = rt.clone();
        async move {
            let st = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: String::new(),
                })
                .await
                .err()
                .with_context(|| format!("{what} was accepted"))?;
            assert_eq!(st.code(), Code::InvalidArgument, "{what}: {}", st.message());
            assert!(st.message().contains(needle), "{what}: {}", st.message());
            anyhow::Ok(())
        }
    };
    let mut cfg = env.pod_config("limits", true);
    cfg.metadata.as_mut().unwrap().name = "n".repeat(1 << 20);
    refused(cfg, "a 1 MiB pod name", "253").await?;
    let mut cfg = env.pod_config("limits", true);
    cfg.annotations.insert("big".into(), "a".repeat(3 << 20));
    refused(cfg, "a 3 MiB annotation", "262144").await?;
    let port = |container_port, host_port, protocol| cri::PortMapping {
        protocol,
        container_port,
        host_port,
        host_ip: String::new(),
    };
    for (ports, what, needle) in [
        (vec![port(80, -1, 0)], "host port -1", "-1"),
        (vec![port(80, 65536, 0)], "host port 65536", "65536"),
        (vec![port(80, 8080, 7)], "protocol 7", "protocol 7"),
        (
            vec![port(80, 18080, 0), port(81, 18080, 0)],
            "one host port twice",
            "mapped twice",
        ),
    ] {
        let mut cfg = env.pod_config("ports", false);
        cfg.port_mappings = ports;
        refused(cfg, what, needle).await?;
    }
    assert!(pod_names(&mut rt).await?.is_empty());

    let cfg = env.pod_config("limits", true);
    let pod = run_pod(&mut rt, &cfg).await?;
    let mut c = container_config(&"c".repeat(64), "busybox", "true");
    c.annotations.insert("big".into(), "a".repeat(300 << 10));
    let err = create_container(&mut rt, &pod, &cfg, c)
        .await
        .expect_err("a 64-byte container name was accepted");
    let st = err
        .downcast_ref::<tonic::Status>()
        .context("not a status")?;
    assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
    stop_and_remove_pod(&mut rt, &pod).await?;
    Ok(())
}

/// Resident memory of `pid` in bytes.
fn rss(pid: nix::unistd::Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Issue 18, item 6: ExecSync output is capped at 16 MiB per stream (as
/// containerd caps it), and ten calls printing 100 MiB each do not leave
/// berthd's memory 16 MiB higher each time (it was 18 → 182 MB).
#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_is_capped_and_its_memory_returned() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "faults-exec", Compression::Gzip);
    let reference = push(&registry, "berth-test/execmem", "v1", &image).await?;
    let env = PodEnv::new("execmem", 45)?;
    let berthd = env.start_logged("info")?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    // 16 MiB of output is more than tonic's default 4 MiB per message.
    let mut rt = berthd.runtime().await?.max_decoding_message_size(64 << 20);
    let cfg = env.pod_config("execmem", true);
    let pod = run_pod(&mut rt, &cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &cfg,
        container_config("sleeper", &reference, "exec sleep 3600"),
    )
    .await?;
    start_container(&mut rt, &c).await?;
    let exec = |rt: &mut Runtime| {
        let mut rt = rt.clone();
        let c = c.clone();
        async move {
            anyhow::Ok(
                rt.exec_sync(cri::ExecSyncRequest {
                    container_id: c,
                    cmd: vec![
                        "/bin/busybox".into(),
                        "head".into(),
                        "-c".into(),
                        (100u64 << 20).to_string(),
                        "/dev/zero".into(),
                    ],
                    timeout: 120,
                })
                .await?
                .into_inner(),
            )
        }
    };
    // The first call sets up what every later one reuses.
    let first = exec(&mut rt).await?;
    assert_eq!(first.exit_code, 0);
    assert_eq!(first.stdout.len(), 16 << 20, "output not capped at 16 MiB");
    drop(first);
    let before = rss(berthd.pid());
    for _ in 0..10 {
        let out = exec(&mut rt).await?;
        assert_eq!(out.stdout.len(), 16 << 20);
    }
    let after = rss(berthd.pid());
    eprintln!(
        "berthd RSS: {:.1} MB after one 100 MiB ExecSync, {:.1} MB after ten more",
        before as f64 / 1e6,
        after as f64 / 1e6
    );
    assert!(
        after < before + (48 << 20),
        "berthd kept {:.1} MB after ten ExecSyncs",
        (after as f64 - before as f64) / 1e6
    );
    stop_and_remove_pod(&mut rt, &pod).await?;
    Ok(())
}

/// Issue 18, item 6: pulls onto a nearly full disk. A layer that unpacks to
/// more than the free space (a decompression bomb well under the 64 GiB
/// default `max_layer_bytes`) is ResourceExhausted "disk full", not "unsafe
/// or malformed archive", and leaves room for the next pull; a garbage
/// layer's error carries no raw control bytes.
#[tokio::test(flavor = "multi_thread")]
async fn pulls_onto_a_full_disk_and_garbage_layers_say_so() -> Result<()> {
    use common::oci_image::{Format, Layer, LayerBuilder, host_arch, image_with_config, sha256};
    let registry = Registry::start()?;
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]});
    let bomb = image_with_config(
        vec![
            LayerBuilder::new().busybox().finish(Compression::Gzip),
            LayerBuilder::new()
                .file("zeros", &vec![0u8; 64 << 20], 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
        config.clone(),
    );
    let bomb_ref = push(&registry, "berth-test/bomb", "v1", &bomb).await?;
    // A tar header whose name and checksum are terminal escapes.
    let mut header = [0u8; 1024];
    header[..12].copy_from_slice(b"\x1b[2J\x07evil\x01\x02!");
    header[148..156].copy_from_slice(b"zz\x1b]0;x\x07");
    let garbage = Layer {
        digest: sha256(&header),
        diff_id: sha256(&header),
        blob: header.to_vec(),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
    };
    let junk = image_with_config(
        vec![
            LayerBuilder::new().busybox().finish(Compression::Gzip),
            garbage,
        ],
        Format::Oci,
        host_arch(),
        config,
    );
    let junk_ref = push(&registry, "berth-test/junk", "v1", &junk).await?;
    let small = busybox_image("0", "faults-small", Compression::Gzip);
    let small_ref = push(&registry, "berth-test/small", "v1", &small).await?;

    let env = PodEnv::new("fullpull", 46)?;
    let _tmpfs = Tmpfs::mount(&env.dirs.root, "32m")?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    let st = pull(&mut images, &bomb_ref, None)
        .await
        .expect_err("a layer larger than the free space was pulled");
    eprintln!("bomb: {:?} {}", st.code(), st.message());
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(st.message().contains("full"), "{}", st.message());
    pull(&mut images, &small_ref, None).await?;

    let st = pull(&mut images, &junk_ref, None)
        .await
        .expect_err("a garbage layer was pulled");
    eprintln!("garbage: {:?} {}", st.code(), st.message());
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());
    assert!(
        !st.message().chars().any(|c| c.is_control()),
        "raw bytes in {:?}",
        st.message()
    );
    assert!(st.message().len() < 2048, "{}", st.message().len());
    Ok(())
}
