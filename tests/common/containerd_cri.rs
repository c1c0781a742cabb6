//! Debian's containerd 1.6 WITH its CRI plugin, for the side-by-side
//! benches: a private instance (own root, state, sockets, runc root, CNI
//! conf dir, bridge, subnets and cgroup parent, all named after this process)
//! driven through the same `k8s-cri` client as berthd.
//!
//! - runtime: `io.containerd.runc.v2` with Debian's runc, cgroupfs driver;
//! - sandbox ("pause") image: built here from busybox-static (entrypoint
//!   `sleep 2147483647`) and pushed to the test-started local registry;
//! - registry: the local one, plain HTTP, through a `hosts.toml` under the
//!   instance's `config_path` (nothing but loopback is ever contacted);
//! - CNI: `/usr/lib/cni` with a conf list this module writes (bridge +
//!   host-local + portmap, loopback run by containerd itself), see
//!   [`cni_conflist`]; netns mounts under the instance's state dir;
//! - streaming server on 127.0.0.1, a free port, no TLS.
//!
//! [`ContainerdCri::start_with`] runs another containerd build instead
//! (containerd 2.x from tests/setup-containerd2.sh) and can add berth's shim
//! as two RuntimeClass handlers: `berth`, declared as runc-compatible
//! (`runtime_type = "io.containerd.runc.v2"`, `runtime_path` = the shim),
//! the form whose `-info` containerd 2.1's CRI reads, and `berth-native`
//! (`io.containerd.berth.v2`, found on containerd's PATH), which containerd
//! 2.1 never introspects (its `introspectRuntimeFeatures` refuses every
//! runtime type but runc's; containerd#13504 lifts that in 2.2.x and 2.3).
//! The level of containerd's log is `BERTH_CONTAINERD_LOG_LEVEL` (default
//! `info`).
//!
//! Drop tears everything down, also after a failure: container processes
//! (by cgroup), shims and containerd (by pid), mounts under the temp dir,
//! cgroups, the bridge and the iptables rules the bridge plugin left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::berthd::{PATIENCE, connect};
use super::cri_pods::{mounts_containing, pod_sandbox_config};
use super::oci_image::{Compression, Format, LayerBuilder, host_arch, image_with_config};
use super::registry::Registry;

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const RUNC: &str = "/usr/sbin/runc";
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";
pub const BERTH_SHIM: &str = "containerd-shim-berth-v2";
/// The RuntimeClass handler name berth's shim gets in [`CriOptions::berth_shim`]
/// (runc-compatible type, the shim as `runtime_path`).
pub const BERTH_HANDLER: &str = "berth";
/// The same shim as runtime type `io.containerd.berth.v2`.
pub const BERTH_NATIVE_HANDLER: &str = "berth-native";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// containerd 1.6 puts shim sockets here whatever its own state dir.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
const CGROUP_CONTROLLERS: &[&str] = &[
    "memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "devices", "blkio", "systemd",
    "unified",
];

/// The sandbox image: busybox whose entrypoint sleeps "forever" (as pause
/// does: containerd stops a sandbox with SIGKILL).
pub fn pause_image() -> super::oci_image::Image {
    image_with_config(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
        serde_json::json!({
            "Entrypoint": ["/bin/sleep", "2147483647"],
            "Env": ["PATH=/bin"],
        }),
    )
}

/// The workload image of the benches: busybox with `nc` besides the
/// usual applets (the port-forward sink).
pub fn bench_image() -> super::oci_image::Image {
    image_with_config(
        vec![
            LayerBuilder::new()
                .busybox()
                .symlink("bin/nc", "busybox")
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
        serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
    )
}

/// Pushes [`pause_image`] and [`bench_image`]; returns their references.
pub async fn push_bench_images(registry: &Registry) -> Result<(String, String)> {
    let pusher = registry.pusher();
    super::oci_image::push(&pusher, "berth-bench/pause", Some("v1"), &pause_image()).await?;
    super::oci_image::push(&pusher, "berth-bench/busybox", Some("v1"), &bench_image()).await?;
    Ok((
        format!("{}/berth-bench/pause:v1", registry.host),
        format!("{}/berth-bench/busybox:v1", registry.host),
    ))
}

/// The CNI conf list both containerd and berthd (CNI mode) get: bridge with
/// host-local IPAM (dual stack, data under `ipam_dir`) and portmap.
pub fn cni_conflist(
    name: &str,
    bridge: &str,
    subnet4: &str,
    subnet6: &str,
    ipam_dir: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet4}], [{"subnet": subnet6}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
}

/// What [`ContainerdCri::start_with`] runs.
#[derive(Default)]
pub struct CriOptions {
    /// The directory holding containerd (default: Debian's 1.6 in /usr/bin).
    pub bin_dir: Option<PathBuf>,
    /// berth's shim, registered as handler [`BERTH_HANDLER`].
    pub berth_shim: Option<PathBuf>,
}

/// Shims serve this containerd: runc's, or berth's.
fn is_shim(args: &[String]) -> bool {
    args.first()
        .is_some_and(|a| a.contains(RUNC_SHIM) || a.contains(BERTH_SHIM))
}

/// A running containerd with the CRI plugin.
pub struct ContainerdCri {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// CNI network name (also in the iptables comments of the bridge plugin).
    pub network: String,
    pub bridge: String,
    pub cgroup_parent: String,
    pub log_dir: PathBuf,
    child: Option<Child>,
}

impl ContainerdCri {
    /// Starts containerd; `idx` tells several instances of one process apart
    /// (bridge name, subnets, cgroup parent). `sandbox_image` must be in
    /// `registry_host`'s registry.
    pub fn start(idx: u32, registry_host: &str, sandbox_image: &str) -> Result<Self> {
        Self::start_with(idx, registry_host, sandbox_image, CriOptions::default())
    }

    /// [`ContainerdCri::start`] with another containerd and/or berth's shim.
    pub fn start_with(
        idx: u32,
        registry_host: &str,
        sandbox_image: &str,
        opts: CriOptions,
    ) -> Result<Self> {
        let containerd = opts
            .bin_dir
            .as_ref()
            .map(|d| d.join("containerd"))
            .unwrap_or_else(|| PathBuf::from(CONTAINERD));
        for tool in [
            containerd.as_path(),
            Path::new(RUNC),
            Path::new(CNI_BIN_DIR),
        ] {
            if !tool.exists() {
                bail!(
                    "{} is missing: install Debian's containerd, runc and \
                     containernetworking-plugins (tests/run-all.sh does; \
                     tests/setup-containerd2.sh for containerd 2.x)",
                    tool.display()
                );
            }
        }
        let pid = std::process::id();
        let tag = super::unique_tag(&format!("ctdcri{idx}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let bridge = format!("bctd{}{idx}", pid % 1_000_000);
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        let network = tag.clone();
        let second = 160 + idx;
        let subnet4 = format!("10.{second}.{}.0/24", pid % 250);
        let subnet6 = format!("fd44:{second:x}:{:x}::/64", pid % 65536);
        let conf_dir = d.join("cni-conf");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::write(
            conf_dir.join("10-berth-bench.conflist"),
            serde_json::to_vec_pretty(&cni_conflist(
                &network,
                &bridge,
                &subnet4,
                &subnet6,
                &d.join("cni-ipam"),
            ))?,
        )?;
        // Plain HTTP to the loopback registry.
        let hosts = d.join("certs.d").join(registry_host);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry_host}\"\n\n[host.\"http://{registry_host}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        let socket = d.join("containerd.sock");
        // berth's shim on containerd's PATH, as the handler `berth`.
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin)?;
        let mut berth_runtime = String::new();
        if let Some(shim) = &opts.berth_shim {
            std::os::unix::fs::symlink(shim, bin.join(BERTH_SHIM))?;
            berth_runtime = format!(
                r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{BERTH_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{shim}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{BERTH_NATIVE_HANDLER}]
      runtime_type = "io.containerd.berth.v2"
"#,
                shim = shim.display()
            );
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
  level = "{log_level}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  stats_collect_period = 10
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{dir}/runc"
        SystemdCgroup = false
{berth_runtime}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{dir}/certs.d"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            dir = d.display(),
            runc = RUNC,
            cni_bin = CNI_BIN_DIR,
            conf_dir = conf_dir.display(),
            log_level =
                std::env::var("BERTH_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let mut c = ContainerdCri {
            socket,
            network,
            bridge,
            cgroup_parent: format!("/berth-bench-ctd-{pid}-{idx}"),
            log_dir: d.join("logs"),
            dir,
            child: Some(child),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while !self.socket.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited with {status} before serving; log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not serve in time; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until the CRI plugin answers Status with RuntimeReady (the CRI
    /// service starts after the socket is up).
    pub async fn wait_cri_ready(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut rt) = self.runtime().await
                && let Ok(s) = rt.status(cri::StatusRequest { verbose: false }).await
                && s.into_inner().status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status)
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd's CRI plugin never got ready; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect(&self.socket).await?))
    }

    /// The pod config berthd's tests use, with this instance's log dir and
    /// cgroup parent.
    pub fn pod_config(&self, name: &str, host_network: bool) -> cri::PodSandboxConfig {
        pod_sandbox_config(name, host_network, &self.log_dir, &self.cgroup_parent)
    }

    /// Pids of the shims (runc's or berth's) serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let addr = self.socket.display().to_string();
        processes(|args| {
            is_shim(args) && args.windows(2).any(|w| w[0] == "-address" && w[1] == addr)
        })
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
    }

    /// Pids of the sandbox ("pause") processes: the shims' children running
    /// the pause image's entrypoint.
    pub fn sandbox_pids(&self) -> Vec<i32> {
        let shims = self.shim_pids();
        processes(|args| args.len() == 2 && args[0] == "/bin/sleep" && args[1] == "2147483647")
            .into_iter()
            .filter(|(pid, _)| parent_pid(*pid).is_some_and(|pp| shims.contains(&pp)))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Stops and removes every pod (and so every container) this containerd
    /// knows: the orderly teardown before Drop's hard one.
    pub async fn remove_all_pods(&self) -> Result<()> {
        let mut rt = self.runtime().await?;
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        for p in pods {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id,
            })
            .await?;
        }
        Ok(())
    }
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        let dir = self.dir.path().display().to_string();
        // 1. Container and sandbox processes, by cgroup (they outlive shims).
        for c in CGROUP_CONTROLLERS {
            kill_cgroup_tree(
                &Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(self.cgroup_parent.trim_start_matches('/')),
            );
        }
        // 2. Shims, and the sockets a killed shim leaves behind.
        let addr = self.socket.display().to_string();
        for (pid, args) in processes(|args| {
            is_shim(args) && args.windows(2).any(|w| w[0] == "-address" && w[1] == addr)
        }) {
            kill(pid, libc::SIGKILL);
            if let Some(w) = args.windows(2).find(|w| w[0] == "-id") {
                let key = format!("{addr}/{CRI_NAMESPACE}/{}", w[1]);
                let sock =
                    Path::new(SHIM_SOCKET_DIR).join(hex::encode(Sha256::digest(key.as_bytes())));
                let _ = std::fs::remove_file(sock);
            }
        }
        // 3. containerd itself.
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // 4. Mounts under our dir (rootfs overlays, shm, netns), deepest first.
        let mut mounts = mounts_containing(&dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // 5. Cgroups (also in name=systemd/unified, where runc makes them too).
        for c in CGROUP_CONTROLLERS {
            kill_cgroup_tree(
                &Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(self.cgroup_parent.trim_start_matches('/')),
            );
        }
        // 6. The bridge and the bridge plugin's masquerade rules.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for tool in ["iptables", "ip6tables"] {
            remove_cni_nat_rules(tool, &self.network);
        }
    }
}

/// Deletes the nat POSTROUTING rules of CNI network `network` (the bridge
/// plugin comments them `name: "<network>" id: "<container>"`) and the
/// chains they jump to.
pub fn remove_cni_nat_rules(tool: &str, network: &str) {
    let Ok(out) = Command::new(tool)
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text
        .lines()
        .filter(|l| l.contains(&format!("name: \\\"{network}\\\"")))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let chain = words
            .windows(2)
            .find(|w| w[0] == "-j")
            .map(|w| w[1].to_owned());
        // `-A POSTROUTING ...` → `-D POSTROUTING ...`; the comment is quoted,
        // so hand the line to a shell word splitter: iptables-restore style.
        let rule = line.replacen("-A ", "-D ", 1);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} -w -t nat {rule}"))
            .stderr(Stdio::null())
            .status();
        if let Some(chain) = chain.filter(|c| c.starts_with("CNI-")) {
            for op in ["-F", "-X"] {
                let _ = Command::new(tool)
                    .args(["-w", "-t", "nat", op, &chain])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// (pid, argv) of every process whose argv satisfies `pred`.
pub fn processes(pred: impl Fn(&[String]) -> bool) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if pred(&args) {
            out.push((pid, args));
        }
    }
    out
}

/// The parent pid of `pid` (from /proc/<pid>/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (VmRSS, Pss) in KiB of a process; zeros when it is gone.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

/// Sum of (VmRSS, Pss) in KiB over `pids`.
pub fn memory_sum_kib(pids: &[i32]) -> (u64, u64) {
    pids.iter()
        .map(|p| memory_kib(*p))
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this process (or its containerd) started.
    unsafe { libc::kill(pid, sig) };
}

/// Kills what is left in a cgroup tree and removes it, deepest first.
fn kill_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
