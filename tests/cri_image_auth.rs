//! Pulls through berthd from a registry that requires basic auth
//! (docker-registry with an htpasswd file made by `htpasswd -Bbn`).

mod common;

use anyhow::Result;
use base64::Engine as _;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{basic_auth, busybox_image, list, pull, push, status};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use tonic::Code;

const USER: &str = "berth-tester";
const PASSWORD: &str = "correct horse battery";

fn is_auth_refusal(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test]
async fn auth_registry() -> Result<()> {
    let registry = Registry::start_with_auth(USER, PASSWORD)?;
    let image = busybox_image("", "auth", Compression::Gzip);
    push(&registry, "berth-test/private", "v1", &image).await?;
    let reference = format!("{}/berth-test/private:v1", registry.host);

    let dirs = BerthdDirs::new("img-auth")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;

    // Anonymous: refused.
    let err = pull(&mut images, &reference, None)
        .await
        .expect_err("anonymous pull");
    assert!(is_auth_refusal(err.code()), "{err:?}");

    // Wrong password: refused with a message that says so.
    let err = pull(&mut images, &reference, basic_auth(USER, "wrong password"))
        .await
        .expect_err("wrong password");
    assert!(is_auth_refusal(err.code()), "{err:?}");
    let msg = err.message().to_lowercase();
    assert!(
        msg.contains("auth") || msg.contains("credential"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(&registry.host),
        "names the registry: {}",
        err.message()
    );
    assert!(list(&mut images).await?.is_empty());

    // Username and password.
    assert_eq!(
        pull(&mut images, &reference, basic_auth(USER, PASSWORD)).await?,
        image.config_digest.as_str()
    );
    assert!(status(&mut images, &reference).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn docker_style_auth_field() -> Result<()> {
    let registry = Registry::start_with_auth(USER, PASSWORD)?;
    let image = busybox_image("", "auth-field", Compression::Gzip);
    push(&registry, "berth-test/private", "v2", &image).await?;
    let reference = format!("{}/berth-test/private:v2", registry.host);
    let dirs = BerthdDirs::new("img-authfield")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;

    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auth = cri::AuthConfig {
        auth: encoded,
        server_address: registry.host.clone(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &reference, Some(auth)).await?,
        image.config_digest.as_str()
    );

    // An `auth` field that is not base64 of user:password is a bad request.
    let bad = cri::AuthConfig {
        auth: "not base64!".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(bad))
        .await
        .expect_err("bad auth field");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    Ok(())
}
