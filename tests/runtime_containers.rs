//! Root integration tests of the in-process runtime: real namespaces,
//! mounts, cgroups and processes, in a busybox rootfs built by the test.
//!
//! `harness = false`: the runtime starts this very binary again as its init
//! helper, so `main` must call `run_helper_if_requested()` before anything
//! else, and the test process must be a child subreaper (the containers are
//! its children and it reaps them). Tests run one after the other; pass
//! substrings as arguments to run only the matching ones.

#[path = "common/busybox_bundle.rs"]
mod busybox_bundle;

#[path = "common/cgroupfs.rs"]
mod cgroupfs;
#[path = "common/harnessless.rs"]
mod harnessless;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use berth::runtime::Stdio;
use busybox_bundle::*;
use oci_spec::runtime::{
    LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder,
    Process, Spec, UserBuilder,
};

use harnessless::Test;

const TESTS: &[Test] = &[
    ("output_and_exit_codes", output_and_exit_codes),
    ("env_cwd_and_args", env_cwd_and_args),
    (
        "parallel_creates_from_threads",
        parallel_creates_from_threads,
    ),
    ("kill_init_and_kill_all", kill_init_and_kill_all),
    (
        "lifecycle_errors_and_idempotent_delete",
        lifecycle_errors_and_idempotent_delete,
    ),
    ("user_and_groups", user_and_groups),
    ("hostname_and_namespaces", hostname_and_namespaces),
    (
        "readonly_rootfs_refuses_writes",
        readonly_rootfs_refuses_writes,
    ),
    ("masked_and_readonly_paths", masked_and_readonly_paths),
    (
        "bind_mount_options_and_propagation",
        bind_mount_options_and_propagation,
    ),
    (
        "capabilities_visible_in_status",
        capabilities_visible_in_status,
    ),
    (
        "capabilities_without_bounding_drop_all",
        capabilities_without_bounding_drop_all,
    ),
    (
        "bidirectional_mount_with_shared_rootfs_parent",
        bidirectional_mount_with_shared_rootfs_parent,
    ),
    (
        "seccomp_profile_for_init_and_exec",
        seccomp_profile_for_init_and_exec,
    ),
    ("rlimits_umask_and_devices", rlimits_umask_and_devices),
    (
        "device_cgroup_refuses_unlisted_devices",
        device_cgroup_refuses_unlisted_devices,
    ),
    (
        "unprivileged_limits_are_clamped",
        unprivileged_limits_are_clamped,
    ),
    ("exec_into_running_container", exec_into_running_container),
    ("terminal_for_init_and_exec", terminal_for_init_and_exec),
    (
        "setup_error_is_reported_and_cleaned_up",
        setup_error_is_reported_and_cleaned_up,
    ),
    (
        "security_no_fd_leaks_into_container",
        security_no_fd_leaks_into_container,
    ),
    (
        "security_container_cannot_reach_runtime_binary",
        security_container_cannot_reach_runtime_binary,
    ),
    (
        "security_symlink_mount_destination_stays_in_rootfs",
        security_symlink_mount_destination_stays_in_rootfs,
    ),
    ("user_namespace", user_namespace),
    ("time_and_cgroup_namespaces", time_and_cgroup_namespaces),
    ("join_namespaces_by_path", join_namespaces_by_path),
    ("cgroup_v2_clone_into", cgroup_v2_clone_into),
    ("cgroup_v2_clone_into_inner", cgroup_v2_clone_into_inner),
];

fn set_process(spec: &mut Spec, f: impl FnOnce(&mut Process)) {
    let mut p = spec.process().clone().unwrap();
    f(&mut p);
    spec.set_process(Some(p));
}

fn piped() -> Result<(Stdio, OwnedFd, OwnedFd)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
            terminal: false,
        },
        out_r,
        err_r,
    ))
}

fn kill_init_and_kill_all() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("kill");
    let spec = spec(&bundle, &id, &["sleep", "1000"]);
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.start()?;
    c.container.kill(libc::SIGKILL, false)?;
    let code = c.wait()?;
    ensure!(code == 137, "exit code after SIGKILL: {code}");
    drop(c);

    let id = unique_id("killall");
    let spec = spec_for(
        &bundle,
        &id,
        &["sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.start()?;
    // Wait until all three processes are in the cgroup.
    let mut pids = vec![];
    // A bound against hanging, not a timing check.
    for _ in 0..6000 {
        pids = c.container.pids()?;
        if pids.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ensure!(pids.len() == 3, "pids in the cgroup: {pids:?}");
    ensure!(
        pids.contains(&c.container.pid),
        "{pids:?} lacks the init {}",
        c.container.pid
    );
    c.container.kill(libc::SIGKILL, true)?;
    let code = c.wait()?;
    ensure!(code == 137, "exit code after kill --all: {code}");
    Ok(())
}

fn spec_for(bundle: &Bundle, id: &str, args: &[&str]) -> Spec {
    spec(bundle, id, args)
}

fn user_and_groups() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("user");
    let mut spec = spec(
        &bundle,
        &id,
        &["sh", "-c", "id -u; id -g; id -G; echo $HOME"],
    );
    set_process(&mut spec, |p| {
        p.set_user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .additional_gids(vec![5u32, 65534])
                .build()
                .unwrap(),
        );
    });
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    ensure!(
        out.stdout == "1000\n1000\n1000 5 65534\n/home/user\n",
        "stdout {:?}",
        out.stdout
    );
    Ok(())
}

fn hostname_and_namespaces() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("host");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "hostname; echo $$; echo $(ls /sys/class/net); cat /proc/sys/kernel/shmmni",
        ],
    );
    spec.set_hostname(Some("berth-box".into()));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [("kernel.shmmni".to_string(), "1234".to_string())].into(),
    ));
    spec.set_linux(Some(linux));
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    // A new pid namespace (pid 1), a new network namespace (only lo).
    ensure!(
        out.stdout == "berth-box\n1\nlo\n1234\n",
        "stdout {:?}",
        out.stdout
    );
    let host = nix::unistd::gethostname()?;
    ensure!(host != "berth-box", "the host's name changed");
    Ok(())
}

fn readonly_rootfs_refuses_writes() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("ro");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "touch /newfile; echo rc=$?; touch /dev/shm/ok && echo shm-ok",
        ],
    );
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.stdout == "rc=1\nshm-ok\n",
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    ensure!(
        out.stderr.contains("Read-only file system"),
        "stderr {:?}",
        out.stderr
    );
    ensure!(!bundle.rootfs.join("newfile").exists());
    Ok(())
}

fn masked_and_readonly_paths() -> Result<()> {
    let bundle = busybox_bundle()?;
    std::fs::create_dir_all(bundle.rootfs.join("etc/secret"))?;
    std::fs::write(bundle.rootfs.join("etc/secret/key"), "s3cret")?;
    std::fs::write(bundle.rootfs.join("etc/token"), "t0ken")?;
    let id = unique_id("mask");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "wc -c < /proc/timer_list; ls /etc/secret | wc -l; cat /etc/token | wc -c; \
             echo x > /proc/sys/kernel/hostname; echo rc=$?; touch /etc/ro/f; echo rc=$?",
        ],
    );
    std::fs::create_dir_all(bundle.rootfs.join("etc/ro"))?;
    let mut linux = spec.linux().clone().unwrap();
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    masked.push("/etc/secret".into());
    masked.push("/etc/token".into());
    masked.push("/does/not/exist".into());
    linux.set_masked_paths(Some(masked));
    let mut ro = linux.readonly_paths().clone().unwrap_or_default();
    ro.push("/etc/ro".into());
    linux.set_readonly_paths(Some(ro));
    spec.set_linux(Some(linux));
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.stdout == "0\n0\n0\nrc=1\nrc=1\n",
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

fn status_field(status: &str, field: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

fn capabilities_visible_in_status() -> Result<()> {
    use oci_spec::runtime::{Capability as C, LinuxCapabilitiesBuilder};
    let bundle = busybox_bundle()?;
    let script = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status";
    let set = |v: &[C]| v.iter().copied().collect::<std::collections::HashSet<C>>();
    // Non-root with an ambient capability: what survives exec is the ambient set.
    let id = unique_id("caps");
    let mut spec = spec(&bundle, &id, &["sh", "-c", script]);
    set_process(&mut spec, |p| {
        p.set_user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .build()
                .unwrap(),
        );
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(set(&[C::Chown, C::Kill, C::NetBindService]))
                .permitted(set(&[C::Kill, C::NetBindService]))
                .inheritable(set(&[C::Kill, C::NetBindService]))
                .effective(set(&[C::Kill, C::NetBindService]))
                .ambient(set(&[C::NetBindService]))
                .build()
                .unwrap(),
        ));
        p.set_no_new_privileges(Some(true));
    });
    let out = run(&bundle, &id, &spec).context("non-root with ambient capabilities")?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    let f = |k: &str| status_field(&out.stdout, k).unwrap_or_default();
    ensure!(f("CapBnd") == "0000000000000421", "{}", out.stdout);
    ensure!(f("CapInh") == "0000000000000420", "{}", out.stdout);
    ensure!(f("CapPrm") == "0000000000000400", "{}", out.stdout);
    ensure!(f("CapEff") == "0000000000000400", "{}", out.stdout);
    ensure!(f("CapAmb") == "0000000000000400", "{}", out.stdout);
    ensure!(f("NoNewPrivs") == "1", "{}", out.stdout);

    // Root: exec gives it the bounding set; no_new_privs off.
    let id = unique_id("caps-root");
    let mut spec = spec_for(&bundle, &id, &["sh", "-c", script]);
    set_process(&mut spec, |p| {
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(set(&[C::Chown, C::Kill]))
                .permitted(set(&[C::Chown, C::Kill]))
                .effective(set(&[C::Chown, C::Kill]))
                .inheritable(set(&[]))
                .ambient(set(&[]))
                .build()
                .unwrap(),
        ));
        p.set_no_new_privileges(Some(false));
    });
    let out = run(&bundle, &id, &spec).context("root with capabilities")?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    let f = |k: &str| status_field(&out.stdout, k).unwrap_or_default();
    ensure!(f("CapBnd") == "0000000000000021", "{}", out.stdout);
    ensure!(f("CapEff") == "0000000000000021", "{}", out.stdout);
    ensure!(f("NoNewPrivs") == "0", "{}", out.stdout);
    Ok(())
}

/// containerd's CRI "drop ALL" (Go's `omitempty` drops the empty lists):
/// `capabilities` without a bounding key. runc drops the whole bounding set.
fn capabilities_without_bounding_drop_all() -> Result<()> {
    use oci_spec::runtime::LinuxCapabilities;
    let bundle = busybox_bundle()?;
    let id = unique_id("caps-none");
    let mut spec = spec(
        &bundle,
        &id,
        &["sh", "-c", "grep -E '^Cap' /proc/self/status"],
    );
    let caps: LinuxCapabilities = serde_json::from_str("{}")?;
    ensure!(
        caps.bounding().is_none(),
        "the test needs an absent bounding set"
    );
    set_process(&mut spec, |p| {
        p.set_capabilities(Some(caps));
    });
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    for field in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        ensure!(
            status_field(&out.stdout, field).as_deref() == Some("0000000000000000"),
            "{field} is not empty:\n{}",
            out.stdout
        );
    }
    Ok(())
}

/// A mount of the test's own, undone on drop (lazily, submounts too).
struct TestMount(std::path::PathBuf);

impl TestMount {
    fn bind_shared(dir: &Path) -> Result<TestMount> {
        use nix::mount::{MsFlags, mount};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind {} on itself", dir.display()))?;
        let m = TestMount(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .with_context(|| format!("make {} shared", dir.display()))?;
        Ok(m)
    }

    fn tmpfs(dir: &Path) -> Result<TestMount> {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .with_context(|| format!("mount tmpfs on {}", dir.display()))?;
        Ok(TestMount(dir.to_path_buf()))
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// issue 14 cause 6: a Bidirectional mount (CRI: `rshared` on the mount and
/// as rootfsPropagation) with the bundle on a shared mount, as on every
/// systemd host, and the rootfs a mount point of its own (the shim's
/// overlay). pivot_root used to fail with EINVAL (the rootfs's parent mount
/// was shared). Propagation must work both ways: a mount the host makes in
/// the volume shows in the container, one the container makes shows on the host.
fn bidirectional_mount_with_shared_rootfs_parent() -> Result<()> {
    use oci_spec::runtime::{Capability as C, LinuxCapabilitiesBuilder};
    let bundle = busybox_bundle()?;
    // Innermost last: dropped (unmounted) first.
    let _bundle_mount = TestMount::bind_shared(bundle.path())?;
    let _rootfs_mount = TestMount::bind_shared(&bundle.rootfs)?;
    let volume = tempfile::Builder::new()
        .prefix(&format!("berth-runtime-vol-{}-", std::process::id()))
        .tempdir()?;
    let _volume_mount = TestMount::bind_shared(volume.path())?;
    std::fs::create_dir(volume.path().join("from-ctr"))?;
    std::fs::create_dir(volume.path().join("from-host"))?;
    let shared = |p: &Path| -> Result<bool> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let p = p.display().to_string();
        Ok(info.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&p.as_str())
                && f[6..]
                    .iter()
                    .take_while(|x| **x != "-")
                    .any(|x| x.starts_with("shared:"))
        }))
    };
    ensure!(
        shared(&bundle.rootfs)?,
        "the rootfs mount is not shared: the test sets up nothing"
    );

    let id = unique_id("rshared");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "mount -t tmpfs ctr /vol/from-ctr && echo c > /vol/from-ctr/f && \
             i=0; while [ ! -e /vol/from-host/h ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             cat /vol/from-host/h",
        ],
    );
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/vol")
            .typ("bind")
            .source(volume.path())
            .options(vec!["rbind".to_string(), "rshared".to_string()])
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_rootfs_propagation(Some("rshared".into()));
    spec.set_linux(Some(linux));
    let all: std::collections::HashSet<C> = [C::SysAdmin, C::Chown, C::DacOverride].into();
    set_process(&mut spec, |p| {
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(all.clone())
                .permitted(all.clone())
                .effective(all.clone())
                .inheritable(std::collections::HashSet::<C>::new())
                .ambient(std::collections::HashSet::<C>::new())
                .build()
                .unwrap(),
        ));
    });

    let (stdio, out_r, err_r) = piped()?;
    let mut c = create(&bundle, &id, &spec, stdio).context("create (pivot_root)")?;
    let out = drain(out_r);
    let err = drain(err_r);
    c.container.start()?;
    // Container → host: its tmpfs shows in the host's volume.
    let from_ctr = volume.path().join("from-ctr/f");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !from_ctr.exists() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ctr_to_host = std::fs::read_to_string(&from_ctr).unwrap_or_default();
    // Host → container: a tmpfs the host mounts shows in the container.
    let host_mount = TestMount::tmpfs(&volume.path().join("from-host"))?;
    std::fs::write(volume.path().join("from-host/h"), "h\n")?;
    let code = c.wait()?;
    drop(c);
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    drop(host_mount);
    let _ = nix::mount::umount2(
        &volume.path().join("from-ctr"),
        nix::mount::MntFlags::MNT_DETACH,
    );
    ensure!(
        ctr_to_host == "c\n",
        "the container's mount did not propagate to the host ({ctr_to_host:?}); stdout {stdout:?} stderr {stderr:?}"
    );
    ensure!(
        code == 0 && stdout == "h\n",
        "the host's mount did not propagate into the container: exit {code} stdout {stdout:?} stderr {stderr:?}"
    );
    Ok(())
}

fn rlimits_umask_and_devices() -> Result<()> {
    use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};
    let bundle = busybox_bundle()?;
    // A regular file posing as /dev/null in the image must not survive.
    std::fs::create_dir_all(bundle.rootfs.join("dev"))?;
    let id = unique_id("rlimit");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn; umask; stat -c '%F %t:%T' /dev/null /dev/zero /dev/tty; \
             readlink /dev/fd; readlink /dev/ptmx; cat /proc/self/oom_score_adj",
        ],
    );
    set_process(&mut spec, |p| {
        p.set_rlimits(Some(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(77u64)
                .hard(88u64)
                .build()
                .unwrap(),
        ]));
        p.set_user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .umask(0o027u32)
                .build()
                .unwrap(),
        );
        p.set_oom_score_adj(Some(500));
    });
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    let want = "77\n88\n0027\ncharacter special file 1:3\ncharacter special file 1:5\n\
                character special file 5:0\n/proc/self/fd\npts/ptmx\n500\n";
    ensure!(out.stdout == want, "stdout {:?} want {want:?}", out.stdout);
    Ok(())
}

/// The device cgroup (v1: devices.allow / deny; v2: the eBPF device
/// program): a container with CAP_MKNOD may make a node for a device its
/// rules do not allow (mknod of anything is a default), but not open it,
/// while /dev/null works. c 1:11 is /dev/kmsg, which every kernel has and
/// root may open.
fn device_cgroup_refuses_unlisted_devices() -> Result<()> {
    use oci_spec::runtime::{Capability as C, LinuxCapabilitiesBuilder};
    let bundle = busybox_bundle()?;
    let id = unique_id("devcg");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "mknod /tmp/kmsg c 1 11 || exit 10; \
             if head -c 0 </tmp/kmsg; then echo opened; else echo refused; fi; \
             echo x >/dev/null && echo null-ok",
        ],
    );
    set_process(&mut spec, |p| {
        let caps: std::collections::HashSet<C> = [C::Mknod, C::Kill].into_iter().collect();
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .permitted(caps.clone())
                .inheritable(caps.clone())
                .effective(caps)
                .ambient(std::collections::HashSet::<C>::new())
                .build()
                .unwrap(),
        ));
    });
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    ensure!(
        out.stdout == "refused\nnull-ok\n" && out.stderr.contains("not permitted"),
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

fn exec_into_running_container() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("exec");
    let mut spec = spec(&bundle, &id, &["sleep", "1000"]);
    spec.set_hostname(Some("exec-box".into()));
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.start()?;
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "hostname; echo $X; cat /proc/1/cmdline | tr '\\0' ' '; echo; pwd; id -u; \
         grep CapEff /proc/self/status; exit 7"
            .into(),
    ]));
    p.set_env(Some(vec!["X=from-exec".into(), "PATH=/bin".into()]));
    p.set_cwd("/tmp".into());
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap(),
    );
    // Capabilities as given (ambient one, so a non-root process keeps it).
    let mut caps = p.capabilities().clone().unwrap();
    caps.set_ambient(Some([oci_spec::runtime::Capability::Kill].into()));
    p.set_capabilities(Some(caps));
    let (stdio, out_r, err_r) = piped()?;
    let e = c.container.exec(&p, stdio)?;
    ensure!(e.pty_master.is_none());
    let out = drain(out_r).join().unwrap();
    let err = drain(err_r).join().unwrap();
    let code = wait_exit(e.pid)?;
    ensure!(code == 7, "exec exit {code}, stderr {err}");
    ensure!(
        out == "exec-box\nfrom-exec\nsleep 1000 \n/tmp\n1000\nCapEff:\t0000000000000020\n",
        "exec stdout {out:?} stderr {err:?}"
    );
    // The init and an exec'd process are in the container's cgroup in every
    // hierarchy (their helpers moved themselves in before cloning them).
    in_every_controller(c.container.pid, &c.container.cgroup_path)?;
    p.set_args(Some(vec!["sleep".into(), "1000".into()]));
    let sleeper = c.container.exec(&p, Stdio::default())?;
    let joined = in_every_controller(sleeper.pid, &c.container.cgroup_path);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_exit(sleeper.pid)?;
    joined?;
    // A paused container refuses exec (instead of hanging it); resumed, it runs.
    c.container.pause()?;
    let err = c
        .container
        .exec(&p, Stdio::default())
        .unwrap_err()
        .to_string();
    ensure!(
        err.contains("paused"),
        "exec into a paused container: {err}"
    );
    c.container.resume()?;
    // A failing exec is an error with a cause, not a process.
    p.set_args(Some(vec!["/no/such/binary".into()]));
    let err = c
        .container
        .exec(&p, Stdio::default())
        .unwrap_err()
        .to_string();
    ensure!(err.contains("/no/such/binary"), "{err}");
    c.container.kill(libc::SIGKILL, false)?;
    ensure!(c.wait()? == 137);
    Ok(())
}

/// The cgroup directory (relative to the hierarchy root) of an OCI
/// cgroupsPath in either driver's form (`system.slice:berth-test:<id>` is
/// `system.slice/berth-test-<id>.scope`).
fn v2_path(cgroups_path: &str) -> String {
    berth::runtime::cgroups::CgroupManager::new(cgroups_path)
        .expect("cgroups path")
        .path()
        .to_owned()
}

/// Every controller line of `/proc/<pid>/cgroup` names `cgroup` (v1; on v2
/// the one line does).
fn in_every_controller(pid: i32, cgroup: &str) -> Result<()> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let want = format!("/{}", v2_path(cgroup));
    let mut seen = 0;
    for line in own.lines() {
        let mut f = line.splitn(3, ':').skip(1);
        let (ctrls, path) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        // Named hierarchies (name=systemd) are not the runtime's; on a
        // hybrid host the empty v2 line is not either.
        if ctrls.starts_with("name=") || (ctrls.is_empty() && own.lines().count() > 1) {
            continue;
        }
        ensure!(path == want, "pid {pid} is in {line:?}, not {want}:\n{own}");
        seen += 1;
    }
    ensure!(seen > 0, "no controller lines for {pid}:\n{own}");
    Ok(())
}

fn read_pty(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut f, &mut chunk) {
            Ok(0) | Err(_) => break, // EIO once the slave side is closed
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads the pty until `needle` shows up, the other side closes, or nothing
/// came for a minute (a guard against hanging the suite, not a timing check).
fn read_pty_until(master: &OwnedFd, needle: &str) -> String {
    use std::os::fd::AsFd;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains(needle) {
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, 60_000u16) {
            Ok(0) => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        match nix::unistd::read(master, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn terminal_for_init_and_exec() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("tty");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "tty; test -t 0 && echo stdin-is-tty; stty size; echo end-of-init; sleep 1000",
        ],
    );
    set_process(&mut spec, |p| {
        p.set_terminal(Some(true));
        p.set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .height(33u64)
                .width(101u64)
                .build()
                .unwrap(),
        ));
    });
    let state = tempfile::tempdir()?;
    let (container, pty) = berth::runtime::Container::create(berth::runtime::CreateOptions {
        id: &id,
        bundle: bundle.path(),
        spec: &spec,
        stdio: Stdio {
            terminal: true,
            ..Default::default()
        },
        state_dir: state.path(),
        systemd_cgroup: systemd_driver(),
    })?;
    let guard = Guard(&container);
    let master = pty.context("no pty master for a terminal container")?;
    container.start()?;
    let out = read_pty_until(&master, "end-of-init");
    ensure!(
        out.contains("/dev/pts/0") && out.contains("stdin-is-tty") && out.contains("33 101"),
        "tty output {out:?}"
    );
    // Exec with a terminal too.
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "tty; echo exec-ok".into(),
    ]));
    let e = container.exec(
        &p,
        Stdio {
            terminal: true,
            ..Default::default()
        },
    )?;
    let exec_master = e.pty_master.context("no pty master for exec")?;
    let exec_out = read_pty(exec_master);
    ensure!(wait_exit(e.pid)? == 0);
    ensure!(
        exec_out.contains("/dev/pts/1") && exec_out.contains("exec-ok"),
        "exec tty output {exec_out:?}"
    );
    container.kill(libc::SIGKILL, false)?;
    ensure!(wait_exit(container.pid)? == 137);
    drop(master);
    drop(guard);
    Ok(())
}

/// Deletes a container on drop.
struct Guard<'a>(&'a berth::runtime::Container);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

fn setup_error_is_reported_and_cleaned_up() -> Result<()> {
    let bundle = busybox_bundle()?;
    // A mount that cannot work: an unknown filesystem type.
    let id = unique_id("bad-mount");
    let mut spec = spec(&bundle, &id, &["true"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/bad")
            .typ("no-such-fs")
            .source("none")
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let err = match create(&bundle, &id, &spec, Stdio::default()) {
        Ok(_) => bail!("create with a bad mount succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("mount no-such-fs on /bad"), "error: {err}");
    ensure!(!cgroup_exists(&id), "cgroup {id} left behind");
    // An executable that does not exist fails at create, not at start.
    let id = unique_id("bad-exe");
    let spec = spec_for(&bundle, &id, &["/bin/nope"]);
    let err = match create(&bundle, &id, &spec, Stdio::default()) {
        Ok(_) => bail!("create with a missing executable succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("/bin/nope"), "error: {err}");
    ensure!(!cgroup_exists(&id), "cgroup {id} left behind");
    // The cgroup of a live container is never shared (nor destroyed on failure).
    let id = unique_id("busy");
    let live_spec = spec_for(&bundle, &id, &["sleep", "1000"]);
    let mut live = create(&bundle, &id, &live_spec, Stdio::default())?;
    let twin = unique_id("twin");
    let err = match create(&bundle, &twin, &live_spec, Stdio::default()) {
        Ok(_) => bail!("a second container got the cgroup of a live one"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("already holds processes"), "error: {err}");
    ensure!(
        cgroup_exists(&id),
        "the live container's cgroup was destroyed"
    );
    live.container.kill(libc::SIGKILL, false)?;
    ensure!(live.wait()? == 137);
    drop(live);
    // A sysctl that is not namespaced would change the host: refused.
    let id = unique_id("bad-sysctl");
    let mut spec = spec_for(&bundle, &id, &["true"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some([("kernel.panic".to_string(), "1".to_string())].into()));
    spec.set_linux(Some(linux));
    let err = match create(&bundle, &id, &spec, Stdio::default()) {
        Ok(_) => bail!("create with a host sysctl succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("kernel.panic"), "error: {err}");
    ensure!(!cgroup_exists(&id), "cgroup {id} left behind");
    // Bad input is refused before anything is made.
    let id = unique_id("bad-id");
    let spec = spec_for(&bundle, &id, &["true"]);
    ensure!(create(&bundle, "../evil", &spec, Stdio::default()).is_err());
    Ok(())
}

fn security_no_fd_leaks_into_container() -> Result<()> {
    // An fd of the caller without O_CLOEXEC (as a careless shim might have).
    let leaked = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )?;
    let n = leaked.as_raw_fd();
    // `ls` itself as the container process (a shell may hold fds of its own
    // for a moment): its fds are the three stdio ones and the directory it reads.
    let out = run_args(&["ls", "/proc/self/fd"])?;
    let cwd = run_args(&["readlink", "/proc/self/cwd"])?;
    drop(leaked);
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    ensure!(
        out.stdout == "0\n1\n2\n3\n",
        "fds in the container (leaked fd was {n}): {:?}",
        out.stdout
    );
    ensure!(
        cwd.stdout == "/\n",
        "cwd of the container: {:?}",
        cwd.stdout
    );
    Ok(())
}

/// Make the host's shared libraries visible in the rootfs, so that the
/// (dynamically linked) test binary can run inside the container.
fn add_host_libs(bundle: &Bundle, spec: &mut Spec) -> Result<()> {
    let mut mounts = spec.mounts().clone().unwrap();
    for d in ["/usr", "/lib", "/lib64"] {
        let meta = std::fs::symlink_metadata(d);
        match meta {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(d)?;
                let _ = std::os::unix::fs::symlink(target, bundle.rootfs.join(&d[1..]));
            }
            Ok(_) => mounts.push(
                MountBuilder::default()
                    .destination(d)
                    .typ("bind")
                    .source(d)
                    .options(vec!["rbind".to_string(), "ro".to_string()])
                    .build()
                    .unwrap(),
            ),
            Err(_) => {}
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

const EXE_PROBE: &str = "berth-runtime-test-exe-probe";

/// Runs inside the container (the test binary re-executed through
/// /proc/self/exe): prints what the container can reach of the binary that
/// set it up.
fn exe_probe() -> ! {
    let meta = std::fs::metadata("/proc/self/exe");
    let (dev, ino) = meta.map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));
    let seals = std::fs::File::open("/proc/self/exe")
        .ok()
        .and_then(|f| nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GET_SEALS).ok())
        .unwrap_or(0);
    let write = match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/exe")
    {
        Ok(_) => "writable".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    };
    println!("{dev} {ino} {seals} {write}");
    std::process::exit(0)
}

fn security_container_cannot_reach_runtime_binary() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("exe");
    // The classic attack: make the container exec /proc/self/exe, i.e. the
    // binary that set it up, and try to get at it from inside.
    let mut spec = spec(&bundle, &id, &["/proc/self/exe", EXE_PROBE]);
    add_host_libs(&bundle, &mut spec)?;
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.code == 0,
        "exit {} stdout {} stderr {}",
        out.code,
        out.stdout,
        out.stderr
    );
    let host = std::fs::metadata("/proc/self/exe")?;
    let f: Vec<&str> = out.stdout.split_whitespace().collect();
    ensure!(f.len() == 4, "probe output {:?}", out.stdout);
    let same_file = f[0] == host.dev().to_string() && f[1] == host.ino().to_string();
    ensure!(
        !same_file,
        "the container reached the runtime's binary on disk"
    );
    // Either mechanism makes the kernel refuse every write: a write-sealed
    // memfd copy, or the executable seen through a read-only overlayfs.
    let seals: i32 = f[2].parse()?;
    ensure!(
        seals & libc::F_SEAL_WRITE != 0 || f[3] == "ReadOnlyFilesystem",
        "the binary the container sees is neither write-sealed (seals {seals:#x}) \
         nor on a read-only filesystem (write: {})",
        f[3]
    );
    ensure!(
        f[3] != "writable",
        "the binary is writable from the container"
    );
    Ok(())
}

fn security_symlink_mount_destination_stays_in_rootfs() -> Result<()> {
    let bundle = busybox_bundle()?;
    // A host directory, and a symlink in the image pointing at it.
    let host_dir = tempfile::Builder::new()
        .prefix(&format!("berth-runtime-host-{}-", std::process::id()))
        .tempdir()?;
    std::fs::write(host_dir.path().join("host-file"), "host")?;
    std::os::unix::fs::symlink(host_dir.path(), bundle.rootfs.join("escape"))?;
    let src = tempfile::tempdir()?;
    std::fs::write(src.path().join("marker"), "mounted")?;
    let id = unique_id("symlink");
    let probe = format!(
        "cat {0}/marker; ls {0} | tr '\\n' ' '; grep -c ' {0} ' /proc/self/mountinfo",
        host_dir.path().display()
    );
    let mut spec = spec(&bundle, &id, &["sh", "-c", &probe]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/escape")
            .typ("bind")
            .source(src.path())
            .options(vec!["bind".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.code == 0,
        "exit {} stdout {:?} stderr {}",
        out.code,
        out.stdout,
        out.stderr
    );
    // The mount is where the symlink points *inside* the rootfs.
    ensure!(out.stdout == "mountedmarker 1\n", "stdout {:?}", out.stdout);
    let inside = bundle.rootfs.join(host_dir.path().strip_prefix("/")?);
    ensure!(
        inside.is_dir(),
        "{} was not created in the rootfs",
        inside.display()
    );
    ensure!(std::fs::read_to_string(host_dir.path().join("host-file"))? == "host");
    Ok(())
}

/// Gives the container a user namespace of its own, its 65536 ids from
/// `host_id` up.
fn in_own_userns(spec: &mut Spec, host_id: u32) {
    let mut linux = spec.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    let shifted = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host_id)
        .size(65536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![shifted]));
    linux.set_gid_mappings(Some(vec![shifted]));
    spec.set_linux(Some(linux));
}

fn user_namespace() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("userns");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; cat /proc/self/gid_map; echo x > /dev/null && echo devnull-ok; ls -n /bin/busybox | awk '{print $3}'",
        ],
    );
    in_own_userns(&mut spec, 200000);
    let c = {
        let (stdio, out_r, err_r) = piped()?;
        let mut c = create(&bundle, &id, &spec, stdio)?;
        let out = drain(out_r);
        let err = drain(err_r);
        c.container.start()?;
        let code = c.wait()?;
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        ensure!(code == 0, "exit {code} stdout {out:?} stderr {err:?}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        ensure!(lines.len() == 5, "output {out:?} stderr {err:?}");
        ensure!(lines[0] == "0", "uid in the container: {}", lines[0]);
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        ensure!(norm(lines[1]) == "0 200000 65536", "uid_map {}", lines[1]);
        ensure!(norm(lines[2]) == "0 200000 65536", "gid_map {}", lines[2]);
        ensure!(lines[3] == "devnull-ok");
        // Host root's files show up as the overflow uid.
        ensure!(lines[4] == "65534", "owner of /bin/busybox: {}", lines[4]);
        c
    };
    drop(c);

    // Exec into a container with its own user namespace joins it first.
    let id = unique_id("userns-exec");
    let mut spec2 = spec_for(&bundle, &id, &["sleep", "1000"]);
    spec2.set_linux(spec.linux().clone());
    let mut linux = spec2.linux().clone().unwrap();
    linux.set_cgroups_path(Some(cgroup_path(&id).into()));
    spec2.set_linux(Some(linux));
    let mut c = create(&bundle, &id, &spec2, Stdio::default())?;
    c.container.start()?;
    let mut p = spec2.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "id -u; cat /proc/self/uid_map".into(),
    ]));
    let (stdio, out_r, err_r) = piped()?;
    let e = c.container.exec(&p, stdio)?;
    let out = drain(out_r).join().unwrap();
    let err = drain(err_r).join().unwrap();
    ensure!(wait_exit(e.pid)? == 0, "exec failed: {err}");
    let norm: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    ensure!(norm == ["0", "0 200000 65536"], "exec output {out:?}");
    c.container.kill(libc::SIGKILL, false)?;
    ensure!(c.wait()? == 137);
    Ok(())
}

fn join_namespaces_by_path() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id1 = unique_id("pod");
    let mut spec1 = spec(&bundle, &id1, &["sleep", "1000"]);
    spec1.set_hostname(Some("pod-host".into()));
    let mut first = create(&bundle, &id1, &spec1, Stdio::default())?;
    first.container.start()?;
    let pid = first.container.pid;

    let id2 = unique_id("member");
    let mut spec2 = spec(
        &bundle,
        &id2,
        &[
            "sh",
            "-c",
            "hostname; for n in net uts ipc; do readlink /proc/self/ns/$n; done",
        ],
    );
    spec2.set_hostname(None);
    let mut linux = spec2.linux().clone().unwrap();
    let ns: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|n| match n.typ() {
            t @ (LinuxNamespaceType::Network
            | LinuxNamespaceType::Uts
            | LinuxNamespaceType::Ipc) => LinuxNamespaceBuilder::default()
                .typ(t)
                .path(format!("/proc/{pid}/ns/{}", ns_name(t)))
                .build()
                .unwrap(),
            _ => n,
        })
        .collect();
    linux.set_namespaces(Some(ns));
    spec2.set_linux(Some(linux));
    let out = run(&bundle, &id2, &spec2)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    let want: Vec<String> = ["net", "uts", "ipc"]
        .iter()
        .map(|n| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).map(|p| p.display().to_string()))
        .collect::<std::io::Result<_>>()?;
    ensure!(
        out.stdout == format!("pod-host\n{}\n", want.join("\n")),
        "stdout {:?} want {want:?}",
        out.stdout
    );
    first.container.kill(libc::SIGKILL, false)?;
    ensure!(first.wait()? == 137);
    Ok(())
}

/// The cgroup2 tree the v2 paths run in: /sys/fs/cgroup itself on a pure
/// v2 machine (the VM lane), the `unified` mount of a hybrid host.
fn unified_root() -> &'static str {
    if cgroupfs::unified() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    }
}

/// Runs [`cgroup_v2_clone_into_inner`] in a process of its own whose
/// runtime puts containers in the host's `unified` cgroup2 tree (the
/// hierarchy is detected once per process).
fn cgroup_v2_clone_into() -> Result<()> {
    if !Path::new(unified_root()).join("cgroup.procs").exists() {
        eprintln!("skipped: no cgroup2 tree at {}", unified_root());
        return Ok(());
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("cgroup_v2_clone_into_inner")
        .env(berth::runtime::cgroups::CGROUP2_ROOT_ENV, unified_root())
        .output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "inner test: {}\nstdout {}\nstderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The `0::` line of `/proc/<pid>/cgroup`.
fn v2_cgroup_of(pid: i32) -> Result<String> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("no cgroup2 line for {pid}: {own}"))
}

/// On cgroup v2 the helper clones a container's init straight into its
/// cgroup (`CLONE_INTO_CGROUP`); a helper that joins the container's cgroup
/// or user namespace (an exec) moves itself in first. Only in the process
/// [`cgroup_v2_clone_into`] starts.
fn cgroup_v2_clone_into_inner() -> Result<()> {
    if std::env::var_os(berth::runtime::cgroups::CGROUP2_ROOT_ENV).is_none() {
        return Ok(());
    }
    let bundle = busybox_bundle()?;
    let no_cgroup_mount = |spec: &mut Spec| {
        // The helper detects the host's own (v1) hierarchy for the mount.
        let mounts = spec.mounts().clone().unwrap_or_default();
        spec.set_mounts(Some(
            mounts
                .into_iter()
                .filter(|m| m.typ().as_deref() != Some("cgroup"))
                .collect(),
        ));
    };
    // A container in a user namespace of its own (root is host uid 200000).
    let id1 = unique_id("v2");
    let mut spec1 = spec(&bundle, &id1, &["sleep", "1000"]);
    no_cgroup_mount(&mut spec1);
    in_own_userns(&mut spec1, 200000);
    let mut first = create(&bundle, &id1, &spec1, Stdio::default())?;
    first.container.start()?;
    let pid = first.container.pid;
    let cg1 = v2_path(&cgroup_path(&id1));
    ensure!(
        v2_cgroup_of(pid)? == format!("/{cg1}"),
        "init in {}",
        v2_cgroup_of(pid)?
    );
    ensure!(
        Path::new(unified_root())
            .join(&cg1)
            .join("cgroup.procs")
            .exists()
    );
    // An exec'd process joins its namespaces: its helper moves itself.
    let mut p = spec1.process().clone().unwrap();
    p.set_args(Some(vec!["sleep".into(), "1000".into()]));
    let sleeper = first.container.exec(&p, Stdio::default())?;
    let exec_cgroup = v2_cgroup_of(sleeper.pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_exit(sleeper.pid)?;
    ensure!(
        exec_cgroup? == format!("/{cg1}"),
        "exec'd process elsewhere"
    );

    // A container with no user namespace: cloned into its cgroup, which is
    // also the root of its cgroup namespace.
    let id2 = unique_id("v2");
    let mut spec2 = spec(
        &bundle,
        &id2,
        &["sh", "-c", "grep ^0:: /proc/self/cgroup; sleep 1000"],
    );
    no_cgroup_mount(&mut spec2);
    let (stdio, out_r, _err_r) = piped()?;
    let mut second = create(&bundle, &id2, &spec2, stdio)?;
    second.container.start()?;
    let mut own_view = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(std::fs::File::from(out_r)),
        &mut own_view,
    )?;
    ensure!(
        own_view == "0::/\n",
        "the container's own view: {own_view:?}"
    );
    ensure!(
        v2_cgroup_of(second.container.pid)? == format!("/{}", v2_path(&cgroup_path(&id2))),
        "second init in {}",
        v2_cgroup_of(second.container.pid)?
    );
    second.container.kill(libc::SIGKILL, false)?;
    ensure!(second.wait()? == 137);
    drop(second);
    first.container.kill(libc::SIGKILL, false)?;
    ensure!(first.wait()? == 137);
    drop(first);
    ensure!(
        !Path::new(unified_root()).join(&cg1).exists(),
        "cgroup {cg1} left behind"
    );
    Ok(())
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        _ => unreachable!(),
    }
}

fn output_and_exit_codes() -> Result<()> {
    let out = run_sh("echo hello; echo oops >&2; exit 3")?;
    ensure!(out.stdout == "hello\n", "stdout {:?}", out.stdout);
    ensure!(out.stderr == "oops\n", "stderr {:?}", out.stderr);
    ensure!(out.code == 3, "exit code {}", out.code);
    let out = run_sh("true")?;
    ensure!(out.code == 0, "exit code {}", out.code);
    Ok(())
}

fn env_cwd_and_args() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("env");
    let mut spec = spec(
        &bundle,
        &id,
        &["sh", "-c", "echo \"$FOO|$(pwd)|$0|$1\"", "zero", "one"],
    );
    let mut p = spec.process().clone().unwrap();
    let mut env = p.env().clone().unwrap();
    env.push("FOO=bar baz".into());
    p.set_env(Some(env));
    p.set_cwd("/tmp/work".into());
    spec.set_process(Some(p));
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    ensure!(
        out.stdout == "bar baz|/tmp/work|zero|one\n",
        "stdout {:?}",
        out.stdout
    );
    Ok(())
}

fn main() {
    berth::runtime::run_helper_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(EXE_PROBE) {
        exe_probe();
    }
    harnessless::run(
        "runtime_containers",
        "namespaces, mounts, cgroups",
        true,
        &args,
        TESTS,
    );
}

fn time_and_cgroup_namespaces() -> Result<()> {
    let bundle = busybox_bundle()?;
    let id = unique_id("timens");
    // The container's cgroup line and its cgroup mount's process list: the
    // pids hierarchy on v1, the one tree on v2.
    let (cgroup_line, procs) = if cgroupfs::unified() {
        ("^0::", "/sys/fs/cgroup/cgroup.procs")
    } else {
        (":pids:", "/sys/fs/cgroup/pids/cgroup.procs")
    };
    let script = format!(
        "readlink /proc/self/ns/time; readlink /proc/self/ns/cgroup; \
         cat /proc/self/cgroup | grep '{cgroup_line}'; echo $(cat {procs})"
    );
    let mut spec = spec(&bundle, &id, &["sh", "-c", &script]);
    let mut linux = spec.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    // The default spec already asks for a cgroup namespace.
    ns.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Time)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.code == 0,
        "exit {} stdout {:?} stderr {}",
        out.code,
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines.len() == 4, "stdout {:?}", out.stdout);
    let host_time = std::fs::read_link("/proc/self/ns/time")?;
    let host_cg = std::fs::read_link("/proc/self/ns/cgroup")?;
    ensure!(
        lines[0] != host_time.to_string_lossy(),
        "same time namespace as the host"
    );
    ensure!(
        lines[1] != host_cg.to_string_lossy(),
        "same cgroup namespace as the host"
    );
    // In its own cgroup namespace the container's cgroup is the root.
    let root_line = if cgroupfs::unified() {
        "0::/"
    } else {
        ":pids:/"
    };
    ensure!(lines[2].ends_with(root_line), "cgroup line {:?}", lines[2]);
    // The cgroup mount shows the container's own cgroup: its init (pid 1
    // here) is listed; the caller's cgroup would list no pid of this
    // namespace at all.
    ensure!(
        lines[3].split_whitespace().any(|p| p == "1"),
        "{procs} in the container: {:?}",
        lines[3]
    );
    Ok(())
}

fn lifecycle_errors_and_idempotent_delete() -> Result<()> {
    use berth::runtime::RuntimeError;
    let bundle = busybox_bundle()?;
    let id = unique_id("life");
    let spec = spec(&bundle, &id, &["true"]);
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.start()?;
    ensure!(c.wait()? == 0);
    // Started once: a second start is refused.
    match c.container.start() {
        Err(RuntimeError::NotFound(_)) => {}
        other => bail!("second start: {other:?}"),
    }
    // The init is gone (and reaped): kill says so.
    match c.container.kill(libc::SIGTERM, false) {
        Err(RuntimeError::NotFound(_)) => {}
        other => bail!("kill of an exited container: {other:?}"),
    }
    c.container.delete()?;
    c.container.delete()?;
    ensure!(!cgroup_exists(&id), "cgroup {id} left after delete");
    ensure!(
        std::fs::read_dir(c.state.path())?.next().is_none(),
        "state files left after delete"
    );
    // A container whose init died before start: start says so, delete cleans up.
    let id = unique_id("died");
    let spec = spec_for(&bundle, &id, &["sleep", "1000"]);
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.kill(libc::SIGKILL, false)?;
    ensure!(c.wait()? == 137);
    ensure!(
        c.container.start().is_err(),
        "start of a dead container succeeded"
    );
    c.container.delete()?;
    ensure!(!cgroup_exists(&id));
    Ok(())
}

/// Without CAP_SYS_RESOURCE (this machine), a negative oom_score_adj and a
/// raised hard rlimit cannot be had: the container still starts, with the
/// runtime's own values (clamped and logged, as containerd does).
fn unprivileged_limits_are_clamped() -> Result<()> {
    use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};
    if caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )? {
        println!("(skipped: this process has CAP_SYS_RESOURCE) ");
        return Ok(());
    }
    let own_oom = std::fs::read_to_string("/proc/self/oom_score_adj")?;
    let (_, own_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let bundle = busybox_bundle()?;
    let id = unique_id("clamp");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "cat /proc/self/oom_score_adj; ulimit -Hn; ulimit -n",
        ],
    );
    set_process(&mut spec, |p| {
        p.set_oom_score_adj(Some(-999));
        p.set_rlimits(Some(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(own_hard + 1000)
                .hard(own_hard + 1000)
                .build()
                .unwrap(),
        ]));
    });
    let out = run(&bundle, &id, &spec)?;
    ensure!(out.code == 0, "exit {} stderr {}", out.code, out.stderr);
    let want = format!("{}\n{own_hard}\n{own_hard}\n", own_oom.trim());
    ensure!(out.stdout == want, "stdout {:?} want {want:?}", out.stdout);
    Ok(())
}

fn bind_mount_options_and_propagation() -> Result<()> {
    let bundle = busybox_bundle()?;
    let src = tempfile::tempdir()?;
    std::fs::write(src.path().join("data"), "from-host")?;
    let file_src = src.path().join("data");
    let id = unique_id("bind");
    let mut spec = spec(
        &bundle,
        &id,
        &[
            "sh",
            "-c",
            "cat /ro/data; echo; touch /ro/x; echo rc=$?; echo y > /rw/y && echo rw-ok; cat /file; echo; \
             grep -c ' /rw .*shared:' /proc/self/mountinfo",
        ],
    );
    let mut mounts = spec.mounts().clone().unwrap();
    let bind = |dest: &str, src: &std::path::Path, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    };
    mounts.push(bind("/ro", src.path(), &["rbind", "ro", "nosuid"]));
    mounts.push(bind("/rw", src.path(), &["bind", "rw", "shared"]));
    mounts.push(bind("/file", &file_src, &["bind", "ro"]));
    spec.set_mounts(Some(mounts));
    let out = run(&bundle, &id, &spec)?;
    ensure!(
        out.stdout == "from-host\nrc=1\nrw-ok\nfrom-host\n1\n",
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    // The rw bind wrote through to the host directory; the ro one did not.
    ensure!(std::fs::read_to_string(src.path().join("y"))? == "y\n");
    ensure!(!src.path().join("x").exists());
    Ok(())
}

fn seccomp_profile_for_init_and_exec() -> Result<()> {
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder};
    let bundle = busybox_bundle()?;
    // Everything allowed but making directories (EACCES) and chmod (EPERM by default errno).
    let mut deny_mkdir = LinuxSyscallBuilder::default()
        .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .build()
        .unwrap();
    deny_mkdir.set_errno_ret(Some(libc::EACCES as u32));
    // A profile may refuse close_range (the runtime then marks fds one by one).
    let deny_close_range = LinuxSyscallBuilder::default()
        .names(vec!["close_range".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .build()
        .unwrap();
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![deny_mkdir, deny_close_range])
        .build()
        .unwrap();
    let script = "ls /proc/$$/fd; mkdir /tmp/d; echo rc=$?; grep Seccomp: /proc/self/status";
    for nnp in [true, false] {
        let id = unique_id("seccomp");
        let mut spec = spec(&bundle, &id, &["sh", "-c", script]);
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(profile.clone()));
        spec.set_linux(Some(linux));
        set_process(&mut spec, |p| {
            p.set_no_new_privileges(Some(nnp));
        });
        let out = run(&bundle, &id, &spec)?;
        ensure!(
            out.stdout == "0\n1\n2\nrc=1\nSeccomp:\t2\n",
            "no_new_privs={nnp}: stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        ensure!(
            out.stderr.contains("Permission denied"),
            "stderr {:?}",
            out.stderr
        );
        ensure!(!bundle.rootfs.join("tmp/d").exists());
    }
    // An exec'd process gets the container's profile too.
    let id = unique_id("seccomp-exec");
    let mut spec = spec_for(&bundle, &id, &["sleep", "1000"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(profile.clone()));
    spec.set_linux(Some(linux));
    let mut c = create(&bundle, &id, &spec, Stdio::default())?;
    c.container.start()?;
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    let (stdio, out_r, err_r) = piped()?;
    let e = c.container.exec(&p, stdio)?;
    let out = drain(out_r).join().unwrap();
    let _ = drain(err_r).join().unwrap();
    ensure!(wait_exit(e.pid)? == 0);
    ensure!(out == "0\n1\n2\nrc=1\nSeccomp:\t2\n", "exec stdout {out:?}");
    c.container.kill(libc::SIGKILL, false)?;
    ensure!(c.wait()? == 137);
    Ok(())
}

/// The shim creates containers from several threads at once.
fn parallel_creates_from_threads() -> Result<()> {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || -> Result<String> {
                let out = run_args(&["ls", "/proc/self/fd"])?;
                ensure!(
                    out.code == 0,
                    "thread {i}: exit {} stderr {}",
                    out.code,
                    out.stderr
                );
                Ok(out.stdout)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h
            .join()
            .map_err(|_| anyhow::anyhow!("thread {i} panicked"))??;
        // No fd of a sibling container's set-up leaks in either.
        ensure!(out == "0\n1\n2\n3\n", "thread {i}: {out:?}");
    }
    Ok(())
}
