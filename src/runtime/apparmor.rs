//! Applying an AppArmor profile to the container's process: the profile is
//! set for the next exec (`/proc/thread-self/attr/apparmor/exec`, or the
//! pre-5.1 `attr/exec` where the LSM-specific file is missing), as runc's
//! `apparmor.ApplyProfile` does. Runs in the container's set-up, after the
//! container's /proc is mounted and before the exec.

use std::io::Write as _;

/// The files that set the profile of the next exec, in the order tried.
const EXEC_ATTR: [&str; 2] = [
    "/proc/thread-self/attr/apparmor/exec",
    "/proc/thread-self/attr/exec",
];

/// What is written to the attr file.
fn exec_command(profile: &str) -> String {
    format!("exec {profile}")
}

/// Confines the next exec of this thread with `profile`.
pub(crate) fn change_on_exec(profile: &str) -> Result<(), String> {
    let command = exec_command(profile);
    let mut last = String::new();
    for path in EXEC_ATTR {
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(mut f) => {
                return f
                    .write_all(command.as_bytes())
                    .map_err(|e| format!("set AppArmor profile {profile:?} ({path}): {e}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = format!("{path}: {e}");
            }
            Err(e) => return Err(format!("set AppArmor profile {profile:?} ({path}): {e}")),
        }
    }
    Err(format!(
        "set AppArmor profile {profile:?}: the kernel has no AppArmor exec attribute ({last})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_attribute_command() {
        assert_eq!(exec_command("berth-default"), "exec berth-default");
    }

    #[test]
    fn without_apparmor_applying_a_profile_fails_with_its_name() {
        let on = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.starts_with('Y'));
        if on {
            println!("skipped: AppArmor is enabled here (this case checks the error without it)");
            return;
        }
        let err = change_on_exec("berth-test-nonexistent").unwrap_err();
        assert!(err.contains("berth-test-nonexistent"), "{err}");
    }
}
