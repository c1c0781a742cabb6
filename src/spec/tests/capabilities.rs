//! Capabilities: defaults, add/drop with ALL, non-root users, privileged.

use std::collections::HashSet;

use k8s_cri::v1::{Capability as CriCapability, Int64Value};
use oci_spec::runtime::Capability;

use super::{Case, Expect, bounding, caps, run};
use crate::spec::{
    ALL_CAPABILITIES, DEFAULT_CAPABILITIES, capabilities_from_mask, capability_set,
    parse_capability,
};

fn cri(add: &[&str], drop: &[&str]) -> Option<CriCapability> {
    Some(CriCapability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        add_ambient_capabilities: Vec::new(),
    })
}

fn defaults() -> HashSet<Capability> {
    DEFAULT_CAPABILITIES.into_iter().collect()
}

#[test]
fn add_drop_combinations() {
    type Row = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        fn() -> HashSet<Capability>,
    );
    let table: &[Row] = &[
        ("nothing", &[], &[], defaults),
        ("add NET_ADMIN", &["NET_ADMIN"], &[], || {
            let mut s = defaults();
            s.insert(Capability::NetAdmin);
            s
        }),
        (
            "add with CAP_ prefix, lower case",
            &["cap_sys_admin"],
            &[],
            || {
                let mut s = defaults();
                s.insert(Capability::SysAdmin);
                s
            },
        ),
        ("drop CHOWN", &[], &["CHOWN"], || {
            let mut s = defaults();
            s.remove(&Capability::Chown);
            s
        }),
        ("drop one not in the set", &[], &["SYS_ADMIN"], defaults),
        ("add ALL", &["ALL"], &[], || {
            ALL_CAPABILITIES.into_iter().collect()
        }),
        ("add ALL, drop CHOWN", &["ALL"], &["CHOWN"], || {
            let mut s: HashSet<_> = ALL_CAPABILITIES.into_iter().collect();
            s.remove(&Capability::Chown);
            s
        }),
        ("drop ALL", &[], &["ALL"], HashSet::new),
        ("drop all (lower case)", &[], &["all"], HashSet::new),
        (
            "drop ALL, add NET_BIND_SERVICE",
            &["NET_BIND_SERVICE"],
            &["ALL"],
            || [Capability::NetBindService].into_iter().collect(),
        ),
        ("add ALL and drop ALL", &["ALL"], &["ALL"], HashSet::new),
        (
            "add and drop the same: drop wins",
            &["NET_ADMIN"],
            &["NET_ADMIN"],
            defaults,
        ),
        ("drop CAP_ALL", &[], &["CAP_ALL"], HashSet::new),
    ];
    for (name, add, drop, want) in table {
        let got = capability_set(cri(add, drop).as_ref(), false, None).unwrap();
        assert_eq!(got, want(), "{name}");
    }
}

#[test]
fn capability_names() {
    assert_eq!(parse_capability("NET_RAW").unwrap(), Capability::NetRaw);
    assert_eq!(parse_capability("cap_net_raw").unwrap(), Capability::NetRaw);
    assert_eq!(parse_capability("Cap_Bpf").unwrap(), Capability::Bpf);
    assert_eq!(parse_capability("SYSLOG").unwrap(), Capability::Syslog);
    assert_eq!(
        parse_capability("CHECKPOINT_RESTORE").unwrap(),
        Capability::CheckpointRestore
    );
    for bad in ["", "CAP_", "ALL", "NET_ADMINN", "cap net_admin"] {
        assert!(parse_capability(bad).is_err(), "{bad:?} should not parse");
    }
    // Every capability round-trips through its name.
    for cap in ALL_CAPABILITIES {
        assert_eq!(parse_capability(&cap.to_string()).unwrap(), cap);
    }
    assert_eq!(ALL_CAPABILITIES.iter().collect::<HashSet<_>>().len(), 41);
}

#[test]
fn capabilities_in_spec() {
    run(&[
        Case {
            name: "default set in bounding, effective, permitted; inheritable and ambient empty",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                let c = caps(s);
                let d: HashSet<_> = DEFAULT_CAPABILITIES.into_iter().collect();
                assert_eq!(c.bounding().clone().unwrap(), d);
                assert_eq!(c.effective().clone().unwrap(), d);
                assert_eq!(c.permitted().clone().unwrap(), d);
                assert!(c.inheritable().clone().unwrap().is_empty());
                assert!(c.ambient().clone().unwrap().is_empty());
            }),
        },
        Case {
            name: "add SYS_TIME",
            setup: |f| f.sc().capabilities = cri(&["SYS_TIME"], &[]),
            expect: Expect::Spec(|s| assert!(bounding(s).contains(&Capability::SysTime))),
        },
        Case {
            name: "drop CHOWN",
            setup: |f| f.sc().capabilities = cri(&[], &["CHOWN"]),
            expect: Expect::Spec(|s| {
                assert!(!bounding(s).contains(&Capability::Chown));
                assert!(
                    !caps(s)
                        .effective()
                        .clone()
                        .unwrap()
                        .contains(&Capability::Chown)
                );
            }),
        },
        Case {
            name: "unknown capability",
            setup: |f| f.sc().capabilities = cri(&["FLY"], &[]),
            expect: Expect::Err("unknown capability \"FLY\""),
        },
        Case {
            name: "non-root user: the same sets (the kernel drops them at execve)",
            setup: |f| {
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
                f.sc().capabilities = cri(&["NET_ADMIN"], &[]);
            },
            expect: Expect::Spec(|s| {
                let c = caps(s);
                assert!(
                    c.bounding()
                        .clone()
                        .unwrap()
                        .contains(&Capability::NetAdmin)
                );
                let net_admin = |set: Option<std::collections::HashSet<Capability>>| {
                    set.unwrap().contains(&Capability::NetAdmin)
                };
                assert!(net_admin(c.effective().clone()));
                assert!(net_admin(c.permitted().clone()));
                assert!(c.inheritable().clone().unwrap().is_empty());
                assert!(c.ambient().clone().unwrap().is_empty());
            }),
        },
        Case {
            name: "ambient capabilities are ignored",
            setup: |f| {
                f.sc().capabilities = Some(CriCapability {
                    add_ambient_capabilities: vec!["NET_ADMIN".to_string()],
                    ..Default::default()
                })
            },
            expect: Expect::Spec(|s| assert!(caps(s).ambient().clone().unwrap().is_empty())),
        },
        Case {
            name: "privileged: every capability, whatever drop says",
            setup: |f| {
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
                f.sc().capabilities = cri(&[], &["ALL"]);
            },
            expect: Expect::Spec(|s| {
                let all: HashSet<_> = ALL_CAPABILITIES.into_iter().collect();
                assert_eq!(bounding(s), all);
                assert_eq!(caps(s).effective().clone().unwrap(), all);
            }),
        },
        Case {
            name: "privileged: an unknown name is still an error",
            setup: |f| {
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
                f.sc().capabilities = cri(&["FLY"], &[]);
            },
            expect: Expect::Err("unknown capability"),
        },
    ]);
}

#[test]
fn default_set_is_containerds() {
    let mut names: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "MKNOD",
            "NET_BIND_SERVICE",
            "NET_RAW",
            "SETFCAP",
            "SETGID",
            "SETPCAP",
            "SETUID",
            "SYS_CHROOT",
        ]
    );
}

#[test]
fn all_means_the_runtimes_own_capabilities() {
    // A runtime without CAP_SYS_RESOURCE (bit 24) cannot give it.
    let own = capabilities_from_mask(0x1ff_feff_ffff);
    assert_eq!(own.len(), ALL_CAPABILITIES.len() - 1);
    assert!(!own.contains(&Capability::SysResource));
    assert!(own.contains(&Capability::CheckpointRestore) && own.contains(&Capability::Chown));
    let privileged = capability_set(None, true, Some(&own)).unwrap();
    assert_eq!(privileged, own);
    let add_all = capability_set(cri(&["ALL"], &["CHOWN"]).as_ref(), false, Some(&own)).unwrap();
    assert!(!add_all.contains(&Capability::SysResource));
    assert!(!add_all.contains(&Capability::Chown));
    assert_eq!(add_all.len(), own.len() - 1);
    // A capability the runtime lacks cannot be added by name.
    let err = capability_set(cri(&["SYS_RESOURCE"], &[]).as_ref(), false, Some(&own)).unwrap_err();
    assert!(err.to_string().contains("SYS_RESOURCE"), "{err}");
    assert!(capability_set(cri(&["SYS_RESOURCE"], &[]).as_ref(), false, None).is_ok());
    // The default set is not limited further.
    let default = capability_set(None, false, Some(&own)).unwrap();
    assert_eq!(default, DEFAULT_CAPABILITIES.into_iter().collect());
}
