//! What this runtime implements, as an OCI features document
//! (runtime-spec `features.md`, the output format of `runc features`).
//! The shim hands it to containerd in its `-info` answer; containerd 2.x
//! reads user-namespace support from `linux.namespaces` +
//! `linux.mountExtensions.idmap` and recursive read-only mounts from `rro`
//! in `mountOptions`.
//!
//! As the spec says, the document states what the runtime supports, not
//! what the host kernel offers: containerd probes the kernel itself (and
//! berthd's CRI Status reports its own probes, `pod/host_features.rs`).

use oci_spec::runtime::{
    Arch, Features, FeaturesBuilder, IDMapBuilder, LinuxFeatureBuilder, LinuxSeccompAction,
    MountExtensionsBuilder,
};

use super::mount_options;
use super::namespaces;

/// The OCI runtime spec versions the runtime reads.
pub const OCI_VERSION_MIN: &str = "1.0.0";
pub const OCI_VERSION_MAX: &str = "1.2.0";

/// Seccomp actions the runtime compiles (notify has no listener: refused).
const SECCOMP_ACTIONS: &[LinuxSeccompAction] = &[
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

const SECCOMP_ARCHS: &[Arch] = &[
    Arch::ScmpArchAarch64,
    Arch::ScmpArchArm,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchRiscv64,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchX32,
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
];

const SECCOMP_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The features document of this runtime.
pub fn features() -> Features {
    let mut capabilities: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    capabilities.sort();
    let mut mount_options: Vec<String> = strings(mount_options::KNOWN);
    mount_options.sort();
    let linux = LinuxFeatureBuilder::default()
        .namespaces(namespaces::JOIN_ORDER.to_vec())
        .capabilities(capabilities)
        .cgroup(
            oci_spec::runtime::CgroupBuilder::default()
                .v1(true)
                .v2(true)
                .systemd(false)
                .systemd_user(false)
                .rdma(false)
                .build()
                .expect("cgroup features"),
        )
        .seccomp(
            oci_spec::runtime::SeccompBuilder::default()
                .enabled(true)
                .actions(SECCOMP_ACTIONS.to_vec())
                .operators(strings(SECCOMP_OPERATORS))
                .archs(SECCOMP_ARCHS.to_vec())
                .known_flags(strings(SECCOMP_FLAGS))
                .supported_flags(strings(SECCOMP_FLAGS))
                .build()
                .expect("seccomp features"),
        )
        .apparmor(
            oci_spec::runtime::ApparmorBuilder::default()
                .enabled(false)
                .build()
                .expect("apparmor features"),
        )
        .selinux(
            oci_spec::runtime::SelinuxBuilder::default()
                .enabled(false)
                .build()
                .expect("selinux features"),
        )
        .mount_extensions(
            MountExtensionsBuilder::default()
                .idmap(
                    IDMapBuilder::default()
                        .enabled(true)
                        .build()
                        .expect("idmap features"),
                )
                .build()
                .expect("mount extensions"),
        )
        .build()
        .expect("linux features");
    FeaturesBuilder::default()
        .oci_version_min(OCI_VERSION_MIN)
        .oci_version_max(OCI_VERSION_MAX)
        // OCI hooks are not implemented (create.rs warns and ignores them).
        .hooks(Vec::<String>::new())
        .mount_options(mount_options)
        .linux(linux)
        .annotations(
            [(
                "io.github.berth.version".to_string(),
                crate::VERSION.to_string(),
            )]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .expect("features")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_the_fields_containerd_reads() {
        let json = serde_json::to_value(features()).unwrap();
        assert_eq!(json["ociVersionMin"], "1.0.0");
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], true);
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        for n in [
            "user", "mount", "network", "pid", "ipc", "uts", "cgroup", "time",
        ] {
            assert!(ns.contains(&n.into()), "namespace {n} missing: {ns:?}");
        }
        let opts = json["mountOptions"].as_array().unwrap();
        for o in ["rro", "rbind", "rshared", "ro", "nosuid"] {
            assert!(opts.contains(&o.into()), "mount option {o} missing");
        }
        let caps = json["linux"]["capabilities"].as_array().unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".into()));
        assert_eq!(json["linux"]["seccomp"]["enabled"], true);
        assert!(
            !json["linux"]["seccomp"]["actions"]
                .as_array()
                .unwrap()
                .contains(&"SCMP_ACT_NOTIFY".into())
        );
    }
}
