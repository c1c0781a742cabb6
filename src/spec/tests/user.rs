//! run_as_user / run_as_username / run_as_group / image USER, passwd and
//! group resolution, supplemental groups.

use k8s_cri::v1::{Int64Value, SupplementalGroupsPolicy};
use serde_json::json;

use super::{Case, Expect, GROUP, PASSWD, run, user};
use crate::spec::{parse_group, parse_passwd, resolve_user_spec};

fn id(v: i64) -> Option<Int64Value> {
    Some(Int64Value { value: v })
}

#[test]
fn container_user() {
    run(&[
        Case {
            name: "no user: root, with root's groups from /etc/group",
            setup: |_| {},
            expect: Expect::Spec(|s| assert_eq!(user(s), (0, 0, vec![0, 2, 10]))),
        },
        Case {
            name: "run_as_user in passwd: its primary gid and its groups",
            setup: |f| f.sc().run_as_user = id(1000),
            expect: Expect::Spec(|s| assert_eq!(user(s), (1000, 1000, vec![10, 44, 50, 1000]))),
        },
        Case {
            name: "run_as_user not in passwd: gid 0",
            setup: |f| f.sc().run_as_user = id(4242),
            expect: Expect::Spec(|s| assert_eq!(user(s), (4242, 0, vec![0]))),
        },
        Case {
            name: "run_as_username",
            setup: |f| f.sc().run_as_username = "app".to_string(),
            expect: Expect::Spec(|s| assert_eq!(user(s).0, 1000)),
        },
        Case {
            name: "run_as_username wins over run_as_user",
            setup: |f| {
                f.sc().run_as_user = id(4242);
                f.sc().run_as_username = "nobody".to_string();
            },
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (65534, 65534))),
        },
        Case {
            name: "run_as_username not in passwd",
            setup: |f| f.sc().run_as_username = "ghost".to_string(),
            expect: Expect::Err("user \"ghost\" not found in the image's /etc/passwd"),
        },
        Case {
            name: "run_as_user + run_as_group",
            setup: |f| {
                f.sc().run_as_user = id(1000);
                f.sc().run_as_group = id(3000);
            },
            expect: Expect::Spec(|s| {
                let (uid, gid, groups) = user(s);
                assert_eq!((uid, gid), (1000, 3000));
                assert!(groups.contains(&3000) && groups.contains(&44));
            }),
        },
        Case {
            name: "run_as_group without a user",
            setup: |f| f.sc().run_as_group = id(3000),
            expect: Expect::Err("run_as_group is set without run_as_user"),
        },
        Case {
            name: "negative run_as_user",
            setup: |f| f.sc().run_as_user = id(-1),
            expect: Expect::Err("run_as_user"),
        },
        Case {
            name: "image USER name",
            setup: |f| f.image_set("User", json!("app")),
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (1000, 1000))),
        },
        Case {
            name: "image USER uid:gid",
            setup: |f| f.image_set("User", json!("1000:50")),
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (1000, 50))),
        },
        Case {
            name: "image USER name:group",
            setup: |f| f.image_set("User", json!("app:staff")),
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (1000, 50))),
        },
        Case {
            name: "image USER uid:group",
            setup: |f| f.image_set("User", json!("77:video")),
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (77, 44))),
        },
        Case {
            name: "image USER with an unknown group",
            setup: |f| f.image_set("User", json!("app:ghosts")),
            expect: Expect::Err("group \"ghosts\" not found"),
        },
        Case {
            name: "image USER with three parts",
            setup: |f| f.image_set("User", json!("a:b:c")),
            expect: Expect::Err("invalid user \"a:b:c\""),
        },
        Case {
            name: "image USER name without an /etc/passwd",
            setup: |f| {
                f.image_set("User", json!("app"));
                f.passwd = None;
            },
            expect: Expect::Err("the image has no /etc/passwd"),
        },
        Case {
            name: "image USER uid without an /etc/passwd: gid 0",
            setup: |f| {
                f.image_set("User", json!("1000"));
                f.passwd = None;
                f.group = None;
            },
            expect: Expect::Spec(|s| assert_eq!(user(s), (1000, 0, vec![0]))),
        },
        Case {
            name: "CRI run_as_user overrides the image USER",
            setup: |f| {
                f.image_set("User", json!("app"));
                f.sc().run_as_user = id(0);
            },
            expect: Expect::Spec(|s| assert_eq!((user(s).0, user(s).1), (0, 0))),
        },
        Case {
            name: "supplemental_groups merged, sorted, deduplicated",
            setup: |f| {
                f.sc().run_as_user = id(1000);
                f.sc().supplemental_groups = vec![5000, 44, 2000];
            },
            expect: Expect::Spec(|s| assert_eq!(user(s).2, vec![10, 44, 50, 1000, 2000, 5000])),
        },
        Case {
            name: "Strict policy ignores /etc/group",
            setup: |f| {
                f.sc().run_as_user = id(1000);
                f.sc().supplemental_groups = vec![2000];
                f.sc().supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
            },
            expect: Expect::Spec(|s| assert_eq!(user(s).2, vec![1000, 2000])),
        },
        Case {
            name: "unknown supplemental groups policy",
            setup: |f| f.sc().supplemental_groups_policy = 7,
            expect: Expect::Err("supplemental_groups_policy"),
        },
        Case {
            name: "negative supplemental group",
            setup: |f| f.sc().supplemental_groups = vec![-5],
            expect: Expect::Err("supplemental_groups"),
        },
        Case {
            name: "run_as_username with ':'",
            setup: |f| f.sc().run_as_username = "a:b".to_string(),
            expect: Expect::Err("run_as_username"),
        },
    ]);
}

#[test]
fn passwd_and_group_parsing() {
    let users = parse_passwd(PASSWD);
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["root", "daemon", "bin", "nobody", "app"]);
    assert_eq!((users[4].uid, users[4].gid), (1000, 1000));

    let groups = parse_group(GROUP);
    let wheel = groups.iter().find(|g| g.name == "wheel").unwrap();
    assert_eq!(wheel.gid, 10);
    assert_eq!(wheel.members, ["root", "app"]);

    // Lines with non-numeric ids, too few fields or no name are skipped.
    let odd = parse_passwd("x:x:abc:1\n:x:5:5\ny:x:5\nz:x:7:8:::\n");
    assert_eq!(odd.len(), 1);
    assert_eq!(odd[0].name, "z");
}

#[test]
fn user_spec_edge_cases() {
    type Row = (&'static str, Result<(u32, u32), &'static str>);
    let table: &[Row] = &[
        ("", Ok((0, 0))),
        ("  ", Ok((0, 0))),
        ("0", Ok((0, 0))),
        ("root", Ok((0, 0))),
        ("1000", Ok((1000, 1000))),
        ("4294967295", Ok((u32::MAX, 0))),
        ("4294967296", Err("not found")),
        ("-1", Err("negative ids")),
        ("app:", Err("group part is empty")),
        (":50", Err("user part is empty")),
        ("0:0", Ok((0, 0))),
        ("app:1", Ok((1000, 1))),
        ("bad name", Err("whitespace")),
    ];
    for (spec, want) in table {
        let got = resolve_user_spec(spec, Some(PASSWD), Some(GROUP));
        match (want, got) {
            (Ok(w), Ok(g)) => assert_eq!(*w, g, "user spec {spec:?}"),
            (Err(w), Err(e)) => {
                assert!(
                    e.to_string().contains(w),
                    "user spec {spec:?}: {e} lacks {w:?}"
                )
            }
            (w, g) => panic!("user spec {spec:?}: want {w:?}, got {g:?}"),
        }
    }
}
