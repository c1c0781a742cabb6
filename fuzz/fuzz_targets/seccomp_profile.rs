//! A seccomp profile (Docker or OCI JSON, from the node's profile root or a
//! localhost profile) parsed for a container, then validated and compiled to
//! BPF by libseccomp as the runtime does (nothing is installed).
#![no_main]

use std::collections::HashSet;

use berth::spec::seccomp::{native_arch, parse_seccomp_profile};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Capability;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let bounding: HashSet<Capability> = [Capability::Chown, Capability::NetBindService].into();
    let Ok(profile) = parse_seccomp_profile(json, &bounding, native_arch(), Some((6, 1))) else {
        return;
    };
    if berth::runtime::seccomp::validate(&profile).is_ok() {
        let _ = berth::runtime::seccomp::prepare(&profile);
    }
});
