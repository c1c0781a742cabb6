//! Table-driven tests of spec generation: one case per CRI field and per
//! image-config interplay. Every case starts from [`Fixture::new`] (a busybox-like
//! image and an ordinary pod), changes what it tests, and checks the spec.

mod capabilities;
mod cdi;
mod devices;
mod misc;
mod mounts;
mod namespaces;
mod pod_files;
mod process;
mod resources;
mod seccomp;
mod security;
mod user;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Spec};

use super::{
    ContainerSpecInput, DeviceKind, HostDevice, HostFacts, ImageInput, ImageVolume, PodFiles,
    PodNamespace, PodNamespaces, RuntimeOptions, SpecError, container_spec,
};

pub(super) const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
# a comment

broken line without fields
nobody:x:65534:65534:nobody:/home:/bin/false
app:x:1000:1000::/home/app:/bin/sh
";

pub(super) const GROUP: &str = "\
root:x:0:
daemon:x:1:
bin:x:2:root,daemon
wheel:x:10:root,app
video:x:44:app
staff:x:50:app,nobody
app:x:1000:app
nogroup:x:65534:
";

/// Everything a test can change before the spec is built.
pub(super) struct Fixture {
    pub config: ContainerConfig,
    pub sandbox: PodSandboxConfig,
    pub image: serde_json::Value,
    pub image_name: String,
    pub passwd: Option<String>,
    pub group: Option<String>,
    pub namespaces: PodNamespaces,
    pub pod_files: PodFiles,
    pub host: HostFacts,
    pub options: RuntimeOptions,
    pub target_pid: Option<PathBuf>,
    pub seccomp_profile: Option<String>,
    pub cgroups_path: Option<PathBuf>,
    pub image_volumes: Vec<ImageVolume>,
}

fn ns_opts() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

pub(super) fn host_device(path: &str, kind: DeviceKind, major: i64, minor: i64) -> HostDevice {
    HostDevice {
        path: PathBuf::from(path),
        kind,
        major,
        minor,
        file_mode: 0o20660,
        uid: 0,
        gid: 6,
    }
}

impl Fixture {
    pub fn new() -> Self {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "sha256:abcd".to_string(),
                ..Default::default()
            }),
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(ns_opts()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "pod-a".to_string(),
                uid: "uid-1".to_string(),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: "pod-a".to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod-uid-1".to_string(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_opts()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Fixture {
            config,
            sandbox,
            image: serde_json::json!({
                "Cmd": ["sh"],
                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "IMG=1"],
            }),
            image_name: "registry.test/busybox:1".to_string(),
            passwd: Some(PASSWD.to_string()),
            group: Some(GROUP.to_string()),
            namespaces: PodNamespaces {
                network: PodNamespace::Path("/run/berth/pods/p1/ns/net".into()),
                ipc: PodNamespace::Path("/run/berth/pods/p1/ns/ipc".into()),
                uts: PodNamespace::Path("/run/berth/pods/p1/ns/uts".into()),
                pid: None,
                user: None,
            },
            pod_files: PodFiles {
                hostname: Some("/run/berth/pods/p1/hostname".into()),
                hosts: Some("/run/berth/pods/p1/hosts".into()),
                resolv_conf: Some("/run/berth/pods/p1/resolv.conf".into()),
                shm: Some("/run/berth/pods/p1/shm".into()),
            },
            host: HostFacts {
                hostname: "node-1".to_string(),
                hugetlb: true,
                swap_accounting: true,
                devices: vec![
                    host_device("/dev/fuse", DeviceKind::Char, 10, 229),
                    host_device("/dev/sda", DeviceKind::Block, 8, 0),
                    host_device("/dev/dri/card0", DeviceKind::Char, 226, 0),
                    host_device("/dev/dri/renderD128", DeviceKind::Char, 226, 128),
                ],
                ..Default::default()
            },
            options: RuntimeOptions::default(),
            target_pid: None,
            seccomp_profile: None,
            cgroups_path: Some("/kubepods/pod-uid-1/c1".into()),
            image_volumes: Vec::new(),
        }
    }

    /// The container's security context (created if absent).
    pub fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    /// The pod's security context (created if absent).
    pub fn pod_sc(&mut self) -> &mut LinuxSandboxSecurityContext {
        self.sandbox
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    /// The container's resources (created if absent).
    pub fn resources(&mut self) -> &mut k8s_cri::v1::LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    /// Sets a field of the image config.
    pub fn image_set(&mut self, key: &str, value: serde_json::Value) {
        self.image[key] = value;
    }

    pub fn build(&self) -> Result<Spec, SpecError> {
        let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": self.image,
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .expect("test image config parses");
        let rootfs = PathBuf::from("/var/lib/berth/c1/rootfs");
        container_spec(&ContainerSpecInput {
            container_id: "c1",
            sandbox_id: "p1",
            config: &self.config,
            sandbox_config: &self.sandbox,
            image: ImageInput {
                config: &image,
                name: &self.image_name,
                passwd: self.passwd.as_deref(),
                group: self.group.as_deref(),
            },
            rootfs: &rootfs,
            cgroups_path: self.cgroups_path.as_deref(),
            namespaces: &self.namespaces,
            target_pid_namespace: self.target_pid.as_deref(),
            pod_files: &self.pod_files,
            image_volumes: &self.image_volumes,
            seccomp_localhost_profile: self.seccomp_profile.as_deref(),
            host: &self.host,
            options: &self.options,
        })
    }
}

/// What a case expects.
pub(super) enum Expect {
    /// The spec builds and passes this check.
    Spec(fn(&Spec)),
    /// Building fails with an error whose message contains this text.
    Err(&'static str),
}

/// One table row.
pub(super) struct Case {
    pub name: &'static str,
    pub setup: fn(&mut Fixture),
    pub expect: Expect,
}

/// Runs every case and fails with the names (and messages) of those that failed.
pub(super) fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut f = Fixture::new();
            (case.setup)(&mut f);
            match (&case.expect, f.build()) {
                (Expect::Spec(check), Ok(spec)) => check(&spec),
                (Expect::Spec(_), Err(e)) => panic!("expected a spec, got error: {e}"),
                (Expect::Err(want), Ok(_)) => {
                    panic!("expected an error containing {want:?}, got a spec")
                }
                (Expect::Err(want), Err(e)) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(want),
                        "error {msg:?} does not contain {want:?}"
                    );
                }
            }
        }));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// Accessors for checks.

pub(super) fn args(s: &Spec) -> Vec<String> {
    s.process().as_ref().unwrap().args().clone().unwrap()
}

pub(super) fn env(s: &Spec) -> Vec<String> {
    s.process().as_ref().unwrap().env().clone().unwrap()
}

pub(super) fn user(s: &Spec) -> (u32, u32, Vec<u32>) {
    let u = s.process().as_ref().unwrap().user();
    (
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
    )
}

pub(super) fn caps(s: &Spec) -> oci_spec::runtime::LinuxCapabilities {
    s.process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap()
}

pub(super) fn bounding(s: &Spec) -> HashSet<Capability> {
    caps(s).bounding().clone().unwrap()
}

pub(super) fn mounts(s: &Spec) -> &Vec<Mount> {
    s.mounts().as_ref().unwrap()
}

pub(super) fn mount<'s>(s: &'s Spec, dest: &str) -> Option<&'s Mount> {
    mounts(s)
        .iter()
        .find(|m| m.destination().to_string_lossy() == dest)
}

pub(super) fn options(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

pub(super) fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
    s.linux().as_ref().unwrap()
}

pub(super) fn namespace(s: &Spec, typ: LinuxNamespaceType) -> Option<Option<String>> {
    linux(s)
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .find(|n| n.typ() == typ)
        .map(|n| n.path().as_ref().map(|p| p.to_string_lossy().into_owned()))
}

pub(super) fn syscall_names(s: &oci_spec::runtime::LinuxSeccomp) -> HashSet<String> {
    s.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
        .filter(|r| r.args().as_ref().is_none_or(|a| a.is_empty()))
        .flat_map(|r| r.names().clone())
        .collect()
}
