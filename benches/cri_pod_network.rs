//! Pod network setup + teardown through the CRI, side by side in one run:
//! berthd in built-in mode, berthd in CNI mode, and Debian's containerd 1.6
//! CRI plugin, the two CNI variants running the same conf list (Debian's
//! bridge + host-local + portmap, loopback; dual stack).
//!
//! Each cycle is RunPodSandbox + StopPodSandbox + RemovePodSandbox of a pod
//! with its own network namespace (no containers, so the network part
//! dominates); the same cycle with a host-network pod is measured too, so
//! that the network's own share (pod network − host network) can be read.
//! The variants take turns, one pod each per round; p50 and the ratios to
//! containerd are printed.
//!
//! Root. `cargo build --release -p containerd-shim-berth-v2 && cargo bench
//! --bench cri_pod_network`. `BERTH_BENCH_ITERS` (default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::containerd_cri::{
    ContainerdCri, cni_conflist, push_bench_images, remove_cni_nat_rules,
};
use common::cri_bench::{Target, env_usize, ms, pct, pod_config_fn, preflight};
use common::cri_images::pull;
use common::cri_pods::PodEnv;
use common::registry::Registry;

/// Removes the CNI-mode berthd's masquerade rules should a run fail midway.
struct CniRules(String);

impl Drop for CniRules {
    fn drop(&mut self) {
        for tool in ["iptables", "ip6tables"] {
            remove_cni_nat_rules(tool, &self.0);
        }
    }
}

/// A berthd env whose network runs the shared CNI conf list.
fn cni_env(idx: u32) -> Result<(PodEnv, CniRules)> {
    let env = PodEnv::new("podnet-cni", idx)?;
    let tmp = env.dirs.tmp.path();
    let conf_dir = tmp.join("cni-conf");
    std::fs::create_dir_all(&conf_dir)?;
    let network = common::unique_tag("bcni");
    let pid = std::process::id();
    std::fs::write(
        conf_dir.join("10-berth-bench.conflist"),
        serde_json::to_vec_pretty(&cni_conflist(
            &network,
            &env.bridge,
            &format!("10.172.{}.0/24", pid % 250),
            &format!("fd44:ac:{:x}::/64", pid % 65536),
            &tmp.join("cni-ipam"),
        ))?,
    )?;
    std::fs::write(
        &env.config,
        format!(
            "[network]\nmode = \"cni\"\nbridge_name = \"{}\"\ncni_conf_dir = \"{}\"\n\
             cni_bin_dirs = [\"/usr/lib/cni\"]\n",
            env.bridge,
            conf_dir.display()
        ),
    )?;
    Ok((env, CniRules(network)))
}

async fn cycle(t: &mut Target, name: &str, host_network: bool) -> Result<Duration> {
    let t0 = Instant::now();
    let pod = t.run_pod(name, host_network).await?;
    t.teardown(&pod, None).await?;
    Ok(t0.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !preflight("cri_pod_network")? {
        return Ok(());
    }
    let iters = env_usize("BERTH_BENCH_ITERS", 20);

    let registry = Registry::start()?;
    let (pause, image) = push_bench_images(&registry).await?;

    let builtin = PodEnv::new("podnet-builtin", 1)?;
    let berthd_builtin = builtin.start_logged("info")?;
    let (cni, _rules) = cni_env(2)?;
    let berthd_cni = cni.start_logged("info")?;
    let ctd = ContainerdCri::start(1, &registry.host, &pause)?;
    ctd.wait_cri_ready().await?;
    pull(&mut ctd.images().await?, &pause, None)
        .await
        .with_context(|| format!("containerd: pull {pause}; log:\n{}", ctd.log_tail()))?;

    let mut targets = [
        Target {
            name: "berthd built-in",
            rt: berthd_builtin.runtime().await?,
            pod_config: pod_config_fn(&builtin.log_dir, &builtin.cgroup_parent),
            image: image.clone(),
        },
        Target {
            name: "berthd CNI",
            rt: berthd_cni.runtime().await?,
            pod_config: pod_config_fn(&cni.log_dir, &cni.cgroup_parent),
            image: image.clone(),
        },
        Target {
            name: "containerd 1.6 CRI + CNI",
            rt: ctd.runtime().await?,
            pod_config: pod_config_fn(&ctd.log_dir, &ctd.cgroup_parent),
            image,
        },
    ];
    let result = run(&mut targets, iters).await;
    if result.is_err() {
        eprintln!("containerd log tail:\n{}", ctd.log_tail());
    }
    let _ = ctd.remove_all_pods().await;
    result
}

async fn run(targets: &mut [Target; 3], iters: usize) -> Result<()> {
    let warmup = 2;
    let mut net: [Vec<Duration>; 3] = Default::default();
    let mut host: [Vec<Duration>; 3] = Default::default();
    for i in 0..iters + warmup {
        for (k, t) in targets.iter_mut().enumerate() {
            let n = cycle(t, &format!("net{i}"), false).await?;
            let h = cycle(t, &format!("host{i}"), true).await?;
            if i >= warmup {
                net[k].push(n);
                host[k].push(h);
            }
        }
    }
    println!(
        "RunPodSandbox + StopPodSandbox + RemovePodSandbox, {iters} rounds after {warmup} warm-up \
         (pod network: bridge + host-local + portmap + loopback, dual stack)"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>14}",
        "", "pod-net p50", "pod-net p99", "host-net p50", "network share"
    );
    let share = |k: usize| ms(pct(&net[k], 50)) - ms(pct(&host[k], 50));
    for (k, t) in targets.iter().enumerate() {
        println!(
            "{:<28} {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>12.1}ms",
            t.name,
            ms(pct(&net[k], 50)),
            ms(pct(&net[k], 99)),
            ms(pct(&host[k], 50)),
            share(k)
        );
    }
    let c = ms(pct(&net[2], 50));
    println!(
        "ratio to containerd+CNI (pod-net p50): built-in {:.3}, berthd CNI {:.3} (target built-in <= 0.2)",
        ms(pct(&net[0], 50)) / c,
        ms(pct(&net[1], 50)) / c
    );
    println!(
        "ratio to containerd+CNI (network share, p50 pod-net − p50 host-net): built-in {:.3}, berthd CNI {:.3}",
        share(0) / share(2),
        share(1) / share(2)
    );
    Ok(())
}
