//! What the side-by-side CRI benches share: a runtime under test reached
//! through the `k8s-cri` client (berthd or containerd's CRI plugin), pods
//! with one sleeping container, and percentiles.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_cri::v1 as cri;

use super::berthd::Berthd;
use super::containerd_cri::{ContainerdCri, push_bench_images};
use super::cri_images::pull;
use super::cri_pods::{PodEnv, Runtime, create_container, pod_sandbox_config};
use super::registry::Registry;

/// (pod name, host network) → the pod config for one runtime.
pub type PodConfigFn = Box<dyn Fn(&str, bool) -> cri::PodSandboxConfig>;

/// The tests' pod config ([`pod_sandbox_config`]) with logs under
/// `log_dir` and cgroups under `cgroup_parent`.
pub fn pod_config_fn(log_dir: &Path, cgroup_parent: &str) -> PodConfigFn {
    let (log_dir, parent) = (log_dir.to_owned(), cgroup_parent.to_owned());
    Box::new(move |name: &str, host: bool| pod_sandbox_config(name, host, &log_dir, &parent))
}

/// berthd and a private containerd 1.6 CRI side by side, each with the
/// bench image pulled (and containerd with its sandbox image). Fields drop
/// in order: the runtimes, then the pods' environment, then the registry.
pub struct SideBySide {
    pub ctd: ContainerdCri,
    pub berthd: Berthd,
    pub env: PodEnv,
    pub image: String,
    pub registry: Registry,
}

impl SideBySide {
    /// Starts both; `env_idx` and `ctd_idx` keep the names of concurrent
    /// benches apart.
    pub async fn start(name: &str, env_idx: u32, ctd_idx: u32) -> Result<Self> {
        let registry = Registry::start()?;
        let (pause, image) = push_bench_images(&registry).await?;
        let env = PodEnv::new(name, env_idx)?;
        let berthd = env.start_logged("info")?;
        pull(&mut berthd.images().await?, &image, None).await?;
        let ctd = ContainerdCri::start(ctd_idx, &registry.host, &pause)?;
        ready_with_images(&ctd, &pause, &image).await?;
        Ok(Self {
            ctd,
            berthd,
            env,
            image,
            registry,
        })
    }

    /// A CRI client for each runtime, berthd first.
    pub async fn targets(&self) -> Result<[Target; 2]> {
        Ok([
            Target {
                name: "berthd",
                rt: self.berthd.runtime().await?,
                pod_config: pod_config_fn(&self.env.log_dir, &self.env.cgroup_parent),
                image: self.image.clone(),
            },
            Target {
                name: "containerd 1.6 CRI + runc",
                rt: self.ctd.runtime().await?,
                pod_config: pod_config_fn(&self.ctd.log_dir, &self.ctd.cgroup_parent),
                image: self.image.clone(),
            },
        ])
    }
}

/// One runtime under test.
pub struct Target {
    pub name: &'static str,
    pub rt: Runtime,
    pub pod_config: PodConfigFn,
    /// The workload image (already pulled).
    pub image: String,
}

/// A container running `command` in `image`.
pub fn container(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

impl Target {
    /// RunPodSandbox; returns the pod id.
    pub async fn run_pod(&mut self, name: &str, host_network: bool) -> Result<String> {
        let cfg = (self.pod_config)(name, host_network);
        Ok(self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.name))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// Creates and starts `command` in pod `pod` (named `name`).
    pub async fn start_container(
        &mut self,
        pod: &str,
        name: &str,
        host_network: bool,
        command: &[&str],
    ) -> Result<String> {
        let cfg = (self.pod_config)(name, host_network);
        let ctr = create_container(
            &mut self.rt,
            pod,
            &cfg,
            container("worker", &self.image, command),
        )
        .await
        .with_context(|| format!("{}: CreateContainer in {name}", self.name))?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: ctr.clone(),
            })
            .await
            .with_context(|| format!("{}: StartContainer in {name}", self.name))?;
        Ok(ctr)
    }

    /// A pod with one `sleep` container; returns (pod, container).
    pub async fn start_sleeper(
        &mut self,
        name: &str,
        host_network: bool,
    ) -> Result<(String, String)> {
        let pod = self.run_pod(name, host_network).await?;
        let ctr = self
            .start_container(&pod, name, host_network, &["/bin/sleep", "3600"])
            .await?;
        Ok((pod, ctr))
    }

    /// StopContainer(0) + RemoveContainer for `ctr` (when given), then
    /// StopPodSandbox + RemovePodSandbox; the time each of the four took.
    pub async fn teardown(&mut self, pod: &str, ctr: Option<&str>) -> Result<[Duration; 4]> {
        let name = self.name;
        let mut steps = [Duration::ZERO; 4];
        let mut t = Instant::now();
        let mut lap = |i: usize| {
            steps[i] = t.elapsed();
            t = Instant::now();
        };
        if let Some(ctr) = ctr {
            self.rt
                .stop_container(cri::StopContainerRequest {
                    container_id: ctr.into(),
                    timeout: 0,
                })
                .await
                .with_context(|| format!("{name}: StopContainer"))?;
            lap(0);
            self.rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: ctr.into(),
                })
                .await
                .with_context(|| format!("{name}: RemoveContainer"))?;
            lap(1);
        }
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{name}: StopPodSandbox"))?;
        lap(2);
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{name}: RemovePodSandbox"))?;
        lap(3);
        Ok(steps)
    }
}

/// The `p`th percentile (nearest rank) of `v`.
pub fn pct(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) * p + 50) / 100]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A size from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fails unless running as root with the release shim next to berthd.
pub fn preflight(bench: &str) -> Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{bench} bench: needs root (pods, cgroups, mounts, netns); skipped");
        return Ok(false);
    }
    let berthd = std::path::Path::new(super::berthd::berthd_bin());
    let shim = berthd.with_file_name("containerd-shim-berth-v2");
    anyhow::ensure!(
        shim.exists(),
        "{} is missing: `cargo build --release -p containerd-shim-berth-v2` first",
        shim.display()
    );
    Ok(true)
}

/// Waits for containerd's CRI and pulls the pause and bench images into it.
pub async fn ready_with_images(ctd: &ContainerdCri, pause: &str, image: &str) -> Result<()> {
    ctd.wait_cri_ready().await?;
    let mut images = ctd.images().await?;
    pull(&mut images, pause, None)
        .await
        .with_context(|| format!("containerd: pull {pause}; log:\n{}", ctd.log_tail()))?;
    pull(&mut images, image, None).await?;
    Ok(())
}
