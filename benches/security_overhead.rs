//! What the security profiles add at start-up, through berthd and its CRI,
//! side by side in one run (interleaved):
//! - container start (CreateContainer + StartContainer of busybox `true`,
//!   in a pod whose shim runs already) with the RuntimeDefault seccomp
//!   profile vs Unconfined: each new pod has a new shim, so the profile
//!   comes from the node's on-disk cache of compiled filters (the very
//!   first one compiles, printed apart);
//! - RunPodSandbox of a user-namespaced pod vs a plain one, and container
//!   start in each (idmapped rootfs layers and pod files).
//!
//! Prints medians and the added milliseconds. Not part of `cargo test`;
//! run as root, with the release shim built first (berthd looks for it next
//! to itself): `cargo build --release -p containerd-shim-berth-v2 &&
//! cargo bench --bench security_overhead -- [iterations]`.
//! (containerd 1.6 has no user-namespaced pods, so there is no runc column.)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, run_pod, stop_and_remove_pod, wait_exited,
};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn with_userns(mut cfg: cri::PodSandboxConfig, base: u32) -> cri::PodSandboxConfig {
    let m = vec![cri::IdMapping {
        host_id: base,
        container_id: 0,
        length: 65536,
    }];
    if let Some(ns) = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.userns_options = Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: m.clone(),
            gids: m,
        });
    }
    cfg
}

/// CreateContainer + StartContainer of `true` in `pod`; waits for the exit
/// (not timed) and removes the container.
async fn start_true(
    rt: &mut Runtime,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    seccomp: cri::security_profile::ProfileType,
) -> Result<Duration> {
    let mut cfg = container_config(name, image, "true");
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: seccomp as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let t = Instant::now();
    let id = create_container(rt, pod, pod_cfg, cfg).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let d = t.elapsed();
    let s = wait_exited(rt, &id).await?;
    anyhow::ensure!(s.exit_code == 0, "{name} exited {}", s.exit_code);
    rt.remove_container(cri::RemoveContainerRequest { container_id: id })
        .await?;
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<()> {
    use cri::security_profile::ProfileType;
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let registry = Registry::start()?;
    let env = PodEnv::new("secbench", 7)?;
    // The pods' root must pass through the temp dir to berthd's state dir.
    std::fs::set_permissions(
        env.dirs.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )?;
    let image = busybox_image("", "secbench", Compression::Gzip);
    let reference = push(&registry, "berth-bench/sec", "v1", &image).await?;
    let mut berthd = env.start()?;
    pull(&mut berthd.images().await?, &reference, None).await?;
    let mut rt = berthd.runtime().await?;

    // The first RuntimeDefault container of the node compiles the profile.
    let warm_cfg = env.pod_config("secbenchwarm", false);
    let warm = run_pod(&mut rt, &warm_cfg).await?;
    let first = start_true(
        &mut rt,
        &warm,
        &warm_cfg,
        &reference,
        "first",
        ProfileType::RuntimeDefault,
    )
    .await?;
    start_true(
        &mut rt,
        &warm,
        &warm_cfg,
        &reference,
        "warm",
        ProfileType::Unconfined,
    )
    .await?;
    stop_and_remove_pod(&mut rt, &warm).await?;

    let (mut pod_plain, mut pod_userns) = (vec![], vec![]);
    let (mut unconfined, mut default, mut in_userns) = (vec![], vec![], vec![]);
    for n in 0..iterations {
        let plain_cfg = env.pod_config(&format!("secbenchp{n}"), false);
        let t = Instant::now();
        let plain = run_pod(&mut rt, &plain_cfg).await?;
        pod_plain.push(t.elapsed());

        let userns_cfg = with_userns(env.pod_config(&format!("secbenchu{n}"), false), 600_000);
        let t = Instant::now();
        let userns = run_pod(&mut rt, &userns_cfg).await?;
        pod_userns.push(t.elapsed());

        // Each pod's shim is started by an untimed first container.
        start_true(
            &mut rt,
            &plain,
            &plain_cfg,
            &reference,
            "shim",
            ProfileType::Unconfined,
        )
        .await?;
        start_true(
            &mut rt,
            &userns,
            &userns_cfg,
            &reference,
            "shim",
            ProfileType::Unconfined,
        )
        .await?;
        // Alternate which goes first.
        let (a, b) = if n % 2 == 0 {
            (ProfileType::RuntimeDefault, ProfileType::Unconfined)
        } else {
            (ProfileType::Unconfined, ProfileType::RuntimeDefault)
        };
        for p in [a, b] {
            let d = start_true(
                &mut rt,
                &plain,
                &plain_cfg,
                &reference,
                &format!("c{p:?}"),
                p,
            )
            .await?;
            if p == ProfileType::RuntimeDefault {
                default.push(d);
            } else {
                unconfined.push(d);
            }
        }
        in_userns.push(
            start_true(
                &mut rt,
                &userns,
                &userns_cfg,
                &reference,
                "cu",
                ProfileType::Unconfined,
            )
            .await?,
        );
        stop_and_remove_pod(&mut rt, &plain).await?;
        stop_and_remove_pod(&mut rt, &userns).await?;
    }
    let (pp, pu) = (median(&mut pod_plain), median(&mut pod_userns));
    let (cu, cd, cn) = (
        median(&mut unconfined),
        median(&mut default),
        median(&mut in_userns),
    );
    println!(
        "through berthd, {iterations} rounds (interleaved), medians:\n  \
         first RuntimeDefault container of the node (profile compiled): {:.2} ms\n  \
         container start, plain pod: Unconfined {cu:.2} ms, RuntimeDefault {cd:.2} ms (added {:+.2} ms)\n  \
         RunPodSandbox: plain {pp:.2} ms, user-namespaced {pu:.2} ms (added {:+.2} ms)\n  \
         container start (Unconfined): plain pod {cu:.2} ms, user-namespaced pod {cn:.2} ms (added {:+.2} ms)",
        first.as_secs_f64() * 1e3,
        cd - cu,
        pu - pp,
        cn - cu,
    );
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
