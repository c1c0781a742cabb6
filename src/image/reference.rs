//! Docker-style image references: `busybox` → `docker.io/library/busybox:latest`.
//!
//! The rules are those of the Docker/distribution reference grammar: the first
//! path component is a registry host when it contains a `.` or a `:` or is
//! `localhost`; otherwise the image lives on Docker Hub (`docker.io`), where
//! single-component names get the `library/` namespace. berth keeps an
//! unqualified name unqualified ([`ParsedRef::registry`] is `None`) until
//! registries.conf's unqualified-search-registries pick the registry.
//!
//! The grammar of tags and repository components is oci-spec's
//! ([`oci_spec::distribution::Reference`]), and digests are read by
//! [`oci_spec::image::Digest`]; berth splits the reference itself and keeps
//! the few rules where it has always differed from oci-spec (each one is
//! documented where it is checked): sha256 digests only, ASCII tags, IPv6
//! hosts and port ranges, the path's length before `library/`, and a wider
//! choice of separators in path components.

use std::fmt;

use oci_spec::distribution::Reference;
use oci_spec::image::{Digest, DigestAlgorithm};

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
    /// The tag, when the reference names one.
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`), when the reference pins one.
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
///
/// The reference is taken apart as Docker does (digest after the first `@`,
/// tag after the last `:` of the last component, registry by
/// [`is_registry_host`]), which oci-spec's [`Reference`] cannot do for berth:
/// it puts unqualified names under `docker.io` like Docker Hub ones, and has
/// no IPv6 hosts. Each part is then checked, in this order: the digest
/// ([`validate_digest`]), the tag, the host and the repository path; the tag,
/// the host's name and the path components against oci-spec's grammar.
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
        Some((first, path)) if is_registry_host(first) => {
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

/// Docker's rule: a reference's first path component is a registry host when
/// it contains a `.` or a `:` or is `localhost`.
pub fn is_registry_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `sha256:<64 lowercase hex>`, the only digests berth fetches and stores.
///
/// oci-spec's [`Digest`] reads the digest; it also takes other algorithms
/// (`sha512`, …), which berth refuses.
pub fn validate_digest(d: &str) -> Result<(), String> {
    match d.parse::<Digest>() {
        Ok(digest) if *digest.algorithm() == DigestAlgorithm::Sha256 => Ok(()),
        _ if !d.starts_with("sha256:") => Err(format!("unsupported digest {d:?} (only sha256)")),
        _ => Err(format!("malformed digest {d:?}")),
    }
}

/// Whether oci-spec reads `text` as a reference whose parts are as expected.
fn oci_reads(text: &str, expect: impl Fn(&Reference) -> bool) -> bool {
    Reference::try_from(text).is_ok_and(|r| expect(&r))
}

/// A tag: oci-spec's grammar (`[\w][\w.-]{0,127}`), in ASCII as Docker's
/// (oci-spec's regex takes `\w` in Unicode).
fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_ascii() && oci_reads(&format!("localhost/x:{tag}"), |r| r.tag() == Some(tag)) {
        Ok(())
    } else {
        Err(format!("malformed tag {tag:?}"))
    }
}

/// A registry host: DNS labels (oci-spec's grammar) or an IPv6 literal in
/// brackets, with an optional port that fits a `u16`.
///
/// oci-spec's grammar has no IPv6 literals and takes any digits for a port,
/// and it would read a first component that is not a host name (like
/// `foo_bar.com`) as a path component that is then taken for the registry;
/// a port of `1` after the name makes it check the name as a host.
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
        let probe = format!("{name}:1");
        !name.is_empty()
            && !name.contains(['/', ':', '@'])
            && oci_reads(&format!("{probe}/x"), |r| r.registry() == probe)
    };
    if name_ok {
        Ok(())
    } else {
        Err(format!("malformed registry host {host:?}"))
    }
}

/// A repository path: at most 255 bytes of `/`-separated components.
///
/// oci-spec counts its 255 after adding `library/` to a one-component
/// Docker Hub name; berth has always counted the path as written.
fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("missing repository name".into());
    }
    if path.len() > 255 {
        return Err("repository name too long".into());
    }
    for comp in path.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "malformed repository component {comp:?} (lowercase letters, digits and . _ - separators)"
            ));
        }
    }
    Ok(())
}

/// A path component: lowercase letters and digits, separated as Docker's
/// grammar allows (by oci-spec, as the one component of a repository on a
/// host of its own) or as berth always has.
///
/// Docker's separators are `.`, `_`, `__` or any number of `-`; berth has
/// also taken any other run of those three that has no `..`, `___`, `.-` or
/// `-.` in it (`a._b`, `a_-b`), and keeps doing so: such a component passes
/// when it does with every separator written as a `-`.
fn component_ok(comp: &str) -> bool {
    let docker = |c: &str| oci_reads(&format!("localhost/{c}"), |r| r.repository() == c);
    if docker(comp) {
        return true;
    }
    let dashed: String = comp
        .chars()
        .map(|c| if matches!(c, '.' | '_') { '-' } else { c })
        .collect();
    !["..", "___", ".-", "-."].iter().any(|s| comp.contains(s)) && docker(&dashed)
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

    #[test]
    fn berth_rules_where_oci_spec_differs() {
        // Kept although oci-spec refuses them.
        for ok in ["[::1]:5000/x", "reg.io/a._b", "a_-b/c-_d:1", "reg.io/a.__b"] {
            assert!(normalize(ok).is_ok(), "{ok:?} should be accepted");
        }
        let long = "a".repeat(250);
        assert_eq!(
            normalize(&long).unwrap().repository,
            format!("library/{long}")
        );
        // Refused although oci-spec takes them.
        let d = "0123456789abcdef".repeat(4);
        for bad in [
            "foo_bar.com/x".to_owned(),
            "Team/app".into(),
            "reg:99999/x".into(),
            "busybox:tagé".into(),
            format!("busybox@sha256:{}", d.to_uppercase()),
            format!("busybox@sha512:{d}{d}"),
            "a..b/c".into(),
            "reg.io/a.-b".into(),
            "reg.io/a___b".into(),
        ] {
            assert!(
                matches!(normalize(&bad), Err(ImageError::InvalidReference { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn parts_and_messages() {
        let p = parse("docker.io/busybox").unwrap();
        assert_eq!(p.registry.as_deref(), Some("docker.io"));
        assert_eq!(p.path, "busybox");
        assert_eq!(p.tag, None);
        let p = parse("library/busybox:latest").unwrap();
        assert_eq!((p.registry, p.path.as_str()), (None, "library/busybox"));
        assert_eq!(p.tag.as_deref(), Some("latest"));
        let reason = |r: &str| match parse(r) {
            Err(ImageError::InvalidReference { reason, .. }) => reason,
            other => panic!("{r:?}: {other:?}"),
        };
        assert_eq!(reason(""), "empty reference");
        assert_eq!(
            reason("x@md5:0"),
            r#"unsupported digest "md5:0" (only sha256)"#
        );
        assert_eq!(reason("x@sha256:0"), r#"malformed digest "sha256:0""#);
        assert_eq!(reason("x:-1"), r#"malformed tag "-1""#);
        assert_eq!(reason("h:0x/y"), r#"malformed port in registry "h:0x""#);
        assert_eq!(reason("a_b.io/y"), r#"malformed registry host "a_b.io""#);
        assert_eq!(reason("reg.io/"), "missing repository name");
        assert_eq!(reason(&"a".repeat(256)), "repository name too long");
        assert!(reason("a//b").starts_with(r#"malformed repository component """#));
    }
}
