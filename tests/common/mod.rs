//! Shared helpers of the integration tests (a module per topic).
#![allow(dead_code)]

pub mod berthd;
pub mod cgroupfs;
pub mod containerd_cri;
pub mod cri_bench;
pub mod cri_images;
pub mod cri_pods;
pub mod gate_proxy;
pub mod local_backend;
pub mod netns;
pub mod oci_image;
pub mod prom_text;
pub mod registry;
pub mod spdy_client;
pub mod stream_checks;
pub mod ws_client;

/// A unique, short tag for temp names: helper area, test pid and a counter.
pub fn unique_tag(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "berth-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
