//! Concurrency and fault isolation (issue 15), side by side in one run,
//! through the same `k8s-cri` client: berthd (+ containerd-shim-berth-v2),
//! containerd 2.x's CRI + runc (Debian sid's, extracted by
//! tests/setup-containerd2.sh; `BERTH_CONTAINERD2_BIN_DIR` overrides where)
//! and Debian's containerd 1.6 CRI + runc. Each runtime has its own root,
//! state dirs, socket and cgroup parent, made here; pods use the host
//! network and a busybox image this bench builds and pushes to a registry it
//! starts on 127.0.0.1: no traffic leaves loopback.
//!
//! 1. grace: pod start (RunPodSandbox + CreateContainer + StartContainer of
//!    `sleep`) while another container of that runtime (one that ignores
//!    SIGTERM) is in a 30 s StopContainer grace, vs that runtime's idle pod
//!    start. Target for berth: ≤ 1.5×.
//! 2. rate: N = 50 pods started sequentially, then at concurrency 8 (and
//!    torn down the same way). Targets for berth: ≥ 1.5× its sequential
//!    rate, ≥ 5× containerd 2.x's at the same concurrency.
//! 3. list: ListContainers and ListPodSandbox p50/p99 with 1,000 containers
//!    present (50 pods of 20 containers; one running per pod, the others ran
//!    `true` and exited). Target: ≤ 1/5 of containerd 2.x's.
//! 4. growth: berthd's VmRSS, threads and open fds (from /proc/<pid>) after
//!    50 pod create/remove cycles and after 500. Target: no growth.
//!
//! Figures only, never timed asserts. Root. `cargo build --release -p
//! containerd-shim-berth-v2 && cargo bench --bench cri_concurrency`. Knobs:
//! `BERTH_BENCH_ITERS` (10 rounds of phase 1), `BERTH_BENCH_GRACE` (30 s),
//! `BERTH_BENCH_PODS` (50), `BERTH_BENCH_CONCURRENCY` (8),
//! `BERTH_BENCH_LIST_PODS` (50) × `BERTH_BENCH_LIST_PER_POD` (20),
//! `BERTH_BENCH_LIST_CALLS` (200), `BERTH_BENCH_CYCLES` (500),
//! `BERTH_BENCH_PHASES` (`grace,rate,list,growth`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::berthd::Berthd;
use common::containerd_cri::{ContainerdCri, CriOptions, push_bench_images};
use common::cri_bench::{container, env_usize, ms, pct, preflight, ready_with_images};
use common::cri_images::pull;
use common::cri_pods::{PodEnv, Runtime, create_container, pod_sandbox_config};
use common::registry::Registry;
use k8s_cri::v1 as cri;

/// The sleeper every pod runs.
const SLEEP: &[&str] = &["/bin/sleep", "3600"];
/// A container that ignores SIGTERM: only the grace period's SIGKILL ends it.
const STUBBORN: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap '' TERM; while true; do sleep 1; done",
];

/// One runtime under test, cheap to clone for concurrent workers.
#[derive(Clone)]
struct Side {
    name: &'static str,
    rt: Runtime,
    log_dir: PathBuf,
    cgroup_parent: String,
    image: String,
}

impl Side {
    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        pod_sandbox_config(name, true, &self.log_dir, &self.cgroup_parent)
    }

    async fn run_pod(&mut self, name: &str) -> Result<String> {
        Ok(self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(self.pod_config(name)),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.name))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// CreateContainer + StartContainer of `command` as container `cname`.
    async fn add_container(
        &mut self,
        pod: &str,
        pod_name: &str,
        cname: &str,
        command: &[&str],
    ) -> Result<String> {
        let cfg = self.pod_config(pod_name);
        let ctr = create_container(
            &mut self.rt,
            pod,
            &cfg,
            container(cname, &self.image, command),
        )
        .await
        .with_context(|| format!("{}: CreateContainer {cname} in {pod_name}", self.name))?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: ctr.clone(),
            })
            .await
            .with_context(|| format!("{}: StartContainer {cname} in {pod_name}", self.name))?;
        Ok(ctr)
    }

    /// A pod running `command`: (pod, container, how long the three calls took).
    async fn start_pod(
        &mut self,
        name: &str,
        command: &[&str],
    ) -> Result<(String, String, Duration)> {
        let t = Instant::now();
        let pod = self.run_pod(name).await?;
        let ctr = self.add_container(&pod, name, "worker", command).await?;
        Ok((pod, ctr, t.elapsed()))
    }

    /// As kubelet tears a pod down: StopContainer(0) + RemoveContainer (when
    /// given), StopPodSandbox + RemovePodSandbox.
    async fn teardown(&mut self, pod: &str, ctr: Option<&str>) -> Result<()> {
        let name = self.name;
        if let Some(ctr) = ctr {
            self.rt
                .stop_container(cri::StopContainerRequest {
                    container_id: ctr.into(),
                    timeout: 0,
                })
                .await
                .with_context(|| format!("{name}: StopContainer"))?;
            self.rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: ctr.into(),
                })
                .await
                .with_context(|| format!("{name}: RemoveContainer"))?;
        }
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{name}: StopPodSandbox"))?;
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .with_context(|| format!("{name}: RemovePodSandbox"))?;
        Ok(())
    }
}

/// Runs `job(side, i)` for i in 0..n on `workers` concurrent tasks, each
/// with its own clone of `side`; the results in index order and the wall
/// time.
async fn fan_out<T, F, Fut>(
    side: &Side,
    n: usize,
    workers: usize,
    job: F,
) -> Result<(Vec<T>, Duration)>
where
    T: Send + 'static,
    F: Fn(Side, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (next, job, side) = (next.clone(), job.clone(), side.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                out.push((i, job(side.clone(), i).await?));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let took = t.elapsed();
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, v)| v).collect(), took))
}

/// containerd 2.x's directory, if tests/setup-containerd2.sh made it
/// (`BERTH_CONTAINERD2_BIN_DIR` overrides where it is looked for).
fn containerd2_bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_CONTAINERD2_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth-test/containerd2/usr/bin"));
    dir.join("containerd").exists().then_some(dir)
}

/// What is running, in drop order: the containerds, berthd, the pods'
/// environment, the registry.
struct Setup {
    ctd2: Option<ContainerdCri>,
    ctd16: ContainerdCri,
    berthd: Berthd,
    env: PodEnv,
    image: String,
    _registry: Registry,
}

impl Setup {
    async fn start() -> Result<Self> {
        let registry = Registry::start()?;
        let (pause, image) = push_bench_images(&registry).await?;
        let env = PodEnv::new("concurrency", 0)?;
        let berthd = env.start_logged("info")?;
        pull(&mut berthd.images().await?, &image, None).await?;
        let ctd16 = ContainerdCri::start(0, &registry.host, &pause)?;
        let ctd2 = match containerd2_bin_dir() {
            Some(dir) => Some(ContainerdCri::start_with(
                1,
                &registry.host,
                &pause,
                CriOptions {
                    bin_dir: Some(dir),
                    berth_shim: None,
                },
            )?),
            None => {
                println!(
                    "containerd 2.x: skipped: not extracted (run tests/setup-containerd2.sh or set \
                     BERTH_CONTAINERD2_BIN_DIR); its columns stay empty"
                );
                None
            }
        };
        for ctd in std::iter::once(&ctd16).chain(ctd2.as_ref()) {
            ready_with_images(ctd, &pause, &image).await?;
        }
        Ok(Self {
            ctd2,
            ctd16,
            berthd,
            env,
            image,
            _registry: registry,
        })
    }

    /// berthd, containerd 2.x (when there), containerd 1.6.
    async fn sides(&self) -> Result<Vec<Side>> {
        let mut sides = vec![Side {
            name: "berthd",
            rt: self.berthd.runtime().await?,
            log_dir: self.env.log_dir.clone(),
            cgroup_parent: self.env.cgroup_parent.clone(),
            image: self.image.clone(),
        }];
        for (name, ctd) in [
            ("containerd 2.x CRI + runc", self.ctd2.as_ref()),
            ("containerd 1.6 CRI + runc", Some(&self.ctd16)),
        ] {
            if let Some(ctd) = ctd {
                sides.push(Side {
                    name,
                    rt: ctd.runtime().await?,
                    log_dir: ctd.log_dir.clone(),
                    cgroup_parent: ctd.cgroup_parent.clone(),
                    image: self.image.clone(),
                });
            }
        }
        Ok(sides)
    }

    fn containerd_logs(&self) -> String {
        let mut out = format!("containerd 1.6 log tail:\n{}", self.ctd16.log_tail());
        if let Some(c) = &self.ctd2 {
            out += &format!("\ncontainerd 2.x log tail:\n{}", c.log_tail());
        }
        out
    }
}

/// The summary lines: (what, runtime, figure, ratio/target text).
#[derive(Default)]
struct Summary {
    rows: Vec<[String; 4]>,
}

impl Summary {
    fn row(&mut self, what: &str, who: &str, figure: String, ratio: String) {
        self.rows.push([what.into(), who.into(), figure, ratio]);
    }

    fn print(&self) {
        let w: Vec<usize> = (0..4)
            .map(|k| {
                self.rows
                    .iter()
                    .map(|r| r[k].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n=== cri_concurrency summary ===");
        for r in &self.rows {
            println!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !preflight("cri_concurrency")? {
        return Ok(());
    }
    let phases =
        std::env::var("BERTH_BENCH_PHASES").unwrap_or_else(|_| "grace,rate,list,growth".into());
    let has = |p: &str| phases.split(',').any(|x| x.trim() == p);
    println!("load average at start: {}", load_average());
    let setup = Setup::start().await?;
    let mut sides = setup.sides().await?;
    let mut summary = Summary::default();
    let t0 = Instant::now();
    let mut result = Ok(());
    if has("grace") && result.is_ok() {
        result = grace(&mut sides, &mut summary).await;
    }
    if has("rate") && result.is_ok() {
        result = rate(&mut sides, &mut summary).await;
    }
    if has("list") && result.is_ok() {
        result = list(&mut sides, &mut summary).await;
    }
    if has("growth") && result.is_ok() {
        result = growth(&mut sides[0], setup.berthd.pid().as_raw(), &mut summary).await;
    }
    summary.print();
    println!(
        "bench took {:.0} s; load average at the end: {}",
        t0.elapsed().as_secs_f64(),
        load_average()
    );
    if result.is_err() {
        eprintln!("{}", setup.containerd_logs());
    }
    let _ = setup.ctd16.remove_all_pods().await;
    if let Some(c) = &setup.ctd2 {
        let _ = c.remove_all_pods().await;
    }
    result
}

/// Phase 1: pod start while another container is in its stop grace.
async fn grace(sides: &mut [Side], summary: &mut Summary) -> Result<()> {
    let iters = env_usize("BERTH_BENCH_ITERS", 10);
    let grace = env_usize("BERTH_BENCH_GRACE", 30) as i64;
    let warmup = 2;
    let mut idle: Vec<Vec<Duration>> = vec![vec![]; sides.len()];
    for i in 0..iters + warmup {
        for (k, s) in sides.iter_mut().enumerate() {
            let (pod, ctr, took) = s.start_pod(&format!("idle{i}"), SLEEP).await?;
            s.teardown(&pod, Some(&ctr)).await?;
            if i >= warmup {
                idle[k].push(took);
            }
        }
    }
    // Every runtime gets its stubborn container, and its StopContainer
    // (timeout `grace`) is issued at once for all of them.
    let mut stubborn = Vec::new();
    for s in sides.iter_mut() {
        stubborn.push(s.start_pod("stubborn", STUBBORN).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stops = Vec::new();
    for (s, (_, ctr, _)) in sides.iter().zip(&stubborn) {
        let (mut rt, ctr) = (s.rt.clone(), ctr.clone());
        stops.push(tokio::spawn(async move {
            let t = Instant::now();
            rt.stop_container(cri::StopContainerRequest {
                container_id: ctr,
                timeout: grace,
            })
            .await
            .map(|_| t.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut during: Vec<Vec<Duration>> = vec![vec![]; sides.len()];
    for i in 0..iters {
        for (k, s) in sides.iter_mut().enumerate() {
            let (pod, ctr, took) = s.start_pod(&format!("grace{i}"), SLEEP).await?;
            s.teardown(&pod, Some(&ctr)).await?;
            during[k].push(took);
        }
    }
    let in_grace: Vec<bool> = stops.iter().map(|t| !t.is_finished()).collect();
    let mut stop_took = Vec::new();
    for t in stops {
        stop_took.push(
            t.await?
                .context("StopContainer of the stubborn container")?,
        );
    }
    for (s, (pod, ctr, _)) in sides.iter_mut().zip(&stubborn) {
        s.teardown(pod, Some(ctr)).await?;
    }
    println!(
        "\n1. pod start (RunPodSandbox+CreateContainer+StartContainer, host network), idle vs \
         while another container of the same runtime ignores SIGTERM in a {grace} s \
         StopContainer grace; {iters} rounds each"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>11} {:>11} {:>8} {:>10}",
        "", "idle p50", "idle p99", "grace p50", "grace p99", "ratio", "stop took"
    );
    for (k, s) in sides.iter().enumerate() {
        let ratio = ms(pct(&during[k], 50)) / ms(pct(&idle[k], 50));
        println!(
            "{:<28} {:>8.1}ms {:>8.1}ms {:>9.1}ms {:>9.1}ms {:>7.2}× {:>9.1}s{}",
            s.name,
            ms(pct(&idle[k], 50)),
            ms(pct(&idle[k], 99)),
            ms(pct(&during[k], 50)),
            ms(pct(&during[k], 99)),
            ratio,
            stop_took[k].as_secs_f64(),
            if in_grace[k] {
                ""
            } else {
                "  (the grace ended before the rounds did: figures not valid)"
            }
        );
        let target = if k == 0 {
            format!("target <= 1.5×: {}", verdict(ratio <= 1.5 && in_grace[k]))
        } else {
            String::new()
        };
        summary.row(
            "pod start during a stop grace / idle, p50",
            s.name,
            format!(
                "{:.1} ms / {:.1} ms",
                ms(pct(&during[k], 50)),
                ms(pct(&idle[k], 50))
            ),
            format!("{ratio:.2}× {target}"),
        );
    }
    Ok(())
}

/// Starts `n` pods at `workers` concurrency, then tears them down the same
/// way: (start wall time, teardown wall time).
async fn pods_at(s: &Side, tag: &str, n: usize, workers: usize) -> Result<(Duration, Duration)> {
    let tag = tag.to_owned();
    let (pods, started) = fan_out(s, n, workers, move |mut s, i| {
        let name = format!("{tag}{i}");
        async move { s.start_pod(&name, SLEEP).await }
    })
    .await?;
    let pods = Arc::new(pods);
    let p = pods.clone();
    let (_, down) = fan_out(s, n, workers, move |mut s, i| {
        let p = p.clone();
        async move {
            let (pod, ctr, _) = &p[i];
            s.teardown(pod, Some(ctr)).await
        }
    })
    .await?;
    Ok((started, down))
}

/// Phase 2: N pods sequentially vs at concurrency c.
async fn rate(sides: &mut [Side], summary: &mut Summary) -> Result<()> {
    let n = env_usize("BERTH_BENCH_PODS", 50);
    let c = env_usize("BERTH_BENCH_CONCURRENCY", 8);
    println!(
        "\n2. {n} pods (RunPodSandbox+CreateContainer+StartContainer), sequentially and at \
         concurrency {c}; then torn down the same way"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8} {:>14} {:>14}",
        "", "seq pods/s", "conc pods/s", "speedup", "seq tdown/s", "conc tdown/s"
    );
    let mut rates = Vec::new();
    for (k, s) in sides.iter().enumerate() {
        let (seq, seq_down) = pods_at(s, "seq", n, 1).await?;
        let (conc, conc_down) = pods_at(s, "conc", n, c).await?;
        let per_s = |d: Duration| n as f64 / d.as_secs_f64();
        let (rs, rc) = (per_s(seq), per_s(conc));
        println!(
            "{:<28} {:>12.1} {:>12.1} {:>7.2}× {:>14.1} {:>14.1}",
            s.name,
            rs,
            rc,
            rc / rs,
            per_s(seq_down),
            per_s(conc_down)
        );
        rates.push(rc);
        let target = if k == 0 {
            format!("target >= 1.5×: {}", verdict(rc / rs >= 1.5))
        } else {
            String::new()
        };
        summary.row(
            &format!("{n} pods at concurrency {c} / sequential, pods/s"),
            s.name,
            format!("{rc:.1} / {rs:.1}"),
            format!("{:.2}× {target}", rc / rs),
        );
    }
    if sides.len() > 1 && sides[1].name.contains("2.x") {
        let r = rates[0] / rates[1];
        println!(
            "ratio berthd / containerd 2.x at concurrency {c}: {r:.2}× (target >= 5×: {})",
            verdict(r >= 5.0)
        );
        summary.row(
            &format!("rate at concurrency {c}, berthd / containerd 2.x"),
            "berthd",
            format!("{:.1} / {:.1} pods/s", rates[0], rates[1]),
            format!("{r:.2}× target >= 5×: {}", verdict(r >= 5.0)),
        );
    }
    Ok(())
}

/// Phase 3: List* latency with many (mostly exited) containers present.
async fn list(sides: &mut [Side], summary: &mut Summary) -> Result<()> {
    let pods = env_usize("BERTH_BENCH_LIST_PODS", 50);
    let per_pod = env_usize("BERTH_BENCH_LIST_PER_POD", 20);
    let calls = env_usize("BERTH_BENCH_LIST_CALLS", 200);
    let c = env_usize("BERTH_BENCH_CONCURRENCY", 8);
    let total = pods * per_pod;
    println!(
        "\n3. ListContainers / ListPodSandbox (no filter) with {total} containers in {pods} pods \
         present ({pods} running, the rest exited); {calls} calls each, one runtime at a time"
    );
    println!(
        "{:<28} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "", "made in", "ctrs p50", "ctrs p99", "pods p50", "pods p99", "tdown"
    );
    let mut p99s = Vec::new();
    for s in sides.iter_mut() {
        // One worker per pod: the pod, its sleeper, then `true` containers.
        let made = Instant::now();
        let (ids, _) = fan_out(s, pods, c, move |mut s, i| async move {
            let name = format!("list{i}");
            let pod = s.run_pod(&name).await?;
            s.add_container(&pod, &name, "c0", SLEEP).await?;
            for j in 1..per_pod {
                s.add_container(&pod, &name, &format!("c{j}"), &["/bin/true"])
                    .await?;
            }
            Ok(pod)
        })
        .await?;
        // Until every `true` is recorded as exited (bounded).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list =
                s.rt.list_containers(cri::ListContainersRequest { filter: None })
                    .await?
                    .into_inner()
                    .containers;
            let running = list
                .iter()
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .count();
            anyhow::ensure!(
                list.len() == total,
                "{}: {} containers listed, {total} made",
                s.name,
                list.len()
            );
            if running <= pods || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let made = made.elapsed();
        let (mut lc, mut lp) = (Vec::new(), Vec::new());
        for i in 0..calls + 10 {
            let t = Instant::now();
            let n =
                s.rt.list_containers(cri::ListContainersRequest { filter: None })
                    .await?
                    .into_inner()
                    .containers
                    .len();
            let a = t.elapsed();
            let t = Instant::now();
            let m =
                s.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await?
                    .into_inner()
                    .items
                    .len();
            let b = t.elapsed();
            anyhow::ensure!(n == total && m == pods, "{}: listed {n} / {m}", s.name);
            if i >= 10 {
                lc.push(a);
                lp.push(b);
            }
        }
        let t = Instant::now();
        let ids = Arc::new(ids);
        let p = ids.clone();
        fan_out(s, pods, c, move |mut s, i| {
            let p = p.clone();
            async move { s.teardown(&p[i], None).await }
        })
        .await?;
        let down = t.elapsed();
        println!(
            "{:<28} {:>8.1}s {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>8.1}s",
            s.name,
            made.as_secs_f64(),
            ms(pct(&lc, 50)),
            ms(pct(&lc, 99)),
            ms(pct(&lp, 50)),
            ms(pct(&lp, 99)),
            down.as_secs_f64()
        );
        p99s.push((pct(&lc, 99), pct(&lp, 99), pct(&lc, 50), pct(&lp, 50)));
    }
    for (k, s) in sides.iter().enumerate() {
        let (ratio_c, ratio_p, target) = if sides.len() > 1 && sides[1].name.contains("2.x") {
            let rc = ms(p99s[k].0) / ms(p99s[1].0);
            let rp = ms(p99s[k].1) / ms(p99s[1].1);
            let t = if k == 0 {
                format!(
                    " target <= 0.2: ListContainers {}, ListPodSandbox {}",
                    verdict(rc <= 0.2),
                    verdict(rp <= 0.2)
                )
            } else {
                String::new()
            };
            (format!("{rc:.3}"), format!("{rp:.3}"), t)
        } else {
            ("—".into(), "—".into(), String::new())
        };
        summary.row(
            &format!("ListContainers / ListPodSandbox p99, {total} containers"),
            s.name,
            format!("{:.2} ms / {:.2} ms", ms(p99s[k].0), ms(p99s[k].1)),
            format!("vs containerd 2.x: {ratio_c} / {ratio_p}{target}"),
        );
    }
    Ok(())
}

/// VmRSS (KiB), threads and open fds of `pid`.
fn footprint(pid: i32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:"), field("Threads:"), fds)
}

/// Phase 4: berthd's footprint after 50 and after `cycles` pod
/// create/remove cycles.
async fn growth(s: &mut Side, pid: i32, summary: &mut Summary) -> Result<()> {
    let cycles = env_usize("BERTH_BENCH_CYCLES", 500);
    let first = 50.min(cycles);
    let mut marks = Vec::new();
    let t = Instant::now();
    for i in 0..cycles {
        let (pod, ctr, _) = s.start_pod(&format!("cycle{i}"), SLEEP).await?;
        s.teardown(&pod, Some(&ctr)).await?;
        if i + 1 == first || i + 1 == cycles {
            // Let the shims' exits and the connection drops be processed.
            tokio::time::sleep(Duration::from_secs(2)).await;
            marks.push((i + 1, footprint(pid)));
        }
    }
    println!(
        "\n4. berthd footprint after pod create/remove cycles (RunPodSandbox+CreateContainer+\
         StartContainer, then teardown; {cycles} cycles in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    for (n, (rss, threads, fds)) in &marks {
        println!(
            "after {n:>4} cycles: VmRSS {:.1} MiB, {threads} threads, {fds} open fds",
            *rss as f64 / 1024.0
        );
    }
    if let [(n0, a), (n1, b)] = marks.as_slice() {
        let grew = b.1 > a.1 || b.2 > a.2;
        summary.row(
            &format!("berthd after {n0} / {n1} create/remove cycles"),
            "berthd",
            format!(
                "RSS {:.1} / {:.1} MiB, threads {} / {}, fds {} / {}",
                a.0 as f64 / 1024.0,
                b.0 as f64 / 1024.0,
                a.1,
                b.1,
                a.2,
                b.2
            ),
            format!(
                "RSS {:+.1} MiB; threads/fds growth: {}",
                (b.0 as f64 - a.0 as f64) / 1024.0,
                if grew { "YES (MISSED)" } else { "none (met)" }
            ),
        );
    }
    Ok(())
}
