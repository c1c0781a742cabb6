//! OCI mount options (`"ro"`, `"rbind"`, `"rprivate"`, `"mode=755"`, ...) →
//! mount(2) flags, propagation flags and the data string. Pure.

use nix::mount::MsFlags;

/// A spec mount's options, split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call itself (MS_RDONLY, MS_NOSUID, ...).
    pub flags: MsFlags,
    /// Propagation flags, applied with a separate call (MS_SHARED, MS_REC, ...).
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-joined (`mode=755,size=65536k`).
    pub data: String,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// A recursive bind mount (`rbind`).
    pub recursive: bool,
    /// `rro`: read-only, submounts included (mount_setattr with AT_RECURSIVE).
    pub recursive_readonly: bool,
}

/// Parses OCI mount options. Unknown options go to the data string, as the
/// filesystem may know them.
pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
        bind: false,
        recursive: false,
        recursive_readonly: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                out.bind = true;
                continue;
            }
            "rbind" => {
                out.bind = true;
                out.recursive = true;
                continue;
            }
            "rro" => {
                out.recursive_readonly = true;
                (MsFlags::MS_RDONLY, MsFlags::empty())
            }
            "rrw" => {
                out.recursive_readonly = false;
                (MsFlags::empty(), MsFlags::MS_RDONLY)
            }
            other => {
                if let Some(p) = propagation(other) {
                    out.propagation.push(p);
                } else {
                    data.push(other.to_owned());
                }
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    out.data = data.join(",");
    out
}

/// Every option [`parse`] understands (the rest is filesystem data): the
/// `mountOptions` of the runtime's features document.
pub const KNOWN: &[&str] = &[
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "bind",
    "rbind",
    "rro",
    "rrw",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// A propagation option name → its flags.
pub fn propagation(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> MountOptions {
        parse(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn known_options_are_understood() {
        for o in KNOWN {
            assert_eq!(opts(&[o]).data, "", "{o} is passed on as filesystem data");
        }
        assert_eq!(opts(&["size=1k"]).data, "size=1k");
    }

    #[test]
    fn flags_and_data_are_split() {
        let m = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(m.data, "mode=755,size=65536k");
        assert!(!m.bind);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn bind_and_propagation() {
        let m = opts(&["rbind", "rprivate", "ro"]);
        assert!(m.bind && m.recursive);
        assert_eq!(m.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(m.flags, MsFlags::MS_RDONLY);
        let m = opts(&["bind", "shared"]);
        assert!(m.bind && !m.recursive);
        assert_eq!(m.propagation, vec![MsFlags::MS_SHARED]);
    }

    #[test]
    fn rro_is_read_only_and_recursive() {
        let m = opts(&["rbind", "rprivate", "rro"]);
        assert!(m.recursive_readonly);
        assert_eq!(m.flags, MsFlags::MS_RDONLY);
        assert!(m.data.is_empty());
    }

    #[test]
    fn devpts_options_reach_the_data_string() {
        let m = opts(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(m.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
    }
}
