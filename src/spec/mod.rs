//! CRI container/sandbox config + image config → OCI runtime spec. Pure functions.
