//! Manifests, indexes and image configs (OCI and Docker v2 schema 2), and the
//! choice of the platform's manifest from an index.

use serde::Deserialize;

use super::ImageError;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Either kind of top-level document a registry returns.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or index; `content_type` is the HTTP header's value.
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Parsed, ImageError> {
    let bad = |reason: String| ImageError::Registry {
        registry: String::new(),
        message: format!("malformed manifest: {reason}"),
    };
    let m: AnyManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let media_type = m
        .media_type
        .clone()
        .unwrap_or_else(|| content_type.to_owned());
    if media_type == DOCKER_V1_SIGNED || m.schema_version == Some(1) {
        return Err(bad("Docker schema 1 manifests are not supported".into()));
    }
    if let Some(manifests) = m.manifests {
        return Ok(Parsed::Index(manifests));
    }
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return Err(bad("index without manifests".into()));
    }
    let config = m.config.ok_or_else(|| bad("no config descriptor".into()))?;
    let layers = m.layers.unwrap_or_default();
    for d in std::iter::once(&config).chain(&layers) {
        super::reference::validate_digest(&d.digest).map_err(bad)?;
        if d.size < 0 {
            return Err(bad(format!("negative size for {}", d.digest)));
        }
    }
    Ok(Parsed::Image { config, layers })
}

/// The running machine's platform as OCI names it (GOARCH names).
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        other => other,
    };
    let variant = match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    ("linux", arch, variant)
}

/// Picks the manifest for the running machine from an index.
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let (os, arch, variant) = host_platform();
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_deref()) == variant)
        .or_else(|| {
            candidates
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
        })
        .or(candidates.first())
        .copied()
}

/// The parts of an image config the store needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigBlob {
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Chain IDs: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            urls: None,
        }
    }

    #[test]
    fn picks_host_platform() {
        let (_, arch, variant) = host_platform();
        let list = vec![
            desc("s390x", None, 1),
            desc(arch, variant, 2),
            desc("mips", None, 3),
        ];
        assert_eq!(select_platform(&list).unwrap().digest, list[1].digest);
        assert!(select_platform(&list[..1]).is_none());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        use sha2::{Digest, Sha256};
        let want = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(c[1], want);
    }

    #[test]
    fn refuses_schema1_and_garbage() {
        assert!(parse(br#"{"schemaVersion":1}"#, "").is_err());
        assert!(parse(b"not json", "").is_err());
        assert!(
            parse(
                br#"{"schemaVersion":2,"config":{"digest":"sha256:xx","size":1}}"#,
                ""
            )
            .is_err()
        );
        let ok = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"sha256:{}","size":3}},"layers":[]}}"#,
            "0".repeat(64)
        );
        assert!(matches!(
            parse(ok.as_bytes(), "").unwrap(),
            Parsed::Image { .. }
        ));
    }
}
