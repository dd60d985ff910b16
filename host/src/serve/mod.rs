//! `tollgate serve`: the admission listener (HTTPS), the gateway, the
//! metrics listener (HTTP), and the plugin lifecycle they serve from.

pub mod limits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::sync::{ClusterConfig, SyncError, WebhookSync};
use crate::cluster::webhooks::WebhookOptions;
use crate::gateway::Gateway;
use crate::gateway::proxy::{UpstreamOptions, Upstreams};
use crate::lifecycle::{Lifecycle, LoadFailed};
use crate::listener::{self, EventLoops, Listener};
use crate::plugins::disk_cache::CodeCache;
use crate::plugins::loader::{FileLimits, Loader};
use crate::runtime::engine::{EngineOptions, Runtime};
use crate::runtime::error::EngineError;
use crate::serve::limits::Limits;
use crate::state::{CallBudgets, HostState};
use crate::status;
use crate::tls::{self, TlsError, TlsOptions};
use gateway_rules::Cidrs;

/// Everything `tollgate serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Plugin directory; `None` serves the bundled plugins.
    pub plugins: Option<PathBuf>,
    /// Engine limits.
    pub engine: EngineOptions,
    /// Where the admission webhook listens (HTTPS).
    pub admission_addr: SocketAddr,
    /// Where Prometheus metrics and probes are served (plain HTTP).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS of the admission listener.
    pub tls: TlsOptions,
    /// Watch the plugin directory and swap plugins live.
    pub watch: bool,
    /// How large plugin and settings files may be.
    pub files: FileLimits,
    /// Show plugins' own messages (why a plugin refused its settings) in
    /// `/plugins`, which has no authentication; they are always logged.
    pub plugins_detail: bool,
    /// Keep compiled plugins here (`None`: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// Keep the cluster's webhook configurations in step with the plugins.
    pub sync: Option<SyncOptions>,
    /// The HTTP gateway, if it runs.
    pub gateway: Option<GatewayOptions>,
    /// How large admission reviews may be, alone and together.
    pub reviews: crate::admission::listener::ReviewLimits,
    /// Plugin calls and connections each listener takes on at once.
    pub limits: Limits,
}

/// Where and how the gateway listens.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Listener address.
    pub addr: SocketAddr,
    /// Serve HTTPS with the admission listener's certificate.
    pub tls: bool,
    /// Peers whose `X-Forwarded-*` headers are kept and extended.
    pub trusted_proxies: Vec<String>,
    /// Upstream timeouts and pooling.
    pub upstream: UpstreamOptions,
    /// Event loops: threads with a single-threaded runtime, a socket and an
    /// upstream pool of their own each (see [`EventLoops`]).
    pub threads: usize,
}

/// What `--sync-webhooks` needs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// How to reach the API server.
    pub cluster: ClusterConfig,
    /// What to generate.
    pub webhooks: WebhookOptions,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not bind.
    // The I/O error is in the message and not a `source`: anyhow prints
    // sources after the message, and the cause read twice.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A thread for an event loop could not be started.
    #[error("cannot start an event-loop thread: {0}")]
    EventLoop(std::io::Error),
    /// The plugins could not be loaded.
    #[error(transparent)]
    Plugins(#[from] LoadFailed),
    /// The plugin directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] crate::lifecycle::watch::WatchError),
    /// Webhook syncing cannot start.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A gateway option is invalid.
    #[error("gateway: {0}")]
    Gateway(String),
}

/// Binds every address, then runs the servers until `stop` completes and
/// drains them ([`Bound::new`], [`Bound::serve`]).
pub async fn run(options: ServeOptions, stop: impl std::future::Future<Output = ()>) -> Result<(), ServeError> {
    Bound::new(&options).await?.serve(options, stop).await
}

/// A server's listening sockets, taken before anything is written or
/// registered: a second server started by mistake on the same addresses
/// stops here, where later it would already have replaced the running
/// server's CA bundle and, with `--sync-webhooks`, rewritten the cluster's
/// webhook configuration.
pub struct Bound {
    admission: TcpListener,
    gateway: Option<EventLoops>,
    metrics: Option<TcpListener>,
}

/// Where a bound server listens (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The admission listener (HTTPS).
    pub admission: SocketAddr,
    /// The gateway, if it runs.
    pub gateway: Option<SocketAddr>,
    /// The metrics listener, if it runs.
    pub metrics: Option<SocketAddr>,
}

impl Bound {
    /// Binds the addresses of `options`.
    pub async fn new(options: &ServeOptions) -> Result<Self, ServeError> {
        let admission = bind(options.admission_addr).await?;
        let gateway = match &options.gateway {
            Some(gateway) => Some(
                EventLoops::bind(gateway.addr, gateway.threads.max(1))
                    .map_err(|error| ServeError::Bind { addr: gateway.addr, error })?,
            ),
            None => None,
        };
        let metrics = match options.metrics_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { admission, gateway, metrics })
    }

    /// Where the server listens.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            admission: self.admission.local_addr().unwrap_or_else(|_| unspecified()),
            gateway: self.gateway.as_ref().and_then(|loops| loops.local_addr().ok()),
            metrics: self.metrics.as_ref().and_then(|m| m.local_addr().ok()),
        }
    }

    /// Serves until `stop` completes, then drains: the listeners answer
    /// (not ready) while the plugins load, then serve them; the directory
    /// is watched; webhooks are kept in sync when asked.
    pub async fn serve(
        self,
        options: ServeOptions,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let runtime = Arc::new(Runtime::new(options.engine.clone())?);
        let state = host_state(&options.limits);
        let serving_tls = tls::server_config(&options.tls)?;
        let tls = tokio_rustls::TlsAcceptor::from(serving_tls.config.clone());
        // Bad gateway options stop the start-up before the cluster is touched.
        let gateways = match (&options.gateway, &self.gateway) {
            (Some(gateway), Some(loops)) => gateways(gateway, loops.len(), &options, &state)?,
            _ => Vec::new(),
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Connect before serving, so a bad kubeconfig stops the start-up with
        // its reason instead of leaving webhooks silently unregistered.
        let sync = match options.sync.clone() {
            Some(mut sync) => {
                // The webhooks must carry the CA this listener serves under,
                // whatever the certificate's source; what cannot work stops here.
                sync.webhooks.ca = serving_tls.registered_ca(&sync.webhooks.ca)?;
                Some(WebhookSync::start(sync.cluster, sync.webhooks, state.metrics.sync(), shutdown_rx.clone()).await?)
            }
            None => None,
        };
        let mut servers = tokio::task::JoinSet::new();
        self.spawn_listeners(&options, &state, gateways, &tls, &shutdown_rx, &mut servers)?;

        let mut lifecycle = Lifecycle::new(loader(&runtime, &options), options.plugins.as_deref(), state.clone(), sync);
        // Watch before the first load: a change made while it runs is then
        // picked up right after, instead of at the next periodic rescan.
        let watching = match (lifecycle.dir(), options.watch) {
            (Some(dir), true) => Some(crate::lifecycle::watch::start(dir.to_path_buf())?),
            _ => None,
        };
        lifecycle.load().await?;
        if let Some(watching) = watching {
            tracing::info!(dir = %lifecycle.dir().unwrap_or(std::path::Path::new("")).display(), "watching for plugin changes");
            servers.spawn(lifecycle.follow(watching, shutdown_rx.clone()));
        }

        stop.await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = shutdown_tx.send(true);
        while servers.join_next().await.is_some() {}
        Ok(())
    }

    /// Starts serving on every bound socket.
    fn spawn_listeners(
        self,
        options: &ServeOptions,
        state: &Arc<HostState>,
        gateways: Vec<Arc<Gateway>>,
        tls: &tokio_rustls::TlsAcceptor,
        shutdown: &watch::Receiver<bool>,
        servers: &mut tokio::task::JoinSet<()>,
    ) -> Result<(), ServeError> {
        let limits = &options.limits;
        // Admission stays on the shared runtime: on event loops of its own it
        // measured the same CPU per request and a worse tail (BENCHMARKS.md).
        tracing::info!(addr = %local(&self.admission), "admission webhook listening (HTTPS)");
        let admission_state = state.clone();
        let reviews = Arc::new(options.reviews.clone());
        servers.spawn(listener::serve(
            Listener::new("admission", limits.admission, &state.metrics),
            self.admission,
            Some(tls.clone()),
            move |req, conn| {
                crate::admission::listener::handle(admission_state.clone(), reviews.clone(), conn.peer, req)
            },
            shutdown.clone(),
        ));
        if let (Some(gateway), Some(loops)) = (&options.gateway, self.gateway) {
            spawn_gateway(gateway, loops, gateways, &options.limits, state, tls, shutdown, servers)?;
        }
        if let Some(metrics_listener) = self.metrics {
            tracing::info!(addr = %local(&metrics_listener), "metrics listening (HTTP)");
            let metrics_state = state.clone();
            let plugins_detail = options.plugins_detail;
            servers.spawn(listener::serve(
                Listener::new("metrics", limits.metrics, &state.metrics),
                metrics_listener,
                None,
                move |req, _conn| status::endpoint(metrics_state.clone(), plugins_detail, req),
                shutdown.clone(),
            ));
        }
        Ok(())
    }
}

/// The state the listeners share, with the call budgets of `limits` (said
/// once at start: an operator who sees 503s or closed connections can tell
/// which limit applies without reading the flags' defaults).
fn host_state(limits: &Limits) -> Arc<HostState> {
    tracing::info!(
        admission_calls = limits.admission_calls,
        gateway_calls = limits.gateway_calls,
        admission_connections = limits.admission.max_connections,
        gateway_connections = limits.gateway.max_connections,
        metrics_connections = limits.metrics.max_connections,
        "limits"
    );
    Arc::new(HostState::new(CallBudgets::new(limits.admission_calls, limits.gateway_calls, limits.gateway_wait)))
}

/// One [`Gateway`] (and upstream pool) per event loop, so connections stay
/// on the thread that made them. Trust is loaded once: a bad
/// `--trusted-proxy` or `--upstream-ca` stops the start-up.
fn gateways(
    gateway: &GatewayOptions,
    loops: usize,
    options: &ServeOptions,
    state: &Arc<HostState>,
) -> Result<Vec<Arc<Gateway>>, ServeError> {
    let trusted =
        Cidrs::parse(&gateway.trusted_proxies).map_err(|e| ServeError::Gateway(format!("--trusted-proxy {e}")))?;
    let upstream_tls = tls::client_config(gateway.upstream.extra_ca.as_deref())?;
    let body_gap = options.limits.gateway.idle_timeout;
    Ok((0..loops)
        .map(|_| {
            let upstreams = Upstreams::new(gateway.upstream.clone(), upstream_tls.clone());
            Arc::new(Gateway::new(state.clone(), upstreams, trusted.clone(), gateway.tls, body_gap))
        })
        .collect())
}

/// Serves the gateway on its event loops, `gateways[i]` on loop `i`.
#[allow(clippy::too_many_arguments)]
fn spawn_gateway(
    gateway: &GatewayOptions,
    loops: EventLoops,
    gateways: Vec<Arc<Gateway>>,
    limits: &Limits,
    state: &Arc<HostState>,
    tls: &tokio_rustls::TlsAcceptor,
    shutdown: &watch::Receiver<bool>,
    servers: &mut tokio::task::JoinSet<()>,
) -> Result<(), ServeError> {
    let scheme = if gateway.tls { "HTTPS" } else { "HTTP" };
    let addr = loops.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    tracing::info!(%addr, threads = loops.len(), "gateway listening ({scheme})");
    let drained = loops
        .spawn(
            Listener::new("gateway", limits.gateway, &state.metrics),
            gateway.tls.then(|| tls.clone()),
            |i| {
                let gateway = Arc::clone(&gateways[i]);
                move |req, conn| {
                    let gateway = Arc::clone(&gateway);
                    async move { gateway.handle(req, conn).await }
                }
            },
            shutdown.clone(),
        )
        .map_err(ServeError::EventLoop)?;
    // Shutdown waits for every loop to drain.
    for loop_drained in drained {
        servers.spawn(async move {
            let _ = loop_drained.await;
        });
    }
    Ok(())
}

/// The loader of `options`, with the compiled-code cache when it opens.
fn loader(runtime: &Arc<Runtime>, options: &ServeOptions) -> Loader {
    let loader = Loader::new(runtime.clone()).with_limits(options.files);
    let Some(dir) = &options.cache_dir else { return loader };
    match CodeCache::open(dir, runtime.engine()) {
        Ok(cache) => loader.with_cache(Arc::new(cache)),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "compiled-code cache unavailable; compiling every time");
            loader
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|error| ServeError::Bind { addr, error })
}

fn local(listener: &TcpListener) -> String {
    listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into())
}
