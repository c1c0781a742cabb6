//! systemd as pid 1: its D-Bus API for transient units (scopes and slices,
//! used for the shims' own scopes and by the systemd cgroup driver) and the
//! `sd_notify` protocol berthd speaks as a `Type=notify` service.
//!
//! One place for both, so that every user of systemd (berthd, the shim, the
//! cgroup driver) shares one client and one error type.

pub mod dbus;
pub mod notify;

use std::path::Path;

/// Errors of talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd D-Bus {call}: {source}")]
    Dbus {
        call: String,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd job for {unit} ended with {result}")]
    Job { unit: String, result: String },
    #[error("systemd job for {unit} did not finish within {secs} s")]
    Timeout { unit: String, secs: u64 },
    #[error("sd_notify to {socket}: {source}")]
    Notify {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, SystemdError>;

/// Whether the system was booted with systemd as its init (the test
/// `sd_booted(3)` makes: `/run/systemd/system` exists).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A valid unit-name part made of `id` (systemd allows `[A-Za-z0-9:_.\\-]`;
/// anything else becomes `_`), as runc does for its scope names.
pub fn unit_name_part(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::unit_name_part;

    #[test]
    fn unit_name_parts_keep_only_allowed_characters() {
        assert_eq!(unit_name_part("abc-12_3.x:y"), "abc-12_3.x:y");
        assert_eq!(unit_name_part("a/b c@d"), "a_b_c_d");
    }
}
