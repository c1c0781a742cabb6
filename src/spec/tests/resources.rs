//! Resources: CPU, cpuset, memory, swap, hugepages, unified, oom_score_adj.

use k8s_cri::v1::HugepageLimit;

use super::{Case, Expect, linux, run};
use crate::spec::oom_score_adj;

fn res(s: &oci_spec::runtime::Spec) -> &oci_spec::runtime::LinuxResources {
    linux(s).resources().as_ref().unwrap()
}

#[test]
fn resources() {
    run(&[
        Case {
            name: "no resources: only device rules",
            setup: |_| {},
            expect: Expect::Spec(|s| {
                assert!(res(s).cpu().is_none());
                assert!(res(s).memory().is_none());
                assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), None);
            }),
        },
        Case {
            name: "cpu period, quota and shares",
            setup: |f| {
                let r = f.resources();
                r.cpu_period = 100_000;
                r.cpu_quota = 50_000;
                r.cpu_shares = 512;
            },
            expect: Expect::Spec(|s| {
                let cpu = res(s).cpu().as_ref().unwrap();
                assert_eq!(
                    (cpu.period(), cpu.quota(), cpu.shares()),
                    (Some(100_000), Some(50_000), Some(512))
                );
            }),
        },
        Case {
            name: "cpu quota -1 means no limit",
            setup: |f| f.resources().cpu_quota = -1,
            expect: Expect::Spec(|s| assert_eq!(res(s).cpu().as_ref().unwrap().quota(), Some(-1))),
        },
        Case {
            name: "cpu quota below 1ms",
            setup: |f| f.resources().cpu_quota = 10,
            expect: Expect::Err("cpu_quota"),
        },
        Case {
            name: "cpu period out of range",
            setup: |f| f.resources().cpu_period = 10_000_000,
            expect: Expect::Err("cpu_period"),
        },
        Case {
            name: "absurd cpu shares",
            setup: |f| f.resources().cpu_shares = -5,
            expect: Expect::Err("cpu_shares"),
        },
        Case {
            name: "cpuset cpus and mems",
            setup: |f| {
                f.resources().cpuset_cpus = "0-1,3".to_string();
                f.resources().cpuset_mems = "0".to_string();
            },
            expect: Expect::Spec(|s| {
                let cpu = res(s).cpu().as_ref().unwrap();
                assert_eq!(cpu.cpus().as_deref(), Some("0-1,3"));
                assert_eq!(cpu.mems().as_deref(), Some("0"));
            }),
        },
        Case {
            name: "garbage cpuset",
            setup: |f| f.resources().cpuset_cpus = "3-1".to_string(),
            expect: Expect::Err("cpuset_cpus"),
        },
        Case {
            name: "memory limit: swap equal to it (no swap) when swap is accounted",
            setup: |f| f.resources().memory_limit_in_bytes = 64 << 20,
            expect: Expect::Spec(|s| {
                let m = res(s).memory().unwrap();
                assert_eq!((m.limit(), m.swap()), (Some(64 << 20), Some(64 << 20)));
            }),
        },
        Case {
            name: "memory limit without swap accounting: no swap limit",
            setup: |f| {
                f.host.swap_accounting = false;
                f.resources().memory_limit_in_bytes = 64 << 20;
                f.resources().memory_swap_limit_in_bytes = 128 << 20;
            },
            expect: Expect::Spec(|s| {
                let m = res(s).memory().unwrap();
                assert_eq!((m.limit(), m.swap()), (Some(64 << 20), None));
            }),
        },
        Case {
            name: "explicit swap limit",
            setup: |f| {
                f.resources().memory_limit_in_bytes = 64 << 20;
                f.resources().memory_swap_limit_in_bytes = 128 << 20;
            },
            expect: Expect::Spec(|s| assert_eq!(res(s).memory().unwrap().swap(), Some(128 << 20))),
        },
        Case {
            name: "swap limit below the memory limit",
            setup: |f| {
                f.resources().memory_limit_in_bytes = 64 << 20;
                f.resources().memory_swap_limit_in_bytes = 32 << 20;
            },
            expect: Expect::Err("below the memory limit"),
        },
        Case {
            name: "negative memory limit",
            setup: |f| f.resources().memory_limit_in_bytes = -1,
            expect: Expect::Err("memory_limit_in_bytes"),
        },
        Case {
            name: "hugepage limits with hugetlb",
            setup: |f| {
                f.resources().hugepage_limits = vec![HugepageLimit {
                    page_size: "2MB".to_string(),
                    limit: 4 << 21,
                }]
            },
            expect: Expect::Spec(|s| {
                let h = res(s).hugepage_limits().as_ref().unwrap();
                assert_eq!((h[0].page_size().as_str(), h[0].limit()), ("2MB", 4 << 21));
            }),
        },
        Case {
            name: "hugepage limits without hugetlb are dropped",
            setup: |f| {
                f.host.hugetlb = false;
                f.resources().hugepage_limits = vec![HugepageLimit {
                    page_size: "2MB".to_string(),
                    limit: 0,
                }]
            },
            expect: Expect::Spec(|s| assert!(res(s).hugepage_limits().is_none())),
        },
        Case {
            name: "unified entries copied",
            setup: |f| {
                f.resources()
                    .unified
                    .insert("memory.high".to_string(), "1000000".to_string());
            },
            expect: Expect::Spec(|s| {
                assert_eq!(
                    res(s)
                        .unified()
                        .as_ref()
                        .unwrap()
                        .get("memory.high")
                        .map(String::as_str),
                    Some("1000000")
                )
            }),
        },
        Case {
            name: "unified key escaping the cgroup",
            setup: |f| {
                f.resources()
                    .unified
                    .insert("../cgroup.procs".to_string(), "1".to_string());
            },
            expect: Expect::Err("not a cgroup v2 file name"),
        },
        Case {
            name: "oom_score_adj",
            setup: |f| f.resources().oom_score_adj = 500,
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(500))
            }),
        },
        Case {
            name: "oom_score_adj raised to the runtime minimum",
            setup: |f| {
                f.options.oom_score_adj_min = Some(-500);
                f.resources().oom_score_adj = -998;
            },
            expect: Expect::Spec(|s| {
                assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(-500))
            }),
        },
        Case {
            name: "oom_score_adj out of range",
            setup: |f| f.resources().oom_score_adj = 5000,
            expect: Expect::Err("outside -1000..=1000"),
        },
    ]);
}

#[test]
fn oom_score_adj_clamp() {
    assert_eq!(oom_score_adj(-1000, None).unwrap(), -1000);
    assert_eq!(oom_score_adj(-1000, Some(0)).unwrap(), 0);
    assert_eq!(oom_score_adj(100, Some(0)).unwrap(), 100);
    assert_eq!(oom_score_adj(1000, Some(1000)).unwrap(), 1000);
    assert!(oom_score_adj(-1001, Some(0)).is_err());
}
