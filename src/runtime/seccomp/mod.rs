//! The OCI `linux.seccomp` section, applied: compiled with libseccomp into a
//! BPF program ahead of time ([`prepare`], where allocating is fine), and
//! installed with one raw `seccomp(SECCOMP_SET_MODE_FILTER)` call
//! ([`install`], which allocates nothing, so it may run between fork and
//! exec) as the last step before `execve`. The runtime's caller compiles
//! through [`prepare_cached`] (one compile per distinct profile and
//! process: a RuntimeDefault compile takes milliseconds) and hands the
//! program to the init helper.
//!
//! Covered: the default action and `defaultErrnoRet`; syscall rules with
//! every OCI action (allow, errno with `errnoRet`, kill = kill_thread,
//! kill_process, trap, trace, log) and argument conditions (all seven
//! operators; MASKED_EQ takes `value` as the mask and `valueTwo` as the
//! datum); architectures (each listed one is added, e.g. x86 and x32 beside
//! the native x86_64); the flags LOG, SPEC_ALLOW and TSYNC. `SCMP_ACT_NOTIFY`
//! is refused with a clear error. As runc does, syscall names this
//! architecture or libseccomp does not know are skipped (debug log), and a
//! rule whose action equals the default action is left out.
//!
//! Installing needs no_new_privs or CAP_SYS_ADMIN: with no_new_privs the
//! runtime installs right before `execve`; without it, before dropping
//! capabilities (as runc does), so the profile then also governs the last
//! set-up syscalls (setuid, capset, chdir, execve).

mod compile;
pub mod disk_cache;
mod error;
mod export;
mod sys;
#[cfg(test)]
mod tests;

pub use error::SeccompError;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use oci_spec::runtime::LinuxSeccomp;
use serde::{Deserialize, Serialize};

/// The kernel's limit on the instructions of one filter (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// Compiled programs kept per process; beyond this many distinct profiles
/// the cache starts over.
const CACHE_ENTRIES: usize = 32;

/// A compiled filter, ready to install. Serializable, so the caller can
/// compile (or take it from its cache) and hand it to the init helper.
#[derive(Clone, Serialize, Deserialize)]
pub struct SeccompProgram {
    #[serde(with = "instructions")]
    filter: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
    skipped: Vec<String>,
}

impl SeccompProgram {
    /// The number of BPF instructions.
    pub fn instructions(&self) -> usize {
        self.filter.len()
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits passed to `seccomp()`.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }

    /// Syscall names of the profile that were skipped as unknown here.
    pub fn skipped_syscalls(&self) -> &[String] {
        &self.skipped
    }
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeccompProgram")
            .field("instructions", &self.filter.len())
            .field("flags", &self.flags)
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Cheap checks of a profile, without compiling it: the notify action,
/// errno values and argument indexes. [`prepare`] does them too.
pub fn validate(profile: &LinuxSeccomp) -> Result<(), SeccompError> {
    compile::validate(profile)
}

/// Compiles a profile into a BPF program. Run it before entering the
/// container (it allocates and calls into libseccomp).
pub fn prepare(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let started = std::time::Instant::now();
    let compiled = compile::compile(profile)?;
    let filter = export::bpf(&compiled.ctx)?;
    if filter.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge {
            instructions: filter.len(),
            limit: MAX_INSTRUCTIONS,
        });
    }
    tracing::debug!(
        instructions = filter.len(),
        flags = compiled.flags,
        skipped = compiled.skipped.len(),
        compile_us = started.elapsed().as_micros() as u64,
        "seccomp profile compiled"
    );
    Ok(SeccompProgram {
        filter,
        flags: compiled.flags,
        skipped: compiled.skipped,
    })
}

/// [`prepare`], with the result kept in a per-process cache keyed by the
/// profile itself: libseccomp needs milliseconds for a long allowlist over
/// three architectures, so a process starting many containers with the
/// same profile (a shim's pod, the RuntimeDefault profile) compiles it once.
///
/// Behind the per-process cache is the node's on-disk cache
/// ([`disk_cache`]) in the directory `BERTH_SECCOMP_CACHE_DIR` names (berthd
/// sets it for its shims): only the first process of a node compiles.
pub fn prepare_cached(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    prepare_cached_in(
        profile,
        DIR.get_or_init(disk_cache::dir_from_env).as_deref(),
    )
}

/// [`prepare_cached`] with the on-disk cache in `dir` (None: memory only).
pub fn prepare_cached_in(
    profile: &LinuxSeccomp,
    dir: Option<&std::path::Path>,
) -> Result<SeccompProgram, SeccompError> {
    static CACHE: OnceLock<Mutex<HashMap<String, SeccompProgram>>> = OnceLock::new();
    let Ok(json) = serde_json::to_string(profile) else {
        return prepare(profile);
    };
    let key = disk_cache::key(&json);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let from_disk = dir.and_then(|d| disk_cache::load(d, &key));
    let program = match from_disk {
        Some(p) => p,
        None => {
            let p = prepare(profile)?;
            if let Some(d) = dir
                && let Err(e) = disk_cache::store(d, &key, &p)
            {
                tracing::warn!(dir = %d.display(), error = %e, "seccomp cache: cannot store the compiled profile");
            }
            p
        }
    };
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
    map.insert(key, program.clone());
    Ok(program)
}

/// `struct sock_filter` has no serde support: (code, jt, jf, k) tuples.
mod instructions {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &[libc::sock_filter], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(f.iter().map(|i| (i.code, i.jt, i.jf, i.k)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<libc::sock_filter>, D::Error> {
        let v: Vec<(u16, u8, u8, u32)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect())
    }
}

/// libseccomp's pseudo filter code of a profile: a readable listing of the
/// filter, for debugging and tests.
pub fn pseudo_code(profile: &LinuxSeccomp) -> Result<String, SeccompError> {
    export::pfc(&compile::compile(profile)?.ctx)
}

/// Installs a prepared filter on the calling thread (all threads with
/// TSYNC). Allocates nothing: safe between fork and exec. Needs
/// no_new_privs or CAP_SYS_ADMIN.
pub fn install(program: &SeccompProgram) -> Result<(), SeccompError> {
    sys::set_mode_filter(program.flags, &program.filter).map_err(|f| match f {
        sys::InstallFailure::Errno(e) => SeccompError::Install(e),
        sys::InstallFailure::Thread(tid) => SeccompError::Tsync { tid },
    })
}
