//! Docker / OCI seccomp profile JSON → OCI `LinuxSeccomp`.
//!
//! Accepts both the OCI `linux.seccomp` form and Docker's profile form
//! (`archMap`, `name`, `includes` / `excludes` by arch, capability and kernel
//! version), resolving the Docker conditions for this container the way
//! Docker and containerd do.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::SeccompArch;
use super::default_profile::seccomp_arg2;
use crate::spec::capabilities::parse_capability;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileJson {
    default_action: Option<String>,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<ArchMapJson>>,
    flags: Option<Vec<String>>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<SyscallJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapJson {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallJson {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: Option<String>,
    errno_ret: Option<u32>,
    args: Option<Vec<ArgJson>>,
    includes: Option<FilterJson>,
    excludes: Option<FilterJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgJson {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterJson {
    arches: Option<Vec<String>>,
    caps: Option<Vec<String>>,
    min_kernel: Option<String>,
}

fn action(s: &str, what: &str) -> Result<LinuxSeccompAction, String> {
    let a = LinuxSeccompAction::from_str(s).map_err(|_| {
        format!(
            "{what}: unknown action {s:?} (expected SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_TRACE or SCMP_ACT_LOG)"
        )
    })?;
    if a == LinuxSeccompAction::ScmpActNotify {
        return Err(format!(
            "{what}: SCMP_ACT_NOTIFY needs a seccomp agent, which berth does not support"
        ));
    }
    Ok(a)
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::from_str(s)
        .map_err(|_| format!("unknown architecture {s:?} (expected e.g. SCMP_ARCH_X86_64)"))
}

fn kernel_at_least(min: &str, kernel: Option<(u32, u32)>) -> Result<bool, String> {
    let bad = || format!("minKernel {min:?} is not a version such as 4.8");
    let mut parts = min.trim().split('.');
    let major: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let minor: u32 = match parts.next() {
        Some(m) => m.parse().map_err(|_| bad())?,
        None => 0,
    };
    // Unknown kernel: assume a current one.
    Ok(kernel.is_none_or(|k| k >= (major, minor)))
}

fn has_cap(bounding: &HashSet<Capability>, name: &str) -> bool {
    parse_capability(name).is_ok_and(|c| bounding.contains(&c))
}

/// Whether a Docker syscall rule applies to this container.
fn applies(
    s: &SyscallJson,
    bounding: &HashSet<Capability>,
    arch: SeccompArch,
    kernel: Option<(u32, u32)>,
) -> Result<bool, String> {
    let empty = FilterJson::default();
    let ex = s.excludes.as_ref().unwrap_or(&empty);
    let inc = s.includes.as_ref().unwrap_or(&empty);
    if ex
        .arches
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == arch.go_name))
    {
        return Ok(false);
    }
    if ex
        .caps
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| has_cap(bounding, c)))
    {
        return Ok(false);
    }
    if let Some(min) = &ex.min_kernel
        && kernel_at_least(min, kernel)?
    {
        return Ok(false);
    }
    if let Some(arches) = &inc.arches
        && !arches.is_empty()
        && !arches.iter().any(|a| a == arch.go_name)
    {
        return Ok(false);
    }
    if inc
        .caps
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| !has_cap(bounding, c)))
    {
        return Ok(false);
    }
    if let Some(min) = &inc.min_kernel
        && !kernel_at_least(min, kernel)?
    {
        return Ok(false);
    }
    Ok(true)
}

/// Parses a seccomp profile (Docker or OCI JSON) for a container whose
/// bounding capability set is `bounding`, on `arch`. The error is a sentence
/// saying what is wrong and where.
pub fn parse_seccomp_profile(
    json: &str,
    bounding: &HashSet<Capability>,
    arch: SeccompArch,
    kernel: Option<(u32, u32)>,
) -> Result<LinuxSeccomp, String> {
    if json.trim().is_empty() {
        return Err("the profile is empty".to_string());
    }
    let p: ProfileJson =
        serde_json::from_str(json).map_err(|e| format!("not a seccomp profile: {e}"))?;
    let default_action = action(
        p.default_action
            .as_deref()
            .ok_or("defaultAction is missing")?,
        "defaultAction",
    )?;

    let architectures = p.architectures.unwrap_or_default();
    let arch_map = p.arch_map.unwrap_or_default();
    if !architectures.is_empty() && !arch_map.is_empty() {
        return Err("both 'architectures' and 'archMap' are given; use one of them".to_string());
    }
    let mut arches = Vec::new();
    for a in &architectures {
        arches.push(parse_arch(a)?);
    }
    for entry in &arch_map {
        let main = parse_arch(&entry.architecture)?;
        let subs = entry
            .sub_architectures
            .iter()
            .flatten()
            .map(|s| parse_arch(s))
            .collect::<Result<Vec<_>, _>>()?;
        if main == arch.native {
            arches.push(main);
            arches.extend(subs);
        }
    }

    let mut flags = Vec::new();
    for f in p.flags.unwrap_or_default() {
        flags.push(LinuxSeccompFilterFlag::from_str(&f).map_err(|_| {
            format!(
                "unknown flag {f:?} (expected SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC or SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)"
            )
        })?);
    }
    if p.listener_path.as_deref().is_some_and(|l| !l.is_empty()) {
        return Err("listenerPath (a seccomp agent) is not supported by berth".to_string());
    }

    let mut syscalls = Vec::new();
    for (i, s) in p.syscalls.unwrap_or_default().iter().enumerate() {
        let what = format!("syscalls[{i}]");
        let mut names = s.names.clone().unwrap_or_default();
        if let Some(name) = &s.name
            && !name.is_empty()
        {
            if !names.is_empty() {
                return Err(format!(
                    "{what}: both 'name' and 'names' are given; use one of them"
                ));
            }
            names.push(name.clone());
        }
        if names.is_empty() {
            return Err(format!("{what}: no syscall names"));
        }
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!("{what}: {bad:?} is not a syscall name"));
        }
        let act = action(
            s.action
                .as_deref()
                .ok_or_else(|| format!("{what}: action is missing"))?,
            &what,
        )?;
        if !applies(s, bounding, arch, kernel).map_err(|e| format!("{what}: {e}"))? {
            continue;
        }
        let mut args = Vec::new();
        for a in s.args.iter().flatten() {
            if a.index > 5 {
                return Err(format!(
                    "{what}: argument index {} is out of range (0..=5)",
                    a.index
                ));
            }
            let op = LinuxSeccompOperator::from_str(&a.op).map_err(|_| {
                format!(
                    "{what}: unknown operator {:?} (expected SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE or SCMP_CMP_MASKED_EQ)",
                    a.op
                )
            })?;
            args.push(seccomp_arg2(a.index as usize, a.value, a.value_two, op));
        }
        let mut rule = LinuxSyscall::default();
        rule.set_names(names)
            .set_action(act)
            .set_errno_ret(s.errno_ret)
            .set_args(if args.is_empty() { None } else { Some(args) });
        syscalls.push(rule);
    }

    let mut out = LinuxSeccomp::default();
    out.set_default_action(default_action)
        .set_default_errno_ret(p.default_errno_ret)
        .set_architectures(if arches.is_empty() {
            None
        } else {
            Some(arches)
        })
        .set_flags(if flags.is_empty() { None } else { Some(flags) })
        .set_listener_metadata(p.listener_metadata.filter(|m| !m.is_empty()))
        .set_syscalls(Some(syscalls));
    Ok(out)
}
