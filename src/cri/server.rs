//! berthd's gRPC server: directories, instance locks, the subsystems, the
//! unix socket, and a graceful shutdown.
//!
//! Several instances run side by side as long as each has its own root,
//! state and socket: the root and state directories are locked, so a second
//! instance on the same ones is refused with a clear error instead of
//! corrupting the first one's data.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::config::Config;
use crate::cri::authority::AnyAuthority;
use crate::cri::deadline::ClientDeadlineLayer;
use crate::cri::socket::{self, BoundSocket, SocketError};
use crate::cri::{CriImageService, CriRuntimeService};
use crate::image::{ImageError, ImageStore};
use crate::metrics::{MetricsError, MetricsServer, RpcMetricsLayer, StateCounts};
use crate::network::PodNetwork;
use crate::pod::{PodError, PodManager, PodStreamBackend};
use crate::stream::{StreamError, StreamServer};

/// Why berthd could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(
        "{dir} is in use by another berthd (lock {lock} is held); give this instance its own --root and --state"
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the image store: {0}")]
    Images(#[from] ImageError),
    #[error("cannot open the pod store: {0}")]
    Pods(#[from] PodError),
    #[error("cannot start the streaming server: {0}")]
    Stream(#[from] StreamError),
    #[error("cannot start the metrics endpoint: {0}")]
    Metrics(#[from] MetricsError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A started berthd: everything opened and the socket bound, not yet serving.
#[derive(Debug)]
pub struct CriServer {
    config: Arc<Config>,
    images: Arc<ImageStore>,
    pods: Arc<PodManager>,
    stream: Arc<StreamServer>,
    metrics: Option<MetricsServer>,
    listener: UnixListener,
    socket: BoundSocket,
    _locks: Vec<Flock<File>>,
}

/// What SIGHUP re-checks while berthd serves ([`CriServer::reloader`]).
#[derive(Debug, Clone)]
pub struct Reloader {
    images: Arc<ImageStore>,
    pods: Arc<PodManager>,
}

impl Reloader {
    /// Re-reads registries.conf and the CNI config and logs what they say
    /// now. Both are read afresh by every pull and every pod network setup
    /// and Status, so an edit is in force at once; this is the operator's
    /// check that the edit parses, and a failure here stops nothing.
    pub async fn reload(&self) {
        match self.images.check_registries_conf() {
            Ok((path, registries, search)) => tracing::info!(
                path = %path.display(),
                registries,
                unqualified_search_registries = search,
                "registries.conf reloaded"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "registries.conf does not load; pulls fail until it is fixed"
            ),
        }
        match self.pods.network() {
            Some(net) => {
                let r = net.status().await;
                tracing::info!(
                    mode = ?net.config().mode,
                    cni_conf_dir = %net.config().cni_conf_dir.display(),
                    network_ready = r.ready,
                    reason = %r.reason,
                    message = %r.message,
                    "network config reloaded"
                );
            }
            None => tracing::warn!("pod networking is unavailable (see the start-up log)"),
        }
    }
}

/// Pods and containers by state, for the metrics endpoint.
fn state_counts(pods: &PodManager) -> StateCounts {
    use k8s_cri::v1::{ContainerState, PodSandboxState};
    let mut counts = StateCounts::default();
    match pods.list_pods(None) {
        Ok(list) => {
            for state in [
                PodSandboxState::SandboxReady,
                PodSandboxState::SandboxNotready,
            ] {
                let n = list.iter().filter(|p| p.state == state as i32).count() as i64;
                let name = match state {
                    PodSandboxState::SandboxReady => "ready",
                    PodSandboxState::SandboxNotready => "notready",
                };
                counts.pods.push((name, n));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list pods"),
    }
    match pods.list_containers(None) {
        Ok(list) => {
            for (state, name) in [
                (ContainerState::ContainerCreated, "created"),
                (ContainerState::ContainerRunning, "running"),
                (ContainerState::ContainerExited, "exited"),
                (ContainerState::ContainerUnknown, "unknown"),
            ] {
                let n = list.iter().filter(|c| c.state == state as i32).count() as i64;
                counts.containers.push((name, n));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list containers"),
    }
    counts
}

/// Subdirectory of the root that holds the image store.
pub const IMAGES_DIR: &str = "images";
const LOCK_FILE: &str = "berthd.lock";

impl CriServer {
    /// Creates the root and state directories (0711), takes their locks,
    /// opens the subsystems, and binds the socket last, so that a client
    /// that can connect is served.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        socket::create_dir(&config.root)?;
        socket::create_dir(&config.state)?;
        let mut locks = vec![lock_dir(&config.root)?];
        // root == state is allowed: one lock covers both.
        if config.state != config.root {
            locks.push(lock_dir(&config.state)?);
        }
        let images =
            Arc::new(ImageStore::open(&config.root.join(IMAGES_DIR), &config.image).await?);
        let network = match PodNetwork::new(config.network.clone(), &config.state.join("network")) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(error = %e, "pod networking unavailable; only host-network pods can run");
                None
            }
        };
        let config = Arc::new(config);
        let pods = PodManager::open(Arc::clone(&config), Arc::clone(&images), network).await?;
        // Before the CRI socket: a bad `[stream]` address fails the start
        // instead of a daemon that kubelet already reached.
        let backend = Arc::new(PodStreamBackend::new(Arc::clone(&pods)));
        let stream = Arc::new(StreamServer::start(&config.stream, backend).await?);
        let metrics = match config.metrics.socket_addr()? {
            Some(address) => {
                let p = Arc::clone(&pods);
                Some(MetricsServer::start(address, Arc::new(move || state_counts(&p))).await?)
            }
            None => None,
        };
        let (listener, socket) = socket::bind(&config.address)?;
        tracing::info!(
            address = %config.address.display(),
            root = %config.root.display(),
            state = %config.state.display(),
            version = crate::VERSION,
            commit = crate::GIT_COMMIT,
            metrics = ?metrics.as_ref().map(MetricsServer::address),
            "berthd serving CRI"
        );
        Ok(Self {
            config,
            images,
            pods,
            stream,
            metrics,
            listener,
            socket,
            _locks: locks,
        })
    }

    /// The socket the server listens on.
    pub fn address(&self) -> &Path {
        self.socket.path()
    }

    /// Where the metrics endpoint listens, when it is on.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::address)
    }

    /// A handle for SIGHUP's re-checks, usable while [`CriServer::serve`] runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            images: Arc::clone(&self.images),
            pods: Arc::clone(&self.pods),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// lets in-flight RPCs finish (at most `shutdown_timeout_secs`) and
    /// removes the socket. Containers are not touched.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let CriServer {
            config,
            images,
            pods,
            stream,
            metrics,
            listener,
            socket,
            _locks,
        } = self;
        let runtime =
            CriRuntimeService::new(Arc::clone(&config), Arc::clone(&pods)).with_stream(stream);
        let image = CriImageService::new(images);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .layer(RpcMetricsLayer)
            .trace_fn(rpc_span)
            .layer(ClientDeadlineLayer)
            .add_service(RuntimeServiceServer::new(runtime))
            .add_service(ImageServiceServer::new(image))
            .serve_with_incoming_shutdown(
                // Any `:authority` the client sends (see `authority`).
                UnixListenerStream::new(listener).map(|conn| conn.map(AnyAuthority::new)),
                async {
                    let _ = stop_rx.await;
                },
            );
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => {
                result?;
                return Ok(());
            }
            () = shutdown => {}
        }
        let grace = Duration::from_secs(config.shutdown_timeout_secs);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, finishing in-flight RPCs; containers keep running"
        );
        let _ = stop_tx.send(());
        match tokio::time::timeout(grace, server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight RPCs did not finish in time; exiting anyway"
            ),
        }
        drop(socket);
        drop(metrics);
        pods.shutdown();
        tracing::info!("berthd stopped");
        Ok(())
    }
}

/// The span every RPC runs in (debug level: kubelet polls Status and
/// ListImages every few seconds). Handlers fill in `image`, `pod` and
/// `container` where the request names one; at debug level the span's close
/// event logs each RPC's duration.
fn rpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let rpc = path.rsplit('/').next().unwrap_or(path);
    tracing::debug_span!(
        "rpc",
        rpc = %rpc,
        image = tracing::field::Empty,
        pod = tracing::field::Empty,
        container = tracing::field::Empty,
    )
}

/// Takes an exclusive lock on `dir/berthd.lock` for the life of the process.
fn lock_dir(dir: &Path) -> Result<Flock<File>, ServerError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ServerError::Lock {
            path: path.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ServerError::Locked {
            dir: dir.to_owned(),
            lock: path,
        }),
        Err((_, errno)) => Err(ServerError::Lock {
            path,
            source: std::io::Error::from(errno),
        }),
    }
}
