//! berth: a container runtime service for Kubernetes.
//!
//! The library holds every subsystem of berthd and the in-process runtime the
//! shim uses. The arrows point one way: `cri → spec, image, network, store →
//! runtime`; `runtime` knows nothing of CRI, gRPC or images. Built with
//! `default-features = false` (as the shim does) only [`runtime`] is compiled.

pub mod attach_wire;
pub mod runtime;

#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod cri;
#[cfg(feature = "daemon")]
pub mod image;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod network;
#[cfg(feature = "daemon")]
pub mod pod;
#[cfg(feature = "daemon")]
pub mod sd_notify;
#[cfg(feature = "daemon")]
pub mod spec;
#[cfg(feature = "daemon")]
pub mod store;
#[cfg(feature = "daemon")]
pub mod stream;

/// The version every binary of the project reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binaries were built from (`build.rs`: the
/// `BERTH_GIT_COMMIT` environment variable, else `git rev-parse HEAD`,
/// else "unknown").
pub const GIT_COMMIT: &str = env!("BERTH_GIT_COMMIT");

/// `<version> (commit <hash>)`, what `--version` prints after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BERTH_GIT_COMMIT"),
    ")"
);
