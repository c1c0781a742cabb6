//! seccomp: which profile a container gets (CRI `seccomp` or the deprecated
//! `seccomp_profile_path`), berth's built-in default profile, and Docker/OCI
//! JSON profiles.

mod default_profile;
mod profile;

use std::collections::HashSet;

use k8s_cri::v1::{LinuxContainerSecurityContext, security_profile::ProfileType};
use oci_spec::runtime::{Arch, Capability, LinuxSeccomp};

pub use default_profile::default_seccomp_profile;
pub use profile::parse_seccomp_profile;

use super::SpecError;

/// The seccomp profile a container asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompSelection {
    /// No filter.
    Unconfined,
    /// berth's built-in default profile.
    RuntimeDefault,
    /// A profile file on the host, at this absolute path; the caller reads it
    /// and passes its contents as `seccomp_localhost_profile`.
    Localhost(String),
}

const LOCALHOST_PREFIX: &str = "localhost/";

fn from_path(path: &str) -> Result<SeccompSelection, SpecError> {
    match path {
        "runtime/default" | "docker/default" => Ok(SeccompSelection::RuntimeDefault),
        "unconfined" => Ok(SeccompSelection::Unconfined),
        p => match p.strip_prefix(LOCALHOST_PREFIX) {
            Some(file) => localhost(file),
            None => Err(SpecError::field(
                "linux.security_context.seccomp_profile_path",
                format!(
                    "{p:?} is not a profile (expected runtime/default, docker/default, unconfined or localhost/<absolute path>)"
                ),
            )),
        },
    }
}

fn localhost(file: &str) -> Result<SeccompSelection, SpecError> {
    let file = file.strip_prefix(LOCALHOST_PREFIX).unwrap_or(file);
    if !file.starts_with('/') {
        return Err(SpecError::field(
            "linux.security_context.seccomp.localhost_ref",
            format!("the Localhost profile path {file:?} must be absolute"),
        ));
    }
    Ok(SeccompSelection::Localhost(file.to_string()))
}

/// Whether the security context selects a seccomp profile at all (the
/// `seccomp` field or the deprecated path); a runtime handler with
/// `default_seccomp` gives RuntimeDefault to containers that select none.
pub fn seccomp_is_set(sc: Option<&LinuxContainerSecurityContext>) -> bool {
    #[allow(deprecated)]
    sc.is_some_and(|sc| sc.seccomp.is_some() || !sc.seccomp_profile_path.is_empty())
}

/// The seccomp profile the security context selects, as containerd reads it:
/// the `seccomp` field when set, else the deprecated `seccomp_profile_path`,
/// else none. A privileged container never gets a filter.
pub fn seccomp_selection(
    sc: Option<&LinuxContainerSecurityContext>,
) -> Result<SeccompSelection, SpecError> {
    let Some(sc) = sc else {
        return Ok(SeccompSelection::Unconfined);
    };
    if sc.privileged {
        return Ok(SeccompSelection::Unconfined);
    }
    let Some(profile) = &sc.seccomp else {
        #[allow(deprecated)]
        let path = sc.seccomp_profile_path.as_str();
        if path.is_empty() {
            return Ok(SeccompSelection::Unconfined);
        }
        return from_path(path);
    };
    let typ = ProfileType::try_from(profile.profile_type).map_err(|_| {
        SpecError::field(
            "linux.security_context.seccomp.profile_type",
            format!("unknown profile type {}", profile.profile_type),
        )
    })?;
    if typ != ProfileType::Localhost && !profile.localhost_ref.is_empty() {
        return Err(SpecError::field(
            "linux.security_context.seccomp.localhost_ref",
            format!(
                "localhost_ref {:?} may only be set with profile type Localhost, not {}",
                profile.localhost_ref,
                typ.as_str_name()
            ),
        ));
    }
    match typ {
        ProfileType::Unconfined => Ok(SeccompSelection::Unconfined),
        ProfileType::RuntimeDefault => Ok(SeccompSelection::RuntimeDefault),
        ProfileType::Localhost => {
            if profile.localhost_ref.is_empty() {
                return Err(SpecError::field(
                    "linux.security_context.seccomp.localhost_ref",
                    "profile type Localhost needs localhost_ref (the profile's path)",
                ));
            }
            localhost(&profile.localhost_ref)
        }
    }
}

/// The machine berth runs on, as seccomp profiles name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeccompArch {
    /// Go's name (`amd64`, `arm64`, ...), used by Docker profiles' `includes.arches`.
    pub go_name: &'static str,
    /// The native seccomp architecture.
    pub native: Arch,
    /// The architectures a filter must cover (native plus compat ABIs).
    pub all: &'static [Arch],
}

/// The architecture berth was built for.
pub fn native_arch() -> SeccompArch {
    arch_for(std::env::consts::ARCH)
}

/// The seccomp architecture for a Rust `target_arch` name.
pub fn arch_for(rust_arch: &str) -> SeccompArch {
    match rust_arch {
        "x86_64" => SeccompArch {
            go_name: "amd64",
            native: Arch::ScmpArchX86_64,
            all: &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        },
        "x86" => SeccompArch {
            go_name: "386",
            native: Arch::ScmpArchX86,
            all: &[Arch::ScmpArchX86],
        },
        "aarch64" => SeccompArch {
            go_name: "arm64",
            native: Arch::ScmpArchAarch64,
            all: &[Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        },
        "arm" => SeccompArch {
            go_name: "arm",
            native: Arch::ScmpArchArm,
            all: &[Arch::ScmpArchArm],
        },
        "s390x" => SeccompArch {
            go_name: "s390x",
            native: Arch::ScmpArchS390x,
            all: &[Arch::ScmpArchS390x, Arch::ScmpArchS390],
        },
        "riscv64" => SeccompArch {
            go_name: "riscv64",
            native: Arch::ScmpArchRiscv64,
            all: &[Arch::ScmpArchRiscv64],
        },
        "powerpc64" => SeccompArch {
            go_name: "ppc64le",
            native: Arch::ScmpArchPpc64le,
            all: &[Arch::ScmpArchPpc64le],
        },
        "loongarch64" => SeccompArch {
            go_name: "loong64",
            native: Arch::ScmpArchLoongarch64,
            all: &[Arch::ScmpArchLoongarch64],
        },
        _ => SeccompArch {
            go_name: "unknown",
            native: Arch::ScmpArchNative,
            all: &[Arch::ScmpArchNative],
        },
    }
}

/// The container's `linux.seccomp`.
pub(crate) fn container_seccomp(
    selection: &SeccompSelection,
    localhost_contents: Option<&str>,
    bounding: &HashSet<Capability>,
    host_seccomp: bool,
    kernel_version: Option<(u32, u32)>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if !host_seccomp {
        if *selection != SeccompSelection::Unconfined {
            return Err(SpecError::Unsupported(format!(
                "the container requires seccomp profile {selection:?} but this kernel has no seccomp filter support"
            )));
        }
        return Ok(None);
    }
    let arch = native_arch();
    match selection {
        SeccompSelection::Unconfined => Ok(None),
        SeccompSelection::RuntimeDefault => Ok(Some(default_seccomp_profile(bounding, arch))),
        SeccompSelection::Localhost(path) => {
            let contents = localhost_contents.ok_or_else(|| SpecError::SeccompProfile {
                source_name: path.clone(),
                reason: "the profile's contents were not given (the file could not be read)"
                    .to_string(),
            })?;
            parse_seccomp_profile(contents, bounding, arch, kernel_version)
                .map(Some)
                .map_err(|reason| SpecError::SeccompProfile {
                    source_name: path.clone(),
                    reason,
                })
        }
    }
}
