//! A registry serving a corrupted blob: berthd refuses the pull and stores
//! nothing; once the registry serves the right bytes again, the pull works.

mod common;

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{busybox_image, list, pull, push, status};
use common::oci_image::Compression;
use common::registry::Registry;
use tonic::Code;

#[tokio::test]
async fn corrupted_layer_is_refused_and_nothing_stored() -> Result<()> {
    let registry = Registry::start()?;
    // Uncompressed layers: a flipped byte inside busybox keeps the archive
    // well-formed and the length equal, so only the digest check can catch it.
    let image = busybox_image("", "corrupt", Compression::None);
    push(&registry, "berth-test/corrupt", "v1", &image).await?;
    let reference = format!("{}/berth-test/corrupt:v1", registry.host);

    let layer = &image.layers[0];
    let data_path = registry.blob_path(&layer.digest);
    let mut corrupted = std::fs::read(&data_path)?;
    assert_eq!(corrupted, layer.blob, "registry stores the blob verbatim");
    let at = 512 + 4096; // inside bin/busybox's content, past its tar header
    corrupted[at] ^= 0xff;
    std::fs::write(&data_path, &corrupted)?;

    let dirs = BerthdDirs::new("img-corrupt")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;
    let err = pull(&mut images, &reference, None)
        .await
        .expect_err("corrupt blob must be refused");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains(&layer.digest),
        "names the blob: {}",
        err.message()
    );
    assert!(list(&mut images).await?.is_empty(), "nothing stored");
    assert!(status(&mut images, &reference).await?.is_none());
    assert!(
        status(&mut images, image.config_digest.as_str())
            .await?
            .is_none()
    );

    // The registry is repaired: the same pull now succeeds.
    std::fs::write(&data_path, &layer.blob)?;
    assert_eq!(
        pull(&mut images, &reference, None).await?,
        image.config_digest.as_str()
    );
    Ok(())
}
