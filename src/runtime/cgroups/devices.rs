//! v1 device access rules (devices.allow / devices.deny), as runc sets them:
//! deny everything, then the spec's rules in order, then the devices every
//! container gets.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgroupError, Result};

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

/// Devices every container may use whatever its spec says (runc's
/// AllowedDevices): mknod of anything, /dev/null, zero, full, random,
/// urandom, tty, the pty master and slaves.
const DEFAULT_ALLOWED: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// The full rule list for a container: deny all, `spec` in order, defaults.
pub(crate) fn v1_rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>> {
    let mut rules = vec![DeviceRule {
        allow: false,
        rule: "a".into(),
    }];
    for d in spec {
        rules.push(DeviceRule {
            allow: d.allow(),
            rule: rule_text(d)?,
        });
    }
    rules.extend(DEFAULT_ALLOWED.iter().map(|r| DeviceRule {
        allow: true,
        rule: (*r).to_owned(),
    }));
    Ok(rules)
}

fn rule_text(d: &LinuxDeviceCgroup) -> Result<String> {
    let typ = d.typ().unwrap_or(LinuxDeviceType::A);
    let access = d.access().as_deref().unwrap_or("rwm");
    if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidResources(format!(
            "invalid device access {access:?} (want a combination of r, w, m)"
        )));
    }
    let num = |n: Option<i64>| -> Result<String> {
        match n {
            None | Some(-1) => Ok("*".into()),
            Some(n) if n >= 0 => Ok(n.to_string()),
            Some(n) => Err(CgroupError::InvalidResources(format!(
                "invalid device number {n}"
            ))),
        }
    };
    let (major, minor) = (num(d.major())?, num(d.minor())?);
    let typ = match typ {
        LinuxDeviceType::A => return Ok(format!("a *:* {access}")),
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => {
            return Err(CgroupError::InvalidResources(
                "device rules cannot name fifos (type p)".into(),
            ));
        }
    };
    Ok(format!("{typ} {major}:{minor} {access}"))
}
