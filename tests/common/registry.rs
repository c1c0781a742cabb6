//! Debian's `docker-registry` (distribution v2) on 127.0.0.1 and a free
//! port, with filesystem storage in a temp dir and optional htpasswd auth;
//! killed by pid in Drop. Images are pushed through the registry HTTP API.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use super::http;
use super::oci_image::{Blob, TestImage};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// (user, password) when started with htpasswd auth.
    pub credentials: Option<(String, String)>,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// A registry that requires basic auth for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", super::unique_tag("daemon-registry")))
            .tempdir_in("/tmp")?;
        if let Some((user, password)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.path().join("htpasswd"), &out.stdout)?;
        }
        // The free port is found by binding :0 and releasing it; another
        // process may take it meanwhile, so a registry that dies at start is
        // retried on a fresh port.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yaml(
                    &dir.path().display().to_string(),
                    &addr,
                    credentials.is_some(),
                ),
            )?;
            let log_path = dir.path().join("registry.log");
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log_path)?)
                .stderr(std::fs::File::create(dir.path().join("registry.err"))?)
                .spawn()
                .context("spawn docker-registry")?;
            let mut child = child;
            match wait_ready(&mut child, &addr, dir.path()) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        dir,
                        credentials,
                    });
                }
                Err(e) => {
                    last_log = format!("{e:#}");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        bail!("docker-registry did not start: {last_log}")
    }

    fn auth_headers(&self) -> Vec<(&'static str, String)> {
        match &self.credentials {
            Some((u, p)) => vec![(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ),
            )],
            None => vec![],
        }
    }

    /// Uploads one blob (POST an upload, then PUT it whole with its digest).
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let mut headers = self.auth_headers();
        let start = http::request(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &headers,
            &[],
        )?;
        if start.status != 202 {
            bail!(
                "start upload of {}: HTTP {}: {}",
                blob.digest,
                start.status,
                String::from_utf8_lossy(&start.body)
            );
        }
        let location = start
            .header("Location")
            .context("upload without Location")?;
        let path = location
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or(location);
        let sep = if path.contains('?') { '&' } else { '?' };
        let target = format!("{path}{sep}digest={}", blob.digest);
        headers.push(("Content-Type", "application/octet-stream".into()));
        let done = http::request(&self.addr, "PUT", &target, &headers, &blob.bytes)?;
        if done.status != 201 {
            bail!(
                "upload of {}: HTTP {}: {}",
                blob.digest,
                done.status,
                String::from_utf8_lossy(&done.body)
            );
        }
        Ok(())
    }

    /// Uploads a manifest under `reference` (a tag or a digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let mut headers = self.auth_headers();
        headers.push(("Content-Type", media_type.to_owned()));
        let resp = http::request(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            bytes,
        )?;
        if resp.status != 201 {
            bail!(
                "push manifest {repo}:{reference}: HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        Ok(())
    }

    /// Pushes an image (layers, config, manifest) as `repo:tag`.
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) -> Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, layer)?;
        }
        self.push_blob(repo, &image.config)?;
        self.push_manifest(repo, tag, &image.manifest_media_type, &image.manifest.bytes)
    }

    /// `127.0.0.1:<port>/<repo>:<tag>`
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn wait_ready(child: &mut Child, addr: &str, dir: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + super::berthd::PATIENCE;
    loop {
        if let Ok(resp) = http::request(addr, "GET", "/v2/", &[], &[]) {
            // Make sure it is our registry that answers, not another
            // process that took the port.
            if (resp.status == 200 || resp.status == 401) && child.try_wait()?.is_none() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            let err = std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default();
            bail!("docker-registry exited with {status}: {err}");
        }
        if Instant::now() > deadline {
            bail!("docker-registry on {addr} did not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_yaml(dir: &str, addr: &str, auth: bool) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {dir}/data\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n"
    );
    if auth {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: berth-test\n    path: {dir}/htpasswd\n"
        ));
    }
    yaml
}
