//! A registry serving a corrupted blob: berthd refuses the pull and stores
//! nothing; once the registry serves the right bytes again, the pull works.

mod common;

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{list, pull, status};
use common::oci_image::{ImageSpec, busybox_image};
use common::registry::Registry;
use tonic::Code;

#[tokio::test]
async fn corrupted_layer_is_refused_and_nothing_stored() -> Result<()> {
    let registry = Registry::start()?;
    // Uncompressed layers: a flipped byte inside busybox keeps the archive
    // well-formed and the length equal, so only the digest check can catch it.
    let image = busybox_image(&ImageSpec {
        marker: "corrupt",
        uncompressed: true,
        ..Default::default()
    })?;
    registry.push_image("berth-test/corrupt", "v1", &image)?;
    let reference = registry.reference("berth-test/corrupt", "v1");

    let layer = &image.layers[0];
    let data_path = registry.blob_data_path(&layer.digest);
    let mut corrupted = std::fs::read(&data_path)?;
    assert_eq!(corrupted, layer.bytes, "registry stores the blob verbatim");
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
    assert!(status(&mut images, image.id()).await?.is_none());

    // The registry is repaired: the same pull now succeeds.
    std::fs::write(&data_path, &layer.bytes)?;
    assert_eq!(pull(&mut images, &reference, None).await?, image.id());
    Ok(())
}
