//! Side-by-side: the full lifecycle of a busybox `true` container (create,
//! start, wait, delete; five namespaces, pivot_root, /proc /dev /sys mounts,
//! a v1 cgroup) through berth's in-process runtime and through `runc run`
//! with the very same bundle and config.json. Prints the medians and their
//! ratio. Not part of `cargo test`; run as root:
//!
//! ```text
//! cargo bench --bench runtime_lifecycle -- [iterations]
//! ```

#[path = "../tests/common/busybox_bundle.rs"]
mod busybox_bundle;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use berth::runtime::{Container, CreateOptions, Stdio};
use busybox_bundle::*;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn berth_once(bundle: &Bundle, n: usize) -> Result<Duration> {
    let id = format!("berth-bench-runtime-{}-{n}", std::process::id());
    let spec = spec(bundle, &id, &["true"]);
    let state = tempfile::tempdir()?;
    let t = Instant::now();
    let (c, _) = Container::create(CreateOptions {
        id: &id,
        bundle: bundle.path(),
        spec: &spec,
        stdio: Stdio::default(),
        state_dir: state.path(),
        systemd_cgroup: false,
    })?;
    let t_create = t.elapsed();
    c.start()?;
    let code = wait_exit(c.pid)?;
    let t_run = t.elapsed();
    c.delete()?;
    let d = t.elapsed();
    if std::env::var_os("BERTH_BENCH_PHASES").is_some() {
        eprintln!(
            "create {:.2} ms, start+exit {:.2} ms, delete {:.2} ms",
            t_create.as_secs_f64() * 1e3,
            (t_run - t_create).as_secs_f64() * 1e3,
            (d - t_run).as_secs_f64() * 1e3
        );
    }
    if code != 0 {
        bail!("berth: true exited {code}");
    }
    Ok(d)
}

fn runc_once(bundle: &Bundle, root: &std::path::Path, n: usize) -> Result<Duration> {
    let id = format!("berth-bench-runc-{}-{n}", std::process::id());
    let spec = spec(bundle, &id, &["true"]);
    runc_run(bundle, root, &id, &spec)
}

fn main() -> Result<()> {
    berth::runtime::run_helper_if_requested();
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    nix::sys::prctl::set_child_subreaper(true)?;
    let bundle = busybox_bundle()?;
    let runc_root = tempfile::tempdir()?;
    // Warm-up (page cache, the helper binary opened once per process, cgroup roots).
    berth_once(&bundle, 0)?;
    runc_once(&bundle, runc_root.path(), 0)?;
    let (mut b, mut r) = (Vec::new(), Vec::new());
    for n in 1..=iterations {
        b.push(berth_once(&bundle, n)?);
        r.push(runc_once(&bundle, runc_root.path(), n)?);
    }
    let (mb, mr) = (median(&mut b), median(&mut r));
    println!(
        "lifecycle of `true` ({iterations} runs each, alternating): berth runtime median {:.2} ms, runc median {:.2} ms, ratio berth/runc {:.2}",
        mb.as_secs_f64() * 1e3,
        mr.as_secs_f64() * 1e3,
        mb.as_secs_f64() / mr.as_secs_f64()
    );
    Ok(())
}
