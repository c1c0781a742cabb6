//! The spec's `linux.namespaces` → which namespaces to create (clone flags)
//! and which to join by path. Pure.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

/// Namespaces of a container, split into new and joined ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// CLONE_NEW* flags for the namespaces to create.
    pub clone_flags: libc::c_int,
    /// Namespaces to join by path, user namespace first.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl NamespacePlan {
    /// Whether the container gets (creates or joins) a namespace of `typ`.
    pub fn has(&self, typ: LinuxNamespaceType) -> bool {
        self.creates(typ) || self.join.iter().any(|(t, _)| *t == typ)
    }

    /// Whether the container creates a new namespace of `typ`.
    pub fn creates(&self, typ: LinuxNamespaceType) -> bool {
        self.clone_flags & flag(typ) != 0
    }
}

/// The CLONE_NEW* flag of a namespace type.
pub fn flag(typ: LinuxNamespaceType) -> libc::c_int {
    match typ {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The name of a namespace under /proc/<pid>/ns/.
pub fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The order in which an exec joins a container's namespaces: user first
/// (it grants the rights for the others), mount last.
pub const JOIN_ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

/// Splits the spec's namespaces. Duplicates are an error.
pub fn plan(namespaces: &[LinuxNamespace]) -> Result<NamespacePlan, String> {
    let mut plan = NamespacePlan::default();
    let mut seen = Vec::new();
    for ns in namespaces {
        let typ = ns.typ();
        if seen.contains(&typ) {
            return Err(format!("namespace {} listed twice", proc_name(typ)));
        }
        seen.push(typ);
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => plan.join.push((typ, p.clone())),
            _ => plan.clone_flags |= flag(typ),
        }
    }
    plan.join.sort_by_key(|(t, _)| {
        JOIN_ORDER
            .iter()
            .position(|o| o == t)
            .unwrap_or(JOIN_ORDER.len())
    });
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn new_and_joined_are_split_user_first() {
        let p = plan(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Network, Some("/run/netns/x")),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::User, Some("/proc/1/ns/user")),
        ])
        .unwrap();
        assert_eq!(p.clone_flags, libc::CLONE_NEWPID | libc::CLONE_NEWNS);
        assert_eq!(p.join[0].0, LinuxNamespaceType::User);
        assert_eq!(p.join[1].0, LinuxNamespaceType::Network);
        assert!(p.has(LinuxNamespaceType::Network));
        assert!(!p.creates(LinuxNamespaceType::Network));
        assert!(!p.has(LinuxNamespaceType::Uts));
    }

    #[test]
    fn duplicates_are_refused() {
        let e = plan(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Pid, Some("/x")),
        ])
        .unwrap_err();
        assert!(e.contains("pid"), "{e}");
    }
}
