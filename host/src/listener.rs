//! The accept loop every listener shares: TLS (optional), HTTP/1.1 and
//! HTTP/2, per-connection tasks, the limits that keep a listener answering
//! when clients misbehave (a cap on open connections, handshake, first
//! request and keep-alive idle timeouts), and a graceful drain on shutdown.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{ClosedLabels, ListenerLabels, Metrics};
use crate::throttle::Throttle;

/// Listening sockets on one address, each served by its own thread.
pub struct EventLoops {
    listeners: Vec<std::net::TcpListener>,
}

impl EventLoops {
    /// `threads` sockets on `addr` with SO_REUSEPORT, so the kernel spreads
    /// new connections over them; port 0 picks one free port for all. A
    /// plain bind comes first: SO_REUSEPORT alone would let a second server
    /// of the same user share a busy port without a word.
    pub fn bind(addr: SocketAddr, threads: usize) -> std::io::Result<Self> {
        use socket2::{Domain, Socket, Type};
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr)?);
        }
        let mut listeners = Vec::with_capacity(threads.max(1));
        let mut at = addr;
        for _ in 0..threads.max(1) {
            let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&at.into())?;
            socket.listen(1024)?;
            let listener = std::net::TcpListener::from(socket);
            at = listener.local_addr()?;
            listeners.push(listener);
        }
        Ok(Self { listeners })
    }

    /// The bound address (the chosen port when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.first().map_or_else(|| Err(std::io::ErrorKind::NotConnected.into()), |l| l.local_addr())
    }

    /// How many event loops there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Always false: there is at least one loop.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Starts one thread per socket, each running [`serve`] on a
    /// single-threaded runtime with `handler(i)`: a request stays on one
    /// thread from accept to response (on the shared work-stealing runtime
    /// it hopped between workers, several µs of CPU per request). Returns,
    /// per loop, a receiver that completes once it has drained.
    pub fn spawn<H, F, B>(
        self,
        listener: Arc<Listener>,
        tls: Option<TlsAcceptor>,
        mut handler: impl FnMut(usize) -> H,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Vec<tokio::sync::oneshot::Receiver<()>>>
    where
        H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut finished = Vec::with_capacity(self.listeners.len());
        for (i, socket) in self.listeners.into_iter().enumerate() {
            let (handler, tls, shutdown) = (handler(i), tls.clone(), shutdown.clone());
            let (done, drained) = tokio::sync::oneshot::channel();
            let (listener, name) = (listener.clone(), listener.name);
            std::thread::Builder::new().name(format!("tollgate-{name}-{i}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(socket) {
                            Ok(socket) => serve(listener, socket, tls, handler, shutdown).await,
                            Err(error) => tracing::error!(listener = name, %error, "socket unusable"),
                        }
                    }),
                    Err(error) => tracing::error!(listener = name, %error, "cannot start an event loop"),
                }
                let _ = done.send(());
            })?;
            finished.push(drained);
        }
        Ok(finished)
    }
}

/// How long in-flight requests may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP/2 streams a client may open and reset before the server has taken
/// them up; past it the connection gets GOAWAY (ENHANCE_YOUR_CALM). This is
/// h2's own default, pinned here because it is what stops a "rapid reset"
/// flood (CVE-2023-44487) from costing one task per reset stream.
const MAX_PENDING_RESETS: usize = 20;

/// How a listener bounds its connections, so that clients that connect and
/// send nothing cannot use up the process's file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; a connection past it is closed at accept.
    pub max_connections: usize,
    /// Of those, how many one client address may hold; `None`: no such cap
    /// (the gateway's clients often share a load balancer's or NAT's
    /// address).
    pub max_per_peer: Option<usize>,
    /// From accept to the end of the first request's headers (the TLS
    /// handshake included), and from an idle connection's close to the end
    /// of a request head it had started.
    pub header_timeout: Duration,
    /// How long a connection stays open with no request in flight after
    /// its last one (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults for a listener: `max_connections` open, no cap per
    /// client, [`HEADER_TIMEOUT`] to the first request, and `idle_timeout`
    /// between requests.
    pub const fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        Self { max_connections, max_per_peer: None, header_timeout: HEADER_TIMEOUT, idle_timeout }
    }
}

/// Default time to the end of the TLS handshake and to the first request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's name, limits and counters, shared by all its event loops
/// (the cap counts the connections of every loop together).
pub struct Listener {
    name: &'static str,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    /// Connections held per client address, when capped per peer.
    peers: Mutex<HashMap<IpAddr, usize>>,
    open: Gauge,
    closed: Family<ClosedLabels, Counter>,
}

impl Listener {
    /// The listener `name` (a metric label) under `limits`, counting into `metrics`.
    pub fn new(name: &'static str, limits: ConnectionLimits, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            name,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            peers: Mutex::new(HashMap::new()),
            open: metrics.connections.get_or_create(&ListenerLabels { listener: name }).clone(),
            closed: metrics.connections_closed.clone(),
        })
    }

    /// Counts a connection this listener closed, and why.
    fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ClosedLabels { listener: self.name, reason }).inc();
    }

    /// A place for a new connection from `peer`, or `None` (logged,
    /// counted) when the listener, or the peer's share of it, is full: the
    /// connection is then closed at once rather than left in the kernel's
    /// backlog.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return self.refuse(peer, "limit", self.limits.max_connections);
        };
        if let Some(max) = self.limits.max_per_peer {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let held = peers.entry(peer.ip()).or_default();
            if *held >= max {
                drop(peers);
                return self.refuse(peer, "peer_limit", max);
            }
            *held += 1;
        }
        self.open.inc();
        Some(Slot { listener: self.clone(), peer: peer.ip(), _permit: permit })
    }

    fn refuse(&self, peer: SocketAddr, reason: &'static str, max: usize) -> Option<Slot> {
        self.closed(reason);
        if let Some(suppressed) = LIMIT_LOG.admit() {
            let whose = if reason == "limit" { "" } else { " from this client" };
            tracing::warn!(listener = self.name, %peer, suppressed, "{max} connections{whose} are open; new ones are closed");
        }
        None
    }
}

/// A connection's place under its listener's caps, given back on drop
/// (also if its task panics).
struct Slot {
    listener: Arc<Listener>,
    peer: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.listener.open.dec();
        if self.listener.limits.max_per_peer.is_none() {
            return;
        }
        let mut peers = self.listener.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut held) = peers.entry(self.peer) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

/// Connections refused at a cap are logged a few per window.
static LIMIT_LOG: Throttle = Throttle::new(10);

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// TLS facts, on a TLS listener.
    pub tls: Option<TlsFacts>,
}

/// The negotiated TLS parameters of a connection.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    /// The SNI name the client asked for.
    pub server_name: Option<String>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// The protocol version, e.g. "TLSv1_3".
    pub version: String,
}

/// Serves `handler` on `socket` until `shutdown` turns true, then stops
/// accepting and lets open requests finish (for up to 15 s).
pub async fn serve<H, F, B>(
    listener: Arc<Listener>,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = listener.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header timer also runs while an HTTP/1.1 connection waits for
    // its next request, so it must outlast the idle timeout (which closes an
    // idle connection first, and counts it); it still bounds headers sent
    // slowly on a kept-alive connection.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout + limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).max_pending_accept_reset_streams(MAX_PENDING_RESETS);
    let builder = Arc::new(builder);
    // Each connection task holds a sender; the drain below ends when all
    // are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let Some((tcp, peer, slot)) = admitted(&listener, accepted).await else { continue };
                let task = Task {
                    listener: listener.clone(),
                    builder: builder.clone(),
                    handler: handler.clone(),
                    shutdown: shutdown.clone(),
                    _slot: slot,
                    _open: open_tx.clone(),
                };
                tokio::spawn(task.run(tcp, peer, tls.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
    drop((socket, open_tx));
    if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv()).await.is_err() {
        tracing::warn!(listener = listener.name, "in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
}

/// A connection just accepted, with its place under the listener's caps;
/// `None` when accepting failed (out of file descriptors and the like: it
/// backs off, and the listener keeps serving) or a cap refused it.
async fn admitted(
    listener: &Arc<Listener>,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr, Slot)> {
    let (tcp, peer) = match accepted {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(listener = listener.name, %error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return None;
        }
    };
    let slot = listener.admit(peer)?;
    let _ = tcp.set_nodelay(true);
    Some((tcp, peer, slot))
}

/// One connection, from accept to close.
struct Task<H> {
    listener: Arc<Listener>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    shutdown: watch::Receiver<bool>,
    /// Its place under the listener's caps, given back when the task ends.
    _slot: Slot,
    /// Dropped when the task ends, so the drain at shutdown can wait for it.
    _open: mpsc::Sender<()>,
}

impl<H, F, B> Task<H>
where
    H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Completes the TLS handshake, then serves the connection; the header
    /// timeout counts from accept, so the handshake and the first request's
    /// headers share it.
    async fn run(self, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
        let activity = Arc::new(Activity::new());
        let Some(acceptor) = tls else {
            return self.drive(tcp, Connection { peer, tls: None }, activity).await;
        };
        let name = self.listener.name;
        match tokio::time::timeout(self.listener.limits.header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let facts = tls_facts(stream.get_ref().1);
                self.drive(stream, Connection { peer, tls: Some(facts) }, activity).await;
            }
            Ok(Err(error)) => {
                self.listener.closed("handshake_error");
                handshake_failed(name, peer, &error);
            }
            Err(_) => {
                self.listener.closed("handshake_timeout");
                if let Some(suppressed) = HANDSHAKE_LOG.admit() {
                    let timeout = self.listener.limits.header_timeout;
                    tracing::warn!(listener = name, %peer, suppressed, "TLS handshake not finished within {timeout:?}; connection closed");
                }
            }
        }
    }

    /// Serves HTTP on `io` until the client closes it, it goes idle past
    /// the listener's limits, or shutdown starts.
    ///
    /// A connection that has not completed a request's headers by the header
    /// timeout is dropped: no request reached the handler, so there is
    /// nothing to finish (hyper alone would wait for the headers as long as
    /// the client trickles them). An idle one is closed gracefully (HTTP/2
    /// clients get GOAWAY and retry elsewhere), and dropped if a request
    /// head it had started does not complete within the header timeout.
    async fn drive<I>(mut self, io: I, connection: Connection, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = {
            let (handler, activity, connection) =
                (self.handler.clone(), activity.clone(), Arc::new(connection.clone()));
            hyper::service::service_fn(move |req| {
                let mut request = activity.begin();
                let answer = handler(req, connection.clone());
                async move {
                    let response = answer.await;
                    // Answered: from now on it is the client's turn to read.
                    request.working(false);
                    Ok::<_, Infallible>(response.map(|body| Tracked { body, request }))
                }
            })
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let limits = self.listener.limits;
        // Set once the connection is asked to close: by then it must be gone.
        let mut closing: Option<Closing> = None;
        loop {
            let wake = closing.as_ref().map_or_else(|| activity.expires(&limits), |c| c.by);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(listener = self.listener.name, peer = %connection.peer, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake) => match self.listener.on_timer(&mut closing, &activity) {
                    Timer::Keep => {}
                    Timer::Close => conn.as_mut().graceful_shutdown(),
                    Timer::Drop => return,
                },
                _ = self.shutdown.changed(), if !closing.as_ref().is_some_and(|c| c.at_shutdown) => {
                    if closing.is_none() {
                        conn.as_mut().graceful_shutdown();
                    }
                    closing = Some(Closing { by: Instant::now() + DRAIN_TIMEOUT, at_shutdown: true });
                }
            }
        }
    }
}

/// What a connection does when its timer fires.
enum Timer {
    /// Goes on (a request under way, or not idle yet).
    Keep,
    /// Is asked to close gracefully.
    Close,
    /// Is dropped.
    Drop,
}

impl Listener {
    /// What a connection whose timer fired does, counting why it closes:
    /// past the drain at shutdown it is dropped; asked to close while idle,
    /// a request that arrived meanwhile finishes (and a response the client
    /// reads again goes on) while a head that never completed does not;
    /// otherwise an expired header timeout drops it and an idle one asks it
    /// to close by the header timeout.
    fn on_timer(&self, closing: &mut Option<Closing>, activity: &Activity) -> Timer {
        let limits = &self.limits;
        match closing {
            Some(Closing { at_shutdown: true, .. }) => {
                self.closed("drain_timeout");
                Timer::Drop
            }
            Some(idle) if activity.expired(limits).is_none() => {
                idle.by = activity.expires(limits);
                Timer::Keep
            }
            Some(_) => Timer::Drop,
            None => match activity.expired(limits) {
                None => Timer::Keep,
                Some(reason @ "header_timeout") => {
                    self.closed(reason);
                    Timer::Drop
                }
                Some(reason) => {
                    self.closed(reason);
                    *closing = Some(Closing { by: Instant::now() + limits.header_timeout, at_shutdown: false });
                    Timer::Close
                }
            },
        }
    }
}

/// A connection asked to close, and by when it must be gone.
struct Closing {
    by: Instant,
    /// Closed for shutdown (drained for up to [`DRAIN_TIMEOUT`]) rather
    /// than for being idle.
    at_shutdown: bool,
}

/// A response body that keeps its request in flight until it has been
/// sent or dropped, and says whether it is waiting for its source (an
/// upstream between chunks: the server's side) or for the client to read
/// what it already gave: a long download or event stream is not an idle
/// connection, a client that stops reading is.
struct Tracked<B> {
    body: B,
    request: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        // hyper polls again only once the client has taken the frame.
        self.request.working(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// When a connection last made progress, and what it is waiting for, for
/// its timeouts.
struct Activity {
    opened: Instant,
    /// Requests begun and not yet answered to the end.
    in_flight: AtomicUsize,
    /// Of those, the ones waiting for the server's side: a handler still
    /// deciding, or a response body waiting for its source.
    working: AtomicUsize,
    /// Milliseconds from `opened` to the latest progress (a request begun,
    /// answered or ended, a response frame taken); `u64::MAX` until the
    /// first request.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            working: AtomicUsize::new(0),
            last: AtomicU64::new(u64::MAX),
        }
    }

    /// Marks a request in flight, the server working on it, until the
    /// returned guard says otherwise or drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.working.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight { activity: self.clone(), working: true }
    }

    fn touch(&self) {
        self.last.store(self.opened.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// When the connection will have made no progress for too long, if
    /// nothing happens until then (re-checked at that moment): the header
    /// timeout before its first request, the idle timeout after its latest
    /// progress, never while the server's side is working. The counters
    /// are read before `last`: a request that changes them meanwhile has
    /// stamped `last` first, so it is never taken for an old one.
    fn expires(&self, limits: &ConnectionLimits) -> Instant {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let working = self.working.load(Ordering::Acquire);
        match self.last.load(Ordering::Acquire) {
            u64::MAX if in_flight == 0 => self.opened + limits.header_timeout,
            _ if working > 0 => Instant::now() + limits.idle_timeout,
            last => self.opened + Duration::from_millis(last) + limits.idle_timeout,
        }
    }

    /// Why the connection should close now, if it should: `header_timeout`
    /// (no request yet), `stalled` (responses the client stopped reading),
    /// `idle`.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        if self.expires(limits) > Instant::now() {
            return None;
        }
        Some(match (self.last.load(Ordering::Acquire), self.in_flight.load(Ordering::Acquire)) {
            (u64::MAX, _) => "header_timeout",
            (_, 0) => "idle",
            _ => "stalled",
        })
    }
}

/// A request in flight on a connection.
struct InFlight {
    activity: Arc<Activity>,
    /// Counted in [`Activity::working`].
    working: bool,
}

impl InFlight {
    /// Says whether the server's side is what the request waits for now;
    /// the end of a wait is progress.
    fn working(&mut self, working: bool) {
        if self.working == working {
            if !working {
                self.activity.touch();
            }
            return;
        }
        self.working = working;
        if working {
            self.activity.working.fetch_add(1, Ordering::AcqRel);
        } else {
            self.activity.touch();
            self.activity.working.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        if self.working {
            self.activity.working.fetch_sub(1, Ordering::AcqRel);
        }
        self.activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Failed handshakes are logged at warn, a few per window: a client with a
/// stale caBundle retries every request.
static HANDSHAKE_LOG: Throttle = Throttle::new(10);

/// Logs a failed TLS handshake with the peer and the likely cause in words.
/// A client that only opened and closed the connection (a TCP probe, a port
/// scan) is logged at debug.
fn handshake_failed(listener: &'static str, peer: SocketAddr, error: &std::io::Error) {
    let Some(cause) = handshake_cause(error) else {
        tracing::debug!(listener, %peer, %error, "connection closed during the TLS handshake");
        return;
    };
    if let Some(suppressed) = HANDSHAKE_LOG.admit() {
        tracing::warn!(listener, %peer, %error, suppressed, "TLS handshake failed: {cause}");
    }
}

/// What a handshake error means for the operator, or `None` when the client
/// just went away.
fn handshake_cause(error: &std::io::Error) -> Option<&'static str> {
    use rustls::AlertDescription as Alert;
    use std::io::ErrorKind;
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match error.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => None,
            _ => Some("the connection failed"),
        };
    };
    Some(match tls {
        rustls::Error::AlertReceived(Alert::UnknownCA | Alert::BadCertificate | Alert::CertificateUnknown) => {
            "the client does not trust this server's certificate (is its CA bundle, or the webhook's caBundle, \
             the CA that signed it?)"
        }
        rustls::Error::AlertReceived(_) => "the client ended the handshake",
        rustls::Error::NoCertificatesPresented => {
            "the client presented no certificate, and --client-ca requires one signed by that CA"
        }
        rustls::Error::InvalidCertificate(_) => "the client's certificate is not one --client-ca accepts",
        rustls::Error::InvalidMessage(_) => "the client does not speak TLS (plain HTTP to the HTTPS port?)",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
            "the client and this server share no TLS version, cipher suite or protocol"
        }
        _ => "TLS error",
    })
}

fn tls_facts(session: &rustls::ServerConnection) -> TlsFacts {
    TlsFacts {
        server_name: session.server_name().map(str::to_string),
        alpn: session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        version: session.protocol_version().map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
    }
}

/// A plain-text response.
pub fn text(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error\n"))))
}
