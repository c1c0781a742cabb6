//! The spec's `linux.seccomp` → BPF programs (through `seccompiler`), and
//! installing them.
//!
//! `seccompiler` gives one filter a single "match" and a single "mismatch"
//! action, while an OCI profile gives each rule its own action. The kernel
//! runs every installed filter and takes the result of highest precedence
//! (KILL > TRAP > ERRNO > TRACE > LOG > ALLOW), so a profile becomes:
//! - one filter per non-ALLOW action A: its rules → A, anything else → ALLOW;
//! - one default filter: every rule (whatever its action) → ALLOW, anything
//!   else → the default action.
//!
//! A call matching a rule with action A gets A (A outranks the default
//! filter's ALLOW); one matching no rule gets the default action. Syscall
//! names this architecture does not have are skipped, as libseccomp does.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::seccomp_syscalls;

/// The number of a system call on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    let table = seccomp_syscalls::X86_64;
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err("seccomp action SCMP_ACT_NOTIFY is not supported".into());
        }
    })
}

/// A stable key for grouping rules by action.
fn action_key(a: &SeccompAction) -> String {
    format!("{a:?}")
}

/// Rules of one syscall: `None` means "unconditionally".
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(rules: &mut Rules, nr: i64, rule: Option<SeccompRule>) {
    let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        // Already unconditional: stays so.
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(list), Some(r)) => list.push(r),
    }
}

fn to_filter_rules(rules: Rules) -> BTreeMap<i64, Vec<SeccompRule>> {
    rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect()
}

/// Compiles a profile into the BPF programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, String> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(format!(
            "seccomp profiles are supported on x86_64 only, not {}",
            std::env::consts::ARCH
        ));
    }
    let arch = TargetArch::x86_64;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut all: Rules = BTreeMap::new();
    let mut groups: BTreeMap<String, (SeccompAction, Rules)> = BTreeMap::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        let mut conditions = Vec::new();
        for a in sc.args().iter().flatten() {
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    SeccompCmpOp::MaskedEq(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            let index = u8::try_from(a.index())
                .map_err(|_| format!("seccomp argument index {} out of range", a.index()))?;
            conditions.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| format!("seccomp rule for {:?}: {e}", sc.names()))?,
            );
        }
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(
                SeccompRule::new(conditions)
                    .map_err(|e| format!("seccomp rule for {:?}: {e}", sc.names()))?,
            )
        };
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            add_rule(&mut all, nr, rule.clone());
            if act != SeccompAction::Allow {
                let g = groups
                    .entry(action_key(&act))
                    .or_insert_with(|| (act.clone(), BTreeMap::new()));
                add_rule(&mut g.1, nr, rule.clone());
            }
        }
    }
    let mut programs = Vec::new();
    for (_, (act, rules)) in groups {
        let filter = SeccompFilter::new(to_filter_rules(rules), SeccompAction::Allow, act, arch)
            .map_err(|e| format!("seccomp filter: {e}"))?;
        programs.push(BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter: {e}"))?);
    }
    if default != SeccompAction::Allow {
        let filter = SeccompFilter::new(to_filter_rules(all), default, SeccompAction::Allow, arch)
            .map_err(|e| format!("seccomp filter: {e}"))?;
        programs.push(BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter: {e}"))?);
    }
    Ok(programs)
}

/// Installs the programs on the calling thread (the process is single
/// threaded). Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| format!("install seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    #[test]
    fn syscall_names() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdirat"), Some(libc::SYS_mkdirat));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    fn rule(names: &[&str], act: LinuxSeccompAction) -> oci_spec::runtime::LinuxSyscall {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(act)
            .build()
            .unwrap()
    }

    #[test]
    fn allow_list_with_a_special_errno_gives_two_filters() {
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        let personality = LinuxSyscallBuilder::default()
            .names(vec!["personality".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                rule(
                    &["read", "write", "not_a_syscall"],
                    LinuxSeccompAction::ScmpActAllow,
                ),
                clone3,
                personality,
            ])
            .build()
            .unwrap();
        let progs = compile(&profile).unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn allow_default_without_rules_installs_nothing() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .unwrap();
        assert!(compile(&profile).unwrap().is_empty());
    }

    #[test]
    fn notify_is_refused() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap();
        assert!(compile(&profile).unwrap_err().contains("NOTIFY"));
    }
}
