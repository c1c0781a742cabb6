//! Pod start latency and memory, side by side in one run, through the same
//! `k8s-cri` client: berthd (+ containerd-shim-berth-v2) vs Debian's
//! containerd 1.6 with its CRI plugin + runc (+ containerd-shim-runc-v2 and
//! a busybox-built pause image).
//!
//! 1. Start: RunPodSandbox + CreateContainer + StartContainer (`sleep`,
//!    image already pulled, host network); teardown: StopContainer(0) +
//!    RemoveContainer + StopPodSandbox + RemovePodSandbox. The runtimes take
//!    turns, one pod each per round; p50/p99 of each and the ratios.
//! 2. Memory: 50 such pods running on one runtime at a time; the summed
//!    VmRSS and Pss of the daemon and its shims (and, for containerd, of the
//!    pause processes, which berth does not have).
//!
//! Root. `cargo build --release -p containerd-shim-berth-v2 && cargo bench
//! --bench cri_pod_start`. `BERTH_BENCH_ITERS` (default 20) and
//! `BERTH_BENCH_PODS` (default 50) set the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::containerd_cri::{ContainerdCri, memory_sum_kib, processes};
use common::cri_bench::{SideBySide, Target, env_usize, ms, pct, preflight};
use common::cri_pods::PodEnv;

/// One timed cycle: (start, teardown, teardown steps).
async fn cycle(t: &mut Target, name: &str) -> Result<(Duration, Duration, [Duration; 4])> {
    let t0 = Instant::now();
    let (pod, ctr) = t.start_sleeper(name, true).await?;
    let t1 = Instant::now();
    let steps = t.teardown(&pod, Some(&ctr)).await?;
    Ok((t1 - t0, t1.elapsed(), steps))
}

/// containerd-shim-berth-v2 processes berthd started (their `-address` is
/// under berthd's temp dir).
fn berth_shims(tmp: &str) -> Vec<i32> {
    processes(|args| {
        args.first()
            .is_some_and(|a| a.contains("containerd-shim-berth-v2"))
            && args
                .windows(2)
                .any(|w| w[0] == "-address" && w[1].contains(tmp))
    })
    .into_iter()
    .map(|(p, _)| p)
    .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !preflight("cri_pod_start")? {
        return Ok(());
    }
    let iters = env_usize("BERTH_BENCH_ITERS", 20);
    let pods = env_usize("BERTH_BENCH_PODS", 50);

    let setup = SideBySide::start("podstart", 0, 0).await?;
    let (env, berthd, ctd) = (&setup.env, &setup.berthd, &setup.ctd);
    let mut targets = setup.targets().await?;

    let result = run(&mut targets, env, berthd, ctd, iters, pods).await;
    if result.is_err() {
        eprintln!("containerd log tail:\n{}", ctd.log_tail());
    }
    let _ = ctd.remove_all_pods().await;
    result
}

async fn run(
    targets: &mut [Target; 2],
    env: &PodEnv,
    berthd: &common::berthd::Berthd,
    ctd: &ContainerdCri,
    iters: usize,
    pods: usize,
) -> Result<()> {
    // 1. Latency, the runtimes taking turns (2 warm-up rounds not counted).
    let warmup = 2;
    let mut start = [vec![], vec![]];
    let mut down = [vec![], vec![]];
    let mut steps: [[Vec<Duration>; 4]; 2] = Default::default();
    for i in 0..iters + warmup {
        for (k, t) in targets.iter_mut().enumerate() {
            let (s, d, st) = cycle(t, &format!("lat{i}")).await?;
            if i >= warmup {
                start[k].push(s);
                down[k].push(d);
                for (j, v) in st.into_iter().enumerate() {
                    steps[k][j].push(v);
                }
            }
        }
    }
    println!(
        "pod start (RunPodSandbox+CreateContainer+StartContainer, host network, image present) \
         and teardown (Stop/Remove container + Stop/Remove pod), {iters} rounds after {warmup} warm-up"
    );
    println!(
        "{:<28} {:>11} {:>11} {:>11} {:>11}",
        "", "start p50", "start p99", "tdown p50", "tdown p99"
    );
    for (k, t) in targets.iter().enumerate() {
        println!(
            "{:<28} {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>9.1}ms",
            t.name,
            ms(pct(&start[k], 50)),
            ms(pct(&start[k], 99)),
            ms(pct(&down[k], 50)),
            ms(pct(&down[k], 99))
        );
    }
    for (k, t) in targets.iter().enumerate() {
        println!(
            "{:<28} teardown steps p50: StopContainer {:.1}ms, RemoveContainer {:.1}ms, StopPodSandbox {:.1}ms, RemovePodSandbox {:.1}ms",
            t.name,
            ms(pct(&steps[k][0], 50)),
            ms(pct(&steps[k][1], 50)),
            ms(pct(&steps[k][2], 50)),
            ms(pct(&steps[k][3], 50))
        );
    }
    println!(
        "ratio berthd / containerd: start p50 {:.3}, start p99 {:.3}, teardown p50 {:.3}, teardown p99 {:.3} (target start <= 0.25)",
        ms(pct(&start[0], 50)) / ms(pct(&start[1], 50)),
        ms(pct(&start[0], 99)) / ms(pct(&start[1], 99)),
        ms(pct(&down[0], 50)) / ms(pct(&down[1], 50)),
        ms(pct(&down[0], 99)) / ms(pct(&down[1], 99)),
    );

    // 2. Memory with `pods` pods running, one runtime at a time.
    let tmp = env.dirs.tmp.path().display().to_string();
    let mut figures = Vec::new();
    for (k, t) in targets.iter_mut().enumerate() {
        let mut running = Vec::new();
        for i in 0..pods {
            running.push(t.start_sleeper(&format!("mem{i}"), true).await?);
        }
        // Let start-up garbage settle (Go GC, allocator) before reading.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (daemon, shims, extra) = if k == 0 {
            (berthd.pid().as_raw(), berth_shims(&tmp), vec![])
        } else {
            (ctd.pid(), ctd.shim_pids(), ctd.sandbox_pids())
        };
        let d = memory_sum_kib(&[daemon]);
        let s = memory_sum_kib(&shims);
        let x = memory_sum_kib(&extra);
        println!(
            "{:<28} {pods} pods: daemon RSS {:.1} MiB (Pss {:.1}); {} shims RSS {:.1} MiB (Pss {:.1}, {:.2} MiB/shim RSS){}",
            t.name,
            mib(d.0),
            mib(d.1),
            shims.len(),
            mib(s.0),
            mib(s.1),
            mib(s.0) / shims.len().max(1) as f64,
            if extra.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} pause processes RSS {:.1} MiB (Pss {:.1})",
                    extra.len(),
                    mib(x.0),
                    mib(x.1)
                )
            }
        );
        figures.push((d.0 + s.0, d.1 + s.1, d.0 + s.0 + x.0, d.1 + s.1 + x.1));
        for (pod, ctr) in running {
            t.teardown(&pod, Some(&ctr)).await?;
        }
    }
    let (b, c) = (figures[0], figures[1]);
    println!(
        "memory at {pods} pods, berthd+shims: RSS {:.1} MiB, Pss {:.1} MiB; containerd+shims: RSS {:.1} MiB, Pss {:.1} MiB; +pause: RSS {:.1} MiB, Pss {:.1} MiB",
        mib(b.0),
        mib(b.1),
        mib(c.0),
        mib(c.1),
        mib(c.2),
        mib(c.3)
    );
    println!(
        "ratio berth / containerd (daemon+shims): RSS {:.3}, Pss {:.3}; vs containerd+shims+pause: RSS {:.3}, Pss {:.3} (target <= 0.333)",
        b.0 as f64 / c.0 as f64,
        b.1 as f64 / c.1 as f64,
        b.0 as f64 / c.2 as f64,
        b.1 as f64 / c.3 as f64
    );
    Ok(())
}
