//! Default mounts, the pod's files, CRI mounts (read-only, propagation,
//! recursive read-only), ordering and overrides.

use k8s_cri::v1::{ImageSpec, Mount as CriMount, MountPropagation};

use super::{Case, Expect, linux, mount, mounts, options, run};
use crate::spec::{PodNamespace, clean_path};

fn bind(container: &str, host: &str) -> CriMount {
    CriMount {
        container_path: container.to_string(),
        host_path: host.to_string(),
        ..Default::default()
    }
}

fn dests(s: &oci_spec::runtime::Spec) -> Vec<String> {
    mounts(s)
        .iter()
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn default_and_pod_mounts() {
    run(&[
        Case {
            name: "default filesystems and the pod's files",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(
                    dests(s),
                    [
                        "/proc",
                        "/dev",
                        "/dev/pts",
                        "/dev/mqueue",
                        "/sys",
                        "/sys/fs/cgroup",
                        "/etc/hostname",
                        "/etc/hosts",
                        "/etc/resolv.conf",
                        "/dev/shm",
                    ]
                );
                let shm = mount(s, "/dev/shm").unwrap();
                assert_eq!(
                    shm.source().as_ref().unwrap().to_str(),
                    Some("/run/berth/pods/p1/shm")
                );
                assert_eq!(options(shm), ["rbind", "rprivate", "rw"]);
                assert_eq!(
                    options(mount(s, "/etc/hosts").unwrap()),
                    ["rbind", "rprivate", "rw"]
                );
                assert_eq!(mount(s, "/proc").unwrap().typ().as_deref(), Some("proc"));
            }),
        },
        Case {
            name: "sysfs and cgroupfs read-only",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert!(options(mount(s, "/sys").unwrap()).contains(&"ro".to_string()));
                assert!(options(mount(s, "/sys/fs/cgroup").unwrap()).contains(&"ro".to_string()));
            }),
        },
        Case {
            name: "privileged: sysfs and cgroupfs writable",
            setup: |f| {
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
            },
            expect: Expect::Spec(|s| {
                assert!(options(mount(s, "/sys").unwrap()).contains(&"rw".to_string()));
                assert!(options(mount(s, "/sys/fs/cgroup").unwrap()).contains(&"rw".to_string()));
            }),
        },
        Case {
            name: "read-only rootfs: root read-only and the pod's files too (not shm)",
            setup: |f| f.sc().readonly_rootfs = true,
            expect: Expect::Spec(|s| {
                assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
                for f in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
                    assert!(
                        options(mount(s, f).unwrap()).contains(&"ro".to_string()),
                        "{f}"
                    );
                }
                assert!(options(mount(s, "/dev/shm").unwrap()).contains(&"rw".to_string()));
            }),
        },
        Case {
            name: "writable rootfs by default",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
                assert_eq!(
                    s.root().as_ref().unwrap().path().to_str(),
                    Some("/var/lib/berth/c1/rootfs")
                );
            }),
        },
        Case {
            name: "host IPC: the host's /dev/shm",
            setup: |f| f.namespaces.ipc = PodNamespace::Host,
            expect: Expect::Spec(|s| {
                let shm = mount(s, "/dev/shm").unwrap();
                assert_eq!(shm.source().as_ref().unwrap().to_str(), Some("/dev/shm"));
                assert_eq!(shm.typ().as_deref(), Some("bind"));
            }),
        },
        Case {
            name: "no pod shm: a private tmpfs",
            setup: |f| f.pod_files.shm = None,
            expect: Expect::Spec(|s| {
                assert_eq!(
                    mount(s, "/dev/shm").unwrap().typ().as_deref(),
                    Some("tmpfs")
                )
            }),
        },
        Case {
            name: "pod without files: no /etc mounts",
            setup: |f| f.pod_files = Default::default(),
            expect: Expect::Spec(|s| assert!(!dests(s).iter().any(|d| d.starts_with("/etc")))),
        },
    ]);
}

#[test]
fn cri_mounts() {
    run(&[
        Case {
            name: "read-write bind",
            setup: |f| f.config.mounts = vec![bind("/data", "/var/lib/kubelet/pods/x/vol")],
            expect: Expect::Spec(|s| {
                let m = mount(s, "/data").unwrap();
                assert_eq!(m.typ().as_deref(), Some("bind"));
                assert_eq!(
                    m.source().as_ref().unwrap().to_str(),
                    Some("/var/lib/kubelet/pods/x/vol")
                );
                assert_eq!(options(m), ["rbind", "rprivate", "rw"]);
                assert!(linux(s).rootfs_propagation().is_none());
            }),
        },
        Case {
            name: "read-only bind",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    readonly: true,
                    ..bind("/cfg", "/host/cfg")
                }]
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    options(mount(s, "/cfg").unwrap()),
                    ["rbind", "rprivate", "ro"]
                )
            }),
        },
        Case {
            name: "host-to-container propagation: rslave and rootfs rslave",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    propagation: MountPropagation::PropagationHostToContainer as i32,
                    ..bind("/mnt", "/host/mnt")
                }]
            },
            expect: Expect::Spec(|s| {
                assert!(options(mount(s, "/mnt").unwrap()).contains(&"rslave".to_string()));
                assert_eq!(linux(s).rootfs_propagation().as_deref(), Some("rslave"));
            }),
        },
        Case {
            name: "bidirectional propagation: rshared wins over a later rslave",
            setup: |f| {
                f.config.mounts = vec![
                    CriMount {
                        propagation: MountPropagation::PropagationBidirectional as i32,
                        ..bind("/a", "/host/a")
                    },
                    CriMount {
                        propagation: MountPropagation::PropagationHostToContainer as i32,
                        ..bind("/b", "/host/b")
                    },
                ]
            },
            expect: Expect::Spec(|s| {
                assert!(options(mount(s, "/a").unwrap()).contains(&"rshared".to_string()));
                assert_eq!(linux(s).rootfs_propagation().as_deref(), Some("rshared"));
            }),
        },
        Case {
            name: "unknown propagation",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    propagation: 9,
                    ..bind("/a", "/host/a")
                }]
            },
            expect: Expect::Err("unknown propagation 9"),
        },
        Case {
            name: "recursive read-only",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    readonly: true,
                    recursive_read_only: true,
                    ..bind("/r", "/host/r")
                }]
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    options(mount(s, "/r").unwrap()),
                    ["rbind", "rprivate", "rro"]
                )
            }),
        },
        Case {
            name: "recursive read-only unsupported by the host",
            setup: |f| {
                f.host.recursive_read_only = false;
                f.config.mounts = vec![CriMount {
                    readonly: true,
                    recursive_read_only: true,
                    ..bind("/r", "/host/r")
                }]
            },
            expect: Expect::Err("recursive read-only mounts are not supported on this host"),
        },
        Case {
            name: "recursive read-only on a read-write mount",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    recursive_read_only: true,
                    ..bind("/r", "/host/r")
                }]
            },
            expect: Expect::Err("read-write mount"),
        },
        Case {
            name: "recursive read-only with non-private propagation",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    readonly: true,
                    recursive_read_only: true,
                    propagation: MountPropagation::PropagationHostToContainer as i32,
                    ..bind("/r", "/host/r")
                }]
            },
            expect: Expect::Err("needs private propagation"),
        },
        Case {
            name: "selinux_relabel is accepted and ignored",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    selinux_relabel: true,
                    ..bind("/z", "/host/z")
                }]
            },
            expect: Expect::Spec(|s| assert!(mount(s, "/z").is_some())),
        },
        Case {
            name: "a CRI mount replaces the pod's /etc/hosts",
            setup: |f| {
                f.config.mounts = vec![bind("/etc/hosts", "/var/lib/kubelet/pods/x/etc-hosts")]
            },
            expect: Expect::Spec(|s| {
                let hosts: Vec<_> = mounts(s)
                    .iter()
                    .filter(|m| m.destination().to_str() == Some("/etc/hosts"))
                    .collect();
                assert_eq!(hosts.len(), 1);
                assert_eq!(
                    hosts[0].source().as_ref().unwrap().to_str(),
                    Some("/var/lib/kubelet/pods/x/etc-hosts")
                );
            }),
        },
        Case {
            name: "a CRI /dev mount hides every default under /dev",
            setup: |f| f.config.mounts = vec![bind("/dev", "/dev")],
            expect: Expect::Spec(|s| {
                let d = dests(s);
                assert!(d.contains(&"/dev".to_string()));
                assert!(!d.iter().any(|d| d.starts_with("/dev/") && d != "/dev/shm"));
                assert_eq!(mount(s, "/dev").unwrap().typ().as_deref(), Some("bind"));
            }),
        },
        Case {
            name: "a CRI mount over /sys replaces sysfs",
            setup: |f| f.config.mounts = vec![bind("/sys", "/sys")],
            expect: Expect::Spec(|s| {
                assert_eq!(mount(s, "/sys").unwrap().typ().as_deref(), Some("bind"))
            }),
        },
        Case {
            name: "mounts sorted by depth, stable",
            setup: |f| {
                f.config.mounts = vec![
                    bind("/a/b/c", "/h/1"),
                    bind("/a", "/h/2"),
                    bind("/x/y", "/h/3"),
                    bind("/a/b", "/h/4"),
                ]
            },
            expect: Expect::Spec(|s| {
                let d = dests(s);
                let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
                assert!(pos("/a") < pos("/x/y"));
                assert!(pos("/x/y") < pos("/a/b"));
                assert!(pos("/a/b") < pos("/a/b/c"));
            }),
        },
        Case {
            name: "container path is cleaned",
            setup: |f| f.config.mounts = vec![bind("/data/./x/../y/", "/h")],
            expect: Expect::Spec(|s| assert!(mount(s, "/data/y").is_some())),
        },
        Case {
            name: "relative container path",
            setup: |f| f.config.mounts = vec![bind("data", "/h")],
            expect: Expect::Err("the container path must be absolute"),
        },
        Case {
            name: "mount over /",
            setup: |f| f.config.mounts = vec![bind("/x/..", "/h")],
            expect: Expect::Err("cannot mount over the container's root"),
        },
        Case {
            name: "empty host path",
            setup: |f| f.config.mounts = vec![bind("/data", "")],
            expect: Expect::Err("the host path is empty"),
        },
        Case {
            name: "relative host path",
            setup: |f| f.config.mounts = vec![bind("/data", "vol")],
            expect: Expect::Err("must be absolute"),
        },
        Case {
            name: "an image volume the pod manager did not resolve is refused",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    container_path: "/img".to_string(),
                    image: Some(ImageSpec {
                        image: "busybox".to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            },
            expect: Expect::Err("an image volume reached the spec unresolved"),
        },
        Case {
            name: "idmapped CRI mount keeps its mappings",
            setup: |f| {
                f.config.mounts = vec![CriMount {
                    uid_mappings: vec![k8s_cri::v1::IdMapping {
                        host_id: 100000,
                        container_id: 0,
                        length: 65536,
                    }],
                    gid_mappings: vec![k8s_cri::v1::IdMapping {
                        host_id: 100000,
                        container_id: 0,
                        length: 65536,
                    }],
                    ..bind("/v", "/h/v")
                }]
            },
            expect: Expect::Spec(|s| {
                let m = mount(s, "/v").unwrap();
                let u = m.uid_mappings().as_ref().unwrap();
                assert_eq!(
                    (u[0].host_id(), u[0].container_id(), u[0].size()),
                    (100000, 0, 65536)
                );
                assert!(m.gid_mappings().is_some());
            }),
        },
    ]);
}

#[test]
fn path_cleaning() {
    for (input, want) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a//b/", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../etc", "/etc"),
        ("a/b", "/a/b"),
    ] {
        assert_eq!(clean_path(input), want, "{input}");
    }
}

#[test]
fn image_volumes() {
    use crate::spec::{ImageVolume, image_volume_paths};
    use serde_json::json;

    let image: oci_spec::image::Config = serde_json::from_value(
        json!({"Volumes": {"/data": {}, "/cache/": {}, "logs": {}, "/": {}}}),
    )
    .unwrap();
    assert_eq!(
        image_volume_paths(&[], Some(&image)),
        ["/cache", "/data", "/logs"]
    );
    assert_eq!(
        image_volume_paths(&[bind("/data/", "/h")], Some(&image)),
        ["/cache", "/logs"]
    );
    assert!(image_volume_paths(&[], None).is_empty());

    run(&[
        Case {
            name: "image volume directories are bind-mounted read-write",
            setup: |f| {
                f.image_volumes = vec![ImageVolume {
                    container_path: "/data".to_string(),
                    host_path: "/var/lib/berth/c1/volumes/data".into(),
                }]
            },
            expect: Expect::Spec(|s| {
                let m = mount(s, "/data").unwrap();
                assert_eq!(
                    m.source().as_ref().unwrap().to_str(),
                    Some("/var/lib/berth/c1/volumes/data")
                );
                assert_eq!(options(m), ["rbind", "rprivate", "rw"]);
            }),
        },
        Case {
            name: "a CRI mount wins over an image volume",
            setup: |f| {
                f.config.mounts = vec![bind("/data", "/kubelet/vol")];
                f.image_volumes = vec![ImageVolume {
                    container_path: "/data".to_string(),
                    host_path: "/var/lib/berth/c1/volumes/data".into(),
                }]
            },
            expect: Expect::Spec(|s| {
                let all: Vec<_> = mounts(s)
                    .iter()
                    .filter(|m| m.destination().to_str() == Some("/data"))
                    .collect();
                assert_eq!(all.len(), 1);
                assert_eq!(
                    all[0].source().as_ref().unwrap().to_str(),
                    Some("/kubelet/vol")
                );
            }),
        },
        Case {
            name: "relative image volume directory",
            setup: |f| {
                f.image_volumes = vec![ImageVolume {
                    container_path: "/data".to_string(),
                    host_path: "volumes/data".into(),
                }]
            },
            expect: Expect::Err("must be absolute"),
        },
    ]);
}
