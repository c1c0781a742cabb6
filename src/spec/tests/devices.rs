//! CRI devices, device cgroup rules, privileged devices.

use k8s_cri::v1::{Device, Int64Value};
use oci_spec::runtime::LinuxDeviceType;

use super::{Case, Expect, linux, run};

fn dev(host: &str, container: &str, perms: &str) -> Device {
    Device {
        host_path: host.to_string(),
        container_path: container.to_string(),
        permissions: perms.to_string(),
    }
}

fn nodes(s: &oci_spec::runtime::Spec) -> Vec<(String, i64, i64)> {
    linux(s)
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            (
                d.path().to_string_lossy().into_owned(),
                d.major(),
                d.minor(),
            )
        })
        .collect()
}

fn rules(s: &oci_spec::runtime::Spec) -> Vec<String> {
    linux(s)
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .iter()
        .flatten()
        .map(|r| format!("{} {r}", if r.allow() { "allow" } else { "deny" }))
        .collect()
}

#[test]
fn devices() {
    run(&[
        Case {
            name: "no devices: deny all, then the standard nodes",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert!(nodes(s).is_empty());
                let r = rules(s);
                assert_eq!(r[0], "deny a *:* rwm");
                assert!(r.contains(&"allow c 1:3 rwm".to_string()));
                assert!(r.contains(&"allow c 136:* rwm".to_string()));
                assert!(!r.contains(&"allow c 10:229 rwm".to_string()));
            }),
        },
        Case {
            name: "a CRI device: node and allow rule with its permissions",
            setup: |f| f.config.devices = vec![dev("/dev/fuse", "/dev/fuse", "rw")],
            expect: Expect::Spec(|s| {
                assert_eq!(nodes(s), [("/dev/fuse".to_string(), 10, 229)]);
                assert!(rules(s).contains(&"allow c 10:229 rw".to_string()));
                let d = &linux(s).devices().as_ref().unwrap()[0];
                assert_eq!(d.typ(), LinuxDeviceType::C);
                assert_eq!(
                    (d.file_mode(), d.uid(), d.gid()),
                    (Some(0o660), Some(0), Some(6))
                );
            }),
        },
        Case {
            name: "a block device at another container path",
            setup: |f| f.config.devices = vec![dev("/dev/sda", "/dev/xvda", "r")],
            expect: Expect::Spec(|s| {
                assert_eq!(nodes(s), [("/dev/xvda".to_string(), 8, 0)]);
                assert!(rules(s).contains(&"allow b 8:0 r".to_string()));
            }),
        },
        Case {
            name: "a device directory: every device below it",
            setup: |f| f.config.devices = vec![dev("/dev/dri", "/dev/dri", "rwm")],
            expect: Expect::Spec(|s| {
                assert_eq!(
                    nodes(s),
                    [
                        ("/dev/dri/card0".to_string(), 226, 0),
                        ("/dev/dri/renderD128".to_string(), 226, 128)
                    ]
                );
            }),
        },
        Case {
            name: "empty permissions mean rwm",
            setup: |f| f.config.devices = vec![dev("/dev/fuse", "/dev/fuse", "")],
            expect: Expect::Spec(|s| assert!(rules(s).contains(&"allow c 10:229 rwm".to_string()))),
        },
        Case {
            name: "a device the host does not have",
            setup: |f| f.config.devices = vec![dev("/dev/nvidia0", "/dev/nvidia0", "rw")],
            expect: Expect::Err("no such device on the host"),
        },
        Case {
            name: "bad permissions",
            setup: |f| f.config.devices = vec![dev("/dev/fuse", "/dev/fuse", "rwx")],
            expect: Expect::Err("may only hold the letters r, w and m"),
        },
        Case {
            name: "relative container path",
            setup: |f| f.config.devices = vec![dev("/dev/fuse", "fuse", "rw")],
            expect: Expect::Err("must be absolute"),
        },
        Case {
            name: "device ownership from the security context",
            setup: |f| {
                f.options.device_ownership_from_security_context = true;
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
                f.config.devices = vec![dev("/dev/fuse", "/dev/fuse", "rw")];
            },
            expect: Expect::Spec(|s| {
                let d = &linux(s).devices().as_ref().unwrap()[0];
                // uid from run_as_user; no run_as_group keeps the host's gid.
                assert_eq!((d.uid(), d.gid()), (Some(1000), Some(6)));
            }),
        },
        Case {
            name: "privileged: every host device and every device allowed",
            setup: |f| {
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
            },
            expect: Expect::Spec(|s| {
                assert_eq!(nodes(s).len(), 4);
                assert_eq!(rules(s), ["allow a *:* rwm"]);
            }),
        },
    ]);
}
