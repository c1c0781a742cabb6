//! The CRI ImageService of berthd against a real registry (Debian's
//! docker-registry on 127.0.0.1) holding images the test builds from
//! busybox-static: pull, list, status, remove, untag, GC, errors.

mod common;

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{busybox_image, fs_usage, list, pull, push, remove, spec, status};
use common::oci_image::Compression;
use common::registry::Registry;
use k8s_cri::v1 as cri;
use tonic::Code;

#[tokio::test]
async fn pull_list_status_remove() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("1234", "pull-basic", Compression::Gzip);
    push(&registry, "berth-test/app", "v1", &image).await?;
    let reference = format!("{}/berth-test/app:v1", registry.host);
    let digest_ref = format!("{}/berth-test/app@{}", registry.host, image.manifest_digest);

    let dirs = BerthdDirs::new("img-basic")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;

    assert!(
        status(&mut images, &reference).await?.is_none(),
        "nothing before the pull"
    );
    let image_ref = pull(&mut images, &reference, None).await?;
    assert_eq!(
        image_ref,
        image.config_digest.as_str(),
        "PullImage returns the image id"
    );

    let all = list(&mut images).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    let listed = &all[0];
    assert_eq!(listed.id, image.config_digest.as_str());
    assert!(
        listed.repo_tags.contains(&reference),
        "{:?}",
        listed.repo_tags
    );
    assert!(
        listed.repo_digests.contains(&digest_ref),
        "{:?}",
        listed.repo_digests
    );
    assert!(listed.size > 0);
    assert_eq!(listed.uid, Some(cri::Int64Value { value: 1234 }));
    assert_eq!(listed.username, "");
    assert_eq!(
        listed.spec.as_ref().map(|s| s.image.as_str()),
        Some(image.config_digest.as_str())
    );

    // Every name of the image finds it: tag, id, digest reference.
    for name in [
        reference.as_str(),
        image.config_digest.as_str(),
        digest_ref.as_str(),
    ] {
        let found = status(&mut images, name).await?;
        assert_eq!(
            found.map(|i| i.id),
            Some(image.config_digest.as_str().to_owned()),
            "ImageStatus({name})"
        );
    }

    // Verbose status carries the image config.
    let verbose = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&image_ref),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(verbose.info.get("info").expect("verbose info"))?;
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(
        info["imageSpec"]["config"]["Labels"]["berth.test/marker"],
        "pull-basic"
    );

    // Filtered list.
    let filtered = images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&reference),
            }),
        })
        .await?
        .into_inner()
        .images;
    assert_eq!(
        filtered.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![image.config_digest.as_str()]
    );
    let none = images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&format!("{}/berth-test/other:v1", registry.host)),
            }),
        })
        .await?
        .into_inner()
        .images;
    assert!(none.is_empty(), "{none:?}");

    // Pulling again is idempotent.
    assert_eq!(pull(&mut images, &reference, None).await?, image_ref);
    assert_eq!(list(&mut images).await?.len(), 1);

    remove(&mut images, &reference).await?;
    assert!(status(&mut images, &reference).await?.is_none());
    assert!(
        status(&mut images, image.config_digest.as_str())
            .await?
            .is_none()
    );
    assert!(list(&mut images).await?.is_empty());
    // Removing what is not there is success (CRI).
    remove(&mut images, &reference).await?;
    remove(&mut images, image.config_digest.as_str()).await?;
    Ok(())
}

#[tokio::test]
async fn named_user_is_reported_as_username() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("nobody:nogroup", "named-user", Compression::Gzip);
    push(&registry, "berth-test/named", "latest", &image).await?;
    let dirs = BerthdDirs::new("img-user")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;
    pull(
        &mut images,
        &format!("{}/berth-test/named:latest", registry.host),
        None,
    )
    .await?;
    let img = status(&mut images, image.config_digest.as_str())
        .await?
        .expect("pulled");
    assert_eq!(img.username, "nobody");
    assert_eq!(img.uid, None);
    Ok(())
}

#[tokio::test]
async fn untag_keeps_image_until_last_name_or_id_removed() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("", "two-tags", Compression::Gzip);
    push(&registry, "berth-test/tags", "v1", &image).await?;
    registry
        .pusher()
        .push_manifest(
            "berth-test/tags",
            "v2",
            &image.manifest_media_type,
            &image.manifest,
        )
        .await?;
    let v1 = format!("{}/berth-test/tags:v1", registry.host);
    let v2 = format!("{}/berth-test/tags:v2", registry.host);

    let dirs = BerthdDirs::new("img-tags")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;
    assert_eq!(
        pull(&mut images, &v1, None).await?,
        image.config_digest.as_str()
    );
    assert_eq!(
        pull(&mut images, &v2, None).await?,
        image.config_digest.as_str()
    );
    let all = list(&mut images).await?;
    assert_eq!(all.len(), 1, "one image with two tags: {all:?}");
    assert!(
        all[0].repo_tags.contains(&v1) && all[0].repo_tags.contains(&v2),
        "{:?}",
        all[0].repo_tags
    );

    remove(&mut images, &v1).await?;
    let left = status(&mut images, image.config_digest.as_str())
        .await?
        .expect("still tagged v2");
    assert_eq!(left.repo_tags, vec![v2.clone()]);
    assert!(status(&mut images, &v1).await?.is_none());

    // Re-tag, then removal by id removes the image with all its tags.
    pull(&mut images, &v1, None).await?;
    remove(&mut images, image.config_digest.as_str()).await?;
    assert!(list(&mut images).await?.is_empty());
    assert!(status(&mut images, &v2).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn removed_images_are_garbage_collected() -> Result<()> {
    let registry = Registry::start()?;
    let a = busybox_image("", "gc-a", Compression::Gzip);
    let b = busybox_image("", "gc-b", Compression::Gzip);
    push(&registry, "berth-test/gc-a", "v1", &a).await?;
    push(&registry, "berth-test/gc-b", "v1", &b).await?;

    let dirs = BerthdDirs::new("img-gc")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;

    let info = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let fs = info.image_filesystems.first().expect("an image filesystem");
    assert!(fs.timestamp > 0);
    let mountpoint = fs.fs_id.as_ref().expect("fs_id").mountpoint.clone();
    assert!(
        std::path::Path::new(&mountpoint).starts_with(&dirs.root),
        "{mountpoint} not under {}",
        dirs.root.display()
    );
    assert!(!info.container_filesystems.is_empty());
    let (bytes_empty, inodes_empty) = fs_usage(&mut images).await?;

    pull(
        &mut images,
        &format!("{}/berth-test/gc-a:v1", registry.host),
        None,
    )
    .await?;
    let (bytes_one, inodes_one) = fs_usage(&mut images).await?;
    pull(
        &mut images,
        &format!("{}/berth-test/gc-b:v1", registry.host),
        None,
    )
    .await?;
    let (bytes_two, inodes_two) = fs_usage(&mut images).await?;
    assert!(bytes_one > bytes_empty && inodes_one > inodes_empty);
    // The busybox layer is shared: the second image adds far less than the
    // first (its config, manifest and the small marker layer).
    assert!(bytes_two > bytes_one);
    assert!(
        bytes_two - bytes_one < bytes_one - bytes_empty,
        "shared layer stored twice? empty {bytes_empty}, one {bytes_one}, two {bytes_two}"
    );

    // Removing one image keeps the shared layer for the other.
    remove(&mut images, a.config_digest.as_str()).await?;
    let (bytes_b, _) = fs_usage(&mut images).await?;
    assert!(bytes_b < bytes_two);
    assert!(
        bytes_b > bytes_empty + (bytes_two - bytes_one),
        "shared layer must stay for b"
    );
    assert!(
        status(&mut images, b.config_digest.as_str())
            .await?
            .is_some()
    );

    remove(&mut images, b.config_digest.as_str()).await?;
    let (bytes_none, inodes_none) = fs_usage(&mut images).await?;
    assert!(
        bytes_none < bytes_b && inodes_none < inodes_two,
        "content of removed images is collected: empty {bytes_empty}/{inodes_empty}, two {bytes_two}/{inodes_two}, none {bytes_none}/{inodes_none}"
    );
    // Nothing of either image remains: usage is back to about the empty store.
    assert!(
        bytes_none <= bytes_empty + (bytes_one - bytes_empty) / 10,
        "empty {bytes_empty}, none {bytes_none}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_image_and_bad_requests() -> Result<()> {
    let registry = Registry::start()?;
    let dirs = BerthdDirs::new("img-errors")?;
    let berthd = Berthd::start(&dirs)?;
    let mut images = berthd.images().await?;

    let missing = format!("{}/berth-test/absent:v1", registry.host);
    let err = pull(&mut images, &missing, None)
        .await
        .expect_err("no such image");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("berth-test/absent"),
        "{}",
        err.message()
    );

    let err = pull(&mut images, "Not A Valid::Reference", None)
        .await
        .expect_err("bad reference");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = images
        .pull_image(cri::PullImageRequest::default())
        .await
        .expect_err("no image spec");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = images
        .image_status(cri::ImageStatusRequest::default())
        .await
        .expect_err("no image spec");
    assert_eq!(err.code(), Code::InvalidArgument);

    assert!(
        list(&mut images).await?.is_empty(),
        "failed pulls store nothing"
    );
    Ok(())
}
