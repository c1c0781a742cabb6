//! Compile-time cases, no root needed: the profile → libseccomp translation
//! read back from the pseudo filter code, the refusals and the flags. The
//! kernel behaviour (each operator, each errno) is proven by the root tests
//! in tests/seccomp_filters.rs.

use super::*;

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad test profile {json}: {e}"))
}

/// A profile that allows everything but gives `names` the action `rule`
/// (a JSON object's inner fields beside "names").
fn one_rule(names: &str, rule: &str) -> LinuxSeccomp {
    profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":[{names}],{rule}}}]}}"#
    ))
}

/// The pseudo-code lines of the native-architecture section.
fn pfc(p: &LinuxSeccomp) -> String {
    pseudo_code(p).unwrap()
}

#[test]
fn each_action_compiles_to_its_kernel_action() {
    let cases = [
        (r#""action":"SCMP_ACT_ERRNO""#, "action ERRNO(1);"),
        (
            r#""action":"SCMP_ACT_ERRNO","errnoRet":13"#,
            "action ERRNO(13);",
        ),
        (r#""action":"SCMP_ACT_KILL""#, "action KILL;"),
        (r#""action":"SCMP_ACT_KILL_THREAD""#, "action KILL;"),
        (
            r#""action":"SCMP_ACT_KILL_PROCESS""#,
            "action KILL_PROCESS;",
        ),
        (r#""action":"SCMP_ACT_TRAP""#, "action TRAP;"),
        (r#""action":"SCMP_ACT_TRACE""#, "action TRACE(1);"),
        (
            r#""action":"SCMP_ACT_TRACE","errnoRet":7"#,
            "action TRACE(7);",
        ),
        (r#""action":"SCMP_ACT_LOG""#, "action LOG;"),
    ];
    for (rule, want) in cases {
        let code = pfc(&one_rule(r#""mkdir""#, rule));
        let section: Vec<&str> = code
            .lines()
            .skip_while(|l| !l.contains(r#"syscall "mkdir""#))
            .take(3)
            .collect();
        assert!(
            section.iter().any(|l| l.trim() == want),
            "{rule}: want {want} in {section:?}\n{code}"
        );
    }
}

#[test]
fn allow_rule_under_a_deny_default() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
            "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    let code = pfc(&p);
    assert!(code.contains(r#"syscall "read""#), "{code}");
    // The default action carries defaultErrnoRet (ENOSYS).
    let default = code
        .lines()
        .skip_while(|l| !l.contains("# default action"))
        .nth(1)
        .unwrap();
    assert_eq!(default.trim(), "action ERRNO(38);", "{code}");
}

#[test]
fn default_errno_without_value_is_eperm() {
    let p = profile(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#);
    let code = pfc(&p);
    assert!(code.contains("action ERRNO(1);"), "{code}");
}

#[test]
fn rule_with_the_default_action_is_left_out() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},
            {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    );
    let code = pfc(&p);
    assert!(!code.contains(r#"syscall "mkdir""#), "{code}");
    assert!(code.contains(r#"syscall "rmdir""#), "{code}");
}

#[test]
fn each_operator_compiles_to_a_comparison_of_its_argument() {
    // The pseudo code prints NE like EQ and LT like GE (the branches are
    // swapped); the kernel tests tell them apart. Here: argument, value and
    // comparison.
    let cases = [
        ("SCMP_CMP_EQ", 2, "", "if ($a2.lo32 == 77)"),
        ("SCMP_CMP_NE", 2, "", "if ($a2.lo32 == 77)"),
        ("SCMP_CMP_LT", 1, "", "if ($a1.lo32 >= 77)"),
        ("SCMP_CMP_LE", 1, "", "if ($a1.lo32 > 77)"),
        ("SCMP_CMP_GE", 0, "", "if ($a0.lo32 >= 77)"),
        ("SCMP_CMP_GT", 0, "", "if ($a0.lo32 > 77)"),
        (
            "SCMP_CMP_MASKED_EQ",
            3,
            r#","valueTwo":5"#,
            "if ($a3.lo32 & 0x0000004d == 5)",
        ),
    ];
    for (op, index, two, want) in cases {
        let p = one_rule(
            r#""personality""#,
            &format!(
                r#""action":"SCMP_ACT_ERRNO","args":[{{"index":{index},"value":77{two},"op":"{op}"}}]"#
            ),
        );
        let code = pfc(&p);
        assert!(
            code.lines().any(|l| l.trim() == want),
            "{op}: want {want}\n{code}"
        );
    }
}

#[test]
fn conditions_on_one_argument_are_alternatives_on_distinct_arguments_all_required() {
    // Distinct arguments: one rule, nested (AND).
    let and = pfc(&one_rule(
        r#""personality""#,
        r#""action":"SCMP_ACT_ERRNO","args":[
            {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":1,"value":2,"op":"SCMP_CMP_EQ"}]"#,
    ));
    let lines: Vec<&str> = and.lines().map(str::trim).collect();
    let a0 = lines
        .iter()
        .position(|l| *l == "if ($a0.lo32 == 1)")
        .expect(&and);
    let a1 = lines
        .iter()
        .position(|l| *l == "if ($a1.lo32 == 2)")
        .expect(&and);
    assert!(a1 > a0 && lines[a1 + 1] == "action ERRNO(1);", "{and}");
    assert_eq!(
        lines.iter().filter(|l| **l == "action ERRNO(1);").count(),
        1,
        "{and}"
    );
    // The same argument twice: one rule per condition (OR), as runc does.
    let or = pfc(&one_rule(
        r#""personality""#,
        r#""action":"SCMP_ACT_ERRNO","args":[
            {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]"#,
    ));
    for v in [1, 2] {
        assert!(or.contains(&format!("if ($a0.lo32 == {v})")), "{or}");
    }
    assert_eq!(or.matches("action ERRNO(1);").count(), 2, "{or}");
}

#[test]
fn unknown_syscalls_are_skipped_not_an_error() {
    let p = one_rule(
        r#""mkdir","no_such_syscall","another_made_up""#,
        r#""action":"SCMP_ACT_ERRNO""#,
    );
    let prog = prepare(&p).unwrap();
    assert_eq!(
        prog.skipped_syscalls(),
        ["no_such_syscall", "another_made_up"]
    );
    assert!(pfc(&p).contains(r#"syscall "mkdir""#));
}

#[test]
fn notify_is_refused_with_a_clear_error() {
    for p in [
        profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
        one_rule(r#""mkdir""#, r#""action":"SCMP_ACT_NOTIFY""#),
    ] {
        let e = prepare(&p).unwrap_err();
        assert!(matches!(e, SeccompError::NotifyUnsupported(_)), "{e:?}");
        assert!(
            e.to_string().contains("SCMP_ACT_NOTIFY is not supported"),
            "{e}"
        );
        assert!(validate(&p).is_err());
    }
}

#[test]
fn out_of_range_values_are_refused() {
    let e = prepare(&one_rule(
        r#""mkdir""#,
        r#""action":"SCMP_ACT_ERRNO","errnoRet":70000"#,
    ))
    .unwrap_err();
    assert!(
        matches!(e, SeccompError::ErrnoOutOfRange { value: 70000, .. }),
        "{e}"
    );
    let e = prepare(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":65536}"#,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("defaultAction"), "{e}");
    let e = prepare(&one_rule(
        r#""mkdir""#,
        r#""action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]"#,
    ))
    .unwrap_err();
    assert!(
        matches!(e, SeccompError::ArgIndexOutOfRange { index: 6, .. }),
        "{e}"
    );
    // errnoRet means nothing for the other actions: ignored as runc does.
    prepare(&one_rule(
        r#""mkdir""#,
        r#""action":"SCMP_ACT_LOG","errnoRet":70000"#,
    ))
    .unwrap();
}

#[test]
fn flags_become_seccomp_filter_flags() {
    let cases: [(&str, libc::c_ulong); 5] = [
        ("", 0),
        (
            r#""SECCOMP_FILTER_FLAG_LOG""#,
            libc::SECCOMP_FILTER_FLAG_LOG,
        ),
        (
            r#""SECCOMP_FILTER_FLAG_SPEC_ALLOW""#,
            libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        ),
        (
            r#""SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_LOG""#,
            libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG,
        ),
        // Only meaningful with a notify listener: dropped.
        (r#""SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV""#, 0),
    ];
    for (flags, want) in cases {
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","flags":[{flags}]}}"#
        ));
        assert_eq!(prepare(&p).unwrap().flags(), want, "{flags}");
    }
}

#[test]
fn listed_architectures_are_all_covered() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    let code = pfc(&p);
    for arch in ["x86_64", "x86", "x32"] {
        assert!(
            code.contains(&format!("# filter for arch {arch} (")),
            "{arch}\n{code}"
        );
    }
    // Without a list: the native one only.
    let code = pfc(&one_rule(r#""mkdir""#, r#""action":"SCMP_ACT_ERRNO""#));
    assert_eq!(code.matches("# filter for arch ").count(), 1, "{code}");
}

#[test]
fn program_is_plain_bpf_ending_in_a_return() {
    let prog = prepare(&one_rule(r#""mkdir""#, r#""action":"SCMP_ACT_ERRNO""#)).unwrap();
    assert!(prog.instructions() > 3);
    let last = prog.filter.last().unwrap();
    // BPF_RET | BPF_K
    assert_eq!(last.code, 0x06, "{prog:?}");
}

#[test]
fn decode_refuses_a_partial_instruction() {
    assert!(export::decode(&[0u8; 12]).is_err());
    let one = export::decode(&[6, 0, 1, 2, 0, 0, 0xff, 0x7f]).unwrap();
    assert_eq!(
        (one[0].code, one[0].jt, one[0].jf, one[0].k),
        (6, 1, 2, 0x7fff_0000)
    );
}

#[cfg(feature = "daemon")]
#[test]
fn builtin_default_profile_compiles_within_the_kernel_limit() {
    use oci_spec::runtime::Capability as C;
    // containerd's default set.
    let caps = [
        C::Chown,
        C::DacOverride,
        C::Fsetid,
        C::Fowner,
        C::Mknod,
        C::NetRaw,
        C::Setgid,
        C::Setuid,
        C::Setfcap,
        C::Setpcap,
        C::NetBindService,
        C::SysChroot,
        C::Kill,
        C::AuditWrite,
    ]
    .into_iter()
    .collect();
    let p = crate::spec::default_seccomp_profile(&caps, crate::spec::seccomp::native_arch());
    let prog = prepare(&p).unwrap();
    assert!(prog.instructions() <= MAX_INSTRUCTIONS, "{prog:?}");
    assert_eq!(prog.flags(), 0);
}

#[test]
fn cached_program_equals_a_fresh_compile_and_survives_the_wire() {
    let p = one_rule(r#""mkdir""#, r#""action":"SCMP_ACT_ERRNO","errnoRet":13"#);
    let fresh = prepare(&p).unwrap();
    let first = prepare_cached(&p).unwrap();
    let second = prepare_cached(&p).unwrap();
    let bits = |s: &SeccompProgram| -> Vec<(u16, u8, u8, u32)> {
        s.filter.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    };
    assert_eq!(bits(&fresh), bits(&first));
    assert_eq!(bits(&first), bits(&second));
    // Another profile is another entry.
    let other = prepare_cached(&one_rule(r#""rmdir""#, r#""action":"SCMP_ACT_ERRNO""#)).unwrap();
    assert_ne!(bits(&other), bits(&first));
    // Errors are not cached away.
    let notify = one_rule(r#""mkdir""#, r#""action":"SCMP_ACT_NOTIFY""#);
    assert!(prepare_cached(&notify).is_err());
    assert!(prepare_cached(&notify).is_err());
    let json = serde_json::to_string(&first).unwrap();
    let back: SeccompProgram = serde_json::from_str(&json).unwrap();
    assert_eq!(bits(&back), bits(&first));
    assert_eq!(back.flags(), first.flags());
}
