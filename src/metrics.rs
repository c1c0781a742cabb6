//! berthd's Prometheus metrics (`[metrics] address`, off by default).
//!
//! One process-wide set of metric families ([`global`]), served over HTTP
//! at `/metrics` in the OpenMetrics text format (which Prometheus scrapes
//! natively):
//!
//! - `berth_cri_requests_total{service, method, code}` and
//!   `berth_cri_request_duration_seconds{service, method}`: every CRI RPC,
//!   counted and timed by a tower layer on the tonic server ([`RpcMetricsLayer`];
//!   the time is until the response headers, for unary RPCs the whole call).
//! - `berth_pods{state}`, `berth_containers{state}`: read from the pod store
//!   when the endpoint is scraped, so the pod code needs no instrumenting.
//! - `berth_image_pulls_total{result}`, `berth_image_pull_duration_seconds`,
//!   `berth_image_pull_bytes_total` (layer bytes received from registries).
//! - `berth_shim_starts_total{result}`: `containerd-shim-berth-v2 start` runs.
//! - `berth_build_info{version, commit}`: always 1.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::codegen::http;

/// The `[metrics]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the Prometheus endpoint (`/metrics`); empty: off.
    pub address: String,
}

impl MetricsConfig {
    /// The address to listen on, if the endpoint is on.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, MetricsError> {
        let a = self.address.trim();
        if a.is_empty() {
            return Ok(None);
        }
        a.parse().map(Some).map_err(|e| MetricsError::Address {
            address: a.to_owned(),
            message: format!("{e} (expected ip:port, e.g. 127.0.0.1:1338)"),
        })
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {address:?}: {message}")]
    Address { address: String, message: String },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Labels of one RPC count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: String,
}

/// Labels of one RPC's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family of berthd.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<MethodLabels>,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    image_pulls: Family<ResultLabels, Counter>,
    image_pull_duration: Histogram,
    image_pull_bytes: Counter,
    shim_starts: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The pod and container states reported, in CRI's words.
pub const POD_STATES: [&str; 2] = ["ready", "notready"];
pub const CONTAINER_STATES: [&str; 4] = ["created", "running", "exited", "unknown"];

fn rpc_histogram() -> Histogram {
    // 100 µs .. ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
                commit: crate::GIT_COMMIT,
            })
            .set(1);
        registry.register("build_info", "berthd's version and git commit", build);
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "cri_requests",
            "CRI RPCs served, by service, method and gRPC status code",
            rpc_requests.clone(),
        );
        let rpc_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(rpc_histogram as fn() -> Histogram);
        registry.register(
            "cri_request_duration_seconds",
            "Time from a CRI request to its response headers (unary RPCs: the whole call)",
            rpc_duration.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pods", "Pod sandboxes by state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers by state", containers.clone());
        let image_pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Image pulls, by result (success, failure)",
            image_pulls.clone(),
        );
        // 100 ms .. ~27 min.
        let image_pull_duration = Histogram::new(exponential_buckets(0.1, 2.0, 15));
        registry.register(
            "image_pull_duration_seconds",
            "Duration of image pulls (download, verify, unpack), successful or not",
            image_pull_duration.clone(),
        );
        let image_pull_bytes = Counter::default();
        registry.register(
            "image_pull_bytes",
            "Layer bytes received from registries",
            image_pull_bytes.clone(),
        );
        let shim_starts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "shim_starts",
            "Pod shims started (containerd-shim-berth-v2 start), by result (success, failure)",
            shim_starts.clone(),
        );
        // Every label value that is known up front is there from the start,
        // so that a rate over a series that is still 0 works.
        for result in ["success", "failure"] {
            let _ = image_pulls.get_or_create(&ResultLabels { result });
            let _ = shim_starts.get_or_create(&ResultLabels { result });
        }
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            pods,
            containers,
            image_pulls,
            image_pull_duration,
            image_pull_bytes,
            shim_starts,
        }
    }

    /// Counts and times one RPC.
    pub fn record_rpc(&self, path: &str, code: tonic::Code, elapsed: std::time::Duration) {
        let (service, method) = rpc_names(path);
        self.rpc_requests
            .get_or_create(&RpcLabels {
                service: service.clone(),
                method: method.clone(),
                code: format!("{code:?}"),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the end of one image pull.
    pub fn record_pull(&self, ok: bool, elapsed: std::time::Duration) {
        let result = if ok { "success" } else { "failure" };
        self.image_pulls
            .get_or_create(&ResultLabels { result })
            .inc();
        self.image_pull_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts layer bytes received from a registry.
    pub fn add_pull_bytes(&self, n: u64) {
        self.image_pull_bytes.inc_by(n);
    }

    /// Records one `containerd-shim-berth-v2 start`.
    pub fn record_shim_start(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.shim_starts
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The exposition, with the pod and container gauges set from `states`.
    pub fn encode(&self, states: &StateCounts) -> String {
        for state in POD_STATES {
            self.pods
                .get_or_create(&StateLabels { state })
                .set(states.count_pods(state));
        }
        for state in CONTAINER_STATES {
            self.containers
                .get_or_create(&StateLabels { state })
                .set(states.count_containers(state));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Pods and containers by state at one moment (scrape time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// (state, count), states from [`POD_STATES`].
    pub pods: Vec<(&'static str, i64)>,
    /// (state, count), states from [`CONTAINER_STATES`].
    pub containers: Vec<(&'static str, i64)>,
}

impl StateCounts {
    fn count_pods(&self, state: &str) -> i64 {
        self.pods
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| n)
            .sum()
    }

    fn count_containers(&self, state: &str) -> i64 {
        self.containers
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `/runtime.v1.RuntimeService/Version` → ("runtime.v1.RuntimeService",
/// "Version"). Only the two CRI services are named; any other path (which
/// only a confused client sends) counts as ("other", "other"), so that
/// clients cannot grow the label sets without bound.
fn rpc_names(path: &str) -> (String, String) {
    const SERVICES: [&str; 2] = ["runtime.v1.RuntimeService", "runtime.v1.ImageService"];
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let known_method = !method.is_empty()
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    if SERVICES.contains(&service) && known_method {
        (service.to_owned(), method.to_owned())
    } else {
        ("other".to_owned(), "other".to_owned())
    }
}

/// A tower layer for the tonic server that counts and times every RPC.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the tonic routes.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(request).await;
            let code = match &result {
                Ok(response) => response_code(response),
                Err(_) => tonic::Code::Unknown,
            };
            global().record_rpc(&path, code, started.elapsed());
            result
        })
    }
}

/// The gRPC status of a response as its headers tell it: a failed call is
/// "trailers-only" (grpc-status in the headers); otherwise the call
/// succeeded up to its headers, which for unary RPCs is the call.
fn response_code<R>(response: &http::Response<R>) -> tonic::Code {
    if !response.status().is_success() {
        return tonic::Code::Unknown;
    }
    match response.headers().get("grpc-status") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map(tonic::Code::from)
            .unwrap_or(tonic::Code::Unknown),
        None => tonic::Code::Ok,
    }
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `address` and serves `/metrics`; `states` is called at
    /// each scrape for the pod and container gauges.
    pub async fn start(address: SocketAddr, states: StatesFn) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| MetricsError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { address, source })?;
        tracing::info!(%address, "metrics endpoint serving /metrics");
        let task = tokio::spawn(async move {
            loop {
                let (io, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let states = Arc::clone(&states);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let states = Arc::clone(&states);
                        async move { Ok::<_, std::convert::Infallible>(scrape(req, states).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "metrics connection ended");
                    }
                });
            }
        });
        Ok(Self { address, task })
    }

    /// The address it listens on (the real port when the config said 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// OpenMetrics' content type; Prometheus asks for it and parses it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type StatesFn = Arc<dyn Fn() -> StateCounts + Send + Sync>;

async fn scrape<B>(req: Request<B>, states: StatesFn) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
        *response.body_mut() = Full::new(Bytes::from_static(b"only /metrics is served here\n"));
        return response;
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    // The store read is blocking (redb): off the async workers.
    let counts = tokio::task::spawn_blocking(move || states())
        .await
        .unwrap_or_default();
    let text = global().encode(&counts);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    *response.body_mut() = Full::new(Bytes::from(text));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_paths_become_bounded_labels() {
        assert_eq!(
            rpc_names("/runtime.v1.RuntimeService/Version"),
            ("runtime.v1.RuntimeService".into(), "Version".into())
        );
        assert_eq!(
            rpc_names("/runtime.v1.ImageService/PullImage"),
            ("runtime.v1.ImageService".into(), "PullImage".into())
        );
        for odd in [
            "/x.Y/Z",
            "/runtime.v1.RuntimeService/",
            "/",
            "/runtime.v1.RuntimeService/a-b",
        ] {
            assert_eq!(rpc_names(odd), ("other".into(), "other".into()), "{odd}");
        }
    }

    #[test]
    fn codes_come_from_trailers_only_headers() {
        let ok = http::Response::builder().status(200).body(()).unwrap();
        assert_eq!(response_code(&ok), tonic::Code::Ok);
        let nf = http::Response::builder()
            .status(200)
            .header("grpc-status", "5")
            .body(())
            .unwrap();
        assert_eq!(response_code(&nf), tonic::Code::NotFound);
    }

    #[test]
    fn config_address() {
        assert_eq!(MetricsConfig::default().socket_addr().unwrap(), None);
        let c = MetricsConfig {
            address: "127.0.0.1:9100".into(),
        };
        assert_eq!(
            c.socket_addr().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let bad = MetricsConfig {
            address: "localhost".into(),
        };
        assert!(bad.socket_addr().is_err());
    }
}
