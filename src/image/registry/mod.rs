//! A small client for the OCI distribution API (pull side only): manifests
//! and blobs, with the auth flows registries use, plain HTTP where allowed,
//! and a stall timeout on every wait for bytes.

pub mod auth;

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode, header};
use tokio::sync::Mutex;

use self::auth::{Challenge, TokenResponse};
use super::registries_conf::Endpoint;
use super::{ImageError, RegistryAuth};

/// Media types the client accepts for manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs larger than this are refused.
pub const MAX_SMALL_BLOB: usize = 16 << 20;

/// HTTP clients shared by every pull.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    secure: reqwest::Client,
    insecure: reqwest::Client,
    stall: Duration,
}

impl RegistryClient {
    pub fn new(stall: Duration) -> Result<Self, ImageError> {
        let build = |danger: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(stall)
                .tls_danger_accept_invalid_certs(danger)
                .no_proxy()
                .build()
                .map_err(|e| ImageError::Registry {
                    registry: String::new(),
                    message: format!("cannot build HTTP client: {e}"),
                })
        };
        Ok(Self {
            secure: build(false)?,
            insecure: build(true)?,
            stall,
        })
    }

    /// A session with one endpoint for one repository.
    pub fn session(&self, endpoint: &Endpoint, auth: Option<&RegistryAuth>) -> Session {
        let plain_ok = endpoint.insecure || is_loopback(&endpoint.host);
        let host = if endpoint.host == super::reference::DOCKER_HUB {
            "registry-1.docker.io".to_owned()
        } else {
            endpoint.host.clone()
        };
        Session {
            http: if plain_ok {
                self.insecure.clone()
            } else {
                self.secure.clone()
            },
            stall: self.stall,
            registry: endpoint.host.clone(),
            host,
            repository: endpoint.repository.clone(),
            plain_ok,
            auth: auth.cloned().unwrap_or_default(),
            state: Mutex::new(SessionState::default()),
        }
    }
}

/// `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Default)]
struct SessionState {
    scheme: Option<&'static str>,
    authorization: Option<String>,
}

/// A manifest as fetched.
#[derive(Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    /// `Docker-Content-Digest`, when the registry sent it.
    pub header_digest: Option<String>,
}

/// One repository on one endpoint.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    stall: Duration,
    /// The host as configured (for messages).
    pub registry: String,
    host: String,
    pub repository: String,
    plain_ok: bool,
    auth: RegistryAuth,
    state: Mutex<SessionState>,
}

impl Session {
    fn err(&self, message: impl Into<String>) -> ImageError {
        ImageError::Registry {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    fn unauthenticated(&self, message: impl Into<String>) -> ImageError {
        ImageError::Unauthenticated {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    fn stalled(&self, what: &str) -> ImageError {
        ImageError::Stalled {
            reference: format!("{}/{} ({what})", self.registry, self.repository),
            secs: self.stall.as_secs(),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.send().await
    }

    /// Sends a request to `path` (under `/v2/`), picking the scheme on first
    /// use and answering auth challenges once.
    async fn request(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ImageError> {
        // The state is only read and updated under the lock, never held
        // across a request: parallel blob downloads start at once.
        let (known_scheme, authorization) = {
            let mut state = self.state.lock().await;
            if !self.auth.registry_token.is_empty() && state.authorization.is_none() {
                state.authorization = Some(format!("Bearer {}", self.auth.registry_token));
            }
            (state.scheme, state.authorization.clone())
        };
        let schemes: Vec<&'static str> = match known_scheme {
            Some(s) => vec![s],
            None if self.plain_ok => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut last_err = None;
        let mut response = None;
        for scheme in schemes {
            let url = format!("{scheme}://{}/v2/{path}", self.host);
            let sent = tokio::time::timeout(
                self.stall,
                self.send_once(&method, &url, accept, authorization.as_deref()),
            )
            .await;
            match sent {
                Err(_) => return Err(self.stalled(path)),
                Ok(Ok(r)) => {
                    response = Some((scheme, r));
                    break;
                }
                Ok(Err(e)) => last_err = Some(e),
            }
        }
        let (scheme, response) = match response {
            Some(r) => r,
            None => {
                let e = last_err.map(|e| format_reqwest(&e)).unwrap_or_default();
                return Err(self.err(format!("cannot connect: {e}")));
            }
        };
        if known_scheme.is_none() {
            self.state.lock().await.scheme = Some(scheme);
        }
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Answer the challenge, then retry once.
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(auth::parse_challenge);
        let authorization = match challenge {
            Some(Challenge::Basic) => match auth::credentials(&self.auth) {
                Some((u, p)) => basic_header(&u, &p),
                None => {
                    return Err(
                        self.unauthenticated("the registry wants credentials and none were given")
                    );
                }
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                format!(
                    "Bearer {}",
                    self.fetch_token(&realm, service.as_deref(), &scope).await?
                )
            }
            None => {
                return Err(self.unauthenticated("401 without a usable WWW-Authenticate challenge"));
            }
        };
        self.state.lock().await.authorization = Some(authorization.clone());
        let url = format!("{scheme}://{}/v2/{path}", self.host);
        let response = tokio::time::timeout(
            self.stall,
            self.send_once(&method, &url, accept, Some(&authorization)),
        )
        .await
        .map_err(|_| self.stalled(path))?
        .map_err(|e| self.err(format_reqwest(&e)))?;
        match response.status() {
            StatusCode::UNAUTHORIZED => Err(self.unauthenticated("credentials rejected (401)")),
            _ => Ok(response),
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, ImageError> {
        let creds = auth::credentials(&self.auth);
        let req = if !self.auth.identity_token.is_empty() {
            // OAuth2 refresh-token grant with the identity token.
            let mut body = format!(
                "grant_type=refresh_token&client_id=berth&refresh_token={}&scope={}",
                auth::form_encode(&self.auth.identity_token),
                auth::form_encode(scope)
            );
            if let Some(s) = service {
                body.push_str(&format!("&service={}", auth::form_encode(s)));
            }
            self.http
                .post(realm)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
        } else {
            let mut query = vec![("scope", scope.to_owned())];
            if let Some(s) = service {
                query.push(("service", s.to_owned()));
            }
            let mut req = self.http.get(realm).query(&query);
            if let Some((u, p)) = &creds {
                req = req.basic_auth(u, Some(p));
            }
            req
        };
        let response = tokio::time::timeout(self.stall, req.send())
            .await
            .map_err(|_| self.stalled("token"))?
            .map_err(|e| self.err(format!("token endpoint {realm}: {}", format_reqwest(&e))))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(
                self.unauthenticated(format!("token endpoint refused the credentials ({status})"))
            );
        }
        if !status.is_success() {
            return Err(self.err(format!("token endpoint answered {status}")));
        }
        let body = self.read_small(response, "token").await?;
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("token endpoint: bad JSON: {e}")))?;
        token
            .into_token()
            .ok_or_else(|| self.err("token endpoint answered without a token"))
    }

    async fn read_small(
        &self,
        mut response: reqwest::Response,
        what: &str,
    ) -> Result<Bytes, ImageError> {
        let mut out = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.stall, response.chunk())
                .await
                .map_err(|_| self.stalled(what))?
                .map_err(|e| self.err(format!("{what}: {}", format_reqwest(&e))))?;
            let Some(chunk) = chunk else { break };
            out.extend_from_slice(&chunk);
            if out.len() > MAX_SMALL_BLOB {
                return Err(self.err(format!("{what}: larger than {MAX_SMALL_BLOB} bytes")));
            }
        }
        Ok(out.into())
    }

    fn status_error(&self, status: StatusCode, what: &str) -> ImageError {
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                self.unauthenticated(format!("{what}: access denied ({status})"))
            }
            StatusCode::NOT_FOUND => self.err(format!("{what}: not found in {}", self.repository)),
            s => self.err(format!("{what}: unexpected answer {s}")),
        }
    }

    /// Fetches a manifest (or index) by tag or digest.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, ImageError> {
        let what = format!("manifest {}:{reference}", self.repository);
        let path = format!("{}/manifests/{reference}", self.repository);
        let response = self
            .request(Method::GET, &path, Some(MANIFEST_ACCEPT))
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(response.status(), &what));
        }
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self.read_small(response, &what).await?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            header_digest,
        })
    }

    /// Fetches a small blob (a config) into memory; the caller verifies it.
    pub async fn small_blob(&self, digest: &str) -> Result<Bytes, ImageError> {
        let response = self.blob(digest).await?;
        self.read_small(response.0, &format!("blob {digest}")).await
    }

    /// Starts the download of a blob.
    pub async fn blob(&self, digest: &str) -> Result<BlobStream, ImageError> {
        let path = format!("{}/blobs/{digest}", self.repository);
        let response = self.request(Method::GET, &path, None).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response.status(), &format!("blob {digest}")));
        }
        Ok(BlobStream(response))
    }

    /// Next chunk of a blob, or `None` at its end; fails after a stall.
    pub async fn next_chunk(
        &self,
        blob: &mut BlobStream,
        digest: &str,
    ) -> Result<Option<Bytes>, ImageError> {
        tokio::time::timeout(self.stall, blob.0.chunk())
            .await
            .map_err(|_| self.stalled(&format!("blob {digest}")))?
            .map_err(|e| self.err(format!("blob {digest}: {}", format_reqwest(&e))))
    }
}

/// A blob download in progress.
#[derive(Debug)]
pub struct BlobStream(reqwest::Response);

fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn format_reqwest(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn basic_encoding() {
        assert_eq!(basic_header("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }
}
