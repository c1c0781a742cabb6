//! command/args vs Entrypoint/Cmd, env, working dir, tty.

use serde_json::json;

use super::{Case, Expect, args, env, run};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn command_and_args() {
    run(&[
        Case {
            name: "image Cmd only",
            setup: |_| {},
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["sh"]))),
        },
        Case {
            name: "image Entrypoint + Cmd",
            setup: |f| {
                f.image_set("Entrypoint", json!(["/entry", "-x"]));
                f.image_set("Cmd", json!(["serve"]));
            },
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["/entry", "-x", "serve"]))),
        },
        Case {
            name: "CRI command replaces Entrypoint and drops Cmd",
            setup: |f| {
                f.image_set("Entrypoint", json!(["/entry"]));
                f.image_set("Cmd", json!(["serve"]));
                f.config.command = s(&["/bin/true"]);
            },
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["/bin/true"]))),
        },
        Case {
            name: "CRI args replace Cmd and keep Entrypoint",
            setup: |f| {
                f.image_set("Entrypoint", json!(["/entry"]));
                f.image_set("Cmd", json!(["serve"]));
                f.config.args = s(&["check", "--fast"]);
            },
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["/entry", "check", "--fast"]))),
        },
        Case {
            name: "CRI command and args",
            setup: |f| {
                f.image_set("Entrypoint", json!(["/entry"]));
                f.config.command = s(&["/bin/sleep"]);
                f.config.args = s(&["10"]);
            },
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["/bin/sleep", "10"]))),
        },
        Case {
            name: "Entrypoint [\"\"] means no entrypoint",
            setup: |f| {
                f.image_set("Entrypoint", json!([""]));
                f.image_set("Cmd", json!(["ls", "/"]));
            },
            expect: Expect::Spec(|s| assert_eq!(args(s), s_(&["ls", "/"]))),
        },
        Case {
            name: "no command anywhere",
            setup: |f| {
                f.image = json!({});
            },
            expect: Expect::Err("no command to run"),
        },
        Case {
            name: "empty program name",
            setup: |f| f.config.command = s(&["", "x"]),
            expect: Expect::Err("the program to run"),
        },
        Case {
            name: "NUL byte in an argument",
            setup: |f| f.config.args = s(&["a\0b"]),
            expect: Expect::Err("NUL"),
        },
    ]);
}

fn s_(v: &[&str]) -> Vec<String> {
    s(v)
}

#[test]
fn environment() {
    run(&[
        Case {
            name: "default PATH when the image sets none",
            setup: |f| f.image_set("Env", json!(["A=1"])),
            expect: Expect::Spec(|s| {
                assert_eq!(
                    env(s),
                    s_(&[
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOSTNAME=pod-a",
                        "A=1"
                    ])
                )
            }),
        },
        Case {
            name: "image PATH replaces the default in place",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(
                    env(s),
                    s_(&[
                        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOSTNAME=pod-a",
                        "IMG=1"
                    ])
                )
            }),
        },
        Case {
            name: "CRI envs override image envs by key",
            setup: |f| {
                f.config.envs = vec![kv("IMG", "2"), kv("NEW", "x=y"), kv("PATH", "/opt/bin")];
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    env(s),
                    s_(&["PATH=/opt/bin", "HOSTNAME=pod-a", "IMG=2", "NEW=x=y"])
                )
            }),
        },
        Case {
            name: "later CRI env of the same key wins",
            setup: |f| f.config.envs = vec![kv("X", "1"), kv("X", "2")],
            expect: Expect::Spec(|s| {
                assert_eq!(env(s).iter().filter(|e| e.starts_with("X=")).count(), 1);
                assert!(env(s).contains(&"X=2".to_string()));
            }),
        },
        Case {
            name: "HOSTNAME is the host's when the pod sets none",
            setup: |f| f.sandbox.hostname.clear(),
            expect: Expect::Spec(|s| assert!(env(s).contains(&"HOSTNAME=node-1".to_string()))),
        },
        Case {
            name: "image env entry without '=' unsets",
            setup: |f| f.image_set("Env", json!(["A=1", "A"])),
            expect: Expect::Spec(|s| assert!(!env(s).iter().any(|e| e.starts_with("A")))),
        },
        Case {
            name: "CRI env with empty name",
            setup: |f| f.config.envs = vec![kv("", "v")],
            expect: Expect::Err("empty name"),
        },
        Case {
            name: "CRI env name with '='",
            setup: |f| f.config.envs = vec![kv("A=B", "v")],
            expect: Expect::Err("invalid envs"),
        },
    ]);
}

fn kv(k: &str, v: &str) -> k8s_cri::v1::KeyValue {
    k8s_cri::v1::KeyValue {
        key: k.to_string(),
        value: v.to_string(),
    }
}

#[test]
fn working_dir_and_terminal() {
    run(&[
        Case {
            name: "default working dir is /",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().cwd().to_str(), Some("/"))
            }),
        },
        Case {
            name: "image WorkingDir",
            setup: |f| f.image_set("WorkingDir", json!("/srv")),
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().cwd().to_str(), Some("/srv"))
            }),
        },
        Case {
            name: "relative image WorkingDir is below /",
            setup: |f| f.image_set("WorkingDir", json!("app")),
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().cwd().to_str(), Some("/app"))
            }),
        },
        Case {
            name: "CRI working_dir overrides the image's",
            setup: |f| {
                f.image_set("WorkingDir", json!("/srv"));
                f.config.working_dir = "/data".to_string();
            },
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().cwd().to_str(), Some("/data"))
            }),
        },
        Case {
            name: "relative CRI working_dir",
            setup: |f| f.config.working_dir = "data".to_string(),
            expect: Expect::Err("not an absolute path"),
        },
        Case {
            name: "no tty → no terminal",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().terminal(), Some(false))
            }),
        },
        Case {
            name: "tty → terminal",
            setup: |f| {
                f.config.tty = true;
                f.config.stdin = true;
            },
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().terminal(), Some(true))
            }),
        },
        Case {
            name: "no rlimits are set (containerd removes the defaults)",
            setup: |_| {},
            expect: Expect::Spec(|s| assert!(s.process().as_ref().unwrap().rlimits().is_none())),
        },
    ]);
}
