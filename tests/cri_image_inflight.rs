//! SIGTERM while a PullImage is in flight: berthd stops accepting, lets the
//! pull finish and answer, then exits and removes its socket; the pulled
//! image is durable.

mod common;

use anyhow::Result;
use common::berthd::{Berthd, BerthdDirs};
use common::cri_images::{busybox_image, list, pull, push};
use common::gate_proxy::GateProxy;
use common::oci_image::Compression;
use common::registry::Registry;
use nix::sys::signal::Signal;

/// The fixture itself: manifests pass, a blob request is held until released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_proxy_holds_blob_requests_until_released() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("", "gate", Compression::Gzip);
    push(&registry, "berth-test/gate", "v1", &image).await?;
    let proxy = GateProxy::start(&registry.host)?;
    let http = reqwest::Client::new();
    let manifest = http
        .get(format!(
            "http://{}/v2/berth-test/gate/manifests/v1",
            proxy.addr
        ))
        .header("Accept", &image.manifest_media_type)
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(manifest.as_ref(), image.manifest.as_slice());
    let url = format!(
        "http://{}/v2/berth-test/gate/blobs/{}",
        proxy.addr, image.config_digest
    );
    let held = tokio::spawn(async move { http.get(url).send().await?.bytes().await });
    tokio::task::block_in_place(|| proxy.wait_blob_requested())?;
    proxy.release();
    let blob = held.await??;
    assert_eq!(blob.as_ref(), image.config.as_slice());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_inflight_pull_finish() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("", "inflight", Compression::Gzip);
    push(&registry, "berth-test/inflight", "v1", &image).await?;
    let proxy = GateProxy::start(&registry.host)?;
    let reference = format!("{}/berth-test/inflight:v1", proxy.addr);

    let dirs = BerthdDirs::new("img-inflight")?;
    // A long grace period: this test is about finishing, not about timing.
    let config = dirs.tmp.path().join("berthd.toml");
    std::fs::write(&config, "shutdown_timeout_secs = 600\n")?;
    let mut args = dirs.args();
    args.extend(["--config".to_owned(), config.display().to_string()]);
    let mut berthd = Berthd::start_with(&dirs, args.clone(), &dirs.socket)?;

    let mut images = berthd.images().await?;
    let in_flight = {
        let reference = reference.clone();
        tokio::spawn(async move { pull(&mut images, &reference, None).await })
    };
    tokio::task::block_in_place(|| proxy.wait_blob_requested())?;
    berthd.signal(Signal::SIGTERM)?;
    tokio::task::block_in_place(|| berthd.wait_for_log(|l| l.contains("shutting down")))?;
    proxy.release();

    let image_ref = in_flight.await??;
    assert_eq!(image_ref, image.config_digest.as_str());
    let status = tokio::task::block_in_place(|| berthd.wait_exit())?;
    assert!(
        status.success(),
        "exit {status}; log:\n{}",
        berthd.log_text()
    );
    assert!(!dirs.socket.exists());

    let berthd = Berthd::start_with(&dirs, args, &dirs.socket)?;
    let mut images = berthd.images().await?;
    let ids: Vec<String> = list(&mut images).await?.into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![image.config_digest.as_str().to_owned()]);
    Ok(())
}
