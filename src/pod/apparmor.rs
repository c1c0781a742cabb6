//! AppArmor on the host: whether it is enabled, which profiles are loaded,
//! and berth's default profile (RuntimeDefault), generated and loaded with
//! `apparmor_parser` the first time a container needs it, as containerd
//! does with its `cri-containerd.apparmor.d` (`pkg/apparmor`,
//! `contrib/apparmor`). The spec names the profile; the runtime applies it
//! (`runtime/apparmor.rs`).

use std::sync::OnceLock;

use super::{PodError, Result};

/// The name of berth's RuntimeDefault profile.
pub(crate) const DEFAULT_PROFILE: &str = "berth-default";

const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// Whether AppArmor is enabled on the host (runc's `apparmor.IsEnabled`:
/// the module parameter reads "Y"), probed once.
pub(crate) fn host_enabled() -> bool {
    static ENABLED_ONCE: OnceLock<bool> = OnceLock::new();
    *ENABLED_ONCE.get_or_init(|| {
        // As containerd's (and runc's) probe: the kernel has it on, its
        // securityfs is there and `apparmor_parser` is installed. A Debian
        // node whose kernel enables AppArmor but lacks the apparmor package
        // runs unconfined, as under containerd.
        let kernel = std::fs::read_to_string(ENABLED).is_ok_and(|s| enabled_value(&s));
        let securityfs = std::path::Path::new("/sys/kernel/security/apparmor").exists();
        let parser = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        let on = kernel && securityfs && parser;
        tracing::info!(
            apparmor = on,
            kernel,
            securityfs,
            parser,
            "AppArmor probed ({ENABLED}, /sys/kernel/security/apparmor, apparmor_parser)"
        );
        on
    })
}

fn enabled_value(s: &str) -> bool {
    s.starts_with('Y')
}

/// The names in the kernel's list of loaded profiles (lines `name (mode)`).
fn parse_profiles(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_end();
            match l.rfind(" (") {
                Some(i) if l.ends_with(')') => Some(&l[..i]),
                _ if !l.is_empty() => Some(l),
                _ => None,
            }
        })
        .collect()
}

/// Whether profile `name` is loaded.
pub(crate) fn profile_loaded(name: &str) -> Result<bool> {
    let text = std::fs::read_to_string(PROFILES)
        .map_err(|e| PodError::io(format!("read {PROFILES}"), e))?;
    Ok(parse_profiles(&text).contains(&name))
}

/// berth's default profile, docker's and containerd's default template:
/// everything a container normally does, minus mounts, raw /proc and /sys
/// writes, ptrace of processes outside the profile.
pub(crate) fn default_profile_text(name: &str) -> String {
    format!(
        r#"#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  # Host (privileged) processes may send signals to container processes.
  signal (receive) peer=unconfined,
  # Container processes may send signals amongst themselves.
  signal (send,receive) peer={name},

  deny @{{PROC}}/* w,   # deny write for all files directly in /proc (not in a subdir)
  # deny write to files not in /proc/<number>/** or /proc/sys/**
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,  # deny /proc/sys except /proc/sys/k* (effectively /proc/sys/kernel)
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,  # deny everything except shm* in /proc/sys/kernel/
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  # suppress ptrace denials when using 'docker ps' or using 'ps' inside a container
  ptrace (trace,read,tracedby,readby) peer={name},
}}
"#
    )
}

/// Loads berth's default profile unless it is loaded already.
pub(crate) fn ensure_default_profile() -> Result<()> {
    static LOADED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut loaded = LOADED.lock().expect("apparmor lock");
    if *loaded || profile_loaded(DEFAULT_PROFILE)? {
        *loaded = true;
        return Ok(());
    }
    use std::io::Write as _;
    let mut child = std::process::Command::new("apparmor_parser")
        .arg("-Kr")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PodError::io("run apparmor_parser (package apparmor)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(default_profile_text(DEFAULT_PROFILE).as_bytes())
            .map_err(|e| PodError::io("write the profile to apparmor_parser", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| PodError::io("wait for apparmor_parser", e))?;
    if !out.status.success() {
        return Err(PodError::FailedPrecondition(format!(
            "apparmor_parser could not load {DEFAULT_PROFILE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tracing::info!(profile = DEFAULT_PROFILE, "AppArmor default profile loaded");
    *loaded = true;
    Ok(())
}

/// Checks that the profile a container's spec names is loaded (loading
/// berth's default one if that is it): a Localhost profile that is not
/// loaded is the request's error, as in containerd.
pub(crate) fn check_spec_profile(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(name) = spec
        .process()
        .as_ref()
        .and_then(|p| p.apparmor_profile().as_deref())
    else {
        return Ok(());
    };
    if name == DEFAULT_PROFILE {
        return ensure_default_profile();
    }
    if !profile_loaded(name)? {
        return Err(PodError::InvalidArgument(format!(
            "AppArmor profile {name:?} is not loaded (not in {PROFILES}); load it on the node first"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_parameter() {
        assert!(enabled_value("Y\n"));
        assert!(!enabled_value("N\n"));
        assert!(!enabled_value(""));
    }

    #[test]
    fn loaded_profile_list() {
        let text = "berth-default (enforce)\n/usr/bin/man (enforce)\nk8s apparmor example (complain)\nnvidia_modprobe//kmod (enforce)\n\n";
        assert_eq!(
            parse_profiles(text),
            [
                "berth-default",
                "/usr/bin/man",
                "k8s apparmor example",
                "nvidia_modprobe//kmod"
            ]
        );
    }

    #[test]
    fn default_profile_names_itself_and_denies_mounts() {
        let p = default_profile_text("berth-default");
        assert!(p.contains("profile berth-default flags=(attach_disconnected,mediate_deleted) {"));
        assert!(p.contains("signal (send,receive) peer=berth-default,"));
        assert!(p.contains("deny mount,"));
        assert!(p.contains("deny @{PROC}/sysrq-trigger rwklx,"));
        assert_eq!(p.matches('{').count(), p.matches('}').count());
    }

    #[test]
    fn this_host_probe_is_consistent() {
        // The probe agrees with the module parameter, whatever the host.
        let expect = std::fs::read_to_string(ENABLED).is_ok_and(|s| s.starts_with('Y'));
        assert_eq!(host_enabled(), expect);
        if !expect {
            println!("note: AppArmor is off here; the enabled path is unit-tested only");
        }
    }
}
