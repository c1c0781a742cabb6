//! An image a real builder made: Debian's umoci builds it from
//! busybox-static (`umoci insert`), Debian's skopeo pushes it to the test's
//! registry, and berthd pulls it through the CRI and runs it. umoci 0.4.7
//! ends the tar stream of a layer right after its last entry's data (no
//! padding to 512 bytes, no end-of-archive blocks), which Go's archive/tar,
//! and so containerd, takes as the end of the archive (issue 14).

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use common::cri_images::pull;
use common::cri_pods::{
    PodEnv, container_config, create_container, log_text, run_pod, stop_and_remove_pod, wait_exited,
};
use common::registry::Registry;
use k8s_cri::v1 as cri;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// The tar stream of the image's last layer, decompressed.
fn last_layer_tar(layout: &Path, tag: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let blob = |digest: &str| -> Result<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        Ok(std::fs::read(layout.join("blobs/sha256").join(hex))?)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .context("the tag in index.json")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(manifest["digest"].as_str().context("digest")?)?)?;
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .context("a layer")?;
    let gz = blob(layer["digest"].as_str().context("digest")?)?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar)?;
    Ok(tar)
}

#[tokio::test(flavor = "multi_thread")]
async fn umoci_built_image_pulls_and_runs() -> Result<()> {
    for tool in ["umoci", "skopeo"] {
        if !have(tool) {
            println!("skipped: {tool} is not installed (tests/run-all.sh installs it)");
            return Ok(());
        }
    }
    let registry = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    let image = format!("{}:v1", layout.display());

    // busybox-static and its shell, then a small file as the last layer.
    let root = tmp.path().join("bin");
    std::fs::create_dir(&root)?;
    std::fs::copy("/bin/busybox", root.join("busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("sh"))?;
    let marker = tmp.path().join("marker");
    std::fs::write(&marker, "built by umoci\n")?;
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&root)
        .arg("/bin"))?;
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&marker)
        .arg("/etc/berth-umoci"))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]))?;
    // What makes this image a regression test: the last layer ends right
    // after its file's 15 bytes (a 512-byte header, the data, nothing else).
    let tar = last_layer_tar(&layout, "v1")?;
    if tar.len() % 512 == 0 {
        println!(
            "note: this umoci pads its layers ({} bytes); the image still has to run",
            tar.len()
        );
    } else {
        assert_eq!(
            tar.len(),
            512 + 15,
            "umoci's last layer: one header and the data"
        );
    }

    let reference = format!("{}/berth-test/umoci:v1", registry.host);
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{reference}")))?;

    let env = PodEnv::new("umoci", 22)?;
    let berthd = env.start()?;
    let id = pull(&mut berthd.images().await?, &reference, None).await?;
    assert!(id.starts_with("sha256:"), "{id}");
    let mut rt = berthd.runtime().await?;
    let cfg = env.pod_config("umocipod", false);
    let pod = run_pod(&mut rt, &cfg).await?;
    let c = create_container(
        &mut rt,
        &pod,
        &cfg,
        container_config("cat", &reference, "cat /etc/berth-umoci; busybox | head -1"),
    )
    .await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let s = wait_exited(&mut rt, &c).await?;
    let log = log_text(&env.log_dir.join("umocipod").join("cat/0.log"));
    assert_eq!(s.exit_code, 0, "{s:?}\n{log}");
    assert!(log.contains("built by umoci"), "{log}");
    assert!(log.contains("BusyBox"), "{log}");
    stop_and_remove_pod(&mut rt, &pod).await?;
    Ok(())
}
