//! Pod network setup + teardown time: berth's built-in mode vs CNI mode
//! (Debian's bridge + host-local + portmap + loopback plugins, run by
//! berth's CNI driver) in the same run, printed side by side with ratios.
//! Each iteration: create + pin a netns (not timed), setup, teardown (timed),
//! remove the netns. Root. `BERTH_BENCH_ITERS` (default 100).
//!
//! This compares berth's two modes in process; the side-by-side run with
//! containerd 1.6's CRI plugin running the same CNI plugins, through the CRI
//! (RunPodSandbox/StopPodSandbox/RemovePodSandbox), is
//! `benches/cri_pod_network.rs`.

#[path = "../tests/common/network.rs"]
mod network;

use std::time::{Duration, Instant};

use network::{Fixture, Mode, tcp};

struct Figures {
    setup: Vec<Duration>,
    teardown: Vec<Duration>,
    total: Vec<Duration>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len() as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(mode: Mode, idx: u32, iters: usize, with_port: bool) -> anyhow::Result<Figures> {
    let fx = Fixture::new(mode, 10 + idx)?;
    let mut f = Figures {
        setup: vec![],
        teardown: vec![],
        total: vec![],
    };
    let warmup = 3;
    let hp = network::free_port();
    for i in 0..iters + warmup {
        let ports = if with_port {
            vec![tcp(hp, 8080, None)]
        } else {
            vec![]
        };
        let req = fx.new_pod(i, ports)?;
        let t0 = Instant::now();
        fx.setup(&req)?;
        let t1 = Instant::now();
        fx.rt
            .block_on(fx.pn().teardown(&req.pod_id, &req.netns_path))?;
        let t2 = Instant::now();
        fx.remove_pod(&req)?;
        if i >= warmup {
            f.setup.push(t1 - t0);
            f.teardown.push(t2 - t1);
            f.total.push(t2 - t0);
        }
    }
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "network_setup bench: needs root (network namespaces, bridges, nftables); skipped"
        );
        return Ok(());
    }
    if std::env::var_os("BERTH_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BERTH_BENCH_LOG"))
            .init();
    }
    let iters: usize = std::env::var("BERTH_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    println!("pod network setup + teardown, {iters} iterations each (dual stack, after 3 warm-up)");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10}",
        "", "setup med", "tdown med", "total med", "total mean"
    );
    for (row, with_port) in [("no hostPort", false), ("1 hostPort", true)] {
        let b = run(Mode::Builtin, 0, iters, with_port)?;
        let c = run(Mode::Cni, 1, iters, with_port)?;
        for (name, f) in [("built-in", &b), ("CNI (bridge+portmap)", &c)] {
            println!(
                "{:<36} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms",
                format!("{name}, {row}"),
                ms(median(&f.setup)),
                ms(median(&f.teardown)),
                ms(median(&f.total)),
                ms(mean(&f.total))
            );
        }
        println!(
            "ratio built-in / CNI, {row}: {:.3} (median total), {:.3} (mean total)",
            ms(median(&b.total)) / ms(median(&c.total)),
            ms(mean(&b.total)) / ms(mean(&c.total))
        );
    }
    println!("containerd 1.6 CRI + the same CNI plugins: `cargo bench --bench cri_pod_network`");
    Ok(())
}
