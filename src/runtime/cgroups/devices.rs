//! Device access rules, as runc sets them: deny everything, then the spec's
//! rules in order, then the devices every container gets.
//!
//! - v1: lines for devices.allow / devices.deny ([`v1_rules`]).
//! - v2 has no device files: the device controller is an eBPF program
//!   (`BPF_PROG_TYPE_CGROUP_DEVICE`) attached to the cgroup, which the kernel
//!   runs on every mknod and open of a device node. [`v2_program`] assembles
//!   it from the same rules (as runc's `devicefilter` and youki's
//!   `devices::program` do), [`apply_v2`] loads and attaches it in place of
//!   the programs attached before (`runtime/bpf.rs` has the syscalls).
//!
//! The program looks at the rules last one first and answers the first
//! that matches, so that a later rule overrides an earlier one as on v1.
//! An allow rule matches when it grants every access asked for (as v1's
//! exceptions do); a deny rule when it names any of them.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgroupError, Result, fsio};
use crate::runtime::bpf::{self, Insn};

/// One line for devices.allow or devices.deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceRule {
    pub allow: bool,
    pub rule: String,
}

impl DeviceRule {
    pub fn file(&self) -> &'static str {
        if self.allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    }

    pub fn value(&self) -> &str {
        &self.rule
    }
}

/// mknod, read, write: the kernel's `BPF_DEVCG_ACC_*` bits.
const MKNOD: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 4;
const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

/// One rule, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub allow: bool,
    /// `b`, `c`, or `a` (every device, whatever the numbers).
    pub typ: char,
    /// `None`: any.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// [`MKNOD`] | [`READ`] | [`WRITE`].
    pub access: u8,
}

impl Rule {
    const fn allow(typ: char, major: Option<u32>, minor: Option<u32>, access: u8) -> Self {
        Self {
            allow: true,
            typ,
            major,
            minor,
            access,
        }
    }

    fn text(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_owned(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        match self.typ {
            'a' => format!("a *:* {access}"),
            t => format!("{t} {}:{} {access}", num(self.major), num(self.minor)),
        }
    }
}

/// Devices every container may use whatever its spec says (runc's
/// AllowedDevices): mknod of anything, /dev/null, zero, full, random,
/// urandom, tty, the pty master and slaves.
const DEFAULT_ALLOWED: &[Rule] = &[
    Rule::allow('c', None, None, MKNOD),
    Rule::allow('b', None, None, MKNOD),
    Rule::allow('c', Some(1), Some(3), ALL_ACCESS),
    Rule::allow('c', Some(1), Some(5), ALL_ACCESS),
    Rule::allow('c', Some(1), Some(7), ALL_ACCESS),
    Rule::allow('c', Some(1), Some(8), ALL_ACCESS),
    Rule::allow('c', Some(1), Some(9), ALL_ACCESS),
    Rule::allow('c', Some(5), Some(0), ALL_ACCESS),
    Rule::allow('c', Some(5), Some(2), ALL_ACCESS),
    Rule::allow('c', Some(136), None, ALL_ACCESS),
];

const DENY_ALL: Rule = Rule {
    allow: false,
    typ: 'a',
    major: None,
    minor: None,
    access: ALL_ACCESS,
};

/// The full rule list for a container: deny all, `spec` in order, defaults.
pub(crate) fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut rules = vec![DENY_ALL];
    for d in spec {
        rules.push(parse(d)?);
    }
    rules.extend_from_slice(DEFAULT_ALLOWED);
    Ok(rules)
}

/// The full v1 rule list for a container: deny all, `spec` in order, defaults.
pub(crate) fn v1_rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>> {
    let all = rules(spec)?;
    let mut out = vec![DeviceRule {
        allow: false,
        rule: "a".into(),
    }];
    out.extend(all[1..].iter().map(|r| DeviceRule {
        allow: r.allow,
        rule: r.text(),
    }));
    Ok(out)
}

fn parse(d: &LinuxDeviceCgroup) -> Result<Rule> {
    let typ = d.typ().unwrap_or(LinuxDeviceType::A);
    let text = d.access().as_deref().unwrap_or("rwm");
    if text.is_empty() || !text.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidResources(format!(
            "invalid device access {text:?} (want a combination of r, w, m)"
        )));
    }
    let mut access = 0;
    for c in text.chars() {
        access |= match c {
            'r' => READ,
            'w' => WRITE,
            _ => MKNOD,
        };
    }
    let num = |n: Option<i64>| -> Result<Option<u32>> {
        match n {
            None | Some(-1) => Ok(None),
            Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(CgroupError::InvalidResources(format!(
                "invalid device number {n}"
            ))),
        }
    };
    let (major, minor) = (num(d.major())?, num(d.minor())?);
    let typ = match typ {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => {
            return Err(CgroupError::InvalidResources(
                "device rules cannot name fifos (type p)".into(),
            ));
        }
    };
    let (major, minor) = if typ == 'a' {
        (None, None)
    } else {
        (major, minor)
    };
    Ok(Rule {
        allow: d.allow(),
        typ,
        major,
        minor,
        access,
    })
}

// eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_W_MEM: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const ALU_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K (32 bit)
const ALU_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JMP_JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// The device program for `rules` (from [`rules`]). Its context is
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// `access_type` being `access << 16 | type`; it returns 1 to allow.
/// Registers: r2 type, r3 access, r4 major, r5 minor, r1 scratch.
pub(crate) fn v2_program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        Insn::new(LDX_W_MEM, 2, 1, 0, 0),
        Insn::new(ALU_AND_K, 2, 0, 0, 0xffff),
        Insn::new(LDX_W_MEM, 3, 1, 0, 0),
        Insn::new(ALU_RSH_K, 3, 0, 0, 16),
        Insn::new(LDX_W_MEM, 4, 1, 4, 0),
        Insn::new(LDX_W_MEM, 5, 1, 8, 0),
    ];
    let mut terminated = false;
    for r in rules.iter().rev() {
        // Each condition jumps past the end of this rule's block: the
        // offsets are filled in once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        if r.typ != 'a' {
            let t = if r.typ == 'b' { DEV_BLOCK } else { DEV_CHAR };
            jumps.push(block.len());
            block.push(Insn::new(JMP_JNE_K, 2, 0, 0, t));
        }
        if r.access != ALL_ACCESS {
            block.push(Insn::new(ALU_MOV_X, 1, 3, 0, 0));
            block.push(Insn::new(ALU_AND_K, 1, 0, 0, i32::from(r.access)));
            jumps.push(block.len());
            if r.allow {
                // Every access asked for is granted, or next rule.
                block.push(Insn::new(JMP_JNE_X, 1, 3, 0, 0));
            } else {
                // Any access asked for is denied, or next rule.
                block.push(Insn::new(JMP_JEQ_K, 1, 0, 0, 0));
            }
        }
        for (reg, n) in [(4, r.major), (5, r.minor)] {
            if let Some(n) = n {
                jumps.push(block.len());
                block.push(Insn::new(JMP_JNE_K, reg, 0, 0, n as i32));
            }
        }
        block.push(Insn::new(ALU_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in &jumps {
            block[*j].off = (len - j - 1) as i16;
        }
        p.extend(block);
        if jumps.is_empty() {
            // Matches everything: what follows could never run, and the
            // verifier refuses unreachable code.
            terminated = true;
            break;
        }
    }
    if !terminated {
        p.push(Insn::new(ALU_MOV_K, 0, 0, 0, 0));
        p.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    }
    p
}

/// Loads the device program for `spec` and attaches it to the v2 cgroup
/// `dir`, then detaches the programs that were attached there before (an
/// update replaces the rules, as runc does). A directory that is not on a
/// cgroup2 filesystem (the unit tests' fake trees) is left alone.
pub(crate) fn apply_v2(dir: &Path, spec: &[LinuxDeviceCgroup]) -> Result<()> {
    let insns = v2_program(&rules(spec)?);
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(|e| fsio::io_err(dir, e))?;
    match nix::sys::statfs::fstatfs(&cgroup) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {}
        Ok(_) => {
            tracing::debug!(cgroup = %dir.display(), "not a cgroup2 directory: no device program");
            return Ok(());
        }
        Err(e) => return Err(fsio::io_err(dir, e.into())),
    }
    let failed = |what: &str, e: nix::errno::Errno| CgroupError::Backend {
        path: dir.display().to_string(),
        message: format!("device program: {what}: {e}"),
    };
    let old = bpf::query_cgroup_device(cgroup.as_fd()).map_err(|e| failed("query", e))?;
    let prog = bpf::load_cgroup_device(&insns).map_err(|(e, log)| CgroupError::Backend {
        path: dir.display().to_string(),
        message: format!(
            "device program: load ({} instructions): {e}: {log}",
            insns.len()
        ),
    })?;
    bpf::attach_cgroup_device(cgroup.as_fd(), prog.as_fd()).map_err(|e| failed("attach", e))?;
    for id in &old {
        let detached = bpf::prog_fd_by_id(*id)
            .and_then(|old| bpf::detach_cgroup_device(cgroup.as_fd(), old.as_fd()));
        if let Err(e) = detached {
            tracing::warn!(cgroup = %dir.display(), prog_id = id, error = %e,
                "could not detach the previous device program");
        }
    }
    tracing::debug!(cgroup = %dir.display(), rules = spec.len(), instructions = insns.len(),
        replaced = old.len(), "device program attached");
    Ok(())
}
