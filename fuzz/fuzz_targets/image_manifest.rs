//! Manifests and indexes from a registry (both media types and none), the
//! platform choice over an index, an image config's rootfs, and image
//! references as a kubelet sends them.
#![no_main]

use berth::image::{manifest, reference};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    if let Ok(manifest::Parsed::Index(m)) = manifest::parse(body, TYPES[sel as usize % TYPES.len()])
    {
        let _ = manifest::select_platform(&m);
    }
    if let Ok(c) = serde_json::from_slice::<manifest::ImageConfigBlob>(body) {
        let ids = manifest::chain_ids(&c.rootfs.diff_ids);
        assert_eq!(ids.len(), c.rootfs.diff_ids.len());
    }
    if let Ok(s) = std::str::from_utf8(body)
        && let Ok(r) = reference::normalize(s)
    {
        // A normalized reference normalizes to itself.
        let again = reference::normalize(&r.to_string())
            .unwrap_or_else(|e| panic!("{s:?} -> {r} does not parse again: {e}"));
        assert_eq!(again, r, "{s:?}");
    }
});
