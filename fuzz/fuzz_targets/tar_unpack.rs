//! A layer tarball from a registry, unpacked into an empty directory with
//! a small byte cap. Afterwards nothing may exist outside that directory
//! (a sibling canary directory stays empty).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    let _ = berth::image::unpack::unpack(data, &root, "sha256:fuzz", 1 << 20);
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside.len(),
        2,
        "unpack wrote beside its root: {outside:?}"
    );
    assert_eq!(
        std::fs::read_dir(&canary).unwrap().count(),
        0,
        "unpack wrote into a sibling directory"
    );
});
