//! berthd's TOML configuration and its embedded defaults.
//!
//! The file holds a few top-level daemon keys and one table per subsystem
//! (`[image]`, `[stream]`; `[network]` joins when that subsystem lands).
//! Every key has a default (`berthd config default` prints them all, and
//! `deploy/berthd.toml` is exactly that output); unknown keys are refused so
//! that a typo never silently falls back to a default. Command-line flags
//! override the file (see [`Overrides`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;
use crate::stream::StreamConfig;

/// Where berthd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berthd.toml";
/// The CRI socket kubelet and crictl connect to.
pub const DEFAULT_ADDRESS: &str = "/run/berth/berth.sock";
/// Persistent data: images, snapshots, metadata.
pub const DEFAULT_ROOT: &str = "/var/lib/berth";
/// Runtime state that does not survive a reboot: pinned namespaces, sockets.
pub const DEFAULT_STATE: &str = "/run/berth";

/// Comments for `berthd config default`: (table, key, text); "" is the
/// top level. A key without an entry is printed without a comment.
const KEY_DOCS: &[(&str, &str, &str)] = &[
    (
        "",
        "address",
        "Unix socket of the CRI server (kubelet's --container-runtime-endpoint).",
    ),
    ("", "root", "Persistent data: images, snapshots, metadata."),
    (
        "",
        "state",
        "Runtime state that does not survive a reboot (tmpfs).",
    ),
    (
        "",
        "log_level",
        "error, warn, info, debug, trace, or tracing directives (\"berth=debug,h2=info\").\n\
         RUST_LOG and --log-level override it.",
    ),
    (
        "",
        "log_format",
        "text (human-readable lines) or json (one JSON object per line).",
    ),
    (
        "",
        "shutdown_timeout_secs",
        "On SIGTERM/SIGINT, how long in-flight RPCs may take before berthd exits.\n\
         Containers keep running either way. SIGHUP re-reads log_level from this\n\
         file and checks registries.conf and the CNI config; it never stops berthd.",
    ),
    (
        "metrics",
        "address",
        "ip:port of the Prometheus endpoint (GET /metrics, OpenMetrics text);\n\
         empty: off. Keep it on loopback or a node-internal address.",
    ),
    (
        "image",
        "registries_config",
        "containers-registries.conf(5) v2 file (mirrors, insecure, blocked registries).\n\
         A missing file means no mirrors.",
    ),
    (
        "image",
        "max_concurrent_downloads",
        "Layers downloaded at once per pull.",
    ),
    (
        "image",
        "stall_timeout_secs",
        "A pull that receives no byte for this long fails.",
    ),
    (
        "stream",
        "address",
        "ip:port of the exec/attach/port-forward streaming server; port 0 picks a\n\
         free port. Keep it on loopback unless it speaks TLS: tls_cert and tls_key\n\
         (PEM files, both or neither) make its URLs https://.",
    ),
    (
        "stream",
        "tls_cert",
        "PEM certificate chain of the streaming server (with tls_key: https://).",
    ),
    (
        "stream",
        "tls_key",
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert.",
    ),
    (
        "stream",
        "token_ttl_secs",
        "How long a URL returned by Exec/Attach/PortForward stays valid (each works once).",
    ),
    (
        "image",
        "max_layer_bytes",
        "A layer whose uncompressed content exceeds this many bytes is refused\n\
         (decompression bombs).",
    ),
    (
        "network",
        "mode",
        "builtin (berth's bridge, IPAM and nftables), or cni (the first config list\n\
         in cni_conf_dir; until one is there, NetworkReady is false with reason\n\
         NetworkPluginNotReady and pods with their own network are refused, as\n\
         containerd does). auto is the same as cni (it used to fall back to\n\
         built-in; a Kubernetes node must wait for its CNI instead).",
    ),
    (
        "network",
        "cni_conf_dir",
        "Where CNI config lists are read from.",
    ),
    (
        "network",
        "cni_bin_dirs",
        "Where CNI plugins are looked for, in order.",
    ),
    ("network", "bridge_name", "The built-in mode's bridge."),
    (
        "network",
        "pod_subnet",
        "The built-in mode's IPv4 pod subnet.",
    ),
    (
        "network",
        "pod_subnet_v6",
        "The built-in mode's IPv6 pod subnet (dual stack when set).",
    ),
];

/// The whole berthd configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket of the CRI gRPC server.
    pub address: PathBuf,
    /// Persistent data directory.
    pub root: PathBuf,
    /// Runtime state directory (tmpfs in production).
    pub state: PathBuf,
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `tracing` directives such as `berth=debug,tonic=info`.
    pub log_level: String,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
    /// On SIGTERM/SIGINT, how long in-flight RPCs may take to finish before
    /// berthd exits anyway. Containers keep running either way.
    pub shutdown_timeout_secs: u64,
    /// The image service.
    pub image: ImageConfig,
    /// Pod networking (`[network]`).
    pub network: crate::network::NetworkConfig,
    /// The exec/attach/port-forward streaming server.
    pub stream: StreamConfig,
    /// The Prometheus endpoint (`[metrics]`).
    pub metrics: crate::metrics::MetricsConfig,
}

/// `log_format`: how berthd writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`tracing_subscriber`'s full format).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: PathBuf::from(DEFAULT_ADDRESS),
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            shutdown_timeout_secs: 10,
            image: ImageConfig::default(),
            network: crate::network::NetworkConfig::default(),
            stream: StreamConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
        }
    }
}

/// Values given on the command line; each one that is set wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub address: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub log_level: Option<String>,
}

/// What can go wrong while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The file parses but a value makes no sense.
    #[error("config {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            // toml's message already names the key, the line and the
            // expected keys; keep it on one line for the logs.
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path`. With `required == false` (no `--config` given) a
    /// missing file means the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Applies command-line overrides, then validates the result.
    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        if let Some(address) = overrides.address {
            self.address = address;
        }
        if let Some(root) = overrides.root {
            self.root = root;
        }
        if let Some(state) = overrides.state {
            self.state = state;
        }
        if let Some(log_level) = overrides.log_level {
            self.log_level = log_level;
        }
        self.validate()
    }

    /// The default configuration as a commented TOML document (what
    /// `berthd config default` prints).
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Config::default())
            .expect("the default config always serialises to TOML");
        let mut out = String::from(
            "# berthd configuration (defaults). Every key is optional; unknown keys\n\
             # are an error. Flags override the file: --address, --root, --state,\n\
             # --log-level. Generated by `berthd config default`.\n\n",
        );
        let mut table = "";
        for line in body.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name;
            } else if let Some((key, _)) = line.split_once(" = ")
                && let Some((_, _, doc)) =
                    KEY_DOCS.iter().find(|(t, k, _)| *t == table && *k == key)
            {
                for doc_line in doc.lines() {
                    out.push_str("# ");
                    out.push_str(doc_line);
                    out.push('\n');
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("address", &self.address),
            ("root", &self.root),
            ("state", &self.state),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} must be an absolute path", path.display()),
                });
            }
        }
        if self.address.file_name().is_none() {
            return Err(ConfigError::Invalid {
                key: "address",
                message: format!("{} does not name a socket file", self.address.display()),
            });
        }
        // A unix socket path must fit sockaddr_un.sun_path (108 bytes with NUL).
        if self.address.as_os_str().len() > 107 {
            return Err(ConfigError::Invalid {
                key: "address",
                message: format!(
                    "{} is longer than the 107 bytes a unix socket path may have",
                    self.address.display()
                ),
            });
        }
        if self.log_level.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "log_level",
                message: "must not be empty (try \"info\")".to_owned(),
            });
        }
        if let Err(e) = self.stream.validate() {
            return Err(ConfigError::Invalid {
                key: "stream",
                message: e.to_string(),
            });
        }
        if let Err(e) = self.metrics.socket_addr() {
            return Err(ConfigError::Invalid {
                key: "metrics.address",
                message: e.to_string(),
            });
        }
        if self.image.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid {
                key: "image.max_concurrent_downloads",
                message: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("test.toml")
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("", origin()).unwrap(), Config::default());
    }

    #[test]
    fn default_toml_round_trips() {
        let parsed = Config::from_toml(&Config::default_toml(), origin()).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn shipped_default_config_is_current() {
        let shipped = include_str!("../deploy/berthd.toml");
        assert_eq!(
            shipped,
            Config::default_toml(),
            "deploy/berthd.toml is stale: regenerate it with `berthd config default > deploy/berthd.toml`"
        );
    }

    #[test]
    fn every_daemon_and_image_key_is_documented() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let table = value.as_table().unwrap();
        for (key, v) in table {
            if let Some(sub) = v.as_table() {
                if key == "image" || key == "metrics" {
                    for sub_key in sub.keys() {
                        assert!(
                            KEY_DOCS.iter().any(|(t, k, _)| t == key && k == sub_key),
                            "{key}.{sub_key} lacks a comment in KEY_DOCS"
                        );
                    }
                }
            } else {
                assert!(
                    KEY_DOCS.iter().any(|(t, k, _)| t.is_empty() && k == key),
                    "{key} lacks a comment in KEY_DOCS"
                );
            }
        }
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_toml(
            "root = \"/tmp/r\"\n[image]\nmax_concurrent_downloads = 8\n",
            origin(),
        )
        .unwrap();
        assert_eq!(config.root, PathBuf::from("/tmp/r"));
        assert_eq!(config.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(config.image.max_concurrent_downloads, 8);
        assert_eq!(
            config.image.stall_timeout_secs,
            ImageConfig::default().stall_timeout_secs
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = Config::from_toml("adress = \"/tmp/x.sock\"\n", origin()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.toml"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn unknown_key_in_table_is_named() {
        let err = Config::from_toml("[image]\nparallel = 3\n", origin()).unwrap_err();
        assert!(err.to_string().contains("parallel"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused() {
        let err = Config::from_toml("shutdown_timeout_secs = \"ten\"\n", origin()).unwrap_err();
        assert!(err.to_string().contains("shutdown_timeout_secs"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = Config::from_toml("root = \"var/lib/berth\"\n", origin()).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let long = format!("/tmp/{}.sock", "s".repeat(120));
        let mut config = Config::default();
        let err = config
            .apply(Overrides {
                address: Some(PathBuf::from(long)),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("address"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let mut config = Config::from_toml(
            "address = \"/tmp/file.sock\"\nroot = \"/tmp/file-root\"\nlog_level = \"warn\"\n",
            origin(),
        )
        .unwrap();
        config
            .apply(Overrides {
                address: Some(PathBuf::from("/tmp/flag.sock")),
                root: None,
                state: Some(PathBuf::from("/tmp/flag-state")),
                log_level: Some("debug".to_owned()),
            })
            .unwrap();
        assert_eq!(config.address, PathBuf::from("/tmp/flag.sock"));
        assert_eq!(config.root, PathBuf::from("/tmp/file-root"));
        assert_eq!(config.state, PathBuf::from("/tmp/flag-state"));
        assert_eq!(config.log_level, "debug");
    }

    #[test]
    fn log_format_and_metrics() {
        let c = Config::from_toml(
            "log_format = \"json\"\n[metrics]\naddress = \"127.0.0.1:9100\"\n",
            origin(),
        )
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics.address, "127.0.0.1:9100");
        assert_eq!(Config::default().metrics.address, "", "off by default");
        let err = Config::from_toml("log_format = \"xml\"\n", origin()).unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");
        let err = Config::from_toml("[metrics]\naddress = \"nowhere\"\n", origin()).unwrap_err();
        assert!(err.to_string().contains("metrics.address"), "{err}");
    }

    #[test]
    fn missing_optional_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(Config::load(&path, false).unwrap(), Config::default());
        let err = Config::load(&path, true).unwrap_err();
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }
}
