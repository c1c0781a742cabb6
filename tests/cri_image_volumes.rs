//! Image volumes (`Mount.image`, KEP-4639) through the CRI against a real
//! berthd, real images from a real registry and real containers: a pulled
//! image's layers are mounted read-only at the container path (one layer:
//! a read-only bind; several: a read-only overlay), shared by the pod's
//! containers, unmounted when the last container using it is removed and
//! with the pod; an image that is not present is NotFound.

mod common;

use std::path::Path;

use anyhow::Result;
use common::cri_images::pull;
use common::cri_pods::{
    PodEnv, container_config, create_container, log_text, mounts_containing, stop_and_remove_pod,
    wait_exited,
};
use common::oci_image::{Compression, Format, LayerBuilder, host_arch, image_with_config};
use common::registry::Registry;
use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

fn image_mount(path: &str, image: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_pulled_images_read_only() -> Result<()> {
    let registry = Registry::start()?;
    let env = PodEnv::new("imagevol", 1)?;
    let busybox = common::cri_images::busybox_with_layer(LayerBuilder::new().dir("tmp"));
    let busybox = common::cri_images::push(&registry, "berth-test/iv", "busybox", &busybox).await?;
    let config = serde_json::json!({"Cmd": ["/none"]});
    // One layer: data files only.
    let single = image_with_config(
        vec![
            LayerBuilder::new()
                .dir("docs")
                .file("docs/hello", b"from the single-layer image\n", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
        config.clone(),
    );
    let single = common::cri_images::push(&registry, "berth-test/iv", "single", &single).await?;
    // Two layers: the top one overrides a file of the bottom one.
    let layered = image_with_config(
        vec![
            LayerBuilder::new()
                .file("a", b"bottom a\n", 0o644)
                .file("b", b"bottom b\n", 0o644)
                .finish(Compression::Gzip),
            LayerBuilder::new()
                .file("b", b"top b\n", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
        config,
    );
    let layered = common::cri_images::push(&registry, "berth-test/iv", "layered", &layered).await?;
    let mut berthd = env.start()?;
    let mut images = berthd.images().await?;
    for r in [&busybox, &single, &layered] {
        pull(&mut images, r, None).await?;
    }
    let mut rt = berthd.runtime().await?;

    let pod_cfg = env.pod_config("iv", false);
    let pod = common::cri_pods::run_pod(&mut rt, &pod_cfg).await?;
    // The CRI names the image by the PullImage answer (its ref or id).
    let mut reader = container_config(
        "reader",
        &busybox,
        "cat /vol/docs/hello /layers/a /layers/b; \
         if (echo x > /vol/new) 2>/dev/null; then echo WRITABLE; else echo read-only; fi",
    );
    // readonly false as asked: an image volume is read-only whatever.
    let mut writable_ask = image_mount("/vol", &single);
    writable_ask.readonly = false;
    reader.mounts = vec![writable_ask, image_mount("/layers", &layered)];
    let reader_id = create_container(&mut rt, &pod, &pod_cfg, reader).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: reader_id.clone(),
    })
    .await?;
    let st = wait_exited(&mut rt, &reader_id).await?;
    let log = log_text(Path::new(&st.log_path));
    assert_eq!(st.exit_code, 0, "{log}");
    for want in [
        "from the single-layer image",
        "bottom a",
        "top b",
        "read-only",
    ] {
        assert!(log.contains(want), "{want:?} in {log}");
    }
    assert!(
        !log.contains("bottom b") && !log.contains("WRITABLE"),
        "{log}"
    );

    // A second container shares the pod's mount of the single-layer image.
    let mut sharer = container_config("sharer", &busybox, "cat /v/docs/hello; sleep 1000");
    sharer.mounts = vec![image_mount("/v", &single)];
    let sharer_id = create_container(&mut rt, &pod, &pod_cfg, sharer).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: sharer_id.clone(),
    })
    .await?;
    let volumes = || mounts_containing(&format!("{pod}/image-volumes/"));
    assert_eq!(volumes().len(), 2, "one mount per image: {:?}", volumes());

    // Removing the reader unmounts only what no other container uses.
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: reader_id.clone(),
    })
    .await?;
    assert_eq!(
        volumes().len(),
        1,
        "the shared image stays: {:?}",
        volumes()
    );
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: sharer_id.clone(),
    })
    .await?;
    assert!(volumes().is_empty(), "{:?}", volumes());

    // An image that was never pulled: NotFound, naming the image volume.
    let mut missing = container_config("missing", &busybox, "true");
    missing.mounts = vec![image_mount("/m", "127.0.0.1:1/berth-test/not-pulled:1")];
    let err = create_container(&mut rt, &pod, &pod_cfg, missing)
        .await
        .expect_err("an image volume of an absent image")
        .downcast::<tonic::Status>()
        .map_err(|e| anyhow::anyhow!("not a status: {e:#}"))?;
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("image volume"), "{err:?}");
    // A host path beside the image is refused.
    let mut both = container_config("both", &busybox, "true");
    let mut m = image_mount("/b", &single);
    m.host_path = "/tmp".into();
    both.mounts = vec![m];
    let err = create_container(&mut rt, &pod, &pod_cfg, both)
        .await
        .expect_err("host path and image")
        .downcast::<tonic::Status>()
        .map_err(|e| anyhow::anyhow!("not a status: {e:#}"))?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // The pod's removal unmounts whatever is left.
    let mut last = container_config("last", &busybox, "sleep 1000");
    last.mounts = vec![image_mount("/l", &layered)];
    let last_id = create_container(&mut rt, &pod, &pod_cfg, last).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: last_id,
    })
    .await?;
    assert_eq!(volumes().len(), 1);
    stop_and_remove_pod(&mut rt, &pod).await?;
    assert!(volumes().is_empty(), "{:?}", volumes());
    assert!(env.remove_cgroup_parent().is_empty(), "no cgroup left");
    let _ = images;
    berthd.stop(Signal::SIGTERM)?;
    Ok(())
}
