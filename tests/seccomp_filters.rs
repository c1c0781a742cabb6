//! Root tests of `berth::runtime::seccomp` against the real kernel: filters
//! prepared from OCI profiles, installed in a child process, then the
//! child's syscalls checked.
//!
//! `harness = false`: the test binary runs itself again as a *probe*, a
//! single-threaded process that installs the filter itself (no fork of the
//! multi-threaded test process, no `pre_exec`) and then either execs a
//! command or makes the syscalls under test and prints their results. Each
//! test also runs its command without the filter, so it fails when the
//! filter has no effect.

#[path = "common/harnessless.rs"]
mod harnessless;

use std::io::{Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use berth::runtime::seccomp::{install, prepare};
use oci_spec::runtime::LinuxSeccomp;

const PROBE: &str = "__seccomp_probe";
const BUSYBOX: &str = "/bin/busybox";

use harnessless::Test;

const TESTS: &[Test] = &[
    (
        "mkdir_fails_with_the_profile_errno_echo_works",
        mkdir_fails_with_the_profile_errno_echo_works,
    ),
    (
        "argument_condition_blocks_one_personality",
        argument_condition_blocks_one_personality,
    ),
    (
        "each_operator_matches_as_the_kernel_sees_it",
        each_operator_matches_as_the_kernel_sees_it,
    ),
    (
        "default_errno_ret_applies_to_unlisted_syscalls",
        default_errno_ret_applies_to_unlisted_syscalls,
    ),
    (
        "kill_and_trap_actions_deliver_sigsys",
        kill_and_trap_actions_deliver_sigsys,
    ),
    (
        "flags_log_spec_allow_tsync_accepted",
        flags_log_spec_allow_tsync_accepted,
    ),
    (
        "runtime_default_profile_blocks_unshare_mount_keyctl",
        runtime_default_profile_blocks_unshare_mount_keyctl,
    ),
];

// ---- the probe (child side) ------------------------------------------------

/// `PROBE exec <profile json or -> <private-mounts 0|1> <cmd> <args...>` and
/// `PROBE seek <profile json> <offset>...`. Never returns.
fn probe(args: &[String]) -> ! {
    let fail = |msg: String| -> ! {
        eprintln!("probe: {msg}");
        std::process::exit(120)
    };
    let (mode, profile) = match args {
        [mode, profile, ..] => (mode.as_str(), profile.as_str()),
        _ => fail(format!("bad probe arguments {args:?}")),
    };
    let program = (profile != "-").then(|| {
        let p: LinuxSeccomp =
            serde_json::from_str(profile).unwrap_or_else(|e| fail(format!("profile: {e}")));
        prepare(&p).unwrap_or_else(|e| fail(format!("prepare: {e}")))
    });
    match mode {
        "exec" => {
            let (private, cmd) = match &args[2..] {
                [private, cmd @ ..] if !cmd.is_empty() => (private == "1", cmd),
                _ => fail("exec needs a command".into()),
            };
            if private {
                // A mount namespace of its own, so a test mount dies with us.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .unwrap_or_else(|e| fail(format!("unshare mount ns: {e}")));
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .unwrap_or_else(|e| fail(format!("make / private: {e}")));
            }
            let mut command = Command::new(&cmd[0]);
            command.args(&cmd[1..]);
            if let Some(p) = &program {
                nix::sys::prctl::set_no_new_privs()
                    .unwrap_or_else(|e| fail(format!("no_new_privs: {e}")));
                install(p).unwrap_or_else(|e| fail(format!("install: {e}")));
            }
            let e = command.exec();
            fail(format!("exec {cmd:?}: {e}"))
        }
        "seek" => {
            let mut f = std::fs::File::open("/dev/null")
                .unwrap_or_else(|e| fail(format!("open /dev/null: {e}")));
            if let Some(p) = &program {
                nix::sys::prctl::set_no_new_privs()
                    .unwrap_or_else(|e| fail(format!("no_new_privs: {e}")));
                install(p).unwrap_or_else(|e| fail(format!("install: {e}")));
            }
            // lseek(fd, offset, SEEK_SET): the offset is the full 64-bit
            // argument 1 the filter compares.
            for off in &args[2..] {
                let off: u64 = off
                    .parse()
                    .unwrap_or_else(|_| fail(format!("offset {off}")));
                let r = match f.seek(SeekFrom::Start(off)) {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                println!("{off}={r}");
            }
            std::process::exit(0)
        }
        m => fail(format!("unknown probe mode {m}")),
    }
}

// ---- the tests (parent side) -----------------------------------------------

fn run_probe(args: &[&str]) -> Result<Output> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg(PROBE)
        .args(args)
        .output()
        .context("run the probe")?;
    if out.status.code() == Some(120) {
        bail!(
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `cmd` under `profile` (`None`: no filter).
fn exec_under(profile: Option<&str>, private_mounts: bool, cmd: &[&str]) -> Result<Output> {
    let mut args = vec![
        "exec",
        profile.unwrap_or("-"),
        if private_mounts { "1" } else { "0" },
    ];
    args.extend_from_slice(cmd);
    run_probe(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn temp_dir(tag: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("berth-seccomp-{tag}-{}-", std::process::id()))
        .tempdir()?)
}

fn mkdir_fails_with_the_profile_errno_echo_works() -> Result<()> {
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW",
        "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
        "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#;
    let dir = temp_dir("mkdir")?;
    let target = dir.path().join("blocked");
    let t = target.to_str().unwrap();
    let out = exec_under(Some(profile), false, &[BUSYBOX, "mkdir", t])?;
    ensure!(!out.status.success(), "mkdir succeeded under the filter");
    let err = text(&out.stderr);
    ensure!(err.contains("Permission denied"), "stderr: {err}");
    ensure!(!target.exists(), "{t} was created");
    let out = exec_under(Some(profile), false, &[BUSYBOX, "echo", "still", "works"])?;
    ensure!(
        out.status.success() && text(&out.stdout) == "still works",
        "echo under the filter: {out:?}"
    );
    // Without the filter the same mkdir works.
    let out = exec_under(None, false, &[BUSYBOX, "mkdir", t])?;
    ensure!(
        out.status.success() && target.is_dir(),
        "control mkdir: {out:?}"
    );
    Ok(())
}

fn argument_condition_blocks_one_personality() -> Result<()> {
    // personality(PER_LINUX32 = 8) is refused, personality(PER_LINUX = 0) not.
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["personality"],
        "action":"SCMP_ACT_ERRNO","errnoRet":1,
        "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#;
    let out = exec_under(Some(profile), false, &[BUSYBOX, "linux32", BUSYBOX, "true"])?;
    ensure!(!out.status.success(), "linux32 ran under the filter");
    ensure!(
        text(&out.stderr).contains("Operation not permitted"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = exec_under(Some(profile), false, &[BUSYBOX, "linux64", BUSYBOX, "true"])?;
    ensure!(out.status.success(), "linux64 under the filter: {out:?}");
    let out = exec_under(None, false, &[BUSYBOX, "linux32", BUSYBOX, "true"])?;
    ensure!(out.status.success(), "control linux32: {out:?}");
    Ok(())
}

fn each_operator_matches_as_the_kernel_sees_it() -> Result<()> {
    const HI: u64 = (1 << 32) + 50; // high half set, low half below 100
    let offsets = [99u64, 100, 101, 356, HI];
    // (operator, valueTwo, offsets the rule matches)
    let cases: [(&str, Option<u64>, &[u64]); 7] = [
        ("SCMP_CMP_EQ", None, &[100]),
        ("SCMP_CMP_NE", None, &[99, 101, 356, HI]),
        ("SCMP_CMP_LT", None, &[99]),
        ("SCMP_CMP_LE", None, &[99, 100]),
        ("SCMP_CMP_GE", None, &[100, 101, 356, HI]),
        ("SCMP_CMP_GT", None, &[101, 356, HI]),
        // value is the mask (0xff), valueTwo the datum: 356 = 0x164.
        ("SCMP_CMP_MASKED_EQ", Some(100), &[100, 356]),
    ];
    let offset_args: Vec<String> = offsets.iter().map(u64::to_string).collect();
    for (op, two, matching) in cases {
        let (value, two) = match two {
            Some(d) => (255, format!(r#","valueTwo":{d}"#)),
            None => (100, String::new()),
        };
        let profile = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["lseek"],
            "action":"SCMP_ACT_ERRNO","errnoRet":{},
            "args":[{{"index":1,"value":{value}{two},"op":"{op}"}}]}}]}}"#,
            libc::EXDEV
        );
        let mut args = vec!["seek", profile.as_str()];
        args.extend(offset_args.iter().map(String::as_str));
        let out = run_probe(&args)?;
        ensure!(out.status.success(), "{op}: probe {out:?}");
        let stdout = text(&out.stdout);
        for off in offsets {
            let want = if matching.contains(&off) {
                libc::EXDEV
            } else {
                0
            };
            ensure!(
                stdout.lines().any(|l| l == format!("{off}={want}")),
                "{op}: offset {off} should give {want}; got {stdout:?}"
            );
        }
    }
    Ok(())
}

fn builtin_profile() -> LinuxSeccomp {
    // containerd's default capability set (no CAP_SYS_ADMIN).
    let caps = berth::spec::DEFAULT_CAPABILITIES.into_iter().collect();
    berth::spec::default_seccomp_profile(&caps, berth::spec::seccomp::native_arch())
}

fn default_errno_ret_applies_to_unlisted_syscalls() -> Result<()> {
    // The built-in allowlist with another default errno: unshare (not on the
    // list) gets EXDEV, while listed syscalls work.
    let mut p = builtin_profile();
    p.set_default_errno_ret(Some(libc::EXDEV as u32));
    let profile = serde_json::to_string(&p)?;
    let out = exec_under(
        Some(&profile),
        false,
        &[BUSYBOX, "unshare", "-U", BUSYBOX, "true"],
    )?;
    ensure!(!out.status.success(), "unshare ran: {out:?}");
    ensure!(
        text(&out.stderr).contains("Invalid cross-device link"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = exec_under(Some(&profile), false, &[BUSYBOX, "echo", "ok"])?;
    ensure!(out.status.success() && text(&out.stdout) == "ok", "{out:?}");
    Ok(())
}

fn kill_and_trap_actions_deliver_sigsys() -> Result<()> {
    let dir = temp_dir("kill")?;
    let t = dir.path().join("x");
    let t = t.to_str().unwrap();
    for action in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"] {
        let profile = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["mkdir","mkdirat"],"action":"{action}"}}]}}"#
        );
        let out = exec_under(Some(&profile), false, &[BUSYBOX, "mkdir", t])?;
        ensure!(
            out.status.signal() == Some(libc::SIGSYS),
            "{action}: want death by SIGSYS, got {:?}",
            out.status
        );
    }
    Ok(())
}

fn flags_log_spec_allow_tsync_accepted() -> Result<()> {
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW",
        "flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW","SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls":[{"names":["uname"],"action":"SCMP_ACT_LOG"},
                    {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#;
    let program = prepare(&serde_json::from_str(profile)?)?;
    ensure!(
        program.flags()
            == libc::SECCOMP_FILTER_FLAG_LOG
                | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                | libc::SECCOMP_FILTER_FLAG_TSYNC,
        "{program:?}"
    );
    // The kernel took the flags (install fails with EINVAL otherwise) and
    // the filter is in force: LOG lets uname run, mkdir is refused.
    let out = exec_under(Some(profile), false, &[BUSYBOX, "uname", "-s"])?;
    ensure!(
        out.status.success() && text(&out.stdout) == "Linux",
        "{out:?}"
    );
    let dir = temp_dir("flags")?;
    let t = dir.path().join("x");
    let out = exec_under(
        Some(profile),
        false,
        &[BUSYBOX, "mkdir", t.to_str().unwrap()],
    )?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    Ok(())
}

fn runtime_default_profile_blocks_unshare_mount_keyctl() -> Result<()> {
    let profile = serde_json::to_string(&builtin_profile())?;
    let dir = temp_dir("mnt")?;
    let d = dir.path().to_str().unwrap();
    let keyctl = format!(
        "my $r = syscall({}, 1, 0); print $r < 0 ? ($!+0) : 0",
        libc::SYS_keyctl
    );
    let commands: [(&str, Vec<&str>); 3] = [
        ("unshare", vec![BUSYBOX, "unshare", "-U", BUSYBOX, "true"]),
        ("mount", vec![BUSYBOX, "mount", "-t", "tmpfs", "none", d]),
        ("keyctl", vec!["perl", "-e", &keyctl]),
    ];
    for (name, cmd) in &commands {
        // Root without a filter: allowed (each in its own mount namespace).
        let out = exec_under(None, true, cmd)?;
        ensure!(out.status.success(), "control {name}: {out:?}");
        if *name == "keyctl" {
            ensure!(text(&out.stdout) == "0", "control keyctl: {out:?}");
        }
        let out = exec_under(Some(&profile), true, cmd)?;
        if *name == "keyctl" {
            ensure!(
                text(&out.stdout) == libc::EPERM.to_string(),
                "keyctl under RuntimeDefault: {out:?}"
            );
        } else {
            ensure!(!out.status.success(), "{name} ran under RuntimeDefault");
            // busybox mount words EPERM its own way.
            let err = text(&out.stderr);
            ensure!(
                err.contains("Operation not permitted")
                    || (*name == "mount" && err.contains("permission denied (are you root?)")),
                "{name}: {err}"
            );
        }
    }
    for cmd in [
        vec![BUSYBOX, "echo", "hi"],
        vec![
            BUSYBOX,
            "sh",
            "-c",
            "ls / >/dev/null && cat /proc/self/status | grep -q Seccomp",
        ],
    ] {
        let out = exec_under(Some(&profile), true, &cmd)?;
        ensure!(
            out.status.success(),
            "{cmd:?} under RuntimeDefault: {out:?}"
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PROBE) {
        probe(&args[1..]);
    }
    harnessless::run(
        "seccomp_filters",
        "mounts, user namespaces as controls",
        false,
        &args,
        TESTS,
    );
}
