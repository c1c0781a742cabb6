//! Docker-style image references: `busybox` → `docker.io/library/busybox:latest`.
//!
//! The rules are those of the Docker/distribution reference grammar: the first
//! path component is a registry host when it contains a `.` or a `:` or is
//! `localhost`; otherwise the image lives on Docker Hub (`docker.io`), where
//! single-component names get the `library/` namespace.

use std::fmt;

use super::ImageError;

/// Docker Hub, as references name it.
pub const DOCKER_HUB: &str = "docker.io";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag, when the reference names one and no digest.
    pub tag: Option<String>,
    /// Manifest digest (`sha256:<hex>`), when the reference pins one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository@digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")
        } else if let Some(t) = &self.tag {
            write!(f, ":{t}")
        } else {
            Ok(())
        }
    }
}

/// A parsed reference before the registry is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRef {
    /// The registry, when the reference names one.
    pub registry: Option<String>,
    /// The path after the registry (no `library/` added yet).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ParsedRef {
    /// Qualifies the reference with `registry` (used for unqualified names).
    pub fn qualify(&self, registry: &str) -> ImageRef {
        let registry = canonical_registry(registry);
        let repository = if registry == DOCKER_HUB && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        let tag = match (&self.tag, &self.digest) {
            (_, Some(_)) => None,
            (Some(t), None) => Some(t.clone()),
            (None, None) => Some("latest".to_owned()),
        };
        ImageRef {
            registry,
            repository,
            tag,
            digest: self.digest.clone(),
        }
    }
}

fn canonical_registry(registry: &str) -> String {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

fn invalid(reference: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a reference without qualifying it.
pub fn parse(reference: &str) -> Result<ParsedRef, ImageError> {
    if reference.is_empty() {
        return Err(invalid(reference, "empty reference"));
    }
    if reference.len() > 4096 {
        return Err(invalid(reference, "reference too long"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, d)) => {
            validate_digest(d).map_err(|r| invalid(reference, r))?;
            (rest, Some(d.to_owned()))
        }
        None => (reference, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            validate_tag(tag).map_err(|r| invalid(reference, r))?;
            (&rest[..last_slash + i], Some(tag.to_owned()))
        }
        None => (rest, None),
    };
    let (registry, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            validate_host(first).map_err(|r| invalid(reference, r))?;
            (Some(first.to_owned()), path)
        }
        _ => (None, name),
    };
    validate_path(path).map_err(|r| invalid(reference, r))?;
    Ok(ParsedRef {
        registry,
        path: path.to_owned(),
        tag,
        digest,
    })
}

/// Parses and qualifies a reference, Docker-style (unqualified → docker.io).
pub fn normalize(reference: &str) -> Result<ImageRef, ImageError> {
    let parsed = parse(reference)?;
    let registry = parsed.registry.clone().unwrap_or_else(|| DOCKER_HUB.into());
    Ok(parsed.qualify(&registry))
}

/// `sha256:<64 lowercase hex>`.
pub fn validate_digest(d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!("unsupported digest {d:?} (only sha256)"));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("malformed digest {d:?}"));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("malformed tag {tag:?}"))
    }
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(format!("malformed port in registry {host:?}"));
    }
    let name_ok = if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if name_ok {
        Ok(())
    } else {
        Err(format!("malformed registry host {host:?}"))
    }
}

fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("missing repository name".into());
    }
    if path.len() > 255 {
        return Err("repository name too long".into());
    }
    for comp in path.split('/') {
        let ok = !comp.is_empty()
            && comp.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && comp
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && comp
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && !comp.contains("..")
            && !comp.contains("___")
            && !comp.contains(".-")
            && !comp.contains("-.");
        if !ok {
            return Err(format!(
                "malformed repository component {comp:?} (lowercase letters, digits and . _ - separators)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            (
                "library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox:1".into(),
                "docker.io/library/busybox:1".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            ("team/app".into(), "docker.io/team/app:latest".into()),
            ("localhost/app".into(), "localhost/app:latest".into()),
            (
                "localhost:5000/app:v1".into(),
                "localhost:5000/app:v1".into(),
            ),
            (
                "registry:5000/team/app".into(),
                "registry:5000/team/app:latest".into(),
            ),
            (
                format!("registry:5000/team/app@{d}"),
                format!("registry:5000/team/app@{d}"),
            ),
            (
                format!("busybox:1.36@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                "quay.io/a/b/c:tag-1.0_x".into(),
                "quay.io/a/b/c:tag-1.0_x".into(),
            ),
            ("127.0.0.1:5000/x".into(), "127.0.0.1:5000/x:latest".into()),
            ("[::1]:5000/x".into(), "[::1]:5000/x:latest".into()),
            (
                "my-registry.local/a__b".into(),
                "my-registry.local/a__b:latest".into(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(&input).unwrap().to_string(),
                want,
                "input {input}"
            );
        }
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "host:99999/x",
            "../etc",
            "x/../y",
            "busybox:-bad",
            "-busybox",
            "reg.io/",
            "busybox:a/b",
        ] {
            assert!(
                matches!(normalize(bad), Err(ImageError::InvalidReference { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn unqualified_is_qualified_per_registry() {
        let p = parse("app:1").unwrap();
        assert_eq!(p.registry, None);
        assert_eq!(p.qualify("quay.io").to_string(), "quay.io/app:1");
        assert_eq!(
            p.qualify("docker.io").to_string(),
            "docker.io/library/app:1"
        );
    }
}
