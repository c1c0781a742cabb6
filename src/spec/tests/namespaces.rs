//! Namespaces: the pod's by path, PID modes, host namespaces, user namespaces,
//! cgroup namespace, hostname.

use k8s_cri::v1::{IdMapping, NamespaceMode, UserNamespace};
use oci_spec::runtime::LinuxNamespaceType as T;

use super::{Case, Expect, Fixture, linux, mount, namespace, options, run};
use crate::spec::PodNamespace;

fn set_pid(f: &mut Fixture, mode: NamespaceMode) {
    f.sc().namespace_options.as_mut().unwrap().pid = mode as i32;
}

fn userns() -> Option<UserNamespace> {
    Some(UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![IdMapping {
            host_id: 200000,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![IdMapping {
            host_id: 300000,
            container_id: 0,
            length: 65536,
        }],
    })
}

fn user_namespaced(f: &mut Fixture) {
    f.sc().namespace_options.as_mut().unwrap().userns_options = userns();
    f.pod_sc()
        .namespace_options
        .as_mut()
        .unwrap()
        .userns_options = userns();
    f.namespaces.user = Some("/run/berth/pods/p1/ns/user".into());
}

#[test]
fn namespaces() {
    run(&[
        Case {
            name: "default: new mount and pid, the pod's net/ipc/uts by path",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(namespace(s, T::Mount), Some(None));
                assert_eq!(namespace(s, T::Pid), Some(None));
                assert_eq!(
                    namespace(s, T::Network),
                    Some(Some("/run/berth/pods/p1/ns/net".into()))
                );
                assert_eq!(
                    namespace(s, T::Ipc),
                    Some(Some("/run/berth/pods/p1/ns/ipc".into()))
                );
                assert_eq!(
                    namespace(s, T::Uts),
                    Some(Some("/run/berth/pods/p1/ns/uts".into()))
                );
                assert_eq!(namespace(s, T::User), None);
                assert_eq!(namespace(s, T::Cgroup), None);
                assert!(linux(s).uid_mappings().is_none());
            }),
        },
        Case {
            name: "pid POD joins the pod's PID namespace",
            setup: |f| {
                set_pid(f, NamespaceMode::Pod);
                f.namespaces.pid = Some("/run/berth/pods/p1/ns/pid".into());
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    namespace(s, T::Pid),
                    Some(Some("/run/berth/pods/p1/ns/pid".into()))
                )
            }),
        },
        Case {
            name: "pid POD in a pod without a shared PID namespace",
            setup: |f| set_pid(f, NamespaceMode::Pod),
            expect: Expect::Err("the pod has none"),
        },
        Case {
            name: "pid NODE: the host's",
            setup: |f| set_pid(f, NamespaceMode::Node),
            expect: Expect::Spec(|s| assert_eq!(namespace(s, T::Pid), None)),
        },
        Case {
            name: "pid TARGET joins the target container's",
            setup: |f| {
                set_pid(f, NamespaceMode::Target);
                f.sc().namespace_options.as_mut().unwrap().target_id = "c0".to_string();
                f.target_pid = Some("/proc/4242/ns/pid".into());
            },
            expect: Expect::Spec(|s| {
                assert_eq!(namespace(s, T::Pid), Some(Some("/proc/4242/ns/pid".into())))
            }),
        },
        Case {
            name: "pid TARGET with an unknown target",
            setup: |f| {
                set_pid(f, NamespaceMode::Target);
                f.sc().namespace_options.as_mut().unwrap().target_id = "c0".to_string();
            },
            expect: Expect::Err("names container \"c0\""),
        },
        Case {
            name: "unknown pid mode",
            setup: |f| f.sc().namespace_options.as_mut().unwrap().pid = 12,
            expect: Expect::Err("unknown namespace mode 12"),
        },
        Case {
            name: "host network, IPC and UTS: no such namespaces, no hostname",
            setup: |f| {
                f.namespaces.network = PodNamespace::Host;
                f.namespaces.ipc = PodNamespace::Host;
                f.namespaces.uts = PodNamespace::Host;
            },
            expect: Expect::Spec(|s| {
                assert_eq!(namespace(s, T::Network), None);
                assert_eq!(namespace(s, T::Ipc), None);
                assert_eq!(namespace(s, T::Uts), None);
                assert_eq!(s.hostname(), &None);
            }),
        },
        Case {
            name: "hostname from the pod when it has its own UTS namespace",
            setup: |_| {},
            expect: Expect::Spec(|s| assert_eq!(s.hostname().as_deref(), Some("pod-a"))),
        },
        Case {
            name: "invalid pod hostname",
            setup: |f| f.sandbox.hostname = "bad host".to_string(),
            expect: Expect::Err("is not a hostname"),
        },
        Case {
            name: "user namespace: joined with the pod's mappings",
            setup: user_namespaced,
            expect: Expect::Spec(|s| {
                assert_eq!(
                    namespace(s, T::User),
                    Some(Some("/run/berth/pods/p1/ns/user".into()))
                );
                let u = linux(s).uid_mappings().as_ref().unwrap();
                assert_eq!(
                    (u[0].container_id(), u[0].host_id(), u[0].size()),
                    (0, 200000, 65536)
                );
                let g = linux(s).gid_mappings().as_ref().unwrap();
                assert_eq!(g[0].host_id(), 300000);
                // The pod's files are idmapped too; /dev/shm is not.
                assert!(mount(s, "/etc/hosts").unwrap().uid_mappings().is_some());
                assert!(mount(s, "/dev/shm").unwrap().uid_mappings().is_none());
            }),
        },
        Case {
            name: "user namespace on the host network: /sys is a recursive read-only bind",
            setup: |f| {
                user_namespaced(f);
                f.namespaces.network = PodNamespace::Host;
            },
            expect: Expect::Spec(|s| {
                let sys = mount(s, "/sys").unwrap();
                assert_eq!(sys.typ().as_deref(), Some("bind"));
                assert!(options(sys).contains(&"rro".to_string()));
            }),
        },
        Case {
            name: "container and pod user namespace options differ",
            setup: |f| {
                user_namespaced(f);
                f.pod_sc()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .userns_options = None;
            },
            expect: Expect::Err("differ from the pod's"),
        },
        Case {
            name: "user namespace asked, the pod has none",
            setup: |f| {
                user_namespaced(f);
                f.namespaces.user = None;
            },
            expect: Expect::Err("the pod has none"),
        },
        Case {
            name: "the pod has a user namespace, the container asks for the host's",
            setup: |f| f.namespaces.user = Some("/run/berth/pods/p1/ns/user".into()),
            expect: Expect::Err("asks for the host's"),
        },
        Case {
            name: "user namespace without mappings",
            setup: |f| {
                user_namespaced(f);
                f.sc()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .userns_options
                    .as_mut()
                    .unwrap()
                    .uids
                    .clear();
                f.pod_sc()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .userns_options
                    .as_mut()
                    .unwrap()
                    .uids
                    .clear();
            },
            expect: Expect::Err("no uid mappings"),
        },
        Case {
            name: "user namespace mode CONTAINER is refused",
            setup: |f| {
                user_namespaced(f);
                let c = NamespaceMode::Container as i32;
                f.sc()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .userns_options
                    .as_mut()
                    .unwrap()
                    .mode = c;
                f.pod_sc()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .userns_options
                    .as_mut()
                    .unwrap()
                    .mode = c;
            },
            expect: Expect::Err("is not supported"),
        },
        Case {
            name: "cgroup v2 host: a cgroup namespace",
            setup: |f| f.host.cgroup_v2 = true,
            expect: Expect::Spec(|s| assert_eq!(namespace(s, T::Cgroup), Some(None))),
        },
        Case {
            name: "cgroup v2 host, privileged: no cgroup namespace",
            setup: |f| {
                f.host.cgroup_v2 = true;
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
            },
            expect: Expect::Spec(|s| assert_eq!(namespace(s, T::Cgroup), None)),
        },
    ]);
}
