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
    /// The token server, when the registry uses bearer tokens.
    pub token: Option<TokenServer>,
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

    /// Bearer-token auth (distribution's `auth: token`), with a token server
    /// on another loopback port that issues RS256 JWTs for `user`/`password`
    /// (GET with basic auth) and for the OAuth2 refresh token `identity_token`
    /// (POST `grant_type=refresh_token`).
    pub fn start_with_token_auth(user: &str, password: &str, identity_token: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-registry-")
            .tempdir()?;
        let token = TokenServer::start(dir.path(), user, password, identity_token)?;
        let yaml = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            token.host,
            TOKEN_SERVICE,
            TOKEN_ISSUER,
            dir.path().join("token-cert.pem").display()
        );
        let mut reg = Self::start_in(dir, None, Some(yaml))?;
        reg.token = Some(token);
        Ok(reg)
    }

    fn start_inner(credentials: Option<(String, String)>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-registry-")
            .tempdir()?;
        Self::start_in(dir, credentials, None)
    }

    fn start_in(
        dir: tempfile::TempDir,
        credentials: Option<(String, String)>,
        extra: Option<String>,
    ) -> Result<Self> {
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let port = free_port()?;
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: {level}\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n",
            data.display(),
            level = std::env::var("BERTH_TEST_REGISTRY_LOG").unwrap_or_else(|_| "warn".into()),
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
        if let Some(extra) = extra {
            yaml.push_str(&extra);
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
            token: None,
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
            minter: self.token.as_ref().map(|t| t.minter.clone()),
            log: self.dir.path().join("registry.log"),
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
    minter: Option<TokenMinter>,
    log: PathBuf,
}

impl Pusher {
    fn auth_for(&self, repo: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(m) = &self.minter {
            return req.bearer_auth(m.mint(repo, &["pull", "push"]).expect("mint push token"));
        }
        self.auth(req)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Monolithic upload: POST /v2/<repo>/blobs/uploads/ then PUT ?digest=.
    pub async fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        let r = self
            .auth_for(
                repo,
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!(
                "start upload: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
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
            .auth_for(repo, self.http.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!(
                "finish upload of {digest}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUT /v2/<repo>/manifests/<reference>.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let r = self
            .auth_for(
                repo,
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!(
                "push manifest {repo}:{reference}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

pub const TOKEN_SERVICE: &str = "berth-test-registry";
pub const TOKEN_ISSUER: &str = "berth-test-issuer";

/// A minimal token server for distribution's token auth: RS256 JWTs with the
/// signing certificate in `x5c`, signed with the `openssl` CLI.
pub struct TokenServer {
    pub host: String,
    pub minter: TokenMinter,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Requests served (for assertions that a flow did or did not use it).
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn b64(data: &[u8], url: bool) -> String {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let t = if url { URL } else { STD };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(t[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str, identity_token: &str) -> Result<Self> {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=berth-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("openssl req")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .context("openssl x509")?;
        if !der.status.success() {
            bail!("openssl x509 failed");
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let minter = TokenMinter {
            key,
            cert_der_b64: b64(&der.stdout, false),
        };
        let mut server = TokenServer {
            host,
            minter: minter.clone(),
            stop: stop.clone(),
            thread: None,
            requests: requests.clone(),
        };
        let basic = format!(
            "Basic {}",
            b64(format!("{user}:{password}").as_bytes(), false)
        );
        let identity = identity_token.to_owned();
        server.thread = Some(std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = minter.serve(conn, &basic, &identity);
            }
        }));
        Ok(server)
    }
}

/// Signs registry tokens.
#[derive(Clone)]
pub struct TokenMinter {
    key: PathBuf,
    cert_der_b64: String,
}

impl TokenMinter {
    fn serve(&self, mut conn: std::net::TcpStream, basic: &str, identity: &str) -> Result<()> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            headers.push(line);
        }
        let header = |name: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let query = target
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default();
        let params = |s: &str, key: &str| {
            s.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| {
                    v.replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",")
                })
            })
        };
        let (status, json) = if request_line.starts_with("POST") {
            let ok = params(&body, "grant_type").as_deref() == Some("refresh_token")
                && params(&body, "refresh_token").as_deref() == Some(identity);
            let scope = params(&body, "scope").unwrap_or_default();
            if ok {
                (
                    "200 OK",
                    format!(r#"{{"access_token":"{}"}}"#, self.mint_scope(&scope)?),
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"error":"invalid refresh token"}"#.to_owned(),
                )
            }
        } else if header("authorization").as_deref() == Some(basic) {
            let scope = params(&query, "scope").unwrap_or_default();
            (
                "200 OK",
                format!(r#"{{"token":"{}"}}"#, self.mint_scope(&scope)?),
            )
        } else {
            (
                "401 Unauthorized",
                r#"{"error":"bad credentials"}"#.to_owned(),
            )
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )?;
        Ok(())
    }

    fn mint_scope(&self, scope: &str) -> Result<String> {
        // repository:<name>:<actions>
        let name = scope
            .strip_prefix("repository:")
            .and_then(|s| s.rsplit_once(':'))
            .map(|(n, _)| n)
            .unwrap_or("");
        self.mint(name, &["pull"])
    }

    /// A token for repository `name` with `actions`.
    pub fn mint(&self, name: &str, actions: &[&str]) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.cert_der_b64]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": "berth", "aud": TOKEN_SERVICE,
            "exp": now + 600, "nbf": now - 60, "iat": now - 60,
            "jti": format!("{now}-{}", rand_suffix()),
            "access": [{"type": "repository", "name": name, "actions": actions}],
        });
        let signing_input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header)?, true),
            b64(&serde_json::to_vec(&claims)?, true)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("openssl dgst -sign failed");
        }
        Ok(format!("{signing_input}.{}", b64(&out.stdout, true)))
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(&self.host);
            let _ = t.join();
        }
    }
}
