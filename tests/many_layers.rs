//! Issue 18, item 3: an image with 127 layers (Docker's maximum) pushed to
//! a local docker-registry, pulled and run through berthd (CRI) and through
//! the shim under containerd (`ctr`). The overlay's `lowerdir=` string is
//! far longer than the kernel's one page of mount options.

#[path = "common/busybox_archive.rs"]
mod busybox_archive;
mod common;
#[path = "common/containerd.rs"]
mod containerd;

use anyhow::Result;
use common::cri_images::{pull, push};
use common::cri_pods::{
    PodEnv, container_config, create_container, log_text, run_pod, stop_and_remove_pod, wait_exited,
};
use common::oci_image::{Compression, Format, LayerBuilder, host_arch, image_with_config};
use common::registry::Registry;
use k8s_cri::v1 as cri;

const LAYERS: usize = 127;

/// busybox, then 126 layers that each add `/layers/NNN`.
fn many_layer_image() -> common::oci_image::Image {
    let mut layers = vec![LayerBuilder::new().busybox().finish(Compression::Gzip)];
    for i in 1..LAYERS {
        layers.push(
            LayerBuilder::new()
                .dir("layers")
                .file(
                    &format!("layers/{i:03}"),
                    format!("{i}\n").as_bytes(),
                    0o644,
                )
                .finish(Compression::Gzip),
        );
    }
    image_with_config(
        layers,
        Format::Oci,
        host_arch(),
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
    )
}

/// What the container prints: the count of layer files, the first, the last.
const SCRIPT: &str = "set -- /layers/*; echo $#; cat /layers/001 /layers/126";

fn expected() -> String {
    format!("{}\n1\n126", LAYERS - 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_127_layer_image_runs_through_berthd() -> Result<()> {
    let registry = Registry::start()?;
    let image = many_layer_image();
    let reference = push(&registry, "berth-test/many", "v127", &image).await?;
    let env = PodEnv::new("layers", 43)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let cfg = env.pod_config("layers", true);
    let pod = run_pod(&mut rt, &cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &cfg,
        container_config("many", &reference, SCRIPT),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let st = wait_exited(&mut rt, &c).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let out = log_text(std::path::Path::new(&st.log_path));
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>().join("\n"),
        expected()
    );
    stop_and_remove_pod(&mut rt, &pod).await?;
    Ok(())
}

#[test]
fn a_127_layer_image_runs_under_containerd() -> Result<()> {
    let tokio = tokio::runtime::Runtime::new()?;
    let registry = Registry::start()?;
    let image = many_layer_image();
    let reference = tokio.block_on(push(&registry, "berth-test/many", "v127", &image))?;
    let c = containerd::Containerd::start()?;
    c.ctr_ok(&["images", "pull", "--plain-http", &reference])?;
    let id = containerd::unique("many");
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        containerd::BERTH_RUNTIME,
        &reference,
        &id,
        "/bin/sh",
        "-c",
        SCRIPT,
    ])?;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>().join("\n"),
        expected()
    );
    c.assert_no_leftovers(&[&id]);
    Ok(())
}
