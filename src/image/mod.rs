//! Registry client, content store, unpack and snapshots (overlay layers).
