//! AppArmor and SELinux. AppArmor profiles are applied where the host has
//! AppArmor (the runtime writes the spec's `process.apparmorProfile` to
//! `/proc/thread-self/attr/apparmor/exec` before exec); SELinux labels are
//! not applied yet, so they are refused where SELinux is on.

use k8s_cri::v1::{LinuxContainerSecurityContext, security_profile::ProfileType};

use super::SpecError;
use super::input::{HostFacts, RuntimeOptions};

/// The AppArmor profile name the container runs with, or `None`
/// (unconfined), as containerd decides it (`generateApparmorSpecOpts`):
///
/// - AppArmor off on the host: Unconfined, RuntimeDefault and nothing mean
///   unconfined (there is nothing to confine with); Localhost names a profile
///   that cannot exist, and is refused.
/// - AppArmor on: nothing or RuntimeDefault is the runtime's default profile
///   (`options.apparmor_default_profile`, which the caller loads), except
///   for a privileged container; Localhost is the named profile (the caller
///   checks that it is loaded), also for a privileged one; Unconfined is
///   unconfined.
pub(crate) fn apparmor_profile(
    sc: Option<&LinuxContainerSecurityContext>,
    host: &HostFacts,
    options: &RuntimeOptions,
) -> Result<Option<String>, SpecError> {
    let Some(sc) = sc else {
        return if host.apparmor {
            default_profile(options).map(Some)
        } else {
            Ok(None)
        };
    };
    let requested: Option<(ProfileType, String)> = match &sc.apparmor {
        Some(p) => {
            let typ = ProfileType::try_from(p.profile_type).map_err(|_| {
                SpecError::field(
                    "linux.security_context.apparmor.profile_type",
                    format!("unknown profile type {}", p.profile_type),
                )
            })?;
            if typ != ProfileType::Localhost && !p.localhost_ref.is_empty() {
                return Err(SpecError::field(
                    "linux.security_context.apparmor.localhost_ref",
                    "localhost_ref may only be set with profile type Localhost",
                ));
            }
            Some((typ, p.localhost_ref.clone()))
        }
        None => {
            #[allow(deprecated)]
            let name = sc.apparmor_profile.as_str();
            match name {
                "" => None,
                "unconfined" => Some((ProfileType::Unconfined, String::new())),
                "runtime/default" => Some((ProfileType::RuntimeDefault, String::new())),
                n => match n.strip_prefix("localhost/") {
                    Some(p) => Some((ProfileType::Localhost, p.to_string())),
                    None => {
                        return Err(SpecError::field(
                            "linux.security_context.apparmor_profile",
                            format!(
                                "{n:?} is not a profile (expected runtime/default, unconfined or localhost/<name>)"
                            ),
                        ));
                    }
                },
            }
        }
    };
    let Some((typ, name)) = requested else {
        if host.apparmor && !sc.privileged {
            return default_profile(options).map(Some);
        }
        return Ok(None);
    };
    match typ {
        ProfileType::Unconfined => Ok(None),
        ProfileType::Localhost => {
            if name.is_empty() {
                return Err(SpecError::field(
                    "linux.security_context.apparmor.localhost_ref",
                    "profile type Localhost needs the profile's name",
                ));
            }
            if !host.apparmor {
                return Err(SpecError::Unsupported(format!(
                    "the container requires AppArmor profile localhost/{name} but AppArmor is not enabled on this host; refusing to run it unconfined"
                )));
            }
            Ok(Some(name))
        }
        _ if !host.apparmor || sc.privileged => Ok(None),
        _ => default_profile(options).map(Some),
    }
}

fn default_profile(options: &RuntimeOptions) -> Result<String, SpecError> {
    options.apparmor_default_profile.clone().ok_or_else(|| {
        SpecError::Unsupported(
            "the container requires the RuntimeDefault AppArmor profile but berth has none loaded"
                .to_string(),
        )
    })
}

/// Checks the SELinux options. Without SELinux on the host they are ignored,
/// as containerd and CRI-O do (a label is a property of a labelled system,
/// not a confinement the container can lose); with SELinux they are refused,
/// because berth does not label containers yet.
pub(crate) fn check_selinux(
    sc: Option<&LinuxContainerSecurityContext>,
    host: &HostFacts,
) -> Result<(), SpecError> {
    let Some(opts) = sc.and_then(|sc| sc.selinux_options.as_ref()) else {
        return Ok(());
    };
    let set = !(opts.user.is_empty()
        && opts.role.is_empty()
        && opts.r#type.is_empty()
        && opts.level.is_empty());
    if set && host.selinux {
        return Err(SpecError::Unsupported(
            "the container asks for SELinux labels, which berth does not apply yet".to_string(),
        ));
    }
    Ok(())
}
