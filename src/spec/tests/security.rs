//! no_new_privs, masked/read-only paths, privileged, AppArmor, SELinux.

use k8s_cri::v1::{SeLinuxOption, SecurityProfile, security_profile::ProfileType};

use super::{Case, Expect, linux, run};

fn profile(t: ProfileType, r: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.to_string(),
    })
}

const KUBELET_MASKED: [&str; 3] = ["/proc/kcore", "/proc/keys", "/sys/firmware"];

#[test]
fn security_context() {
    run(&[
        Case {
            name: "no_new_privs off by default",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().no_new_privileges(),
                    Some(false)
                )
            }),
        },
        Case {
            name: "no_new_privs",
            setup: |f| f.sc().no_new_privs = true,
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().no_new_privileges(),
                    Some(true)
                )
            }),
        },
        Case {
            name: "masked and read-only paths as the CRI gives them",
            setup: |f| {
                f.sc().masked_paths = KUBELET_MASKED.iter().map(|s| s.to_string()).collect();
                f.sc().readonly_paths = vec!["/proc/sys".to_string()];
            },
            expect: Expect::Spec(|s| {
                assert_eq!(linux(s).masked_paths().as_ref().unwrap(), &KUBELET_MASKED);
                assert_eq!(linux(s).readonly_paths().as_ref().unwrap(), &["/proc/sys"]);
            }),
        },
        Case {
            name: "no masked paths given (procMount Unmasked): none",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert!(linux(s).masked_paths().as_ref().unwrap().is_empty());
                assert!(linux(s).readonly_paths().as_ref().unwrap().is_empty());
            }),
        },
        Case {
            name: "relative masked path",
            setup: |f| f.sc().masked_paths = vec!["proc/kcore".to_string()],
            expect: Expect::Err("masked_paths"),
        },
        Case {
            name: "privileged: no masked or read-only paths, no seccomp",
            setup: |f| {
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
                f.sc().masked_paths = KUBELET_MASKED.iter().map(|s| s.to_string()).collect();
                f.sc().readonly_paths = vec!["/proc/sys".to_string()];
                f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
            },
            expect: Expect::Spec(|s| {
                assert!(linux(s).masked_paths().as_ref().unwrap().is_empty());
                assert!(linux(s).readonly_paths().as_ref().unwrap().is_empty());
                assert!(linux(s).seccomp().is_none());
            }),
        },
        Case {
            name: "AppArmor unconfined without AppArmor: fine",
            setup: |f| f.sc().apparmor = profile(ProfileType::Unconfined, ""),
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "AppArmor RuntimeDefault without AppArmor: unconfined",
            setup: |f| f.sc().apparmor = profile(ProfileType::RuntimeDefault, ""),
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "deprecated runtime/default without AppArmor: unconfined",
            setup: |f| {
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = "runtime/default".to_string();
                }
            },
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "AppArmor Localhost without a name: refused",
            setup: |f| f.sc().apparmor = profile(ProfileType::Localhost, ""),
            expect: Expect::Err("needs the profile's name"),
        },
        Case {
            name: "AppArmor Localhost without AppArmor: refused",
            setup: |f| f.sc().apparmor = profile(ProfileType::Localhost, "k8s-nginx"),
            expect: Expect::Err("localhost/k8s-nginx"),
        },
        Case {
            name: "deprecated apparmor_profile localhost/ without AppArmor: refused",
            setup: |f| {
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = "localhost/k8s-nginx".to_string();
                }
            },
            expect: Expect::Err("AppArmor is not enabled"),
        },
        Case {
            name: "deprecated apparmor_profile unconfined",
            setup: |f| {
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = "unconfined".to_string();
                }
            },
            expect: Expect::Spec(|_| {}),
        },
        Case {
            name: "deprecated apparmor_profile garbage",
            setup: |f| {
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = "strict".to_string();
                }
            },
            expect: Expect::Err("is not a profile"),
        },
        Case {
            name: "AppArmor RuntimeDefault with AppArmor: the configured profile",
            setup: |f| {
                f.host.apparmor = true;
                f.options.apparmor_default_profile = Some("berth-default".to_string());
                f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().apparmor_profile().as_deref(),
                    Some("berth-default")
                )
            }),
        },
        Case {
            name: "nothing asked with AppArmor: the default profile (kubernetes#51746)",
            setup: |f| {
                f.host.apparmor = true;
                f.options.apparmor_default_profile = Some("berth-default".to_string());
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().apparmor_profile().as_deref(),
                    Some("berth-default")
                )
            }),
        },
        Case {
            name: "nothing asked without AppArmor: unconfined",
            setup: |f| f.options.apparmor_default_profile = Some("berth-default".to_string()),
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "AppArmor Localhost with AppArmor: the named profile",
            setup: |f| {
                f.host.apparmor = true;
                f.options.apparmor_default_profile = Some("berth-default".to_string());
                f.sc().apparmor = profile(ProfileType::Localhost, "k8s-nginx");
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().apparmor_profile().as_deref(),
                    Some("k8s-nginx")
                )
            }),
        },
        Case {
            name: "deprecated localhost/ with AppArmor: the named profile",
            setup: |f| {
                f.host.apparmor = true;
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = "localhost/k8s-nginx".to_string();
                }
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().apparmor_profile().as_deref(),
                    Some("k8s-nginx")
                )
            }),
        },
        Case {
            name: "AppArmor Unconfined with AppArmor: unconfined",
            setup: |f| {
                f.host.apparmor = true;
                f.options.apparmor_default_profile = Some("berth-default".to_string());
                f.sc().apparmor = profile(ProfileType::Unconfined, "");
            },
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "privileged with AppArmor: RuntimeDefault is unconfined, Localhost applies",
            setup: |f| {
                f.host.apparmor = true;
                f.options.apparmor_default_profile = Some("berth-default".to_string());
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
                f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
            },
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().apparmor_profile().is_none())
            }),
        },
        Case {
            name: "privileged Localhost with AppArmor: the named profile",
            setup: |f| {
                f.host.apparmor = true;
                f.sc().privileged = true;
                f.pod_sc().privileged = true;
                f.sc().apparmor = profile(ProfileType::Localhost, "k8s-priv");
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    s.process().as_ref().unwrap().apparmor_profile().as_deref(),
                    Some("k8s-priv")
                )
            }),
        },
        Case {
            name: "RuntimeDefault with AppArmor but no default profile loaded: refused",
            setup: |f| {
                f.host.apparmor = true;
                f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
            },
            expect: Expect::Err("none loaded"),
        },
        Case {
            name: "AppArmor localhost_ref with RuntimeDefault",
            setup: |f| f.sc().apparmor = profile(ProfileType::RuntimeDefault, "x"),
            expect: Expect::Err("localhost_ref may only be set"),
        },
        Case {
            name: "SELinux options without SELinux: ignored",
            setup: |f| {
                f.sc().selinux_options = Some(SeLinuxOption {
                    level: "s0:c1,c2".to_string(),
                    ..Default::default()
                })
            },
            expect: Expect::Spec(|s| {
                assert!(s.process().as_ref().unwrap().selinux_label().is_none())
            }),
        },
        Case {
            name: "SELinux options with SELinux: refused",
            setup: |f| {
                f.host.selinux = true;
                f.sc().selinux_options = Some(SeLinuxOption {
                    r#type: "spc_t".to_string(),
                    ..Default::default()
                })
            },
            expect: Expect::Err("SELinux"),
        },
    ]);
}
