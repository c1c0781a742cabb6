//! What seccomp costs at container start, side by side in one run: the
//! lifecycle of a busybox `true` container (create, start, wait, delete)
//! with berth's RuntimeDefault profile and unconfined, through berth's
//! in-process runtime and through `runc run` with the same bundle and
//! config.json; plus the profile compile alone. Prints medians, the added
//! time and ratios. Not part of `cargo test`; run as root:
//!
//! ```text
//! cargo bench --bench seccomp_overhead -- [iterations]
//! ```

#[path = "../tests/common/busybox_bundle.rs"]
mod busybox_bundle;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use berth::runtime::{Container, CreateOptions, Stdio};
use busybox_bundle::*;
use oci_spec::runtime::{LinuxSeccomp, Spec};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn runtime_default() -> LinuxSeccomp {
    let caps = berth::spec::DEFAULT_CAPABILITIES.into_iter().collect();
    berth::spec::default_seccomp_profile(&caps, berth::spec::seccomp::native_arch())
}

fn spec_for(bundle: &Bundle, id: &str, seccomp: Option<&LinuxSeccomp>) -> Spec {
    let mut spec = spec(bundle, id, &["true"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(seccomp.cloned());
    spec.set_linux(Some(linux));
    spec
}

fn berth_once(bundle: &Bundle, n: &str, seccomp: Option<&LinuxSeccomp>) -> Result<Duration> {
    let id = format!("berth-bench-seccomp-{}-{n}", std::process::id());
    let spec = spec_for(bundle, &id, seccomp);
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
    c.start()?;
    let code = wait_exit(c.pid)?;
    c.delete()?;
    let d = t.elapsed();
    if code != 0 {
        bail!("berth: true exited {code}");
    }
    Ok(d)
}

fn runc_once(
    bundle: &Bundle,
    root: &std::path::Path,
    n: &str,
    seccomp: Option<&LinuxSeccomp>,
) -> Result<Duration> {
    let id = format!("berth-bench-seccomp-runc-{}-{n}", std::process::id());
    let spec = spec_for(bundle, &id, seccomp);
    runc_run(bundle, root, &id, &spec)
}

fn main() -> Result<()> {
    berth::runtime::run_helper_if_requested();
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    nix::sys::prctl::set_child_subreaper(true)?;
    let profile = runtime_default();

    let mut compile = Vec::new();
    let mut instructions = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let p = berth::runtime::seccomp::prepare(&profile)?;
        compile.push(t.elapsed());
        instructions = p.instructions();
    }
    println!(
        "RuntimeDefault profile compile (libseccomp → BPF, {instructions} instructions): median {:.3} ms over 200",
        ms(median(&mut compile))
    );

    let bundle = busybox_bundle()?;
    let runc_root = tempfile::tempdir()?;
    let prof = Some(&profile);
    berth_once(&bundle, "warm", None)?;
    berth_once(&bundle, "warm-sc", prof)?;
    runc_once(&bundle, runc_root.path(), "warm", None)?;
    let (mut bu, mut bd, mut ru, mut rd) = (vec![], vec![], vec![], vec![]);
    for n in 1..=iterations {
        bu.push(berth_once(&bundle, &format!("u{n}"), None)?);
        bd.push(berth_once(&bundle, &format!("d{n}"), prof)?);
        ru.push(runc_once(
            &bundle,
            runc_root.path(),
            &format!("u{n}"),
            None,
        )?);
        rd.push(runc_once(
            &bundle,
            runc_root.path(),
            &format!("d{n}"),
            prof,
        )?);
    }
    let (bu, bd, ru, rd) = (
        median(&mut bu),
        median(&mut bd),
        median(&mut ru),
        median(&mut rd),
    );
    println!(
        "lifecycle of `true` ({iterations} runs each, interleaved), medians:\n  \
         berth unconfined {:.2} ms, RuntimeDefault {:.2} ms (added {:+.2} ms)\n  \
         runc  unconfined {:.2} ms, RuntimeDefault {:.2} ms (added {:+.2} ms)\n  \
         ratio berth/runc: unconfined {:.2}, RuntimeDefault {:.2}",
        ms(bu),
        ms(bd),
        ms(bd) - ms(bu),
        ms(ru),
        ms(rd),
        ms(rd) - ms(ru),
        ms(bu) / ms(ru),
        ms(bd) / ms(rd)
    );
    Ok(())
}
