//! Side by side, in one run, through one real containerd 1.6:
//! - the full lifecycle of a busybox `true` container (`ctr run --rm`) with
//!   io.containerd.berth.v2 and with io.containerd.runc.v2 (Debian runc),
//!   median of each and the ratio;
//! - the resident memory of one idle shim holding a `sleep` container.
//!
//! Run as root, with the shim as it is installed (deploy/build-shim.sh: static
//! release build): `BERTH_SHIM_BIN=$(deploy/build-shim.sh) cargo bench --bench
//! shim_lifecycle` (without BERTH_SHIM_BIN: target/release's shim, which
//! `cargo build --release -p containerd-shim-berth-v2` links dynamically;
//! BERTH_BENCH_RUNS sets the iterations).

#[path = "../tests/common/busybox_archive.rs"]
mod busybox_archive;
#[path = "../tests/common/containerd.rs"]
mod containerd;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use busybox_archive::IMAGE_REF;
use containerd::{BERTH_RUNTIME, Containerd, RUNC_RUNTIME, unique, wait_until};

fn lifecycle(c: &Containerd, runtime: &str) -> Result<Duration> {
    let id = unique("bench");
    let t = Instant::now();
    c.ctr_ok(&["run", "--rm", "--runtime", runtime, IMAGE_REF, &id, "true"])?;
    let took = t.elapsed();
    // Untimed: let the shim finish whatever it does after ctr returned (a
    // shim may release the rootfs in the background) before the next run.
    wait_until(Duration::from_secs(30), || c.shim_pids().is_empty());
    Ok(took)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Resident memory of a process, KiB.
#[derive(Clone, Copy)]
struct Memory {
    /// VmRSS: every resident page it maps, shared or not.
    rss: u64,
    /// Pss: shared pages divided among the processes that map them.
    pss: u64,
    /// RssAnon: its private, unreclaimable memory (heap, stacks, dirtied data).
    anon: u64,
}

fn memory_kib(pid: i32) -> Result<Memory> {
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss: field(&status, "VmRSS:").context("VmRSS")?,
        pss: field(&rollup, "Pss:").context("Pss")?,
        anon: field(&status, "RssAnon:").context("RssAnon")?,
    })
}

fn shim_of(c: &Containerd, binary: &str) -> Option<i32> {
    c.shim_pids().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmd| String::from_utf8_lossy(&cmd).contains(binary))
            .unwrap_or(false)
    })
}

fn idle_shim_memory(c: &Containerd, runtime: &str, binary: &str) -> Result<Memory> {
    let id = unique("idle");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        IMAGE_REF,
        &id,
        "sleep",
        "100000",
    ])?;
    let mut pid = None;
    wait_until(Duration::from_secs(30), || {
        pid = shim_of(c, binary);
        pid.is_some()
    });
    let pid = pid.with_context(|| format!("no {binary} process"))?;
    // Let it settle into idle.
    std::thread::sleep(Duration::from_secs(2));
    let mem = memory_kib(pid)?;
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id])?;
    wait_until(Duration::from_secs(30), || {
        c.ctr_ok(&["task", "ls"])
            .map(|o| {
                o.lines()
                    .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
            })
            .unwrap_or(false)
    });
    c.ctr_ok(&["task", "rm", &id])?;
    c.ctr_ok(&["containers", "rm", &id])?;
    wait_until(Duration::from_secs(30), || shim_of(c, binary).is_none());
    Ok(mem)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench runs containers: run it as root");
    }
    let runs: usize = std::env::var("BERTH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let c = Containerd::start()?;
    c.import_busybox()?;
    println!("shim lifecycle bench: {runs} runs of `ctr run --rm IMAGE true` per runtime");
    println!("berth shim: {}", containerd::shim_binary().display());
    // Warm-up: image unpack, page cache, first cgroup creation.
    for _ in 0..3 {
        lifecycle(&c, BERTH_RUNTIME)?;
        lifecycle(&c, RUNC_RUNTIME)?;
    }
    let (mut berth, mut runc) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        berth.push(lifecycle(&c, BERTH_RUNTIME)?);
        runc.push(lifecycle(&c, RUNC_RUNTIME)?);
    }
    let (mb, mr) = (median(&mut berth), median(&mut runc));
    println!(
        "lifecycle median: berth {:.1} ms, runc {:.1} ms, ratio berth/runc {:.2}",
        mb.as_secs_f64() * 1e3,
        mr.as_secs_f64() * 1e3,
        mb.as_secs_f64() / mr.as_secs_f64()
    );
    let b = idle_shim_memory(&c, BERTH_RUNTIME, "containerd-shim-berth-v2")?;
    let r = idle_shim_memory(&c, RUNC_RUNTIME, "containerd-shim-runc-v2")?;
    let ratio = |x: u64, y: u64| x as f64 / y as f64;
    println!(
        "idle shim holding `sleep`: berth RSS {} KiB / PSS {} KiB / anon {} KiB, \
         runc shim RSS {} KiB / PSS {} KiB / anon {} KiB, \
         ratio RSS {:.2}, PSS {:.2}, anon {:.2}",
        b.rss,
        b.pss,
        b.anon,
        r.rss,
        r.pss,
        r.anon,
        ratio(b.rss, r.rss),
        ratio(b.pss, r.pss),
        ratio(b.anon, r.anon)
    );
    Ok(())
}
