//! containers-registries.conf(5) version 2: mirrors, insecure and blocked
//! registries, and the registries unqualified names are searched in.
//!
//! Only the v2 TOML format is read (`[[registry]]` tables); unknown keys
//! (aliases, short-name-mode, credential helpers) are accepted and ignored.

use std::path::Path;

use serde::Deserialize;

use super::ImageError;
use super::reference::ImageRef;

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistriesConf {
    #[serde(default)]
    pub unqualified_search_registries: Vec<String>,
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryEntry>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryEntry {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorEntry>,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorEntry {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    /// `all` (default), `digest-only` or `tag-only`.
    #[serde(default)]
    pub pull_from_mirror: Option<String>,
}

/// Where to fetch an image from: a host and the repository path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host (and port) to connect to.
    pub host: String,
    /// Repository path on that host.
    pub repository: String,
    /// Plain HTTP (or unverified TLS) allowed.
    pub insecure: bool,
    /// This endpoint is a mirror (errors fall through to the next one).
    pub mirror: bool,
}

/// What the configuration says about one image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub blocked: bool,
    /// Mirrors in order, then the primary location.
    pub endpoints: Vec<Endpoint>,
}

impl RegistriesConf {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ImageError::Config {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        Self::parse(&text).map_err(|reason| ImageError::Config {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the TOML text and checks it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut conf: RegistriesConf = toml::from_str(text).map_err(|e| e.to_string())?;
        for r in &mut conf.registries {
            if r.prefix.is_empty() {
                if r.location.is_empty() {
                    return Err("a [[registry]] needs a prefix or a location".into());
                }
                r.prefix = r.location.clone();
            }
            if r.prefix.starts_with("*.") {
                if !r.location.is_empty() {
                    return Err(format!(
                        "wildcard prefix {:?} cannot have a location",
                        r.prefix
                    ));
                }
            } else if r.location.is_empty() {
                r.location = r.prefix.clone();
            }
            for m in &r.mirrors {
                if m.location.is_empty() {
                    return Err(format!("a mirror of {:?} has no location", r.prefix));
                }
                if let Some(p) = &m.pull_from_mirror
                    && !matches!(p.as_str(), "all" | "digest-only" | "tag-only")
                {
                    return Err(format!(
                        "pull-from-mirror {p:?} is not all, digest-only or tag-only"
                    ));
                }
            }
        }
        Ok(conf)
    }

    /// The registries an unqualified name is looked up in (docker.io when none).
    pub fn search_registries(&self) -> Vec<String> {
        if self.unqualified_search_registries.is_empty() {
            vec![super::reference::DOCKER_HUB.to_owned()]
        } else {
            self.unqualified_search_registries.clone()
        }
    }

    fn matching(&self, name: &str, host: &str) -> Option<&RegistryEntry> {
        self.registries
            .iter()
            .filter(|r| {
                if let Some(suffix) = r.prefix.strip_prefix('*') {
                    host.ends_with(suffix)
                } else {
                    name == r.prefix
                        || name
                            .strip_prefix(r.prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                }
            })
            .max_by_key(|r| r.prefix.len())
    }

    /// Endpoints to try for `image`, in order.
    pub fn resolve(&self, image: &ImageRef) -> Resolution {
        let name = image.name();
        let Some(entry) = self.matching(&name, &image.registry) else {
            return Resolution {
                blocked: false,
                endpoints: vec![Endpoint {
                    host: image.registry.clone(),
                    repository: image.repository.clone(),
                    insecure: false,
                    mirror: false,
                }],
            };
        };
        // The part of the name after the matched prefix, appended to each location.
        let rest = if entry.prefix.starts_with("*.") {
            name[image.registry.len()..].to_owned()
        } else {
            name[entry.prefix.len()..].to_owned()
        };
        let by_digest = image.digest.is_some();
        let mut endpoints = Vec::new();
        for m in &entry.mirrors {
            let wanted = match m.pull_from_mirror.as_deref() {
                Some("digest-only") => by_digest,
                Some("tag-only") => !by_digest,
                _ => true,
            };
            if wanted {
                endpoints.push(split_location(&m.location, &rest, m.insecure, true));
            }
        }
        let location = if entry.prefix.starts_with("*.") {
            image.registry.clone()
        } else {
            entry.location.clone()
        };
        endpoints.push(split_location(&location, &rest, entry.insecure, false));
        Resolution {
            blocked: entry.blocked,
            endpoints,
        }
    }
}

fn split_location(location: &str, rest: &str, insecure: bool, mirror: bool) -> Endpoint {
    let full = format!("{}{}", location.trim_end_matches('/'), rest);
    let (host, repository) = full.split_once('/').unwrap_or((full.as_str(), ""));
    Endpoint {
        host: host.to_owned(),
        repository: repository.to_owned(),
        insecure,
        mirror,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::normalize;

    const CONF: &str = r#"
unqualified-search-registries = ["registry.example.org", "docker.io"]
short-name-mode = "permissive"

[[registry]]
prefix = "docker.io/library"
location = "hub.internal:5000/lib"
[[registry.mirror]]
location = "mirror1.local:5000/hub-lib"
insecure = true
[[registry.mirror]]
location = "mirror2.local/x"
pull-from-mirror = "digest-only"

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "hubmirror.local"

[[registry]]
prefix = "evil.example.com"
location = "evil.example.com"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true
"#;

    #[test]
    fn parses_and_resolves() {
        let c = RegistriesConf::parse(CONF).unwrap();
        assert_eq!(
            c.search_registries(),
            vec!["registry.example.org", "docker.io"]
        );
        let r = c.resolve(&normalize("busybox:1").unwrap());
        assert!(!r.blocked);
        let got: Vec<_> = r
            .endpoints
            .iter()
            .map(|e| (e.host.as_str(), e.repository.as_str(), e.insecure, e.mirror))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mirror1.local:5000", "hub-lib/busybox", true, true),
                ("hub.internal:5000", "lib/busybox", false, false),
            ]
        );
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let r = c.resolve(&normalize(&format!("busybox@{d}")).unwrap());
        assert_eq!(r.endpoints.len(), 3);
        assert_eq!(r.endpoints[1].host, "mirror2.local");
        assert_eq!(r.endpoints[1].repository, "x/busybox");
        // Longest prefix: docker.io/team/app only matches the docker.io entry.
        let r = c.resolve(&normalize("team/app").unwrap());
        assert_eq!(r.endpoints[0].host, "hubmirror.local");
        assert_eq!(r.endpoints[0].repository, "team/app");
        assert_eq!(r.endpoints[1].host, "docker.io");
        assert!(c.resolve(&normalize("evil.example.com/x").unwrap()).blocked);
        // Prefixes match whole components only.
        assert!(
            !c.resolve(&normalize("evil.example.community/x").unwrap())
                .blocked
        );
        let r = c.resolve(&normalize("reg.corp.example/a/b").unwrap());
        assert_eq!(r.endpoints.len(), 1);
        assert!(r.endpoints[0].insecure);
        assert_eq!(r.endpoints[0].host, "reg.corp.example");
        assert_eq!(r.endpoints[0].repository, "a/b");
        // Unconfigured registries are used as named.
        let r = c.resolve(&normalize("127.0.0.1:5000/x").unwrap());
        assert_eq!(r.endpoints.len(), 1);
        assert!(!r.endpoints[0].insecure);
    }

    #[test]
    fn refuses_bad_files() {
        assert!(RegistriesConf::parse("[[registry]]\ninsecure = true\n").is_err());
        assert!(RegistriesConf::parse("[[registry]]\nprefix=\"*.a.b\"\nlocation=\"x\"\n").is_err());
        assert!(RegistriesConf::parse("registry = 3").is_err());
        assert!(
            RegistriesConf::parse("[[registry]]\nlocation=\"a\"\n[[registry.mirror]]\nlocation=\"m\"\npull-from-mirror=\"sometimes\"\n")
                .is_err()
        );
    }

    #[test]
    fn missing_file_is_empty() {
        let c = RegistriesConf::load(Path::new("/nonexistent/berth/registries.conf")).unwrap();
        assert_eq!(c, RegistriesConf::default());
        assert_eq!(c.search_registries(), vec!["docker.io"]);
    }
}
