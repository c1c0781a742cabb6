//! berthd's TOML configuration and its embedded defaults.
