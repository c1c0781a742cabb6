//! Root tests of seccomp in real containers of the in-process runtime (the
//! busybox bundle fixture): berth's built-in RuntimeDefault profile with and
//! without no_new_privs, for root and for a non-root user, and the refusal
//! of a notify profile.
//!
//! `harness = false`: the runtime starts this binary again as its init
//! helper, so `main` calls `run_helper_if_requested()` first, and the test
//! process is a child subreaper that reaps its containers.

#[path = "common/busybox_bundle.rs"]
mod busybox_bundle;

#[path = "common/cgroupfs.rs"]
mod cgroupfs;
#[path = "common/harnessless.rs"]
mod harnessless;

use std::collections::HashSet;

use anyhow::{Result, ensure};
use berth::runtime::Stdio;
use busybox_bundle::*;
use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, LinuxSeccomp, Spec};

use harnessless::Test;

const TESTS: &[Test] = &[
    (
        "runtime_default_blocks_unshare_and_mount_in_a_container",
        runtime_default_blocks_unshare_and_mount_in_a_container,
    ),
    (
        "runtime_default_for_a_non_root_user_without_no_new_privs",
        runtime_default_for_a_non_root_user_without_no_new_privs,
    ),
    (
        "notify_profile_is_refused_at_create",
        notify_profile_is_refused_at_create,
    ),
];

/// containerd's default capability set.
fn default_caps() -> HashSet<Capability> {
    berth::spec::DEFAULT_CAPABILITIES.into_iter().collect()
}

fn runtime_default() -> LinuxSeccomp {
    berth::spec::default_seccomp_profile(&default_caps(), berth::spec::seccomp::native_arch())
}

/// A spec running `script` with the given capabilities, no_new_privs, user
/// and seccomp profile.
fn spec_with(
    bundle: &Bundle,
    id: &str,
    script: &str,
    caps: &HashSet<Capability>,
    nnp: bool,
    uid: u32,
    seccomp: Option<LinuxSeccomp>,
) -> Spec {
    let mut spec = spec(bundle, id, &["sh", "-c", script]);
    let mut p = spec.process().clone().unwrap();
    let c = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .build()
        .unwrap();
    p.set_capabilities(Some(c));
    p.set_no_new_privileges(Some(nnp));
    let mut user = p.user().clone();
    user.set_uid(uid);
    user.set_gid(uid);
    p.set_user(user);
    spec.set_process(Some(p));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(seccomp);
    spec.set_linux(Some(linux));
    spec
}

fn runtime_default_blocks_unshare_and_mount_in_a_container() -> Result<()> {
    let bundle = busybox_bundle()?;
    // CAP_SYS_ADMIN is granted, so without the filter both calls succeed;
    // the profile is the one for containerd's default set (no SYS_ADMIN).
    let mut caps = default_caps();
    caps.insert(Capability::SysAdmin);
    let script = "busybox unshare -U true; echo unshare=$?; \
                  mount -t tmpfs none /tmp; echo mount=$?; \
                  echo hello; grep Seccomp: /proc/self/status";
    for nnp in [false, true] {
        let id = unique_id("sc-control");
        let spec = spec_with(&bundle, &id, script, &caps, nnp, 0, None);
        let out = run(&bundle, &id, &spec)?;
        ensure!(
            out.stdout == "unshare=0\nmount=0\nhello\nSeccomp:\t0\n",
            "without a profile (nnp={nnp}): {out:?}"
        );
        let id = unique_id("sc-default");
        let spec = spec_with(&bundle, &id, script, &caps, nnp, 0, Some(runtime_default()));
        let out = run(&bundle, &id, &spec)?;
        ensure!(
            out.code == 0 && out.stdout == "unshare=1\nmount=1\nhello\nSeccomp:\t2\n",
            "RuntimeDefault (nnp={nnp}): {out:?}"
        );
        ensure!(
            out.stderr.contains("Operation not permitted")
                && out.stderr.contains("permission denied (are you root?)"),
            "RuntimeDefault (nnp={nnp}) stderr: {:?}",
            out.stderr
        );
    }
    Ok(())
}

fn runtime_default_for_a_non_root_user_without_no_new_privs() -> Result<()> {
    // The kubelet default: no no_new_privs, no CAP_SYS_ADMIN. The filter must
    // go in before the capabilities are dropped (else seccomp() is EACCES),
    // and the profile must allow the remaining set-up (setuid, capset, exec).
    let bundle = busybox_bundle()?;
    let script =
        "id -u; mkdir /tmp/ok && echo made; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status";
    for nnp in [false, true] {
        let id = unique_id("sc-user");
        let spec = spec_with(
            &bundle,
            &id,
            script,
            &default_caps(),
            nnp,
            1000,
            Some(runtime_default()),
        );
        let out = run(&bundle, &id, &spec)?;
        let want = format!("1000\nmade\nNoNewPrivs:\t{}\nSeccomp:\t2\n", u8::from(nnp));
        ensure!(
            out.code == 0 && out.stdout == want,
            "nnp={nnp}: want {want:?}, got {out:?}"
        );
        std::fs::remove_dir(bundle.rootfs.join("tmp/ok"))?;
    }
    Ok(())
}

fn notify_profile_is_refused_at_create() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("sc-notify");
    let profile: LinuxSeccomp = serde_json::from_str(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    )?;
    let spec = spec_with(
        &bundle,
        &id,
        "true",
        &default_caps(),
        true,
        0,
        Some(profile),
    );
    let state = tempfile::Builder::new()
        .prefix(&format!("berth-seccomp-state-{}-", std::process::id()))
        .tempdir()?;
    let r = berth::runtime::Container::create(berth::runtime::CreateOptions {
        id: &id,
        bundle: bundle.path(),
        spec: &spec,
        stdio: Stdio::default(),
        state_dir: state.path(),
    });
    let e = match r {
        Ok((c, _)) => {
            let _ = c.kill(libc::SIGKILL, true);
            let _ = c.delete();
            anyhow::bail!("a notify profile was accepted");
        }
        Err(e) => e,
    };
    ensure!(
        e.to_string().contains("SCMP_ACT_NOTIFY is not supported"),
        "error: {e}"
    );
    // Nothing left behind: no state files, no cgroup.
    ensure!(
        std::fs::read_dir(state.path())?.next().is_none(),
        "state dir not empty"
    );
    for cg in cgroupfs::dirs(&id) {
        ensure!(!cg.exists(), "{} left behind", cg.display());
    }
    Ok(())
}

fn main() {
    berth::runtime::run_helper_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    harnessless::run(
        "runtime_seccomp",
        "namespaces, mounts, cgroups",
        true,
        &args,
        TESTS,
    );
}
