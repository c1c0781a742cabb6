//! Security contexts through the CRI, in real pods from an image pulled from
//! a real registry: seccomp (RuntimeDefault, Localhost, Unconfined and the
//! deprecated `seccomp_profile_path`), privileged, capabilities,
//! no_new_privs and AppArmor. Every case runs next to its opposite so that
//! each assertion would fail without the feature.

mod common;

use std::path::Path;

use anyhow::{Context, Result, bail};
use common::berthd::Berthd;
use common::cri_images::pull;
use common::cri_pods::{
    PodEnv, Runtime, container_config, create_container, log_text, mounts_containing,
    processes_with, run_pod, wait_exited,
};
use common::oci_image::LayerBuilder;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

/// A tiny static program: `probe ids` prints "<uid> <euid>"; `probe keyctl`
/// calls keyctl(KEYCTL_GET_KEYRING_ID, session keyring, create) and prints
/// "ok" or the error (busybox has no keyctl applet).
const PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "ids") == 0) {
        printf("%d %d\n", (int)getuid(), (int)geteuid());
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "keyctl") == 0) {
        long r = syscall(SYS_keyctl, 0L, -3L, 1L);
        if (r < 0) { printf("keyctl: %s\n", strerror(errno)); return 1; }
        printf("keyctl ok\n");
        return 0;
    }
    return 2;
}
"#;

/// Compiles [`PROBE_C`] statically with the host's gcc.
fn build_probe(dir: &Path) -> Result<Vec<u8>> {
    let src = dir.join("probe.c");
    let out = dir.join("probe");
    std::fs::write(&src, PROBE_C)?;
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("gcc (needed to build the static probe)")?;
    if !st.success() {
        bail!("gcc -static failed: {st}");
    }
    Ok(std::fs::read(&out)?)
}

/// busybox plus a layer with applet links, /mnt, and /bin/probe setuid root.
fn security_image(probe: &[u8]) -> common::oci_image::Image {
    let mut extra = LayerBuilder::new().dir("bin").dir("mnt");
    for tool in [
        "mkdir", "chown", "touch", "id", "mount", "unshare", "grep", "umount",
    ] {
        extra = extra.symlink(&format!("bin/{tool}"), "busybox");
    }
    let extra = extra.file("bin/probe", probe, 0o4755);
    common::cri_images::busybox_with_layer(extra)
}

/// One berthd with the security image pulled and one running pod.
struct Setup {
    env: PodEnv,
    berthd: Berthd,
    rt: Runtime,
    image: String,
    pod: String,
    pod_cfg: cri::PodSandboxConfig,
    _registry: Registry,
}

async fn setup(test: &str, idx: u32, privileged_pod: bool) -> Result<Setup> {
    let registry = Registry::start()?;
    let env = PodEnv::new(test, idx)?;
    let probe = build_probe(env.dirs.tmp.path())?;
    let image = security_image(&probe);
    let reference = common::cri_images::push(&registry, "berth-test/sec", test, &image).await?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let mut pod_cfg = env.pod_config(&format!("{test}pod"), false);
    if privileged_pod {
        let sc = pod_cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("pod security context");
        sc.privileged = true;
    }
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    Ok(Setup {
        env,
        berthd,
        rt,
        image: reference,
        pod,
        pod_cfg,
        _registry: registry,
    })
}

/// Whether this process (like berthd, started by it) holds capability `bit`.
fn own_capabilities_hold(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|m| m & (1 << bit) != 0)
}

/// Whether a line of `log` starts with `start` and contains `text`.
fn has_line(log: &str, start: &str, text: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with(start) && l.contains(text))
}

fn profile(typ: cri::security_profile::ProfileType, localhost_ref: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: typ as i32,
        localhost_ref: localhost_ref.into(),
    }
}

fn seccomp(typ: cri::security_profile::ProfileType) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        seccomp: Some(profile(typ, "")),
        ..Default::default()
    }
}

impl Setup {
    fn config(
        &self,
        name: &str,
        script: &str,
        sc: cri::LinuxContainerSecurityContext,
    ) -> cri::ContainerConfig {
        let mut cfg = container_config(name, &self.image, script);
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        });
        cfg
    }

    /// Creates and starts a container running `script`, waits for its exit;
    /// returns its exit code and log.
    async fn run(
        &mut self,
        name: &str,
        script: &str,
        sc: cri::LinuxContainerSecurityContext,
    ) -> Result<(i32, String)> {
        let cfg = self.config(name, script, sc);
        let id = create_container(&mut self.rt, &self.pod, &self.pod_cfg, cfg).await?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        let s = wait_exited(&mut self.rt, &id).await?;
        let log = log_text(Path::new(&s.log_path));
        Ok((s.exit_code, log))
    }

    /// CreateContainer that must fail: its gRPC status. Nothing of the
    /// container may be left (no listed container, no bundle, no mount).
    async fn create_fails(
        &mut self,
        name: &str,
        sc: cri::LinuxContainerSecurityContext,
    ) -> Result<tonic::Status> {
        let before = self.containers_on_disk();
        let cfg = self.config(name, "echo never", sc);
        let err = match create_container(&mut self.rt, &self.pod, &self.pod_cfg, cfg).await {
            Ok(id) => bail!("container {name} was created ({id}) but must be refused"),
            Err(e) => e
                .downcast::<tonic::Status>()
                .map_err(|e| anyhow::anyhow!("not a gRPC status: {e:#}"))?,
        };
        let listed = self
            .rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        assert!(
            !listed
                .iter()
                .any(|c| c.metadata.as_ref().is_some_and(|m| m.name == name)),
            "refused container {name} is listed: {listed:?}"
        );
        assert_eq!(
            self.containers_on_disk(),
            before,
            "a refused create leaves no bundle"
        );
        Ok(err)
    }

    fn containers_on_disk(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.env.dirs.state.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    async fn finish(mut self) -> Result<()> {
        common::cri_pods::stop_and_remove_pod(&mut self.rt, &self.pod).await?;
        assert!(mounts_containing(&self.pod).is_empty(), "no pod mount left");
        assert!(processes_with(&self.pod).is_empty(), "no shim left");
        assert!(self.env.remove_cgroup_parent().is_empty(), "no cgroup left");
        self.berthd.stop(Signal::SIGTERM)?;
        Ok(())
    }
}

/// The `Seccomp:` mode line of /proc/self/status (0 none, 2 filter).
const SECCOMP_MODE: &str = "grep '^Seccomp:' /proc/self/status";

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_runtime_default_unconfined_and_deprecated_path() -> Result<()> {
    use cri::security_profile::ProfileType;
    let mut s = setup("secdef", 1, false).await?;
    // In a new user namespace a caller without capabilities may mount a
    // tmpfs: this differs between the profiles by seccomp alone.
    let script = format!(
        "{SECCOMP_MODE}; echo ok; \
         unshare -U true && echo unshare-allowed; \
         unshare -U -r -m sh -c 'mount -t tmpfs none /mnt && echo userns-mount-allowed'; \
         mount -t tmpfs none /mnt && echo mount-allowed; \
         probe keyctl; true"
    );

    let (code, log) = s
        .run("default", &script, seccomp(ProfileType::RuntimeDefault))
        .await?;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Seccomp:\t2"), "a filter is installed: {log}");
    assert!(log.contains("\nok"), "ordinary programs run: {log}");
    assert!(!log.contains("allowed"), "RuntimeDefault blocks: {log}");
    assert!(
        has_line(&log, "unshare", "Operation not permitted"),
        "unshare(CLONE_NEWUSER) gets EPERM: {log}"
    );
    assert!(
        // busybox mount words EPERM so.
        has_line(&log, "mount: permission denied", "are you root"),
        "mount gets EPERM: {log}"
    );
    assert!(
        log.contains("keyctl: Operation not permitted"),
        "keyctl gets EPERM: {log}"
    );

    let (code, log) = s
        .run("unconfined", &script, seccomp(ProfileType::Unconfined))
        .await?;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Seccomp:\t0"), "no filter: {log}");
    assert!(log.contains("unshare-allowed"), "{log}");
    assert!(log.contains("userns-mount-allowed"), "{log}");
    assert!(
        !log.contains("keyctl: Operation not permitted"),
        "keyctl is not filtered: {log}"
    );
    // Without CAP_SYS_ADMIN the plain mount still fails (capabilities).
    assert!(!log.contains("\nmount-allowed"), "{log}");

    // The deprecated field, read when `seccomp` is not set.
    #[allow(deprecated)]
    let deprecated = |path: &str| cri::LinuxContainerSecurityContext {
        seccomp_profile_path: path.into(),
        ..Default::default()
    };
    let (_, log) = s
        .run("dep-default", &script, deprecated("runtime/default"))
        .await?;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(!log.contains("allowed"), "{log}");
    let (_, log) = s
        .run("dep-unconfined", &script, deprecated("unconfined"))
        .await?;
    assert!(log.contains("Seccomp:\t0"), "{log}");
    assert!(log.contains("unshare-allowed"), "{log}");

    // A bad deprecated value is refused.
    let err = s
        .create_fails("dep-bad", deprecated("no/such-profile"))
        .await?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("seccomp_profile_path"), "{err:?}");
    s.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_localhost_profile_and_bad_profiles() -> Result<()> {
    use cri::security_profile::ProfileType;
    let mut s = setup("secloc", 2, false).await?;
    let dir = s.env.dirs.tmp.path().join("profiles");
    std::fs::create_dir_all(&dir)?;
    let good = dir.join("no-mkdir.json");
    std::fs::write(
        &good,
        serde_json::to_vec(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{
                "names": ["mkdir", "mkdirat"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13
            }]
        }))?,
    )?;
    let script = "mkdir /tmp/x && echo mkdir-allowed; echo done";
    let localhost = |p: &Path| cri::LinuxContainerSecurityContext {
        seccomp: Some(profile(ProfileType::Localhost, &p.display().to_string())),
        ..Default::default()
    };

    let (code, log) = s.run("local", script, localhost(&good)).await?;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("mkdir: can't create directory '/tmp/x': Permission denied"),
        "the profile's errno (EACCES): {log}"
    );
    assert!(!log.contains("mkdir-allowed"), "{log}");
    assert!(log.contains("done"), "{log}");

    // The same through the deprecated field.
    #[allow(deprecated)]
    let dep = cri::LinuxContainerSecurityContext {
        seccomp_profile_path: format!("localhost/{}", good.display()),
        ..Default::default()
    };
    let (_, log) = s.run("dep-local", script, dep).await?;
    assert!(log.contains("Permission denied"), "{log}");

    // Unconfined: mkdir works.
    let (_, log) = s
        .run("free", script, seccomp(ProfileType::Unconfined))
        .await?;
    assert!(log.contains("mkdir-allowed"), "{log}");

    // A missing file.
    let missing = dir.join("missing.json");
    let err = s.create_fails("missing", localhost(&missing)).await?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&missing.display().to_string())
            && err.message().contains("No such file"),
        "{err:?}"
    );
    // A malformed file.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"defaultAction\": ")?;
    let err = s.create_fails("malformed", localhost(&bad)).await?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&bad.display().to_string()),
        "{err:?}"
    );
    // An unknown action.
    let odd = dir.join("odd.json");
    std::fs::write(
        &odd,
        r#"{"defaultAction": "SCMP_ACT_SOMETIMES", "syscalls": []}"#,
    )?;
    let err = s.create_fails("odd", localhost(&odd)).await?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("SCMP_ACT_SOMETIMES"), "{err:?}");
    // A relative path.
    let err = s
        .create_fails("relative", localhost(Path::new("profiles/x.json")))
        .await?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    s.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_no_new_privs_and_apparmor() -> Result<()> {
    use cri::security_profile::ProfileType;
    let mut s = setup("seccap", 3, false).await?;
    let caps = |add: &[&str], drop: &[&str]| cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: add.iter().map(|c| c.to_string()).collect(),
            drop_capabilities: drop.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let script = "grep '^CapEff:' /proc/self/status; touch /tmp/f; \
                  chown 1:1 /tmp/f && echo chown-allowed; \
                  mount -t tmpfs none /mnt && echo mount-allowed; true";
    let cap_eff = |log: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    };
    const CHOWN: u64 = 1 << 0;
    const SYS_ADMIN: u64 = 1 << 21;

    let (_, log) = s.run("defcaps", script, caps(&[], &[])).await?;
    let default_caps = cap_eff(&log);
    assert_eq!(default_caps & CHOWN, CHOWN, "{log}");
    assert_eq!(default_caps & SYS_ADMIN, 0, "{log}");
    assert!(log.contains("chown-allowed"), "default allows chown: {log}");
    assert!(!log.contains("mount-allowed"), "{log}");

    let (_, log) = s.run("nochown", script, caps(&[], &["CHOWN"])).await?;
    assert_eq!(cap_eff(&log), default_caps & !CHOWN, "{log}");
    assert!(!log.contains("chown-allowed"), "{log}");
    assert!(
        has_line(&log, "chown", "Operation not permitted"),
        "chown fails without CAP_CHOWN: {log}"
    );

    let (_, log) = s.run("dropall", script, caps(&[], &["ALL"])).await?;
    assert_eq!(cap_eff(&log), 0, "{log}");
    assert!(!log.contains("chown-allowed"), "{log}");

    let (_, log) = s.run("addall", script, caps(&["ALL"], &[])).await?;
    let all = cap_eff(&log);
    assert_eq!(all & (CHOWN | SYS_ADMIN), CHOWN | SYS_ADMIN, "{log}");
    assert!(all.count_ones() > default_caps.count_ones(), "{log}");
    assert!(log.contains("chown-allowed"), "{log}");
    assert!(log.contains("mount-allowed"), "{log}");

    let (_, log) = s
        .run("addall-nochown", script, caps(&["ALL"], &["CHOWN"]))
        .await?;
    assert_eq!(cap_eff(&log), all & !CHOWN, "{log}");
    assert!(!log.contains("chown-allowed"), "{log}");
    assert!(log.contains("mount-allowed"), "{log}");

    let (_, log) = s
        .run("sysadmin", script, caps(&["CAP_SYS_ADMIN"], &[]))
        .await?;
    assert_eq!(cap_eff(&log), default_caps | SYS_ADMIN, "{log}");
    assert!(log.contains("mount-allowed"), "{log}");

    // A capability berthd itself lacks (none on this machine has
    // CAP_SYS_RESOURCE) is refused by name rather than failing in the shim.
    if !own_capabilities_hold(24) {
        let err = s
            .create_fails("sysresource", caps(&["SYS_RESOURCE"], &[]))
            .await?;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("SYS_RESOURCE"), "{err:?}");
    }

    // no_new_privs: /bin/probe is setuid root; run as uid 1000.
    let as_user = |nnp: bool| cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        no_new_privs: nnp,
        ..Default::default()
    };
    let (code, log) = s
        .run("suid", "ls -l /bin/probe; probe ids", as_user(false))
        .await?;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.lines().any(|l| l == "1000 0"),
        "the setuid binary gains euid 0: {log}"
    );
    let (code, log) = s.run("suid-nnp", "probe ids", as_user(true)).await?;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.lines().any(|l| l == "1000 1000"),
        "no_new_privs keeps the caller's uid: {log}"
    );

    // AppArmor: where the kernel has none (as here), RuntimeDefault means
    // unconfined (as containerd does) and a Localhost profile is refused.
    let apparmor = |typ: ProfileType, r: &str| cri::LinuxContainerSecurityContext {
        apparmor: Some(profile(typ, r)),
        ..Default::default()
    };
    let apparmor_on = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.starts_with('Y'));
    if apparmor_on {
        println!(
            "skipped: AppArmor is enabled here; the AppArmor-off cases need a host without it"
        );
    } else {
        let script = "cat /proc/self/attr/current 2>/dev/null; echo ran";
        let (code, log) = s
            .run(
                "aa-default",
                script,
                apparmor(ProfileType::RuntimeDefault, ""),
            )
            .await?;
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("ran"), "RuntimeDefault runs unconfined: {log}");
        #[allow(deprecated)]
        let deprecated_aa = cri::LinuxContainerSecurityContext {
            apparmor_profile: "runtime/default".into(),
            ..Default::default()
        };
        let (code, log) = s.run("aa-dep", "echo ran", deprecated_aa).await?;
        assert_eq!((code, log.as_str()), (0, "ran"));
        let err = s
            .create_fails(
                "aa-local",
                apparmor(ProfileType::Localhost, "berth-test-profile"),
            )
            .await?;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("AppArmor is not enabled")
                && err.message().contains("localhost/berth-test-profile"),
            "{err:?}"
        );
    }
    let (code, log) = s
        .run(
            "aa-unconfined",
            "echo ok",
            apparmor(ProfileType::Unconfined, ""),
        )
        .await?;
    assert_eq!((code, log.as_str()), (0, "ok"));
    s.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_container_mounts_and_sees_host_devices() -> Result<()> {
    use cri::security_profile::ProfileType;
    let mut s = setup("secpriv", 4, true).await?;
    let script = "grep '^Seccomp:' /proc/self/status; \
                  mount -t tmpfs none /mnt && echo mount-allowed; \
                  grep -q ' /sys sysfs rw' /proc/mounts && echo sys-rw; \
                  test -c /dev/kmsg && echo has-kmsg; true";
    let sc = |privileged: bool| cri::LinuxContainerSecurityContext {
        privileged,
        // Ignored for a privileged container.
        seccomp: Some(profile(ProfileType::RuntimeDefault, "")),
        ..Default::default()
    };
    let (code, log) = s.run("priv", script, sc(true)).await?;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("Seccomp:\t0"),
        "no seccomp when privileged: {log}"
    );
    assert!(log.contains("mount-allowed"), "privileged can mount: {log}");
    assert!(log.contains("sys-rw"), "writable sysfs: {log}");
    assert!(log.contains("has-kmsg"), "host devices: {log}");

    let (code, log) = s.run("plain", script, sc(false)).await?;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(!log.contains("mount-allowed"), "{log}");
    assert!(!log.contains("sys-rw"), "{log}");
    assert!(!log.contains("has-kmsg"), "{log}");

    // A CRI device by host path, in a container that is not privileged.
    let mut cfg = s.config(
        "withdev",
        "ls -l /dev/kmsg2; test -c /dev/kmsg2 && echo has-dev",
        sc(false),
    );
    cfg.devices = vec![cri::Device {
        host_path: "/dev/kmsg".into(),
        container_path: "/dev/kmsg2".into(),
        permissions: "r".into(),
    }];
    let id = create_container(&mut s.rt, &s.pod, &s.pod_cfg, cfg).await?;
    s.rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let st = wait_exited(&mut s.rt, &id).await?;
    let log = log_text(Path::new(&st.log_path));
    assert!(log.contains("has-dev"), "{log}");
    assert!(log.contains("1,  11"), "the host's major/minor: {log}");
    s.finish().await
}
