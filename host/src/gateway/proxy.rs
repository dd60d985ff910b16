//! Forwarding a request to its upstream: pooled keep-alive connections,
//! bodies streamed both ways, hop-by-hop headers dropped (RFC 9110 §7.6.1),
//! `X-Forwarded-*` set by the gateway alone, and timeouts that become 502 or
//! 504 with a short reason.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::client_body::{BoxError, Stalled, stalled};
use crate::runtime::contract::types::{Forward, Header};

/// The body type of every gateway request and response.
pub type Body = BoxBody<Bytes, BoxError>;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `Proxy-Authorization`, meant for this gateway only.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that say who the client is or what it asked for, as a proxy in
/// front would set them. Tollgate owns them: from a peer that is not a
/// `--trusted-proxy`, the client's copies never reach the upstream, and the
/// gateway sets `X-Forwarded-For/-Proto/-Host` and `X-Real-IP` itself.
/// Plugins still see what the client sent (an allowlist with trusted
/// proxies of its own reads `X-Forwarded-For`); identity headers an SSO
/// proxy sets (`X-Forwarded-Email`, `-User`) are not in the set: the
/// allowlist that reads one removes a client's copy.
const FORWARDING: [&str; 17] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// Limits and trust of the upstream side.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Extra CA bundle (PEM) trusted for `https://` upstreams, besides the
    /// system's roots: for upstreams with a private CA.
    pub extra_ca: Option<std::path::PathBuf>,
    /// Connecting to an upstream takes at most this.
    pub connect_timeout: Duration,
    /// The upstream's response head arrives within this.
    pub response_timeout: Duration,
    /// Idle keep-alive connections kept per upstream.
    pub max_idle_per_host: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            extra_ca: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            max_idle_per_host: 64,
        }
    }
}

/// Why a request did not reach its upstream, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The plugin named an upstream that is not a usable URL.
    #[error("upstream {0:?} is not an http:// or https:// URL")]
    BadUpstream(String),
    /// No connection could be made.
    #[error("upstream unreachable")]
    Connect,
    /// No response head in time.
    #[error("upstream timed out")]
    Timeout,
    /// The connection failed mid-way.
    #[error("upstream failed")]
    Failed,
    /// The client's body paused too long while it was being forwarded.
    #[error(transparent)]
    SlowBody(Stalled),
}

impl UpstreamError {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::Timeout => 504,
            Self::SlowBody(_) => 408,
            _ => 502,
        }
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadUpstream(_) => "bad_upstream",
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::Failed => "error",
            Self::SlowBody(_) => "slow_body",
        }
    }
}

/// The pooled client every route shares.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    options: UpstreamOptions,
}

/// Facts about the client connection the forwarded headers carry.
pub struct ClientFacts<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// True when the peer is a trusted proxy: its `X-Forwarded-*` are kept
    /// and extended rather than replaced.
    pub trusted: bool,
    /// "http" or "https".
    pub scheme: &'a str,
    /// The host the client asked for.
    pub authority: &'a str,
}

impl Upstreams {
    /// A client with pooled keep-alive connections, over TLS for
    /// `https://` upstreams trusting what `tls` trusts (build it with
    /// [`crate::tls::client_config`]: system roots plus `extra_ca`; several
    /// pools can share one loaded set).
    pub fn new(options: UpstreamOptions, tls: rustls::ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(options.max_idle_per_host)
            .build(connector);
        Self { client, options }
    }

    /// Sends `req` to the upstream `forward` names, with its headers
    /// rewritten; returns the upstream's response with its body streaming.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        forward: &Forward,
        remove: &[String],
        client: &ClientFacts<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let uri = upstream_uri(&forward.upstream, req.uri())?;
        rewrite_request_headers(req.headers_mut(), forward, remove, client);
        if let Some(authority) = uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(HOST, host);
        }
        *req.uri_mut() = uri;
        // Upstreams speak HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        let response = match self.send(req).await? {
            Err(error) if error.is_connect() => return Err(UpstreamError::Connect),
            Err(error) if let Some(&slow) = stalled(&error) => return Err(UpstreamError::SlowBody(slow)),
            Err(error) => {
                tracing::debug!(%error, "upstream request failed");
                return Err(UpstreamError::Failed);
            }
            Ok(response) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed()))
    }

    /// Sends `req` and waits for the response head, or times out.
    ///
    /// The response timeout starts once the request body is sent: a large
    /// upload is not a slow upstream. Meanwhile the upstream must keep
    /// taking the body: one that stops reading for the response timeout has
    /// timed out too.
    async fn send(&self, req: Request<Body>) -> Result<ClientResult, UpstreamError> {
        let (sent_tx, sent) = tokio::sync::oneshot::channel();
        let early_end = hyper::body::Body::is_end_stream(req.body());
        let taken = Arc::new(Taken::new());
        let req = req.map(|body| SignalEnd { inner: body, sent: Some(sent_tx), taken: taken.clone() }.boxed());
        let request = self.client.request(req);
        tokio::pin!(request);
        if !early_end {
            tokio::select! {
                response = &mut request => return Ok(response),
                _ = sent => {}
                _ = taken.stops_for(self.options.response_timeout) => return Err(UpstreamError::Timeout),
            }
        }
        tokio::time::timeout(self.options.response_timeout, request).await.map_err(|_| UpstreamError::Timeout)
    }
}

/// What the upstream client gives back for a request.
type ClientResult = Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>;

/// A request body that says when it has been sent to the end (or dropped),
/// and when the upstream connection last asked for more of it.
struct SignalEnd {
    inner: Body,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
    taken: Arc<Taken>,
}

/// When a request body was last polled by the upstream connection: hyper
/// asks for the next frame only once it could write the last one.
struct Taken {
    since: tokio::time::Instant,
    /// Milliseconds from `since` to the last poll.
    last: AtomicU64,
}

impl Taken {
    fn new() -> Self {
        Self { since: tokio::time::Instant::now(), last: AtomicU64::new(0) }
    }

    fn stamp(&self) {
        self.last.store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once the body has not been polled for `limit`.
    async fn stops_for(&self, limit: Duration) {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let due = self.since + Duration::from_millis(last) + limit;
            tokio::time::sleep_until(due).await;
            if self.last.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

impl hyper::body::Body for SignalEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.taken.stamp();
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling a body whose length is known once it is
        // complete, so its end is seen on the last frame, not after it.
        let ended = matches!(polled, std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream();
        if ended && let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `base` (`http://host:port[/prefix]`) joined with the request's path and query.
fn upstream_uri(base: &str, request: &Uri) -> Result<Uri, UpstreamError> {
    let bad = || UpstreamError::BadUpstream(base.to_string());
    let parsed: Uri = base.parse().map_err(|_| bad())?;
    let scheme = match parsed.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => return Err(bad()),
    };
    if parsed.authority().is_none() || parsed.query().is_some() {
        return Err(bad());
    }
    let prefix = parsed.path().trim_end_matches('/');
    let path_and_query = request.path_and_query().map_or("/", |p| p.as_str());
    let joined = format!("{scheme}://{}{prefix}{path_and_query}", parsed.authority().map_or("", |a| a.as_str()));
    joined.parse().map_err(|_| bad())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Drops, before any plugin sees the request, every header whose name has
/// an `_` (`X_Forwarded_For`): CGI-style servers (PHP, WSGI, Rack) read
/// `X_Real_IP` and `X-Real-IP` as one variable, so a plugin that checks or
/// removes one by name would leave its twin; nginx drops them too.
/// Returns how many were dropped.
pub fn strip_underscored(headers: &mut HeaderMap) -> usize {
    let dropped: Vec<HeaderName> = headers.keys().filter(|n| n.as_str().contains('_')).cloned().collect();
    for name in &dropped {
        headers.remove(name);
    }
    dropped.len()
}

/// Drops hop-by-hop headers and what allowlists and the route remove, sets
/// the route's headers (replacing every client-sent value), then the
/// `X-Forwarded-*` headers.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    forward: &Forward,
    remove: &[String],
    client: &ClientFacts<'_>,
) {
    strip_hop_by_hop(headers);
    for name in remove.iter().chain(&forward.remove_headers) {
        headers.remove(name.as_str());
    }
    // The chain a trusted proxy sent is extended below; from anyone else,
    // what Tollgate owns goes before the route's own headers are set.
    let prior = client.trusted.then(|| {
        let chain: Vec<&str> =
            headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).map(str::trim).collect();
        chain.join(", ")
    });
    if !client.trusted {
        // One pass over what was sent (a few headers), rather than a lookup
        // for each of the 15 names.
        let owned: Vec<HeaderName> =
            headers.keys().filter(|name| FORWARDING.contains(&name.as_str())).cloned().collect();
        for name in owned {
            headers.remove(name);
        }
    }
    for Header { name, value } in &forward.set_headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    set_forwarding(headers, prior.filter(|c| !c.is_empty()), client);
}

/// Sets `X-Real-IP`, `X-Forwarded-For` (`prior`, a trusted proxy's chain,
/// extended with the peer), `-Proto` and `-Host`, keeping those a trusted
/// proxy or the route already set.
fn set_forwarding(headers: &mut HeaderMap, prior: Option<String>, client: &ClientFacts<'_>) {
    // A client's own copy is gone; one here came from a trusted proxy or the
    // route.
    if !headers.contains_key("x-real-ip")
        && let Ok(value) = HeaderValue::from_str(&client.peer.to_string())
    {
        headers.insert("x-real-ip", value);
    }
    let peer = client.peer.to_string();
    let chain = match prior {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert("x-forwarded-for", value);
    }
    if !(client.trusted && headers.contains_key("x-forwarded-proto"))
        && let Ok(value) = HeaderValue::from_str(client.scheme)
    {
        headers.insert("x-forwarded-proto", value);
    }
    if !(client.trusted && headers.contains_key("x-forwarded-host"))
        && let Ok(value) = HeaderValue::from_str(client.authority)
    {
        headers.insert("x-forwarded-host", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(set: &[(&str, &str)], remove: &[&str]) -> Forward {
        Forward {
            upstream: "http://up:80".into(),
            set_headers: set.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
            remove_headers: remove.iter().map(|s| s.to_string()).collect(),
            identity: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn upstream_uris_join_prefix_path_and_query() {
        let req: Uri = "/rest/items?select=id".parse().unwrap();
        assert_eq!(upstream_uri("http://10.0.0.5:3000", &req).unwrap(), "http://10.0.0.5:3000/rest/items?select=id");
        assert_eq!(upstream_uri("http://up/base/", &req).unwrap(), "http://up/base/rest/items?select=id");
        assert_eq!(upstream_uri("https://up:8443", &req).unwrap(), "https://up:8443/rest/items?select=id");
        assert!(upstream_uri("ftp://up", &req).is_err());
        assert!(upstream_uri("up:80", &req).is_err());
    }

    #[test]
    fn untrusted_clients_cannot_forge_forwarded_headers() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "s"),
            ("authorization", "Bearer client"),
            ("authorization", "Bearer second"),
            ("x-remove-me", "1"),
        ]);
        let facts =
            ClientFacts { peer: "198.51.100.9".parse().unwrap(), trusted: false, scheme: "http", authority: "gw" };
        rewrite_request_headers(
            &mut h,
            &forward(&[("authorization", "Bearer backend")], &["x-remove-me"]),
            &[],
            &facts,
        );
        assert_eq!(h.get_all("authorization").iter().collect::<Vec<_>>(), ["Bearer backend"]);
        assert_eq!(h["x-forwarded-for"], "198.51.100.9");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-secret") && !h.contains_key("connection"));
        assert!(!h.contains_key("x-remove-me"));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw");
    }

    #[test]
    fn client_forwarding_headers_and_underscore_twins_are_dropped() {
        let sent = [
            ("x-real-ip", "10.0.0.1"),
            ("x-original-url", "/admin"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-forwarded-email", "boss@example.com"),
            ("true-client-ip", "10.0.0.1"),
            ("x-request-id", "keep"),
        ];
        let mut h = headers(&sent);
        assert_eq!(strip_underscored(&mut h), 1);
        assert!(!h.contains_key("x_forwarded_for"));
        let untrusted =
            ClientFacts { peer: "198.51.100.9".parse().unwrap(), trusted: false, scheme: "http", authority: "gw" };
        let mut forwarded = h.clone();
        rewrite_request_headers(&mut forwarded, &forward(&[], &[]), &[], &untrusted);
        assert_eq!(forwarded["x-real-ip"], "198.51.100.9");
        assert!(!forwarded.contains_key("x-original-url") && !forwarded.contains_key("true-client-ip"));
        assert_eq!(
            forwarded["x-forwarded-email"], "boss@example.com",
            "identity headers are the allowlists' to remove"
        );
        assert_eq!(forwarded["x-request-id"], "keep");
        let trusted = ClientFacts { trusted: true, ..untrusted };
        rewrite_request_headers(&mut h, &forward(&[], &[]), &[], &trusted);
        assert_eq!(h["x-real-ip"], "10.0.0.1", "kept from a trusted proxy");
        assert_eq!(h["x-original-url"], "/admin");
    }

    #[test]
    fn trusted_proxies_chains_are_extended() {
        let mut h = headers(&[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")]);
        let facts = ClientFacts { peer: "10.0.0.2".parse().unwrap(), trusted: true, scheme: "http", authority: "gw" };
        rewrite_request_headers(&mut h, &forward(&[], &[]), &[], &facts);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
