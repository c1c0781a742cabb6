//! Errors of seccomp profile compilation and installation.

use nix::errno::Errno;

/// Everything that can go wrong turning an OCI `linux.seccomp` section into
/// an installed filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile uses `SCMP_ACT_NOTIFY` (a user-space agent answering
    /// syscalls), which berth does not implement.
    #[error("seccomp: SCMP_ACT_NOTIFY is not supported ({0})")]
    NotifyUnsupported(String),
    /// An `errnoRet`/`defaultErrnoRet` that does not fit the 16 bits of
    /// `SECCOMP_RET_DATA`.
    #[error("seccomp: errno return value {value} of {what} is out of range (0..=65535)")]
    ErrnoOutOfRange { what: String, value: u32 },
    /// A condition on a syscall argument that does not exist (index > 5).
    #[error("seccomp: argument index {index} of the rule for {syscall} is out of range (0..=5)")]
    ArgIndexOutOfRange { syscall: String, index: usize },
    /// libseccomp refused an operation.
    #[error("seccomp: {context}: {source}")]
    Library {
        context: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// Exporting the compiled BPF program failed.
    #[error("seccomp: export the BPF program: {0}")]
    Export(#[source] std::io::Error),
    /// The compiled program exceeds what the kernel accepts.
    #[error(
        "seccomp: the compiled filter has {instructions} instructions, more than the kernel's limit of {limit}"
    )]
    TooLarge { instructions: usize, limit: usize },
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed (EACCES: neither
    /// no_new_privs nor CAP_SYS_ADMIN; EINVAL: a flag this kernel lacks).
    #[error("seccomp: install the filter: {0}")]
    Install(Errno),
    /// With `SECCOMP_FILTER_FLAG_TSYNC`: another thread could not be synchronized.
    #[error("seccomp: install the filter: thread {tid} could not be synchronized (TSYNC)")]
    Tsync { tid: i32 },
}

impl SeccompError {
    pub(super) fn library(
        context: impl Into<String>,
        source: libseccomp::error::SeccompError,
    ) -> Self {
        Self::Library {
            context: context.into(),
            source,
        }
    }
}
