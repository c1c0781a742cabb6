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
    assert_eq!(
        crate::spec::container_systemd_cgroups_path("kubepods-besteffort-pod1.slice", "c9"),
        std::path::PathBuf::from("kubepods-besteffort-pod1.slice:berth:c9")
    );
    assert_eq!(
        crate::spec::container_systemd_cgroups_path("", "c9"),
        std::path::PathBuf::from("system.slice:berth:c9")
    );
}

#[test]
fn exec_and_status_helpers() {
    use crate::spec::{exec_process, linux_container_user, oci_resources};

    let mut f = super::Fixture::new();
    f.sc().run_as_user = Some(k8s_cri::v1::Int64Value { value: 1000 });
    f.sc().no_new_privs = true;
    f.resources().oom_score_adj = 100;
    let spec = f.build().unwrap();

    let cmd = vec!["cat".to_string(), "/etc/hostname".to_string()];
    let p = exec_process(&spec, &cmd, true).unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &cmd);
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.user().uid(), 1000);
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.env(), spec.process().as_ref().unwrap().env());
    assert_eq!(p.oom_score_adj(), None);
    assert!(exec_process(&spec, &[], false).is_err());
    assert!(exec_process(&spec, &["".to_string()], false).is_err());

    let u = linux_container_user(&spec).unwrap();
    assert_eq!((u.uid, u.gid), (1000, 1000));
    assert_eq!(u.supplemental_groups, [10, 44, 50, 1000]);

    let r = k8s_cri::v1::LinuxContainerResources {
        cpu_quota: 20_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 1 << 27,
        ..Default::default()
    };
    let o = oci_resources(&r, &f.host).unwrap();
    assert_eq!(o.cpu().as_ref().unwrap().quota(), Some(20_000));
    assert_eq!(o.memory().unwrap().limit(), Some(1 << 27));
    assert!(o.devices().is_none());
    let bad = k8s_cri::v1::LinuxContainerResources {
        cpu_shares: 1 << 40,
        ..Default::default()
    };
    assert!(oci_resources(&bad, &f.host).is_err());
}

/// A request shaped like the ones kubelet sends for a restricted pod: the
/// whole spec is checked on the points that matter and survives a JSON
/// round trip (the shim reads it back from config.json).
#[test]
fn kubelet_restricted_pod() {
    use k8s_cri::v1::{
        Capability as CriCapability, Int64Value, Mount, SecurityProfile,
        security_profile::ProfileType,
    };
    use oci_spec::runtime::{Capability, Spec};

    let mut f = super::Fixture::new();
    let sc = f.sc();
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.run_as_group = Some(Int64Value { value: 3000 });
    sc.supplemental_groups = vec![2000];
    sc.no_new_privs = true;
    sc.readonly_rootfs = true;
    sc.capabilities = Some(CriCapability {
        add_capabilities: vec!["NET_BIND_SERVICE".to_string()],
        drop_capabilities: vec!["ALL".to_string()],
        ..Default::default()
    });
    sc.seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    sc.masked_paths = [
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sc.readonly_paths = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.config.mounts = vec![
        Mount {
            container_path: "/var/run/secrets/kubernetes.io/serviceaccount".to_string(),
            host_path: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~projected/kube-api-access"
                .to_string(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            container_path: "/etc/hosts".to_string(),
            host_path: "/var/lib/kubelet/pods/u1/etc-hosts".to_string(),
            ..Default::default()
        },
        Mount {
            container_path: "/dev/termination-log".to_string(),
            host_path: "/var/lib/kubelet/pods/u1/containers/app/0a1b".to_string(),
            ..Default::default()
        },
    ];
    f.config.log_path = "app/0.log".to_string();
    let r = f.resources();
    r.cpu_period = 100_000;
    r.cpu_quota = 50_000;
    r.cpu_shares = 512;
    r.memory_limit_in_bytes = 128 << 20;
    r.oom_score_adj = 999;
    f.options.oom_score_adj_min = Some(0);

    let spec = f.build().unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);

    let p = spec.process().as_ref().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 3000));
    assert_eq!(
        p.user().additional_gids().as_ref().unwrap(),
        &[10, 44, 50, 2000, 3000]
    );
    assert_eq!(p.no_new_privileges(), Some(true));
    let bounding = p
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(bounding, [Capability::NetBindService].into_iter().collect());
    assert_eq!(p.oom_score_adj(), Some(999));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let l = linux(&spec);
    assert_eq!(l.masked_paths().as_ref().unwrap().len(), 11);
    assert_eq!(l.readonly_paths().as_ref().unwrap().len(), 5);
    let seccomp = l.seccomp().as_ref().unwrap();
    let allowed = super::syscall_names(seccomp);
    assert!(!allowed.contains("chroot"), "CAP_SYS_CHROOT was dropped");
    // kubelet's /etc/hosts replaces the pod's; the pod's hostname and
    // resolv.conf stay, read-only with the read-only rootfs.
    let hosts = super::mount(&spec, "/etc/hosts").unwrap();
    assert_eq!(
        hosts.source().as_ref().unwrap().to_str(),
        Some("/var/lib/kubelet/pods/u1/etc-hosts")
    );
    assert!(
        super::options(super::mount(&spec, "/etc/resolv.conf").unwrap())
            .contains(&"ro".to_string())
    );
    assert!(super::mount(&spec, "/dev/termination-log").is_some());
}
