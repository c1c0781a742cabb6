//! Pure conversions between CRI image messages and the image store's types.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_cri::v1 as cri;
use tonic::Status;

use crate::cri::error::invalid_argument;
use crate::image::{FsUsage, ImageRecord, RegistryAuth};

/// The default user of an image, as CRI wants it: a numeric uid or a name,
/// never both (CRI `Image.uid` / `Image.username`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    None,
    Uid(i64),
    Name(String),
}

/// Reads `config.User` of an OCI image configuration. `user`, `user:group`,
/// `uid` and `uid:gid` are all valid; only the user part matters here.
pub fn image_user(config_json: &[u8]) -> ImageUser {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(config_json) else {
        return ImageUser::None;
    };
    let Some(user) = value
        .get("config")
        .and_then(|c| c.get("User"))
        .and_then(|u| u.as_str())
    else {
        return ImageUser::None;
    };
    let user = user.split(':').next().unwrap_or_default().trim();
    if user.is_empty() {
        return ImageUser::None;
    }
    match user.parse::<i64>() {
        Ok(uid) if uid >= 0 => ImageUser::Uid(uid),
        Ok(_) => ImageUser::None,
        Err(_) => ImageUser::Name(user.to_owned()),
    }
}

/// The CRI `Image` message for a stored image.
pub fn to_cri_image(record: &ImageRecord) -> cri::Image {
    let (uid, username) = match image_user(&record.config_json) {
        ImageUser::None => (None, String::new()),
        ImageUser::Uid(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        ImageUser::Name(name) => (None, name),
    };
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: record.pinned,
    }
}

/// The `info` map of a verbose ImageStatus: one key, `info`, holding a JSON
/// object with the image id, its chain IDs and its configuration (what
/// `crictl inspecti` prints).
pub fn verbose_info(record: &ImageRecord) -> HashMap<String, String> {
    let image_spec = serde_json::from_slice::<serde_json::Value>(&record.config_json)
        .unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&record.config_json).into_owned())
        });
    let info = serde_json::json!({
        "id": record.id,
        "chainIDs": record.chain_ids,
        "pinned": record.pinned,
        "imageSpec": image_spec,
    });
    HashMap::from([("info".to_owned(), info.to_string())])
}

/// The image reference of a request's `ImageSpec`, which CRI requires.
pub fn required_image_ref(spec: Option<&cri::ImageSpec>, call: &str) -> Result<String, Status> {
    let image = spec.map(|s| s.image.trim()).unwrap_or_default();
    if image.is_empty() {
        return Err(invalid_argument(format!(
            "{call}: the image spec is missing or names no image"
        )));
    }
    check_runtime_handler(spec, call)?;
    Ok(image.to_owned())
}

/// CRI: "If the runtime handler is unknown, the request should be
/// rejected." berth has one handler, the default (empty name).
pub fn check_runtime_handler(spec: Option<&cri::ImageSpec>, call: &str) -> Result<(), Status> {
    match spec.map(|s| s.runtime_handler.as_str()) {
        None | Some("") => Ok(()),
        Some(other) => Err(invalid_argument(format!(
            "{call}: unknown runtime handler {other:?}; berth has only the default handler (empty name)"
        ))),
    }
}

/// Decodes a CRI `AuthConfig` into credentials for one pull. An empty
/// config means an anonymous pull (`None`). A Docker-style `auth` field
/// (base64 of `user:password`) fills username and password when they are
/// not given separately; it must decode, or the request is refused.
pub fn decode_auth(auth: Option<&cri::AuthConfig>) -> Result<Option<RegistryAuth>, Status> {
    let Some(a) = auth else { return Ok(None) };
    if a.username.is_empty()
        && a.password.is_empty()
        && a.auth.is_empty()
        && a.identity_token.is_empty()
        && a.registry_token.is_empty()
    {
        return Ok(None);
    }
    let mut out = RegistryAuth {
        username: a.username.clone(),
        password: a.password.clone(),
        auth: a.auth.clone(),
        identity_token: a.identity_token.clone(),
        registry_token: a.registry_token.clone(),
    };
    if !a.auth.is_empty() {
        let (user, password) = decode_basic_auth(&a.auth)?;
        if out.username.is_empty() && out.password.is_empty() {
            out.username = user;
            out.password = password;
        }
    }
    Ok(Some(out))
}

/// `base64("user:password")` → (user, password).
fn decode_basic_auth(encoded: &str) -> Result<(String, String), Status> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| invalid_argument(format!("PullImage: auth.auth is not valid base64: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid_argument("PullImage: auth.auth does not decode to UTF-8 text"))?;
    let (user, password) = text.split_once(':').ok_or_else(|| {
        invalid_argument("PullImage: auth.auth must be base64 of \"username:password\"")
    })?;
    if user.is_empty() {
        return Err(invalid_argument(
            "PullImage: auth.auth holds an empty username",
        ));
    }
    Ok((user.to_owned(), password.to_owned()))
}

/// A CRI `FilesystemUsage` for the filesystem at `mountpoint`.
pub fn filesystem_usage(mountpoint: &Path, usage: FsUsage, at: SystemTime) -> cri::FilesystemUsage {
    let timestamp = at
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(1)
        .max(1);
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: usage.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: usage.inodes_used,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn record(config: serde_json::Value) -> ImageRecord {
        ImageRecord {
            id: "sha256:aaaa".into(),
            repo_tags: vec!["127.0.0.1:5000/t/app:v1".into()],
            repo_digests: vec!["127.0.0.1:5000/t/app@sha256:bbbb".into()],
            size: 1234,
            config_json: serde_json::to_vec(&config).unwrap(),
            chain_ids: vec!["sha256:cccc".into()],
            pinned: false,
        }
    }

    fn with_user(user: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"config": {"User": user}})).unwrap()
    }

    #[test]
    fn user_forms() {
        assert_eq!(image_user(&with_user("")), ImageUser::None);
        assert_eq!(image_user(&with_user("0")), ImageUser::Uid(0));
        assert_eq!(image_user(&with_user("1234")), ImageUser::Uid(1234));
        assert_eq!(image_user(&with_user("1234:5")), ImageUser::Uid(1234));
        assert_eq!(
            image_user(&with_user("nobody")),
            ImageUser::Name("nobody".into())
        );
        assert_eq!(
            image_user(&with_user("www-data:www-data")),
            ImageUser::Name("www-data".into())
        );
        assert_eq!(image_user(&with_user(":5")), ImageUser::None);
        assert_eq!(image_user(b"{}"), ImageUser::None);
        assert_eq!(image_user(b"not json"), ImageUser::None);
    }

    #[test]
    fn cri_image_fields() {
        let img = to_cri_image(&record(serde_json::json!({"config": {"User": "1000"}})));
        assert_eq!(img.id, "sha256:aaaa");
        assert_eq!(img.repo_tags, vec!["127.0.0.1:5000/t/app:v1"]);
        assert_eq!(img.repo_digests, vec!["127.0.0.1:5000/t/app@sha256:bbbb"]);
        assert_eq!(img.size, 1234);
        assert_eq!(img.uid, Some(cri::Int64Value { value: 1000 }));
        assert_eq!(img.username, "");
        assert_eq!(img.spec.unwrap().image, "sha256:aaaa");
        assert!(!img.pinned);

        let named = to_cri_image(&record(serde_json::json!({"config": {"User": "nobody"}})));
        assert_eq!(named.uid, None);
        assert_eq!(named.username, "nobody");
    }

    #[test]
    fn verbose_info_holds_the_config() {
        let info = verbose_info(&record(serde_json::json!({
            "architecture": "amd64", "config": {"Cmd": ["sh"]}
        })));
        let value: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
        assert_eq!(value["id"], "sha256:aaaa");
        assert_eq!(value["imageSpec"]["architecture"], "amd64");
        assert_eq!(value["imageSpec"]["config"]["Cmd"][0], "sh");
        assert_eq!(value["chainIDs"][0], "sha256:cccc");
    }

    #[test]
    fn image_ref_is_required() {
        assert_eq!(
            required_image_ref(None, "PullImage").unwrap_err().code(),
            Code::InvalidArgument
        );
        let blank = cri::ImageSpec {
            image: "  ".into(),
            ..Default::default()
        };
        let err = required_image_ref(Some(&blank), "PullImage").unwrap_err();
        assert!(err.message().contains("PullImage"));
        let ok = cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        };
        assert_eq!(
            required_image_ref(Some(&ok), "PullImage").unwrap(),
            "busybox"
        );
    }

    #[test]
    fn empty_auth_is_anonymous() {
        assert_eq!(decode_auth(None).unwrap(), None);
        assert_eq!(
            decode_auth(Some(&cri::AuthConfig::default())).unwrap(),
            None
        );
        let only_server = cri::AuthConfig {
            server_address: "127.0.0.1:5000".into(),
            ..Default::default()
        };
        assert_eq!(decode_auth(Some(&only_server)).unwrap(), None);
    }

    #[test]
    fn username_password_pass_through() {
        let a = decode_auth(Some(&cri::AuthConfig {
            username: "u".into(),
            password: "p:w".into(),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:w"));
    }

    #[test]
    fn auth_field_is_decoded() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let a = decode_auth(Some(&cri::AuthConfig {
            auth: encoded.clone(),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(a.username, "alice");
        assert_eq!(a.password, "s3cr:et");
        assert_eq!(a.auth, encoded);
    }

    #[test]
    fn bad_auth_field_is_refused() {
        for bad in [
            "%%%".to_owned(),
            base64::engine::general_purpose::STANDARD.encode("no-colon"),
            base64::engine::general_purpose::STANDARD.encode(":pw"),
        ] {
            let err = decode_auth(Some(&cri::AuthConfig {
                auth: bad.clone(),
                ..Default::default()
            }))
            .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
            assert!(err.message().contains("auth"), "{}", err.message());
        }
    }

    #[test]
    fn tokens_pass_through() {
        let a = decode_auth(Some(&cri::AuthConfig {
            identity_token: "idt".into(),
            registry_token: "rt".into(),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(a.identity_token, "idt");
        assert_eq!(a.registry_token, "rt");
        assert!(a.username.is_empty());
    }

    #[test]
    fn filesystem_usage_fields() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(10);
        let fs = filesystem_usage(
            Path::new("/var/lib/berth/images"),
            FsUsage {
                used_bytes: 42,
                inodes_used: 7,
            },
            at,
        );
        assert_eq!(fs.timestamp, 10_000_000_000);
        assert_eq!(fs.fs_id.unwrap().mountpoint, "/var/lib/berth/images");
        assert_eq!(fs.used_bytes.unwrap().value, 42);
        assert_eq!(fs.inodes_used.unwrap().value, 7);
    }
}
