//! The runtime's container record in the bundle, so that `delete` can
//! clean up after a shim that is gone.

use std::path::Path;

use berth::runtime::Container;

use crate::error::{Result, ShimError};

/// File in the bundle where the shim keeps the runtime's container record.
pub const STATE_FILE: &str = "berth-container.json";

/// Writes `c`'s record into `bundle`.
pub fn write(bundle: &Path, c: &Container) -> Result<()> {
    let json = serde_json::to_vec(c)
        .map_err(|e| ShimError::InvalidArgument(format!("encode container state: {e}")))?;
    std::fs::write(bundle.join(STATE_FILE), json).map_err(ShimError::io(format!(
        "write {}",
        bundle.join(STATE_FILE).display()
    )))
}

/// Reads the container record `create` left in the bundle.
pub fn read(bundle: &Path) -> Option<Container> {
    let data = std::fs::read(bundle.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}
