//! Single-use, short-lived tokens naming a pending streaming request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1 as cri;

use super::error::StreamError;

/// At most this many URLs may wait for their client (kubelet's limit).
pub const MAX_IN_FLIGHT: usize = 1000;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum PendingRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

/// The tokens handed out and not yet used.
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, PendingRequest)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `request` under a fresh random token.
    pub fn insert(&self, request: PendingRequest) -> Result<String, StreamError> {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw)
            .map_err(|e| StreamError::Backend(format!("no randomness for a token: {e}")))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(StreamError::TooManyRequests(entries.len()));
        }
        entries.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// Takes the request of `token` out: a token works once, and not after
    /// its deadline.
    pub fn consume(&self, token: &str) -> Option<PendingRequest> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, request) = entries.remove(token)?;
        (expires > Instant::now()).then_some(request)
    }

    /// Tokens currently waiting (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> PendingRequest {
        PendingRequest::Exec(cri::ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn token_is_single_use() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let t = cache.insert(exec()).unwrap();
        assert!(t.len() >= 32);
        assert!(cache.consume(&t).is_some());
        assert!(cache.consume(&t).is_none());
        assert!(cache.consume("nope").is_none());
    }

    #[test]
    fn expired_token_is_refused() {
        let cache = TokenCache::new(Duration::ZERO);
        let t = cache.insert(exec()).unwrap();
        assert!(cache.consume(&t).is_none());
    }

    #[test]
    fn tokens_differ() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let a = cache.insert(exec()).unwrap();
        let b = cache.insert(exec()).unwrap();
        assert_ne!(a, b);
    }
}
