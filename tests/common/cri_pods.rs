//! Pods and containers through the CRI RuntimeService, the way kubelet
//! drives them: a berthd whose network, cgroup parent and dirs are unique to
//! the test, CRI configs, and checks that nothing was left behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::berthd::{Berthd, BerthdDirs, PATIENCE};

pub type Runtime = RuntimeServiceClient<Channel>;

/// A berthd for pod tests: its own dirs, bridge, subnets and cgroup parent.
pub struct PodEnv {
    pub dirs: BerthdDirs,
    pub config: PathBuf,
    pub bridge: String,
    pub cgroup_parent: String,
    pub log_dir: PathBuf,
}

impl PodEnv {
    pub fn new(test: &str, idx: u32) -> Result<Self> {
        let dirs = BerthdDirs::new(&format!("cri-{test}"))?;
        let pid = std::process::id();
        let bridge = format!("bcri{}{idx}", pid % 100_000);
        let second = 180 + idx;
        let config = dirs.tmp.path().join("berthd.toml");
        // The cgroup driver the run asks for (the VM lane runs the CRI tests
        // with each); its pods' parent in that driver's form.
        let systemd = super::cgroupfs::systemd_driver();
        let (driver, cgroup_parent) = if systemd {
            ("systemd", format!("berthtest{pid}x{idx}.slice"))
        } else {
            ("cgroupfs", format!("/berth-test-cri-{pid}-{idx}"))
        };
        std::fs::write(
            &config,
            format!(
                "[cgroup]\ndriver = \"{driver}\"\n\n[network]\nmode = \"builtin\"\nbridge_name = \"{bridge}\"\n\
                 pod_subnet = \"10.{second}.{}.0/24\"\npod_subnet_v6 = \"fd43:{second:x}:{:x}::/64\"\n\
                 cni_conf_dir = \"{}\"\n",
                pid % 250,
                pid % 65536,
                dirs.tmp.path().join("cni").display()
            ),
        )?;
        let log_dir = dirs.tmp.path().join("logs");
        Ok(Self {
            cgroup_parent,
            dirs,
            config,
            bridge,
            log_dir,
        })
    }

    pub fn start(&self) -> Result<Berthd> {
        self.start_logged("debug")
    }

    /// Starts berthd logging at `level`.
    pub fn start_logged(&self, level: &str) -> Result<Berthd> {
        self.start_env(level, &[])
    }

    /// Starts berthd logging at `level` with extra environment variables.
    pub fn start_env(&self, level: &str, envs: &[(&str, &str)]) -> Result<Berthd> {
        let mut args = self.dirs.args();
        args.push("--config".into());
        args.push(self.config.display().to_string());
        Berthd::start_logged_env(&self.dirs, args, &self.dirs.socket, level, envs)
    }

    /// A pod config; `host_network` puts it in the host's network namespace.
    pub fn pod_config(&self, name: &str, host_network: bool) -> cri::PodSandboxConfig {
        pod_sandbox_config(name, host_network, &self.log_dir, &self.cgroup_parent)
    }

    /// The cgroup of pod `name` (its config's cgroup parent), in the
    /// driver's form.
    pub fn pod_cgroup(&self, name: &str) -> String {
        pod_cgroup_parent(&self.cgroup_parent, name)
    }

    /// Whether the test's cgroup parent is gone from every hierarchy (each
    /// v1 controller, or the v2 tree), removing it first if it is empty.
    /// Panics if there is no hierarchy to look in.
    pub fn remove_cgroup_parent(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for p in super::cgroupfs::dirs(&self.cgroup_parent) {
            if p.exists() {
                // Leaf directories the pods made must be gone already.
                if let Ok(rd) = std::fs::read_dir(&p) {
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            left.push(e.path());
                        }
                    }
                }
                if !self.cgroup_parent.ends_with(".slice") {
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
        if self.cgroup_parent.ends_with(".slice") {
            // systemd made the parent slice for the pod slices in it.
            let _ = std::process::Command::new("systemctl")
                .args(["stop", &self.cgroup_parent])
                .stderr(std::process::Stdio::null())
                .status();
        }
        left
    }
}

impl Drop for PodEnv {
    /// Also after a failed test: the shims this test's berthd started (their
    /// command line names its temp dir), the mounts under the temp dir, the
    /// test's cgroups, bridge and nftables table.
    fn drop(&mut self) {
        let tmp = self.dirs.tmp.path().display().to_string();
        for pid in processes_with(&tmp) {
            if pid != std::process::id() as i32 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Container processes outlive a SIGKILLed shim (they are
        // reparented, not killed): kill whatever is left in the test's
        // cgroups, and wait (bounded) until they are gone so that the
        // cgroups can be removed.
        let roots = super::cgroupfs::dirs(&self.cgroup_parent);
        for _ in 0..100 {
            let pids: Vec<i32> = roots.iter().flat_map(|r| cgroup_tree_pids(r)).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut mounts = mounts_containing(&tmp);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for root in &roots {
            remove_cgroup_tree(root);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &format!("berth_{}", self.bridge)])
            .stderr(std::process::Stdio::null())
            .status();
        self.remove_cgroup_parent();
    }
}

/// The cgroup parent of pod `name` below `parent`: `<parent>/<name>`, or
/// for a slice (systemd driver) the pod slice in it, as kubelet names them
/// (`kubepods-pod<uid>.slice` in `kubepods.slice`).
pub fn pod_cgroup_parent(parent: &str, name: &str) -> String {
    match parent.strip_suffix(".slice") {
        Some(stem) => format!("{stem}-{}.slice", name.replace('-', "_")),
        None => format!("{parent}/{name}"),
    }
}

/// The pod config kubelet would send for pod `name` (logs under `log_dir`,
/// cgroup `<cgroup_parent>/<name>`); `host_network` puts it in the host's
/// network namespace. Shared by the berthd tests and the containerd benches.
pub fn pod_sandbox_config(
    name: &str,
    host_network: bool,
    log_dir: &Path,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    let mode = if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: if host_network {
            String::new()
        } else {
            name.into()
        },
        log_directory: log_dir.join(name).display().to_string(),
        labels: HashMap::from([("app".into(), name.into()), ("tier".into(), "test".into())]),
        annotations: HashMap::from([("note".into(), "berth".into())]),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup_parent(cgroup_parent, name),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config running `args` (a shell command) in `image`.
pub fn container_config(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("container".into(), name.into())]),
        ..Default::default()
    }
}

pub async fn run_pod(rt: &mut Runtime, config: &cri::PodSandboxConfig) -> Result<String> {
    Ok(rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// StopPodSandbox then RemovePodSandbox, as kubelet tears a pod down.
pub async fn stop_and_remove_pod(rt: &mut Runtime, id: &str) -> Result<()> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok(())
}

pub async fn pod_status(rt: &mut Runtime, id: &str) -> Result<cri::PodSandboxStatus> {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await?
    .into_inner()
    .status
    .context("no status")
}

pub async fn create_container(
    rt: &mut Runtime,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    mut config: cri::ContainerConfig,
) -> Result<String> {
    // As kubelet does: the container's namespace options are the pod's.
    let ns = pod_config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    if sc.namespace_options.is_none() {
        sc.namespace_options = ns;
    }
    Ok(rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

pub async fn container_status(rt: &mut Runtime, id: &str) -> Result<cri::ContainerStatus> {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await?
    .into_inner()
    .status
    .context("no status")
}

/// Polls ContainerStatus until the container has exited.
pub async fn wait_exited(rt: &mut Runtime, id: &str) -> Result<cri::ContainerStatus> {
    // In the VM lane (software emulation, 20-50x slower) a container's own
    // work takes that much longer too.
    let patience = if std::env::var_os("BERTH_IN_VM").is_some() {
        PATIENCE * 5
    } else {
        PATIENCE
    };
    let deadline = Instant::now() + patience;
    loop {
        let s = container_status(rt, id).await?;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("container {id} did not exit: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mount points whose path contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.contains(needle))
        .collect()
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// The pids in a cgroup directory tree.
fn cgroup_tree_pids(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree_pids(&e.path()));
            }
        }
    }
    out
}

/// Removes a cgroup directory tree, deepest first (best effort).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Waits until the CRI log at `path` holds `text`.
pub async fn wait_log(path: &Path, text: &str) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(text)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} never showed {text:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of a CRI log file's records (both streams), one per line.
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect::<Vec<_>>()
        .join("\n")
}
