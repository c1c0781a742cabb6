//! CDI container edits applied to a generated spec.

use oci_spec::runtime::LinuxDeviceType;

use super::Fixture;
use crate::spec::{CdiDeviceNode, CdiEdits, CdiMount, apply_cdi_edits};

fn edits() -> CdiEdits {
    CdiEdits {
        env: vec!["IMG=from-cdi".into(), "GPU=0".into()],
        device_nodes: vec![
            CdiDeviceNode::test_vgpu0(),
            CdiDeviceNode {
                path: "/dev/vpipe".into(),
                typ: "p".into(),
                permissions: "rwm".into(),
                ..Default::default()
            },
        ],
        mounts: vec![CdiMount {
            host_path: "/usr/lib/vendor".into(),
            container_path: "/usr/lib/vendor".into(),
            typ: "bind".into(),
            options: vec!["ro".into(), "rbind".into()],
        }],
        additional_gids: vec![44, 0],
    }
}

#[test]
fn edits_add_env_devices_rules_mounts_and_groups() {
    let mut spec = Fixture::new().build().unwrap();
    let rules_before = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_ref())
        .map_or(0, |d| d.len());
    apply_cdi_edits(&mut spec, &edits()).unwrap();
    let process = spec.process().as_ref().unwrap();
    let env = process.env().as_ref().unwrap();
    assert!(env.contains(&"IMG=from-cdi".to_string()), "{env:?}");
    assert!(
        !env.contains(&"IMG=1".to_string()),
        "a CDI value replaces the image's"
    );
    assert!(env.contains(&"GPU=0".to_string()));
    let gids = process.user().additional_gids().as_ref().unwrap();
    assert!(gids.contains(&44), "{gids:?}");
    assert_eq!(
        gids.iter().filter(|g| **g == 0).count(),
        1,
        "no duplicate: {gids:?}"
    );

    let linux = spec.linux().as_ref().unwrap();
    let devices = linux.devices().as_ref().unwrap();
    let gpu = devices
        .iter()
        .find(|d| d.path().to_str() == Some("/dev/vgpu0"))
        .unwrap();
    assert_eq!(
        (gpu.typ(), gpu.major(), gpu.minor()),
        (LinuxDeviceType::C, 195, 0)
    );
    assert_eq!(gpu.file_mode(), Some(0o666));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert_eq!(rules.len(), rules_before + 1, "a FIFO needs no device rule");
    let last = rules.last().unwrap();
    assert!(last.allow());
    assert_eq!((last.major(), last.minor()), (Some(195), Some(0)));
    assert_eq!(last.access().as_deref(), Some("rw"));

    let mounts = spec.mounts().as_ref().unwrap();
    let m = mounts
        .iter()
        .find(|m| m.destination().to_str() == Some("/usr/lib/vendor"))
        .unwrap();
    assert_eq!(m.typ().as_deref(), Some("bind"));
    assert_eq!(m.options().as_ref().unwrap(), &["ro", "rbind"]);
}

#[test]
fn no_edits_change_nothing_and_bad_edits_are_refused() {
    let before = Fixture::new().build().unwrap();
    let mut spec = before.clone();
    apply_cdi_edits(&mut spec, &CdiEdits::default()).unwrap();
    assert_eq!(spec, before);
    let mut bad = edits();
    bad.device_nodes[0].typ = "x".into();
    assert!(apply_cdi_edits(&mut spec, &bad).is_err());
    let mut bad = edits();
    bad.mounts[0].container_path = "relative".into();
    assert!(apply_cdi_edits(&mut spec, &bad).is_err());
    let mut bad = edits();
    bad.env = vec!["=nameless".into()];
    assert!(apply_cdi_edits(&mut spec, &bad).is_err());
}
