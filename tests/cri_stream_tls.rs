//! The streaming server with TLS: a berthd whose `[stream]` table names a
//! self-signed certificate the test makes with the `openssl` CLI hands out
//! https:// URLs; the project's SPDY client, wrapped in a rustls connector
//! that trusts that certificate, runs execs through it (exit codes 0 and
//! 42). Plain HTTP and clients that do not trust the certificate are refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use common::cri_images::{busybox_image, pull, push};
use common::cri_pods::{PodEnv, container_config, create_container, run_pod};
use common::oci_image::Compression;
use common::registry::Registry;
use common::spdy_client::{SpdyClient, http_request};
use k8s_cri::v1 as cri;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A self-signed certificate for 127.0.0.1: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("stream-cert.pem");
    let key = dir.join("stream-key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=berth-stream-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA (webpki refuses a CA certificate as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=digitalSignature"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl (Debian package openssl)")?;
    ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

fn connector(trusted: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    if let Some(cert) = trusted {
        roots.add(CertificateDer::from_pem_file(cert)?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn exec_req(container: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

/// Runs an exec over TLS: (stdout, stderr, error stream as JSON).
async fn exec(url: &str, tls: &TlsConnector) -> Result<(String, String, serde_json::Value)> {
    let c = SpdyClient::connect_tls(url, &["v4.channel.k8s.io"], Some(tls)).await?;
    let mut error = c.open(&[("streamType", "error")]).await?;
    let mut stdout = c.open(&[("streamType", "stdout")]).await?;
    let mut stderr = c.open(&[("streamType", "stderr")]).await?;
    let (out, err, status) = tokio::join!(
        stdout.read_to_end(),
        stderr.read_to_end(),
        error.read_to_end()
    );
    Ok((
        String::from_utf8(out)?,
        String::from_utf8(err)?,
        serde_json::from_slice(&status)
            .with_context(|| format!("error stream {:?}", String::from_utf8_lossy(&status)))?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_tls() -> Result<()> {
    let registry = Registry::start()?;
    let image = busybox_image("0", "stream-tls", Compression::Gzip);
    let reference = push(&registry, "berth-test/stream-tls", "v1", &image).await?;

    let env = PodEnv::new("tls", 11)?;
    let (cert, key) = self_signed(env.dirs.tmp.path())?;
    let mut config = std::fs::read_to_string(&env.config)?;
    config.push_str(&format!(
        "\n[stream]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&env.config, config)?;
    let berthd = env.start()?;
    let mut images = berthd.images().await?;
    pull(&mut images, &reference, None).await?;
    let mut rt = berthd.runtime().await?;
    let pod_cfg = env.pod_config("tlspod", false);
    let pod = run_pod(&mut rt, &pod_cfg).await?;
    let c = container_config("web", &reference, "exec sleep 100000");
    let c = create_container(&mut rt, &pod, &pod_cfg, c).await?;
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    let trusting = connector(Some(&cert))?;

    let url = rt
        .exec(exec_req(&c, &["echo", "hi"]))
        .await?
        .into_inner()
        .url;
    ensure!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (out, err, status) = exec(&url, &trusting).await?;
    assert_eq!(out, "hi\n");
    assert_eq!(err, "");
    assert_eq!(status["status"], "Success");

    let url = rt
        .exec(exec_req(
            &c,
            &["sh", "-c", "echo out; echo err >&2; exit 42"],
        ))
        .await?
        .into_inner()
        .url;
    let (out, err, status) = exec(&url, &trusting).await?;
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["details"]["causes"][0]["message"], "42");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let url = rt.exec(exec_req(&c, &["true"])).await?.into_inner().url;
    let plain = url.replacen("https://", "http://", 1);
    assert!(http_request(&plain, "GET", &[]).await.is_err());
    // A client that does not trust the certificate fails its handshake.
    let untrusting = connector(None)?;
    let err = SpdyClient::connect_tls(&url, &["v4.channel.k8s.io"], Some(&untrusting))
        .await
        .err()
        .context("an untrusted certificate was accepted")?;
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    // The URL was not used up by the failed attempts' requests: it still works.
    let (_, _, status) = exec(&url, &trusting).await?;
    assert_eq!(status["status"], "Success");

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    Ok(())
}
