//! seccomp: profile selection (seccomp and the deprecated path), the default
//! profile and its capability gating, Docker/OCI JSON parsing.

use std::collections::HashSet;

use k8s_cri::v1::{
    Capability as CriCapability, LinuxContainerSecurityContext, SecurityProfile,
    security_profile::ProfileType,
};
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use super::{Case, Expect, linux, run, syscall_names};
use crate::spec::seccomp::{arch_for, native_arch};
use crate::spec::{
    DEFAULT_CAPABILITIES, SeccompSelection, default_seccomp_profile, parse_seccomp_profile,
    seccomp_selection,
};

fn profile(t: ProfileType, r: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.to_string(),
    })
}

#[test]
fn selection() {
    type Row = (
        &'static str,
        Option<SecurityProfile>,
        &'static str,
        Result<SeccompSelection, &'static str>,
    );
    let table: Vec<Row> = vec![
        (
            "nothing: unconfined",
            None,
            "",
            Ok(SeccompSelection::Unconfined),
        ),
        (
            "RuntimeDefault",
            profile(ProfileType::RuntimeDefault, ""),
            "",
            Ok(SeccompSelection::RuntimeDefault),
        ),
        (
            "Unconfined",
            profile(ProfileType::Unconfined, ""),
            "",
            Ok(SeccompSelection::Unconfined),
        ),
        (
            "Localhost",
            profile(
                ProfileType::Localhost,
                "/var/lib/kubelet/seccomp/audit.json",
            ),
            "",
            Ok(SeccompSelection::Localhost(
                "/var/lib/kubelet/seccomp/audit.json".to_string(),
            )),
        ),
        (
            "Localhost with a localhost/ prefix",
            profile(ProfileType::Localhost, "localhost//p.json"),
            "",
            Ok(SeccompSelection::Localhost("/p.json".to_string())),
        ),
        (
            "Localhost without a path",
            profile(ProfileType::Localhost, ""),
            "",
            Err("needs localhost_ref"),
        ),
        (
            "Localhost relative",
            profile(ProfileType::Localhost, "p.json"),
            "",
            Err("must be absolute"),
        ),
        (
            "localhost_ref with RuntimeDefault",
            profile(ProfileType::RuntimeDefault, "/p"),
            "",
            Err("may only be set"),
        ),
        (
            "unknown type",
            Some(SecurityProfile {
                profile_type: 9,
                localhost_ref: String::new(),
            }),
            "",
            Err("unknown profile type"),
        ),
        (
            "field wins over the path",
            profile(ProfileType::Unconfined, ""),
            "runtime/default",
            Ok(SeccompSelection::Unconfined),
        ),
        (
            "path runtime/default",
            None,
            "runtime/default",
            Ok(SeccompSelection::RuntimeDefault),
        ),
        (
            "path docker/default",
            None,
            "docker/default",
            Ok(SeccompSelection::RuntimeDefault),
        ),
        (
            "path unconfined",
            None,
            "unconfined",
            Ok(SeccompSelection::Unconfined),
        ),
        (
            "path localhost/",
            None,
            "localhost//etc/p.json",
            Ok(SeccompSelection::Localhost("/etc/p.json".to_string())),
        ),
        ("path garbage", None, "strict", Err("is not a profile")),
    ];
    for (name, seccomp, path, want) in table {
        #[allow(deprecated)]
        let sc = LinuxContainerSecurityContext {
            seccomp,
            seccomp_profile_path: path.to_string(),
            ..Default::default()
        };
        match (want, seccomp_selection(Some(&sc))) {
            (Ok(w), Ok(g)) => assert_eq!(g, w, "{name}"),
            (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (w, g) => panic!("{name}: want {w:?}, got {g:?}"),
        }
    }
    let privileged = LinuxContainerSecurityContext {
        privileged: true,
        seccomp: profile(ProfileType::RuntimeDefault, ""),
        ..Default::default()
    };
    assert_eq!(
        seccomp_selection(Some(&privileged)).unwrap(),
        SeccompSelection::Unconfined
    );
}

fn seccomp(s: &oci_spec::runtime::Spec) -> &LinuxSeccomp {
    linux(s).seccomp().as_ref().expect("a seccomp filter")
}

const DENY_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
  ]
}"#;

#[test]
fn seccomp_in_spec() {
    run(&[
        Case {
            name: "no profile: no filter",
            setup: |_| {},
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
        Case {
            name: "no profile, handler default_seccomp: the default profile",
            setup: |f| f.options.seccomp_default_when_unset = true,
            expect: Expect::Spec(|s| {
                assert_eq!(
                    seccomp(s).default_action(),
                    LinuxSeccompAction::ScmpActErrno
                )
            }),
        },
        Case {
            name: "explicit Unconfined, handler default_seccomp: no filter",
            setup: |f| {
                f.options.seccomp_default_when_unset = true;
                f.sc().seccomp = profile(ProfileType::Unconfined, "");
            },
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
        Case {
            name: "deprecated unconfined path, handler default_seccomp: no filter",
            setup: |f| {
                f.options.seccomp_default_when_unset = true;
                #[allow(deprecated)]
                {
                    f.sc().seccomp_profile_path = "unconfined".to_string();
                }
            },
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
        Case {
            name: "privileged, handler default_seccomp: no filter",
            setup: |f| {
                f.options.seccomp_default_when_unset = true;
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
            },
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
        Case {
            name: "RuntimeDefault: the default profile",
            setup: |f| f.sc().seccomp = profile(ProfileType::RuntimeDefault, ""),
            expect: Expect::Spec(|s| {
                let p = seccomp(s);
                assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
                assert_eq!(p.default_errno_ret(), Some(1));
                let allowed = syscall_names(p);
                assert!(allowed.contains("read") && allowed.contains("execve"));
                for denied in ["mount", "unshare", "keyctl", "setns", "ptrace", "bpf"] {
                    assert!(!allowed.contains(denied), "{denied} allowed");
                }
            }),
        },
        Case {
            name: "RuntimeDefault with CAP_SYS_ADMIN allows mount and unshare",
            setup: |f| {
                f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
                f.sc().capabilities = Some(CriCapability {
                    add_capabilities: vec!["SYS_ADMIN".to_string()],
                    ..Default::default()
                });
            },
            expect: Expect::Spec(|s| {
                let allowed = syscall_names(seccomp(s));
                assert!(
                    allowed.contains("mount")
                        && allowed.contains("unshare")
                        && allowed.contains("clone")
                );
            }),
        },
        Case {
            name: "RuntimeDefault after drop ALL: no chroot",
            setup: |f| {
                f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
                f.sc().capabilities = Some(CriCapability {
                    drop_capabilities: vec!["ALL".to_string()],
                    ..Default::default()
                });
            },
            expect: Expect::Spec(|s| assert!(!syscall_names(seccomp(s)).contains("chroot"))),
        },
        Case {
            name: "Unconfined: no filter",
            setup: |f| f.sc().seccomp = profile(ProfileType::Unconfined, ""),
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
        Case {
            name: "deprecated path runtime/default",
            setup: |f| {
                #[allow(deprecated)]
                {
                    f.sc().seccomp_profile_path = "runtime/default".to_string();
                }
            },
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_some())),
        },
        Case {
            name: "Localhost: the given profile",
            setup: |f| {
                f.sc().seccomp = profile(
                    ProfileType::Localhost,
                    "/var/lib/kubelet/seccomp/deny-mkdir.json",
                );
                f.seccomp_profile = Some(DENY_MKDIR.to_string());
            },
            expect: Expect::Spec(|s| {
                let p = seccomp(s);
                assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
                let rule = &p.syscalls().as_ref().unwrap()[0];
                assert_eq!(rule.names(), &["mkdir", "mkdirat"]);
                assert_eq!(
                    (rule.action(), rule.errno_ret()),
                    (LinuxSeccompAction::ScmpActErrno, Some(13))
                );
            }),
        },
        Case {
            name: "Localhost without the file's contents",
            setup: |f| f.sc().seccomp = profile(ProfileType::Localhost, "/missing.json"),
            expect: Expect::Err(
                "seccomp profile /missing.json: the profile's contents were not given",
            ),
        },
        Case {
            name: "Localhost with a malformed file",
            setup: |f| {
                f.sc().seccomp = profile(ProfileType::Localhost, "/bad.json");
                f.seccomp_profile = Some("{\"defaultAction\": ".to_string());
            },
            expect: Expect::Err("seccomp profile /bad.json: not a seccomp profile"),
        },
        Case {
            name: "RuntimeDefault on a kernel without seccomp",
            setup: |f| {
                f.host.seccomp = false;
                f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
            },
            expect: Expect::Err("no seccomp filter support"),
        },
        Case {
            name: "Unconfined on a kernel without seccomp",
            setup: |f| {
                f.host.seccomp = false;
                f.sc().seccomp = profile(ProfileType::Unconfined, "");
            },
            expect: Expect::Spec(|s| assert!(linux(s).seccomp().is_none())),
        },
    ]);
}

fn caps(extra: &[Capability]) -> HashSet<Capability> {
    DEFAULT_CAPABILITIES
        .into_iter()
        .chain(extra.iter().copied())
        .collect()
}

#[test]
fn default_profile_gating() {
    let arch = arch_for("x86_64");
    let plain = default_seccomp_profile(&caps(&[]), arch);
    assert_eq!(
        plain.architectures().as_ref().unwrap(),
        &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    let allowed = syscall_names(&plain);
    assert!(allowed.contains("arch_prctl"));
    assert!(
        allowed.contains("chroot"),
        "SYS_CHROOT is in the default set"
    );
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "ptrace",
        "reboot",
        "init_module",
        "bpf",
        "perf_event_open",
        "syslog",
        "io_uring_setup",
        "open_by_handle_at",
        "settimeofday",
        "clone3",
        "clone",
        "personality",
        "socket",
    ] {
        assert!(!allowed.contains(name), "{name} unconditionally allowed");
    }
    let rules = plain.syscalls().as_ref().unwrap();
    // clone only without namespace flags, clone3 looks absent.
    let clone = rules.iter().find(|r| r.names() == &["clone"]).unwrap();
    let arg = clone.args().as_ref().unwrap()[0];
    assert_eq!(
        (arg.index(), arg.value(), arg.value_two(), arg.op()),
        (
            0,
            0x7E02_0000,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq
        )
    );
    let clone3 = rules.iter().find(|r| r.names() == &["clone3"]).unwrap();
    assert_eq!(
        (clone3.action(), clone3.errno_ret()),
        (LinuxSeccompAction::ScmpActErrno, Some(38))
    );
    // socket except AF_VSOCK.
    let socket = rules.iter().find(|r| r.names() == &["socket"]).unwrap();
    assert_eq!(
        socket.args().as_ref().unwrap()[0].op(),
        LinuxSeccompOperator::ScmpCmpNe
    );

    let table: &[(Capability, &[&str])] = &[
        (
            Capability::SysAdmin,
            &["mount", "unshare", "setns", "clone", "clone3"],
        ),
        (
            Capability::SysPtrace,
            &["ptrace", "process_vm_readv", "kcmp"],
        ),
        (Capability::SysModule, &["init_module", "finit_module"]),
        (Capability::SysTime, &["settimeofday", "clock_settime"]),
        (Capability::SysBoot, &["reboot"]),
        (Capability::Syslog, &["syslog"]),
        (Capability::Bpf, &["bpf"]),
        (Capability::Perfmon, &["perf_event_open"]),
        (Capability::DacReadSearch, &["open_by_handle_at"]),
        (Capability::SysNice, &["mbind"]),
    ];
    for (cap, names) in table {
        let p = default_seccomp_profile(&caps(&[*cap]), arch);
        let allowed = syscall_names(&p);
        for n in *names {
            assert!(allowed.contains(*n), "{cap:?} should allow {n}");
        }
    }
    // With CAP_SYS_ADMIN there is no masked clone rule and no clone3 errno rule.
    let admin = default_seccomp_profile(&caps(&[Capability::SysAdmin]), arch);
    assert!(
        !admin
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.args().is_some() && r.names() == &["clone"])
    );

    // Without SYS_CHROOT, chroot is refused.
    let mut no_chroot = caps(&[]);
    no_chroot.remove(&Capability::SysChroot);
    assert!(!syscall_names(&default_seccomp_profile(&no_chroot, arch)).contains("chroot"));

    // s390x takes the clone flags in the 2nd argument.
    let s390 = default_seccomp_profile(&caps(&[]), arch_for("s390x"));
    let clone = s390
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.names() == &["clone"])
        .unwrap();
    assert_eq!(clone.args().as_ref().unwrap()[0].index(), 1);
    // aarch64 has its own extras and arches.
    let arm = default_seccomp_profile(&caps(&[]), arch_for("aarch64"));
    assert!(syscall_names(&arm).contains("set_tls"));
    assert!(!syscall_names(&arm).contains("arch_prctl"));

    // The profile serialises to OCI JSON the runtime can read back.
    let json = serde_json::to_string(&plain).unwrap();
    let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plain);
    assert!(json.contains("\"defaultAction\":\"SCMP_ACT_ERRNO\""));
}

const DOCKER_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ERRNO",
  "defaultErrnoRet": 1,
  "archMap": [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
  ],
  "syscalls": [
    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "", "includes": {}, "excludes": {}},
    {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
    {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
    {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
     "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
  ]
}"#;

fn names_of(p: &LinuxSeccomp) -> Vec<String> {
    p.syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names().clone())
        .collect()
}

#[test]
fn docker_profile_resolution() {
    let x86 = arch_for("x86_64");
    let p = parse_seccomp_profile(DOCKER_PROFILE, &caps(&[]), x86, Some((6, 1))).unwrap();
    assert_eq!(
        p.architectures().as_ref().unwrap(),
        &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    assert_eq!(p.default_errno_ret(), Some(1));
    assert_eq!(
        names_of(&p),
        [
            "read",
            "write",
            "getpid",
            "ptrace",
            "arch_prctl",
            "clone",
            "personality"
        ]
    );
    let clone = &p.syscalls().as_ref().unwrap()[4];
    let arg = clone.args().as_ref().unwrap()[0];
    assert_eq!(
        (arg.value(), arg.op()),
        (2114060288, LinuxSeccompOperator::ScmpCmpMaskedEq)
    );

    // With CAP_SYS_ADMIN: mount included, the masked clone excluded.
    let admin =
        parse_seccomp_profile(DOCKER_PROFILE, &caps(&[Capability::SysAdmin]), x86, None).unwrap();
    let n = names_of(&admin);
    assert!(n.contains(&"mount".to_string()) && !n.contains(&"clone".to_string()));

    // An old kernel: ptrace (minKernel 4.8) left out.
    let old = parse_seccomp_profile(DOCKER_PROFILE, &caps(&[]), x86, Some((4, 4))).unwrap();
    assert!(!names_of(&old).contains(&"ptrace".to_string()));

    // On arm64: the arm64 arches and set_tls, not arch_prctl.
    let arm = parse_seccomp_profile(DOCKER_PROFILE, &caps(&[]), arch_for("aarch64"), None).unwrap();
    assert_eq!(
        arm.architectures().as_ref().unwrap(),
        &[Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    );
    let n = names_of(&arm);
    assert!(n.contains(&"set_tls".to_string()) && !n.contains(&"arch_prctl".to_string()));
}

#[test]
fn oci_profile_and_flags() {
    let json = r#"{
      "defaultAction": "SCMP_ACT_KILL_PROCESS",
      "architectures": ["SCMP_ARCH_X86_64"],
      "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
      "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_LOG"}]
    }"#;
    let p = parse_seccomp_profile(json, &caps(&[]), native_arch(), None).unwrap();
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActKillProcess);
    assert_eq!(p.architectures().as_ref().unwrap(), &[Arch::ScmpArchX86_64]);
    assert_eq!(
        p.flags().as_ref().unwrap(),
        &[
            LinuxSeccompFilterFlag::SeccompFilterFlagLog,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow
        ]
    );
    assert_eq!(
        p.syscalls().as_ref().unwrap()[0].action(),
        LinuxSeccompAction::ScmpActLog
    );

    // A profile without syscalls is a filter with only a default action.
    let p = parse_seccomp_profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
        &caps(&[]),
        native_arch(),
        None,
    )
    .unwrap();
    assert!(p.syscalls().as_ref().unwrap().is_empty());
    assert!(p.architectures().is_none());
}

#[test]
fn malformed_profiles() {
    let table: &[(&str, &str, &str)] = &[
        ("empty file", "", "the profile is empty"),
        ("not JSON", "defaultAction: allow", "not a seccomp profile"),
        (
            "truncated",
            "{\"defaultAction\": \"SCMP_ACT_ALLOW\",",
            "line 1",
        ),
        (
            "no default action",
            "{\"syscalls\": []}",
            "defaultAction is missing",
        ),
        (
            "unknown default action",
            r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#,
            "unknown action \"SCMP_ACT_MAYBE\"",
        ),
        (
            "notify",
            r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
            "needs a seccomp agent",
        ),
        (
            "listener",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock"}"#,
            "listenerPath",
        ),
        (
            "unknown arch",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#,
            "unknown architecture",
        ),
        (
            "architectures and archMap",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
            "both 'architectures' and 'archMap'",
        ),
        (
            "unknown flag",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["FAST"]}"#,
            "unknown flag",
        ),
        (
            "name and names",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"read","names":["write"],"action":"SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]: both 'name' and 'names'",
        ),
        (
            "no names",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]: no syscall names",
        ),
        (
            "bad name",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["rm -rf"],"action":"SCMP_ACT_ERRNO"}]}"#,
            "is not a syscall name",
        ),
        (
            "no action",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"]}]}"#,
            "syscalls[0]: action is missing",
        ),
        (
            "arg index too large",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
            "argument index 6 is out of range",
        ),
        (
            "unknown operator",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":0,"op":"SCMP_CMP_ABOUT"}]}]}"#,
            "unknown operator",
        ),
        (
            "bad minKernel",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","includes":{"minKernel":"four"}}]}"#,
            "minKernel \"four\"",
        ),
        (
            "wrong type",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":{"names":["read"]}}"#,
            "invalid type",
        ),
    ];
    for (name, json, want) in table {
        match parse_seccomp_profile(json, &caps(&[]), arch_for("x86_64"), None) {
            Ok(p) => panic!("{name}: parsed: {p:?}"),
            Err(e) => assert!(e.contains(want), "{name}: {e:?} lacks {want:?}"),
        }
    }
}
