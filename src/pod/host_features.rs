//! What the kernel offers for user namespaces and mounts, probed once per
//! berthd (on the filesystem of berthd's root, where the image layers and
//! pod files live) and reported in CRI Status as runtime handler features.

use std::path::Path;
use std::sync::OnceLock;

use crate::runtime::idmap;

/// The probed features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFeatures {
    /// A user namespace can be made and a mount idmapped with it.
    pub user_namespaces: bool,
    /// mount_setattr MOUNT_ATTR_RDONLY with AT_RECURSIVE works.
    pub recursive_read_only: bool,
}

static FEATURES: OnceLock<HostFeatures> = OnceLock::new();

/// The features, probed on first use in `dir` (created if missing).
pub fn host_features(dir: &Path) -> HostFeatures {
    *FEATURES.get_or_init(|| {
        let _ = std::fs::create_dir_all(dir);
        let user_namespaces = match idmap::probe_idmapped_mounts(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no user-namespaced pods: idmapped mount probe failed");
                false
            }
        };
        let recursive_read_only = match idmap::probe_recursive_readonly(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no recursive read-only mounts: probe failed");
                false
            }
        };
        tracing::info!(user_namespaces, recursive_read_only, "kernel features probed");
        HostFeatures {
            user_namespaces,
            recursive_read_only,
        }
    })
}
