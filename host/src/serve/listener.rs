//! The accept loop every listener shares: TLS (optional), HTTP/1.1 and
//! HTTP/2, per-connection tasks, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

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
        name: &'static str,
        tls: Option<TlsAcceptor>,
        mut handler: impl FnMut(usize) -> H,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Vec<tokio::sync::oneshot::Receiver<()>>>
    where
        H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut finished = Vec::with_capacity(self.listeners.len());
        for (i, socket) in self.listeners.into_iter().enumerate() {
            let (handler, tls, shutdown) = (handler(i), tls.clone(), shutdown.clone());
            let (done, drained) = tokio::sync::oneshot::channel();
            std::thread::Builder::new().name(format!("tollgate-{name}-{i}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(socket) {
                            Ok(listener) => serve(name, listener, tls, handler, shutdown).await,
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

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Serves `handler` on `listener` until `shutdown` turns true, then stops
/// accepting and lets open requests finish (for up to 15 s).
pub async fn serve<H, F, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Arc<Connection>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let handler = handler.clone();
                let service = move |connection: Connection| {
                    let connection = Arc::new(connection);
                    hyper::service::service_fn(move |req| {
                        let answer = handler(req, connection.clone());
                        async move { Ok::<_, Infallible>(answer.await) }
                    })
                };
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let facts = tls_facts(stream.get_ref().1);
                                let service = service(Connection { peer, tls: Some(facts) });
                                watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                            }
                            Ok(Err(error)) => {
                                handshake_failed(name, peer, &error);
                                return;
                            }
                            Err(_) => {
                                if let Some(suppressed) = HANDSHAKE_LOG.admit() {
                                    tracing::warn!(listener = name, %peer, suppressed, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; connection closed");
                                }
                                return;
                            }
                        },
                        None => {
                            let service = service(Connection { peer, tls: None });
                            watcher.watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned()).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(listener = name, %peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, "in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
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
