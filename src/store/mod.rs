//! Persisted metadata (pods, containers, images) and crash recovery.
