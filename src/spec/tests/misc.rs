//! Sysctls, annotations, cgroups path, privileged pods, container name.

use std::collections::HashMap;

use super::{Case, Expect, linux, run};
use crate::spec::{
    PodNamespace, SysctlNamespace, container_cgroups_path, normalize_sysctl_name, sysctl_namespace,
};

fn sysctls(f: &mut super::Fixture, kv: &[(&str, &str)]) {
    f.sandbox.linux.as_mut().unwrap().sysctls = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
}

fn spec_sysctls(s: &oci_spec::runtime::Spec) -> HashMap<String, String> {
    linux(s).sysctl().clone().unwrap_or_default()
}

#[test]
fn pod_sysctls() {
    run(&[
        Case {
            name: "no sysctls",
            setup: |_| {},
            expect: Expect::Spec(|s| assert!(linux(s).sysctl().is_none())),
        },
        Case {
            name: "network and IPC sysctls",
            setup: |f| {
                sysctls(
                    f,
                    &[
                        ("net.ipv4.ip_unprivileged_port_start", "0"),
                        ("kernel.shm_rmid_forced", "1"),
                    ],
                )
            },
            expect: Expect::Spec(|s| {
                let m = spec_sysctls(s);
                assert_eq!(
                    m.get("net.ipv4.ip_unprivileged_port_start")
                        .map(String::as_str),
                    Some("0")
                );
                assert_eq!(
                    m.get("kernel.shm_rmid_forced").map(String::as_str),
                    Some("1")
                );
            }),
        },
        Case {
            name: "slash-separated name",
            setup: |f| sysctls(f, &[("net/ipv4/conf/eth0.100/forwarding", "1")]),
            expect: Expect::Spec(|s| {
                assert!(spec_sysctls(s).contains_key("net.ipv4.conf.eth0/100.forwarding"))
            }),
        },
        Case {
            name: "network sysctl with the host network",
            setup: |f| {
                f.namespaces.network = PodNamespace::Host;
                sysctls(f, &[("net.ipv4.ip_forward", "1")]);
            },
            expect: Expect::Err("uses the host's network"),
        },
        Case {
            name: "IPC sysctl with the host IPC",
            setup: |f| {
                f.namespaces.ipc = PodNamespace::Host;
                sysctls(f, &[("fs.mqueue.msg_max", "100")]);
            },
            expect: Expect::Err("host's IPC"),
        },
        Case {
            name: "host-wide sysctl",
            setup: |f| sysctls(f, &[("vm.swappiness", "10")]),
            expect: Expect::Err("not a namespaced sysctl"),
        },
        Case {
            name: "bad sysctl name",
            setup: |f| sysctls(f, &[("net..x", "1")]),
            expect: Expect::Err("not a sysctl name"),
        },
        Case {
            name: "newline in a value",
            setup: |f| sysctls(f, &[("net.core.somaxconn", "1\n2")]),
            expect: Expect::Err("newline"),
        },
    ]);
}

#[test]
fn sysctl_classification() {
    for (name, want) in [
        ("net.core.somaxconn", Some(SysctlNamespace::Network)),
        ("kernel.sem", Some(SysctlNamespace::Ipc)),
        ("kernel.msgmni", Some(SysctlNamespace::Ipc)),
        ("fs.mqueue.queues_max", Some(SysctlNamespace::Ipc)),
        ("kernel.hostname", Some(SysctlNamespace::Uts)),
        ("kernel.pid_max", None),
        ("kernel.shmmax", Some(SysctlNamespace::Ipc)),
        ("fs.file-max", None),
    ] {
        assert_eq!(sysctl_namespace(name), want, "{name}");
    }
    assert_eq!(
        normalize_sysctl_name("net.ipv4.ip_forward"),
        "net.ipv4.ip_forward"
    );
    assert_eq!(
        normalize_sysctl_name("net/ipv4/ip_forward"),
        "net.ipv4.ip_forward"
    );
}

#[test]
fn annotations_and_identity() {
    run(&[
        Case {
            name: "CRI plugin annotations and the CRI's own",
            setup: |f| {
                f.config.annotations = [
                    ("team".to_string(), "a".to_string()),
                    (
                        "io.kubernetes.cri.sandbox-id".to_string(),
                        "spoofed".to_string(),
                    ),
                ]
                .into();
            },
            expect: Expect::Spec(|s| {
                let a = s.annotations().as_ref().unwrap();
                let get = |k: &str| a.get(k).map(String::as_str);
                assert_eq!(get("io.kubernetes.cri.container-type"), Some("container"));
                assert_eq!(get("io.kubernetes.cri.sandbox-id"), Some("p1"));
                assert_eq!(get("io.kubernetes.cri.sandbox-name"), Some("pod-a"));
                assert_eq!(get("io.kubernetes.cri.sandbox-namespace"), Some("default"));
                assert_eq!(get("io.kubernetes.cri.sandbox-uid"), Some("uid-1"));
                assert_eq!(get("io.kubernetes.cri.container-name"), Some("app"));
                assert_eq!(
                    get("io.kubernetes.cri.image-name"),
                    Some("registry.test/busybox:1")
                );
                assert_eq!(get("team"), Some("a"));
            }),
        },
        Case {
            name: "image name from the CRI image spec when none is given",
            setup: |f| f.image_name.clear(),
            expect: Expect::Spec(|s| {
                let a = s.annotations().as_ref().unwrap();
                assert_eq!(
                    a.get("io.kubernetes.cri.image-name").map(String::as_str),
                    Some("sha256:abcd")
                );
            }),
        },
        Case {
            name: "cgroups path",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(
                    linux(s).cgroups_path().as_ref().unwrap().to_str(),
                    Some("/kubepods/pod-uid-1/c1")
                )
            }),
        },
        Case {
            name: "container without a name",
            setup: |f| f.config.metadata = None,
            expect: Expect::Err("the container has no name"),
        },
        Case {
            name: "privileged container in an unprivileged pod",
            setup: |f| f.sc().privileged = true,
            expect: Expect::Err("is not allowed in a pod that is not privileged"),
        },
        Case {
            name: "no hooks, runtime-spec 1.2.0",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert!(s.hooks().is_none());
                assert_eq!(s.version(), "1.2.0");
            }),
        },
    ]);
}

#[test]
fn cgroups_path_helper() {
    assert_eq!(
        container_cgroups_path("/kubepods/burstable/pod1", "c9")
            .unwrap()
            .to_str(),
        Some("/kubepods/burstable/pod1/c9")
    );
    assert_eq!(container_cgroups_path("", "c9"), None);
}
