//! Errors of CRI → OCI spec generation.

/// Why a CRI container request could not be turned into an OCI runtime spec.
///
/// Every variant describes a problem in the request (or in the image), so the
/// CRI layer maps all of them to `InvalidArgument`, except
/// [`SpecError::Unsupported`] which maps to `FailedPrecondition`.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the CRI config nor the image names a program to run.
    #[error(
        "no command to run: the container config has no command or args and the image has no Entrypoint or Cmd"
    )]
    NoCommand,

    /// A CRI field holds a value that cannot be used.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The CRI (or image) field, e.g. `linux.resources.cpu_shares`.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// The user spec (`USER` of the image, `run_as_*` of the CRI) cannot be parsed.
    #[error("invalid user {user:?}: {reason}")]
    InvalidUser {
        /// The user spec as given.
        user: String,
        /// What is wrong.
        reason: String,
    },

    /// A user name is not in the image's /etc/passwd.
    #[error("user {name:?} not found in the image's /etc/passwd{}", if *.no_passwd { " (the image has no /etc/passwd; use a numeric uid)" } else { "" })]
    UserNotFound {
        /// The user name that was looked up.
        name: String,
        /// True when the image has no /etc/passwd at all.
        no_passwd: bool,
    },

    /// A group name is not in the image's /etc/group.
    #[error("group {name:?} not found in the image's /etc/group{}", if *.no_group { " (the image has no /etc/group; use a numeric gid)" } else { "" })]
    GroupNotFound {
        /// The group name that was looked up.
        name: String,
        /// True when the image has no /etc/group at all.
        no_group: bool,
    },

    /// A capability name is not known.
    #[error(
        "unknown capability {0:?} (expected a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL)"
    )]
    UnknownCapability(String),

    /// A CRI mount cannot be honoured.
    #[error("mount {container_path:?}: {reason}")]
    Mount {
        /// The mount's container path.
        container_path: String,
        /// What is wrong.
        reason: String,
    },

    /// A CRI device cannot be honoured.
    #[error("device {host_path:?}: {reason}")]
    Device {
        /// The device's host path.
        host_path: String,
        /// What is wrong.
        reason: String,
    },

    /// A pod sysctl cannot be applied to this container.
    #[error("sysctl {name:?}: {reason}")]
    Sysctl {
        /// The sysctl name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The namespace options cannot be honoured with what the pod has.
    #[error("namespaces: {0}")]
    Namespace(String),

    /// A privileged container was requested in a pod that is not privileged.
    #[error(
        "privileged container {0:?} is not allowed in a pod that is not privileged (set privileged in the pod's security context too)"
    )]
    PrivilegedNotAllowed(String),

    /// The container requires a security feature the host does not have.
    #[error("{0}")]
    Unsupported(String),

    /// A seccomp profile (Localhost or the deprecated path) cannot be used.
    #[error("seccomp profile {source_name}: {reason}")]
    SeccompProfile {
        /// Where the profile came from (a path, or "RuntimeDefault").
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The pod's DNS config cannot be written as resolv.conf.
    #[error("dns config: {0}")]
    Dns(String),
}

impl SpecError {
    pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> Self {
        SpecError::InvalidField {
            field,
            reason: reason.into(),
        }
    }
}
