//! Images survive a restart of berthd (SIGTERM and SIGKILL).

mod common;

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{busybox_image, list, pull, push, remove, status};
use common::oci_image::Compression;
use common::registry::Registry;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_restart() -> Result<()> {
    let registry = Registry::start()?;
    let a = busybox_image("4321", "restart-a", Compression::Gzip);
    let b = busybox_image("", "restart-b", Compression::Gzip);
    push(&registry, "berth-test/restart-a", "v1", &a).await?;
    push(&registry, "berth-test/restart-b", "v1", &b).await?;
    let a_ref = format!("{}/berth-test/restart-a:v1", registry.host);
    let b_ref = format!("{}/berth-test/restart-b:v1", registry.host);

    let dirs = BerthdDirs::new("img-restart")?;
    let mut berthd = Berthd::start(&dirs)?;
    {
        let mut images = berthd.images().await?;
        pull(&mut images, &a_ref, None).await?;
        pull(&mut images, &b_ref, None).await?;
    }
    let before = {
        let mut images = berthd.images().await?;
        let mut all = list(&mut images).await?;
        all.sort_by(|x, y| x.id.cmp(&y.id));
        all
    };
    assert_eq!(before.len(), 2);
    assert!(berthd.stop(Signal::SIGTERM)?.success());

    // Clean restart: the same images, with the same fields.
    let mut berthd = Berthd::start(&dirs)?;
    {
        let mut images = berthd.images().await?;
        let mut after = list(&mut images).await?;
        after.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(after, before);
        remove(&mut images, &b_ref).await?;
    }
    berthd.stop(Signal::SIGKILL)?;

    // Unclean restart: the removal is durable, the other image intact.
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;
    let after = list(&mut images).await?;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, a.config_digest.as_str());
    assert!(status(&mut images, &b_ref).await?.is_none());
    let a_status = status(&mut images, &a_ref).await?.expect("a survives");
    assert_eq!(a_status.uid.map(|u| u.value), Some(4321));
    // And it can still be pulled again / removed after the restarts.
    pull(&mut images, &b_ref, None).await?;
    assert_eq!(list(&mut images).await?.len(), 2);
    Ok(())
}
