//! Pure translations of the spec's process fields: capability names, rlimit
//! types, executable lookup in `PATH`, sysctl validation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, PosixRlimitType};

/// The PATH used when the process' environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// OCI capabilities → the `caps` crate's set. Names the kernel/`caps`
/// crate does not know are an error.
pub fn to_caps(set: &Capabilities) -> Result<caps::CapsHashSet, String> {
    set.iter().map(|c| cap_by_name(&c.to_string())).collect()
}

/// `"CHOWN"`, `"CAP_CHOWN"` or `"cap_chown"` → the capability.
pub fn cap_by_name(name: &str) -> Result<caps::Capability, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<caps::Capability>()
        .map_err(|_| format!("unknown capability {name}"))
}

/// An OCI rlimit type → the RLIMIT_* resource number.
pub fn rlimit_resource(typ: PosixRlimitType) -> libc::c_int {
    (match typ {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// The value of `PATH` in an environment list (`KEY=value` strings).
pub fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Finds `arg0` the way execvp does: as given when it holds a `/`, else the
/// first executable regular file named so in `path`. `is_exec` is asked
/// about each candidate.
pub fn find_executable(
    arg0: &str,
    path: &str,
    is_exec: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    if arg0.is_empty() {
        return Err("process.args[0] is empty".into());
    }
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if is_exec(&cand) {
            return Ok(cand);
        }
    }
    Err(format!(
        "executable file {arg0:?} not found in $PATH ({path})"
    ))
}

/// Which namespace a sysctl belongs to, if it is namespaced at all. A
/// container may only set sysctls of namespaces it owns, else it would
/// change the host.
pub fn sysctl_namespace(key: &str) -> Option<oci_spec::runtime::LinuxNamespaceType> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(T::Ipc)
    } else if key.starts_with("net.") {
        Some(T::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(T::Uts)
    } else {
        None
    }
}

/// The /proc/sys file of a sysctl key (`net.ipv4.ip_forward` →
/// `net/ipv4/ip_forward`), refusing keys that could walk elsewhere.
pub fn sysctl_file(key: &str) -> Result<PathBuf, String> {
    if key.is_empty() || key.split(['.', '/']).any(|p| p.is_empty() || p == "..") {
        return Err(format!("invalid sysctl key {key:?}"));
    }
    Ok(PathBuf::from(key.replace('.', "/")))
}

/// Deduplicated supplementary groups, gid first excluded.
pub fn additional_gids(list: Option<&Vec<u32>>) -> Vec<u32> {
    let mut seen = HashSet::new();
    list.into_iter()
        .flatten()
        .copied()
        .filter(|g| seen.insert(*g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability, LinuxNamespaceType};

    #[test]
    fn capability_names() {
        assert_eq!(cap_by_name("CHOWN").unwrap(), caps::Capability::CAP_CHOWN);
        assert_eq!(
            cap_by_name("cap_net_admin").unwrap(),
            caps::Capability::CAP_NET_ADMIN
        );
        assert!(cap_by_name("CAP_FLY").is_err());
        let set: Capabilities = [Capability::Kill, Capability::NetBindService].into();
        let c = to_caps(&set).unwrap();
        assert!(c.contains(&caps::Capability::CAP_KILL));
        assert!(c.contains(&caps::Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn rlimits_map_to_resources() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            libc::RLIMIT_NOFILE as libc::c_int
        );
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitCore),
            libc::RLIMIT_CORE as libc::c_int
        );
    }

    #[test]
    fn executable_lookup() {
        let env = vec!["A=1".to_string(), "PATH=/x:/bin".to_string()];
        assert_eq!(env_path(&env), "/x:/bin");
        assert_eq!(env_path(&[]), DEFAULT_PATH);
        let found = find_executable("sh", "/x:/bin", |p| p == Path::new("/bin/sh")).unwrap();
        assert_eq!(found, PathBuf::from("/bin/sh"));
        assert_eq!(
            find_executable("./run", "/x", |_| false).unwrap(),
            PathBuf::from("./run")
        );
        let e = find_executable("nope", "/x", |_| false).unwrap_err();
        assert!(e.contains("nope"));
    }

    #[test]
    fn sysctls() {
        assert_eq!(
            sysctl_namespace("net.ipv4.ip_forward"),
            Some(LinuxNamespaceType::Network)
        );
        assert_eq!(
            sysctl_namespace("kernel.shmmax"),
            Some(LinuxNamespaceType::Ipc)
        );
        assert_eq!(sysctl_namespace("kernel.panic"), None);
        assert_eq!(
            sysctl_file("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("net/ipv4/ip_forward")
        );
        assert!(sysctl_file("net..x").is_err());
        assert!(sysctl_file("net/../../x").is_err());
    }

    #[test]
    fn gids_are_deduplicated() {
        assert_eq!(additional_gids(Some(&vec![5, 6, 5])), vec![5, 6]);
        assert!(additional_gids(None).is_empty());
    }
}
