//! AppArmor and SELinux: berth's hosts have neither, so a container that
//! requires a profile is refused instead of silently running unconfined.

use k8s_cri::v1::{LinuxContainerSecurityContext, security_profile::ProfileType};

use super::SpecError;
use super::input::{HostFacts, RuntimeOptions};

/// The AppArmor profile name the container runs with, or `None`.
///
/// Unconfined (or nothing) needs no AppArmor. RuntimeDefault and Localhost
/// need AppArmor on the host: without it they are refused (as containerd does,
/// "apparmor is not supported"). A privileged container runs unconfined.
pub(crate) fn apparmor_profile(
    sc: Option<&LinuxContainerSecurityContext>,
    host: &HostFacts,
    options: &RuntimeOptions,
) -> Result<Option<String>, SpecError> {
    let Some(sc) = sc else { return Ok(None) };
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
        return Ok(None);
    };
    if typ == ProfileType::Unconfined {
        return Ok(None);
    }
    if !host.apparmor {
        return Err(SpecError::Unsupported(format!(
            "the container requires AppArmor profile {} but AppArmor is not enabled on this host; refusing to run it unconfined",
            if typ == ProfileType::Localhost {
                format!("localhost/{name}")
            } else {
                typ.as_str_name().to_string()
            }
        )));
    }
    if sc.privileged {
        return Ok(None);
    }
    match typ {
        ProfileType::Localhost => {
            if name.is_empty() {
                return Err(SpecError::field(
                    "linux.security_context.apparmor.localhost_ref",
                    "profile type Localhost needs the profile's name",
                ));
            }
            Ok(Some(name))
        }
        _ => match &options.apparmor_default_profile {
            Some(p) => Ok(Some(p.clone())),
            None => Err(SpecError::Unsupported(
                "the container requires the RuntimeDefault AppArmor profile but berth has none configured"
                    .to_string(),
            )),
        },
    }
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
