//! Short forms of the CRI ImageService calls the image tests make.

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::Status;
use tonic::transport::Channel;

pub type Images = ImageServiceClient<Channel>;

pub fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

/// PullImage; returns the image ref berthd answers.
pub async fn pull(
    images: &mut Images,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, Status> {
    let resp = images
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(resp.into_inner().image_ref)
}

/// ImageStatus (not verbose); `None` when berthd does not have it.
pub async fn status(images: &mut Images, image: &str) -> Result<Option<cri::Image>, Status> {
    Ok(images
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

pub async fn list(images: &mut Images) -> Result<Vec<cri::Image>, Status> {
    Ok(images
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images)
}

pub async fn remove(images: &mut Images, image: &str) -> Result<(), Status> {
    images
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await?;
    Ok(())
}

/// (used bytes, inodes used) of the image filesystem.
pub async fn fs_usage(images: &mut Images) -> Result<(u64, u64), Status> {
    let info = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let fs = info
        .image_filesystems
        .first()
        .ok_or_else(|| Status::internal("ImageFsInfo returned no image filesystem"))?;
    Ok((
        fs.used_bytes.map(|v| v.value).unwrap_or_default(),
        fs.inodes_used.map(|v| v.value).unwrap_or_default(),
    ))
}

pub fn basic_auth(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.to_owned(),
        password: password.to_owned(),
        ..Default::default()
    })
}

/// A two-layer OCI image for the CRI tests: busybox, then a small layer
/// with /etc/berth-test-image holding `marker` (which makes ids distinct);
/// `config.User` is `user`.
pub fn busybox_image(
    user: &str,
    marker: &str,
    compression: super::oci_image::Compression,
) -> super::oci_image::Image {
    use super::oci_image::{Format, LayerBuilder, host_arch, image_with_config};
    let layers = vec![
        LayerBuilder::new().busybox().finish(compression),
        LayerBuilder::new()
            .dir("etc")
            .file(
                "etc/berth-test-image",
                format!("{marker}\n").as_bytes(),
                0o644,
            )
            .finish(compression),
    ];
    image_with_config(
        layers,
        Format::Oci,
        host_arch(),
        serde_json::json!({
            "User": user,
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"berth.test/marker": marker},
        }),
    )
}

/// busybox, then `extra` on top (applet links, files the test needs); PATH
/// is /bin and the command /bin/sh.
pub fn busybox_with_layer(extra: super::oci_image::LayerBuilder) -> super::oci_image::Image {
    use super::oci_image::{Compression, Format, LayerBuilder, host_arch, image_with_config};
    image_with_config(
        vec![
            LayerBuilder::new().busybox().finish(Compression::Gzip),
            extra.finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
    )
}

/// Pushes `image` as `repo:tag` and returns its reference
/// (`127.0.0.1:<port>/<repo>:<tag>`).
pub async fn push(
    registry: &super::registry::Registry,
    repo: &str,
    tag: &str,
    image: &super::oci_image::Image,
) -> anyhow::Result<String> {
    super::oci_image::push(&registry.pusher(), repo, Some(tag), image).await?;
    Ok(format!("{}/{repo}:{tag}", registry.host))
}
