//! A real Debian `docker-registry` (distribution v2) on 127.0.0.1, started
//! per test with its own config and storage in a temp dir, optionally with
//! htpasswd auth; killed by pid on drop. Plus a minimal push client (plain
//! HTTP registry API: monolithic blob upload, manifest PUT).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running registry.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Credentials when started with auth.
    pub credentials: Option<(String, String)>,
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Registry {
    /// Anonymous access.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// htpasswd (bcrypt) auth with one user.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("berth-test-registry-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let port = free_port()?;
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n",
            data.display()
        );
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&htpasswd, &out.stdout)?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start /usr/bin/docker-registry")?;
        let mut reg = Registry {
            child,
            dir,
            host: format!("127.0.0.1:{port}"),
            credentials,
        };
        if let Err(e) = reg.wait_ready() {
            let log = reg.log();
            reg.stop();
            return Err(e).with_context(|| format!("registry did not start; log: {log}"));
        }
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited: {status}");
            }
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("docker-registry not listening on {} after 30 s", self.host);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The registry's storage root (`docker/registry/v2/...` lies below).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn pusher(&self) -> Pusher {
        Pusher {
            base: format!("http://{}", self.host),
            http: reqwest::Client::new(),
            credentials: self.credentials.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pushes blobs and manifests over the plain-HTTP registry API.
pub struct Pusher {
    base: String,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
}

impl Pusher {
    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Monolithic upload: POST /v2/<repo>/blobs/uploads/ then PUT ?digest=.
    pub async fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        let r = self
            .auth(self.http.post(format!("{}/v2/{repo}/blobs/uploads/", self.base)))
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!("start upload: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        let location = r
            .headers()
            .get("location")
            .context("upload without Location")?
            .to_str()?
            .to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = self
            .auth(self.http.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("finish upload of {digest}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// PUT /v2/<repo>/manifests/<reference>.
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let r = self
            .auth(self.http.put(format!("{}/v2/{repo}/manifests/{reference}", self.base)))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("push manifest {repo}:{reference}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }
}
