//! Manifests, indexes and image configs (OCI and Docker v2 schema 2), and the
//! choice of the platform's manifest from an index.
//!
//! Documents are read into `oci_spec::image`'s types ([`ImageManifest`],
//! [`ImageIndex`], [`Descriptor`], [`Platform`]). Docker's media types are
//! [`MediaType::Other`] there, which is all berth needs of them. Registries
//! and berth differ from those types in places, so [`parse`] first looks at
//! the document as JSON:
//!
//! * what berth has always tolerated stays tolerated: a missing
//!   `schemaVersion` (berth reads it only to refuse schema 1), a descriptor
//!   without `mediaType`, a manifest without `layers`, and fields berth never
//!   reads (`annotations`, `subject`, `artifactType`, `data`, the platform's
//!   extras) whatever their shape: one oci-spec cannot read is left out;
//! * what berth has always checked stays checked: descriptor sizes fit an
//!   `i64` (oci-spec takes any `u64`), and a manifest's config and layers
//!   name `sha256` digests, with berth's messages for negative sizes and bad
//!   digests (oci-spec would refuse them with its own, or accept `sha512`);
//! * an index entry with a digest or size berth cannot pull (negative size,
//!   not a `sha256` digest) does not make the index unreadable, as before: it
//!   is left out of [`Parsed::Index`]. Should it be the entry
//!   [`select_platform`] would have chosen for this machine, the parse fails
//!   instead (before, the pull failed when fetching it).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os, Platform};

use super::ImageError;
use super::reference::validate_digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 schema 1 signed manifest (refused).
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// An index (manifest list): the entries berth can pull.
    Index(Vec<Descriptor>),
    /// An image manifest.
    Image {
        /// The image config's descriptor (boxed: oci-spec's descriptors are
        /// large).
        config: Box<Descriptor>,
        /// The layers, bottom first.
        layers: Vec<Descriptor>,
    },
}

/// Stands in for a descriptor's digest and size while its structure is
/// checked, so that those two get berth's checks and messages.
const PLACEHOLDER_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A descriptor as the document has it, structurally sound.
struct RawDescriptor {
    /// The JSON, with berth's defaults filled in and unreadable extras gone.
    json: Value,
    /// What oci-spec reads of it with the placeholder digest and size (its
    /// platform is the document's).
    shape: Descriptor,
    /// The digest as written.
    digest: String,
    /// The size as written.
    size: i64,
}

impl RawDescriptor {
    /// Checks what berth's descriptors always required: an object with a
    /// string `digest`, an integer `size` in `i64`, a string `mediaType` if
    /// any (missing is empty), `urls` a list of strings, `platform` with
    /// string `architecture` and `os`.
    fn read(mut json: Value) -> Result<Self, String> {
        let Some(obj) = json.as_object_mut() else {
            return Err(format!("descriptor is not an object: {json}"));
        };
        obj.entry("mediaType")
            .or_insert_with(|| Value::String(String::new()));
        drop_unreadable::<std::collections::HashMap<String, String>>(obj, "annotations");
        drop_unreadable::<MediaType>(obj, "artifactType");
        drop_unreadable::<String>(obj, "data");
        if let Some(Value::Object(p)) = obj.get_mut("platform") {
            // oci-spec names these without the spec's dots; berth reads none.
            drop_unreadable::<String>(p, "os_version");
            drop_unreadable::<Vec<String>>(p, "os_features");
            drop_unreadable::<Vec<String>>(p, "features");
        }
        let digest = obj.get("digest").and_then(Value::as_str).map(str::to_owned);
        let size = match obj.get("size") {
            Some(Value::Number(n)) if n.is_u64() && n.as_i64().is_none() => {
                return Err(format!("invalid value: integer `{n}`, expected i64"));
            }
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        };
        let mut stand_in = json.clone();
        if digest.is_some() {
            stand_in["digest"] = PLACEHOLDER_DIGEST.into();
        }
        if size.is_some() {
            stand_in["size"] = 0.into();
        }
        let shape: Descriptor = serde_json::from_value(stand_in).map_err(|e| e.to_string())?;
        Ok(Self {
            json,
            shape,
            // Both are present once oci-spec has read the stand-in.
            digest: digest.unwrap_or_default(),
            size: size.unwrap_or_default(),
        })
    }

    /// Why berth could not fetch what this descriptor names, if so.
    fn unusable(&self) -> Option<String> {
        if let Err(reason) = validate_digest(&self.digest) {
            return Some(reason);
        }
        (self.size < 0).then(|| format!("negative size for {}", self.digest))
    }
}

/// Removes `obj[key]` when it is there but not a `T` (fields berth ignores).
fn drop_unreadable<T: DeserializeOwned>(obj: &mut Map<String, Value>, key: &str) {
    if obj
        .get(key)
        .is_some_and(|v| serde_json::from_value::<T>(v.clone()).is_err())
    {
        obj.remove(key);
    }
}

/// `doc[key]` as an optional list of descriptors (missing or null: `None`).
fn descriptors(
    doc: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<RawDescriptor>>, String> {
    match doc.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(RawDescriptor::read)
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!("{key} is not a list: {other}")),
    }
}

/// Parses a manifest or index; `content_type` is the HTTP header's value.
///
/// A document with `manifests` is an index whatever its media type; one
/// without is an image manifest unless its media type (the document's, else
/// the header's) says index. Docker schema 1 is refused.
pub fn parse(bytes: &[u8], content_type: &str) -> Result<Parsed, ImageError> {
    let bad = |reason: String| ImageError::Registry {
        registry: String::new(),
        message: format!("malformed manifest: {reason}"),
    };
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    // An object, as descriptors are: serde's derived readers also took a
    // JSON array of the fields in declaration order, which no registry sends.
    let Value::Object(mut doc) = doc else {
        return Err(bad(format!("not a JSON object: {doc}")));
    };

    // Structure first, of the whole document, as one serde pass used to.
    let schema_version = match doc.remove("schemaVersion") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => return Err(bad(format!("schemaVersion is not an integer: {other}"))),
    };
    let own_media_type = match doc.get("mediaType") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(bad(format!("mediaType is not a string: {other}"))),
    };
    let manifests = descriptors(&mut doc, "manifests").map_err(bad)?;
    let config = match doc.remove("config") {
        None | Some(Value::Null) => None,
        Some(v) => Some(RawDescriptor::read(v).map_err(bad)?),
    };
    let layers = descriptors(&mut doc, "layers").map_err(bad)?;
    // berth reads none of these; oci-spec types them.
    drop_unreadable::<std::collections::HashMap<String, String>>(&mut doc, "annotations");
    drop_unreadable::<MediaType>(&mut doc, "artifactType");
    drop_unreadable::<Descriptor>(&mut doc, "subject");
    // oci-spec requires it; berth has only ever refused 1 (below).
    doc.insert("schemaVersion".into(), 2.into());

    let media_type = own_media_type.unwrap_or_else(|| content_type.to_owned());
    if media_type == DOCKER_V1_SIGNED || schema_version == Some(1) {
        return Err(bad("Docker schema 1 manifests are not supported".into()));
    }
    if let Some(entries) = manifests {
        if let Some(chosen) = pick(&entries, |e| e.shape.platform().as_ref())
            && let Some(reason) = chosen.unusable()
        {
            let (os, arch, _) = host_platform();
            return Err(bad(format!("index entry for {os}/{arch}: {reason}")));
        }
        let usable: Vec<Value> = entries
            .into_iter()
            .filter(|e| e.unusable().is_none())
            .map(|e| e.json)
            .collect();
        doc.insert("manifests".into(), usable.into());
        let index = ImageIndex::deserialize(Value::Object(doc)).map_err(|e| bad(e.to_string()))?;
        // (oci-spec has no way to move them out of an index.)
        return Ok(Parsed::Index(index.manifests().clone()));
    }
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return Err(bad("index without manifests".into()));
    }
    let config = config.ok_or_else(|| bad("no config descriptor".into()))?;
    let layers = layers.unwrap_or_default();
    for d in std::iter::once(&config).chain(&layers) {
        if let Some(reason) = d.unusable() {
            return Err(bad(reason));
        }
    }
    doc.insert("config".into(), config.json);
    doc.insert(
        "layers".into(),
        layers
            .into_iter()
            .map(|l| l.json)
            .collect::<Vec<_>>()
            .into(),
    );
    let mut manifest =
        ImageManifest::deserialize(Value::Object(doc)).map_err(|e| bad(e.to_string()))?;
    Ok(Parsed::Image {
        config: Box::new(manifest.config().clone()),
        layers: std::mem::take(manifest.layers_mut()),
    })
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
///
/// Among the entries for this OS and architecture: the first with this
/// machine's variant, else the first without a variant, else the first.
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    pick(manifests, |d| d.platform().as_ref())
}

/// [`select_platform`] over anything with a platform.
fn pick<T>(items: &[T], platform: impl Fn(&T) -> Option<&Platform>) -> Option<&T> {
    let (os, arch, variant) = host_platform();
    // oci-spec reads both from strings one to one (but for "armbe", which
    // it takes for "arm64be": no host of berth's is either).
    let (os, arch) = (Os::from(os), Arch::from(arch));
    let candidates: Vec<&T> = items
        .iter()
        .filter(|d| platform(d).is_some_and(|p| *p.os() == os && *p.architecture() == arch))
        .collect();
    candidates
        .iter()
        .find(|d| platform(d).and_then(|p| p.variant().as_deref()) == variant)
        .or_else(|| {
            candidates
                .iter()
                .find(|d| platform(d).is_some_and(|p| p.variant().is_none()))
        })
        .or(candidates.first())
        .copied()
}

/// The parts of an image config the store needs.
///
/// Not oci-spec's `ImageConfiguration`: that one requires `architecture`,
/// `os` and `rootfs.type`, and types `config` and `history` in full, so a
/// config berth pulls today (where only `rootfs.diff_ids` matters) could be
/// refused for a field berth never reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigBlob {
    /// `os`, if given.
    #[serde(default)]
    pub os: Option<String>,
    /// `architecture`, if given.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// An image config's `rootfs`.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// `type` (`layers`), empty if missing.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// One per layer, bottom first.
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
        let digest: oci_spec::image::Digest =
            format!("sha256:{}", hex::encode([n; 32])).parse().unwrap();
        let mut d = Descriptor::new(MediaType::ImageManifest, 1, digest);
        let mut p = Platform::default();
        p.set_architecture(Arch::from(arch));
        p.set_os(Os::Linux);
        p.set_variant(variant.map(Into::into));
        d.set_platform(Some(p));
        d
    }

    #[test]
    fn picks_host_platform() {
        let (_, arch, variant) = host_platform();
        let list = vec![
            desc("s390x", None, 1),
            desc(arch, variant, 2),
            desc("mips", None, 3),
        ];
        assert_eq!(select_platform(&list).unwrap().digest(), list[1].digest());
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

    fn hex(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn message(r: Result<Parsed, ImageError>) -> String {
        match r {
            Err(ImageError::Registry { message, .. }) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tolerates_what_registries_omit() {
        // No schemaVersion, no mediaType anywhere, no layers, annotations and
        // a subject oci-spec cannot read.
        let doc = format!(
            r#"{{"config":{{"digest":"{}","size":3,"annotations":{{"n":1}}}},
               "annotations":{{"n":null}},"subject":{{"digest":"x"}}}}"#,
            hex(1)
        );
        match parse(doc.as_bytes(), "").unwrap() {
            Parsed::Image { config, layers } => {
                assert_eq!(config.media_type().to_string(), "");
                assert_eq!(config.size(), 3);
                assert!(layers.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Docker's media types are oci-spec's `Other`.
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
               "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":3}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":5}}]}}"#,
            hex(1),
            hex(2)
        );
        let Parsed::Image { layers, .. } = parse(doc.as_bytes(), "").unwrap() else {
            panic!()
        };
        assert_eq!(
            *layers[0].media_type(),
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into())
        );
    }

    #[test]
    fn keeps_berths_checks_and_messages() {
        let manifest =
            |config: &str| format!(r#"{{"schemaVersion":2,"config":{config},"layers":[]}}"#);
        let neg = manifest(&format!(r#"{{"digest":"{}","size":-1}}"#, hex(1)));
        assert_eq!(
            message(parse(neg.as_bytes(), "")),
            format!("malformed manifest: negative size for {}", hex(1))
        );
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        let doc = manifest(&format!(r#"{{"digest":"{sha512}","size":1}}"#));
        assert_eq!(
            message(parse(doc.as_bytes(), "")),
            format!("malformed manifest: unsupported digest {sha512:?} (only sha256)")
        );
        let doc = manifest(r#"{"digest":"sha256:xx","size":1}"#);
        assert_eq!(
            message(parse(doc.as_bytes(), "")),
            r#"malformed manifest: malformed digest "sha256:xx""#
        );
        // oci-spec takes any u64; berth's sizes are i64.
        let doc = manifest(&format!(r#"{{"digest":"{}","size":{}}}"#, hex(1), u64::MAX));
        assert!(parse(doc.as_bytes(), "").is_err());
        assert_eq!(
            message(parse(br#"{"schemaVersion":2}"#, OCI_INDEX)),
            "malformed manifest: index without manifests"
        );
        assert_eq!(
            message(parse(br#"{"schemaVersion":2,"layers":[]}"#, "")),
            "malformed manifest: no config descriptor"
        );
        assert_eq!(
            message(parse(b"{}", DOCKER_V1_SIGNED)),
            "malformed manifest: Docker schema 1 manifests are not supported"
        );
    }

    #[test]
    fn index_entries_berth_cannot_pull() {
        let (_, arch, variant) = host_platform();
        let entry = |digest: &str, size: i64, arch: &str| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{size},
                   "platform":{{"architecture":"{arch}","os":"linux"{}}}}}"#,
                variant
                    .map(|v| format!(r#","variant":"{v}""#))
                    .unwrap_or_default()
            )
        };
        let index = |entries: &[String]| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                entries.join(",")
            )
        };
        // For another platform: left out, the index is fine.
        let doc = index(&[
            entry("sha256:xx", 1, "s390x"),
            entry(&hex(2), -1, "s390x"),
            entry(&hex(3), 1, arch),
        ]);
        let Parsed::Index(list) = parse(doc.as_bytes(), "").unwrap() else {
            panic!()
        };
        assert_eq!(list.len(), 1);
        assert_eq!(select_platform(&list).unwrap().digest().to_string(), hex(3));
        // The one this machine would pull: the parse fails.
        let doc = index(&[entry(&hex(2), -1, arch), entry(&hex(3), 1, arch)]);
        assert!(message(parse(doc.as_bytes(), "")).contains("index entry for linux/"));
        // An entry without a size is no descriptor at all, as before.
        let doc = index(&[format!(r#"{{"digest":"{}"}}"#, hex(1))]);
        assert!(parse(doc.as_bytes(), "").is_err());
    }
}
