use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

const VENDOR_JSON: &str = r#"{
  "cdiVersion": "0.6.0",
  "kind": "vendor.example/gpu",
  "containerEdits": {"env": ["VENDOR_DRIVER=1"]},
  "devices": [
    {"name": "gpu0", "containerEdits": {
      "env": ["GPU=0", "VENDOR_DRIVER=2"],
      "deviceNodes": [{"path": "/dev/vgpu0", "type": "c", "major": 195, "minor": 0, "fileMode": 438, "permissions": "rw"}],
      "mounts": [{"hostPath": "/usr/lib/vendor", "containerPath": "/usr/lib/vendor", "options": ["ro", "rbind"]}]
    }},
    {"name": "gpu1", "containerEdits": {"deviceNodes": [{"path": "/dev/vgpu1", "type": "c", "major": 195, "minor": 1}]}}
  ]
}"#;

const VENDOR_YAML: &str = "cdiVersion: 0.5.0\nkind: vendor.example/nic\ndevices:\n  - name: nic0\n    containerEdits:\n      env:\n        - NIC=0\n      additionalGids: [44]\n";

#[test]
fn json_and_yaml_specs_resolve_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    write(&etc, "gpu.json", VENDOR_JSON);
    write(&etc, "nic.yaml", VENDOR_YAML);
    write(&etc, "ignored.txt", "not a spec");
    let reg = CdiRegistry::load(&[etc, dir.path().join("missing")]);
    assert_eq!(
        reg.device_names(),
        [
            "vendor.example/gpu=gpu0",
            "vendor.example/gpu=gpu1",
            "vendor.example/nic=nic0"
        ]
    );
    let e = reg
        .resolve(&[
            "vendor.example/gpu=gpu0".into(),
            "vendor.example/gpu=gpu1".into(),
            "vendor.example/nic=nic0".into(),
        ])
        .unwrap();
    // The spec-wide env once, then each device's.
    assert_eq!(
        e.env,
        ["VENDOR_DRIVER=1", "GPU=0", "VENDOR_DRIVER=2", "NIC=0"]
    );
    assert_eq!(e.additional_gids, [44]);
    assert_eq!(e.device_nodes.len(), 2);
    assert_eq!(e.device_nodes[0], CdiDeviceNode::test_vgpu0());
    // A node with type and major needs no host node (/dev/vgpu1 is absent).
    assert_eq!(e.device_nodes[1].permissions, "rwm");
    assert_eq!(e.device_nodes[1].file_mode, None);
    assert_eq!(e.mounts[0].typ, "bind");
}

#[test]
fn missing_info_comes_from_the_host_node() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "null.json",
        r#"{"cdiVersion":"0.6.0","kind":"test.berth/null","devices":[{"name":"n","containerEdits":{"deviceNodes":[{"path":"/dev/berth-null","hostPath":"/dev/null"}]}}]}"#,
    );
    let reg = CdiRegistry::load(&[dir.path().to_path_buf()]);
    let e = reg.resolve(&["test.berth/null=n".into()]).unwrap();
    let n = &e.device_nodes[0];
    assert_eq!((n.typ.as_str(), n.major, n.minor), ("c", 1, 3));
    assert_eq!(n.path, "/dev/berth-null");
    assert_eq!(n.file_mode, Some(0o666));
}

#[test]
fn unknown_bad_conflicting_and_hooked_devices_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write(&a, "one.json", VENDOR_JSON);
    write(&a, "two.json", VENDOR_JSON);
    write(
        &a,
        "hook.json",
        r#"{"cdiVersion":"0.6.0","kind":"hook.example/x","devices":[{"name":"h","containerEdits":{"hooks":[{"hookName":"createContainer","path":"/bin/true"}]}}]}"#,
    );
    write(&a, "broken.json", "{ not json");
    let reg = CdiRegistry::load(std::slice::from_ref(&a));
    let err = reg
        .resolve(&["vendor.example/gpu=gpu0".into()])
        .unwrap_err();
    assert!(matches!(err, CdiError::Conflict { .. }), "{err}");
    let err = reg
        .resolve(&["vendor.example/gpu=gpu9".into()])
        .unwrap_err();
    assert!(matches!(err, CdiError::Unknown { .. }), "{err}");
    assert!(err.to_string().contains("broken.json"), "{err}");
    let err = reg.resolve(&["gpu0".into()]).unwrap_err();
    assert!(matches!(err, CdiError::BadName(_)), "{err}");
    let err = reg.resolve(&["hook.example/x=h".into()]).unwrap_err();
    assert!(err.to_string().contains("hooks"), "{err}");

    // A later directory overrides both conflicting definitions.
    write(
        &b,
        "gpu.json",
        &VENDOR_JSON.replace("GPU=0", "GPU=override"),
    );
    let reg = CdiRegistry::load(&[a, b]);
    let e = reg.resolve(&["vendor.example/gpu=gpu0".into()]).unwrap();
    assert!(e.env.contains(&"GPU=override".to_string()), "{e:?}");
}

#[test]
fn requested_from_field_and_annotations() {
    let ann = HashMap::from([
        ("cdi.k8s.io/b".to_string(), "v.io/c=2, v.io/c=1".to_string()),
        ("cdi.k8s.io/a".to_string(), "v.io/c=3".to_string()),
        ("other".to_string(), "v.io/c=9".to_string()),
    ]);
    assert_eq!(
        requested_devices(&["v.io/c=1".to_string()], &ann),
        ["v.io/c=1", "v.io/c=3", "v.io/c=2"]
    );
    let _ = PathBuf::new();
}
