//! OCI `linux.seccomp` → a libseccomp filter context, following runc's
//! rules: a rule whose action equals the default action is left out,
//! syscall names unknown to this architecture/libseccomp are skipped (debug
//! log), several conditions on one argument become one rule per condition
//! (OR), conditions on distinct arguments one rule (AND), and `errnoRet`
//! applies to ERRNO and TRACE (EPERM when absent).

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::SeccompError;

/// The number of syscall arguments a condition can look at.
const MAX_ARGS: usize = 6;

/// A compiled (not yet exported) filter.
pub struct Compiled {
    pub ctx: ScmpFilterContext,
    /// `SECCOMP_FILTER_FLAG_*` bits for the `seccomp()` call.
    pub flags: libc::c_ulong,
    /// Syscall names of the profile this architecture does not know.
    pub skipped: Vec<String>,
}

/// Checks what can be checked without libseccomp: no notify action, errno
/// values in range, argument indexes in range.
pub fn validate(profile: &LinuxSeccomp) -> Result<(), SeccompError> {
    check_action(
        profile.default_action(),
        profile.default_errno_ret(),
        || "defaultAction".to_string(),
    )?;
    for sc in profile.syscalls().iter().flatten() {
        check_action(sc.action(), sc.errno_ret(), || rule_name(sc))?;
        for a in sc.args().iter().flatten() {
            if a.index() >= MAX_ARGS {
                return Err(SeccompError::ArgIndexOutOfRange {
                    syscall: rule_name(sc),
                    index: a.index(),
                });
            }
        }
    }
    Ok(())
}

fn rule_name(sc: &LinuxSyscall) -> String {
    format!("syscalls {}", sc.names().join(","))
}

fn check_action(
    a: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: impl Fn() -> String,
) -> Result<(), SeccompError> {
    if a == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::NotifyUnsupported(what()));
    }
    if let Some(value) = errno_ret
        && value > u32::from(u16::MAX)
        && matches!(
            a,
            LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
        )
    {
        return Err(SeccompError::ErrnoOutOfRange {
            what: what(),
            value,
        });
    }
    Ok(())
}

/// The libseccomp action of an OCI action (validated before).
pub fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> ScmpAction {
    let ret = errno_ret.unwrap_or(libc::EPERM as u32) as u16;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(ret)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        // Refused by `validate`; never reached.
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    }
}

/// The libseccomp architecture of an OCI one.
pub fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// The `SECCOMP_FILTER_FLAG_*` bits of the profile's flags.
/// `WAIT_KILLABLE_RECV` only means something for a notify listener (which
/// berth refuses) and the kernel rejects it without one: it is dropped.
pub fn flag_bits(flags: &[LinuxSeccompFilterFlag]) -> libc::c_ulong {
    flags.iter().fold(0, |bits, f| {
        bits | match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                tracing::debug!("seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV ignored (no notify listener)");
                0
            }
        }
    })
}

/// The libseccomp comparison of an OCI argument condition. For MASKED_EQ,
/// `value` is the mask and `valueTwo` the datum (as in runc and libseccomp).
pub fn condition(a: &LinuxSeccompArg) -> ScmpArgCompare {
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    ScmpArgCompare::new(a.index() as u32, op, datum)
}

/// Builds the filter context of a profile.
pub fn compile(profile: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    validate(profile)?;
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default)
        .map_err(|e| SeccompError::library("create the filter", e))?;
    // A binary tree of syscalls instead of a linear list: faster for the
    // long allowlists of real profiles. Older libseccomp: keep the default.
    if let Err(e) = ctx.set_ctl_optimize(2) {
        tracing::debug!(error = %e, "seccomp: binary-tree optimization unavailable");
    }
    for a in profile.architectures().iter().flatten() {
        let sa = arch(*a);
        if let Err(e) = ctx.add_arch(sa) {
            // Leaving an architecture out is stricter, never weaker: its
            // syscalls meet the bad-architecture action (kill).
            tracing::debug!(arch = ?a, error = %e, "seccomp architecture unsupported by libseccomp; left out");
        }
    }
    let mut skipped = Vec::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret());
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = sc.args().iter().flatten().map(condition).collect();
        let mut per_index = [0usize; MAX_ARGS];
        for a in sc.args().iter().flatten() {
            per_index[a.index()] += 1;
        }
        let one_rule_per_condition = per_index.iter().any(|&n| n > 1);
        for name in sc.names() {
            let nr = match ScmpSyscall::from_name(name) {
                Ok(nr) => nr,
                Err(_) => {
                    tracing::debug!(syscall = %name, "unknown seccomp syscall ignored");
                    skipped.push(name.clone());
                    continue;
                }
            };
            let added = if conds.is_empty() {
                ctx.add_rule(act, nr).map(drop)
            } else if one_rule_per_condition {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, nr, &[*c]).map(drop))
            } else {
                ctx.add_rule_conditional(act, nr, &conds).map(drop)
            };
            added.map_err(|e| SeccompError::library(format!("add the rule for {name}"), e))?;
        }
    }
    Ok(Compiled {
        ctx,
        flags: flag_bits(profile.flags().as_deref().unwrap_or(&[])),
        skipped,
    })
}
