//! The HTTP gateway: each request is matched to a route plugin by its
//! metadata (host, path prefix, methods, priority), checked by the allowlists
//! guarding that route, and forwarded to the upstream the route names, or
//! answered by the route directly.
//!
//! Order, for one request:
//! 1. the host is ambiguous or invalid (two `Host` headers, HTTP/1.1
//!    without one, `a, b`, a port past 65535) → 400;
//!    the request is made what plugins decide on and the upstream gets
//!    ([`prepare`]: target normalised, `_` headers dropped), or
//!    refused → 400; no route matches → 404;
//! 2. allowlists on the client address (they need nothing else) → 403 on deny;
//! 3. the route plugin decides: respond (sent as is) or forward;
//! 4. on forward, the other allowlists (e-mail, names), with the identity
//!    the route established and, for those that inspect it, the body
//!    → 403 on deny;
//! 5. the request goes upstream ([`proxy`]); 502/504 when it cannot.
//!
//! Plugin calls hold one of the gateway's call permits (a budget apart from
//! admission's); waiting on the upstream does not. A call that finds none
//! free within the budget's wait gets 503 with `Retry-After`.

pub mod client_body;
pub mod proxy;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::contract::types::{
    AllowDecision, Forward, Header, Identity, RequestHead, Respond, RouteDecision, SubjectKind, TlsInfo,
};
use crate::listener::Connection;
use crate::metadata::PluginMetadata;
use crate::metrics::{GatewayDecisionLabels, RouteLabels, RouteStatusLabels, UpstreamLabels};
use crate::plugin::{AllowCheck, Plugin};
use crate::state::{Budget, HostState, Overloaded};
use crate::throttle::Throttle;
use client_body::{ClientBody, Stalled, stalled};
use gateway_rules::Cidrs;
use proxy::{Body, ClientFacts, UpstreamError, Upstreams};

/// Bodies an allowlist inspects are buffered up to this; larger is 413.
pub const MAX_INSPECTED_BODY: usize = 1 << 20;

/// The gateway's configuration and shared client.
pub struct Gateway {
    state: Arc<HostState>,
    upstreams: Upstreams,
    /// Peers whose `X-Forwarded-*` headers are kept and extended.
    trusted_proxies: Cidrs,
    /// "http" or "https", as clients connect.
    scheme: &'static str,
    /// The longest a request body may pause ([`ClientBody`]).
    body_gap: Duration,
}

impl Gateway {
    /// A gateway over the plugins in `state`; request bodies may pause at
    /// most `body_gap` (the listener's idle timeout: a body that stops is
    /// an idle connection).
    pub fn new(
        state: Arc<HostState>,
        upstreams: Upstreams,
        trusted_proxies: Cidrs,
        tls: bool,
        body_gap: Duration,
    ) -> Self {
        Self { state, upstreams, trusted_proxies, scheme: if tls { "https" } else { "http" }, body_gap }
    }

    /// Answers one gateway request.
    pub async fn handle(&self, req: Request<Incoming>, conn: Arc<Connection>) -> Response<Body> {
        let started = Instant::now();
        let (route, response) = self.answer(req, &conn).await;
        let status = response.status().as_u16();
        let metrics = &self.state.metrics;
        metrics.gateway_requests.get_or_create(&RouteStatusLabels { route: route.clone(), status }).inc();
        metrics.gateway_seconds.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
        response
    }

    /// The response, and the route name for metrics.
    async fn answer(&self, mut req: Request<Incoming>, conn: &Connection) -> (String, Response<Body>) {
        // 1. The host routes match on, the request as plugins see it, then the route.
        if let Some(reason) = host_error(&req) {
            return ("none".into(), json_response(400, "bad_host", reason));
        }
        if let Err(reason) = prepare(&mut req) {
            if let Some(suppressed) = REFUSED_LOG.admit() {
                tracing::info!(peer = %conn.peer, %reason, suppressed, "gateway request refused");
            }
            return ("none".into(), json_response(400, "bad_request", &reason.to_string()));
        }
        let registry = self.state.registry();
        let head = request_head(&req, conn, self.scheme);
        let host = host_of(&head.authority);
        let Some(route) = registry.route_for(&host, &head.path, &head.method) else {
            return ("none".into(), json_response(404, "not_found", "no route matches this request"));
        };
        let plugin = route.plugin.clone();
        let name = plugin.name().to_string();
        let (before, after): (Vec<&Arc<Plugin>>, Vec<&Arc<Plugin>>) =
            registry.allowlists_for(&name).partition(|p| subject(p) == Some(SubjectKind::ClientAddress));

        // 2. Allowlists that need only the client address.
        let no_identity = Identity { email: None, subject: None };
        let mut remove = Vec::new();
        for allowlist in &before {
            let check = AllowCheck { request: &head, route: &name, identity: &no_identity, body: None };
            if let Err(response) = self.allow(allowlist, &check, conn, &mut remove).await {
                return (name, response);
            }
        }

        // 3. The route decides.
        let decision = match self.call(plugin.route_async(&head), conn).await {
            Ok(Ok(decision)) => decision,
            Err(Overloaded(_)) => return (name, overloaded()),
            Ok(Err(error)) => {
                self.count(&name, "error");
                tracing::warn!(route = %name, %error, "route plugin failed");
                return (name, json_response(502, "bad_gateway", "the route plugin failed"));
            }
        };
        let forward = match decision {
            RouteDecision::Respond(respond) => {
                self.count(&name, "respond");
                return (name, direct(respond));
            }
            RouteDecision::Forward(forward) => forward,
        };
        self.count(&name, "forward");

        // 4. Allowlists on identity and names, with the body if asked for.
        let identity = forward.identity.clone().unwrap_or(no_identity);
        let wants_body = after.iter().any(|p| inspects_body(p)) && has_body(&req);
        let (parts, body) = req.into_parts();
        let body = ClientBody::new(body, self.body_gap);
        let (body, buffered) = if wants_body {
            match Limited::new(body, MAX_INSPECTED_BODY).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    (full(bytes.clone()), Some(bytes))
                }
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return (
                        name,
                        json_response(413, "too_large", "the body is larger than the 1 MiB an allowlist inspects"),
                    );
                }
                Err(error) if let Some(&slow) = stalled(&*error) => {
                    return (name, self.slow_body(&slow, conn));
                }
                Err(_) => return (name, json_response(400, "bad_request", "the body could not be read")),
            }
        } else {
            (body.boxed(), None)
        };
        let text = buffered.as_ref().and_then(|b| std::str::from_utf8(b).ok());
        for allowlist in &after {
            let body = if inspects_body(allowlist) { text } else { None };
            let check = AllowCheck { request: &head, route: &name, identity: &identity, body };
            if let Err(response) = self.allow(allowlist, &check, conn, &mut remove).await {
                return (name, response);
            }
        }

        // 5. Upstream.
        (name.clone(), self.upstream(Request::from_parts(parts, body), &forward, &remove, &head, conn, &name).await)
    }

    async fn upstream(
        &self,
        req: Request<Body>,
        forward: &Forward,
        remove: &[String],
        head: &RequestHead,
        conn: &Connection,
        route: &str,
    ) -> Response<Body> {
        let peer = conn.peer.ip();
        let facts = ClientFacts {
            peer,
            trusted: self.trusted_proxies.contains(peer),
            scheme: self.scheme,
            authority: &head.authority,
        };
        let upstreams = &self.state.metrics.upstream_responses;
        match self.upstreams.forward(req, forward, remove, &facts).await {
            Ok(response) => {
                let status = response.status().as_str().to_string();
                upstreams.get_or_create(&UpstreamLabels { route: route.to_string(), status }).inc();
                response
            }
            Err(UpstreamError::SlowBody(slow)) => self.slow_body(&slow, conn),
            Err(error) => {
                upstreams
                    .get_or_create(&UpstreamLabels { route: route.to_string(), status: error.label().into() })
                    .inc();
                tracing::warn!(route, upstream = %forward.upstream, %error, "upstream did not answer");
                let code = if error.status() == 504 { "gateway_timeout" } else { "bad_gateway" };
                json_response(error.status(), code, &error.to_string())
            }
        }
    }

    /// The answer to a client whose body stopped arriving: its fault, not
    /// the upstream's, so logged with the refused requests.
    fn slow_body(&self, slow: &Stalled, conn: &Connection) -> Response<Body> {
        if let Some(suppressed) = REFUSED_LOG.admit() {
            tracing::info!(peer = %conn.peer, reason = %slow, suppressed, "gateway request refused");
        }
        json_response(408, "slow_body", &slow.to_string())
    }

    /// Runs one allowlist; `Err` is the 403 (or 502) to send.
    async fn allow(
        &self,
        allowlist: &Plugin,
        check: &AllowCheck<'_>,
        conn: &Connection,
        remove: &mut Vec<String>,
    ) -> Result<(), Response<Body>> {
        let answer = match self.call(allowlist.check_request_async(check), conn).await {
            Ok(answer) => answer,
            Err(Overloaded(_)) => return Err(overloaded()),
        };
        match answer {
            Ok(AllowDecision { allowed: true, remove_headers, .. }) => {
                self.count(allowlist.name(), "allowed");
                remove.extend(remove_headers);
                Ok(())
            }
            Ok(AllowDecision { reason, .. }) => {
                self.count(allowlist.name(), "denied");
                tracing::info!(plugin = allowlist.name(), route = check.route, peer = %conn.peer, %reason, "denied");
                Err(json_response(403, "forbidden", &reason))
            }
            Err(error) => {
                self.count(allowlist.name(), "error");
                tracing::warn!(plugin = allowlist.name(), %error, "allowlist failed; denying");
                // An allowlist that cannot answer never lets a request through.
                Err(json_response(403, "forbidden", "allowlist-unavailable"))
            }
        }
    }

    /// Runs a plugin call holding one of the gateway's call permits, or
    /// gives up when none is free within the budget's wait.
    async fn call<T>(&self, call: impl Future<Output = T>, conn: &Connection) -> Result<T, Overloaded> {
        let wait = self.state.calls.gateway_wait;
        let _permit = self.state.call_permit(Budget::Gateway, wait).await.inspect_err(|_| {
            if let Some(suppressed) = OVERLOAD_LOG.admit() {
                tracing::warn!(peer = %conn.peer, suppressed, "gateway plugin calls are all busy; answering 503");
            }
        })?;
        Ok(call.await)
    }

    fn count(&self, plugin: &str, decision: &'static str) {
        self.state
            .metrics
            .gateway_decisions
            .get_or_create(&GatewayDecisionLabels { plugin: plugin.to_string(), decision })
            .inc();
    }
}

/// Overload is logged a few times per window: under a flood, every request
/// would log.
static OVERLOAD_LOG: Throttle = Throttle::new(5);

/// Seconds a client is told to wait after a 503 for overload.
const RETRY_AFTER_SECS: &str = "1";

/// The answer to a request no plugin call was free for.
fn overloaded() -> Response<Body> {
    let mut response =
        json_response(503, "overloaded", "the gateway is busy; no plugin call became free in time, retry later");
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    response
}

fn subject(plugin: &Plugin) -> Option<SubjectKind> {
    match plugin.metadata() {
        PluginMetadata::Allowlist(m) => Some(m.subject),
        _ => None,
    }
}

fn inspects_body(plugin: &Plugin) -> bool {
    matches!(plugin.metadata(), PluginMetadata::Allowlist(m) if m.inspect_body)
}

/// Only requests that carry a body are buffered for inspection.
fn has_body(req: &Request<Incoming>) -> bool {
    matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && req.headers().get(CONTENT_LENGTH).is_none_or(|v| v != "0")
}

/// Requests refused by [`prepare`] are logged a few per window.
static REFUSED_LOG: Throttle = Throttle::new(10);

/// Makes `req` the request every plugin decides on and the upstream
/// receives, or says why it cannot be forwarded safely:
/// - the method must be upper case: methods are case-sensitive (RFC 9110
///   §9.1), so `post` is not `POST` to a plugin that guards `POST`, yet
///   some servers fold case;
/// - the path is normalised ([`target::normalize`]) and replaces the one
///   sent, so the upstream gets what the plugins saw;
/// - headers with an `_` in their name are dropped
///   ([`proxy::strip_underscored`]);
/// - every header value must be UTF-8, so plugins see every header they
///   might remove by name (the contract carries strings).
fn prepare(req: &mut Request<Incoming>) -> Result<(), Unforwardable> {
    let method = req.method().as_str();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Unforwardable::LowerCaseMethod(method.to_string()));
    }
    let path = target::normalize(req.uri().path())?;
    if path != req.uri().path() {
        let target = match req.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path.into_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(target.parse().map_err(|_| Unforwardable::BadTarget)?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| Unforwardable::BadTarget)?;
    }
    proxy::strip_underscored(req.headers_mut());
    if let Some((name, _)) = req.headers().iter().find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err()) {
        return Err(Unforwardable::NotUtf8(name.clone()));
    }
    Ok(())
}

/// Why a request cannot be made one plugins decide on safely ([`prepare`]).
#[derive(Debug, thiserror::Error)]
enum Unforwardable {
    /// The method has a lower-case letter.
    #[error(
        "the method {0:?} is not upper case; methods are case-sensitive (RFC 9110 9.1) and only upper-case ones are forwarded"
    )]
    LowerCaseMethod(String),
    /// The path cannot be normalised safely.
    #[error(transparent)]
    Target(#[from] target::TargetError),
    /// The normalised target does not parse back (not expected: it holds
    /// only characters a target may).
    #[error("the normalised request target is not a valid URI")]
    BadTarget,
    /// A header value plugins could not be shown.
    #[error("the value of header {0} is not UTF-8")]
    NotUtf8(HeaderName),
}

/// Why the host a request is for is ambiguous or invalid, if it is (RFC
/// 9112 §3.2, RFC 9113 §8.3.1): two `Host` headers, an HTTP/1.1 request
/// without one (even with an absolute URI), a host that is not one
/// ([`target::is_valid_host`]), or a `Host` that differs from the absolute
/// URI's or HTTP/2 `:authority`. Routes match on the host and the upstream
/// gets it in `X-Forwarded-Host`, so such a request is refused rather than
/// routed by one reading of it.
fn host_error(req: &Request<Incoming>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("the request has more than one Host header");
    }
    if host.is_none() && req.version() == Version::HTTP_11 {
        return Some("an HTTP/1.1 request needs a Host header");
    }
    let host = host.map(|host| host.to_str().ok().filter(|text| target::is_valid_host(text)));
    if host == Some(None) {
        return Some("the Host header is not a host name or address with an optional port (RFC 9110 §7.2)");
    }
    let authority = req.uri().authority().map(|authority| authority.as_str());
    if authority.is_some_and(|authority| !target::is_valid_host(authority)) {
        return Some("the request's authority is not a host name or address with an optional port");
    }
    if let (Some(authority), Some(Some(host))) = (authority, host)
        && !authority.eq_ignore_ascii_case(host)
    {
        return Some("the Host header and the request's authority name different hosts");
    }
    None
}

/// The request head plugins see: the request as [`prepare`] left it.
fn request_head(req: &Request<Incoming>, conn: &Connection, scheme: &str) -> RequestHead {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    RequestHead {
        method: req.method().as_str().to_string(),
        scheme: scheme.to_string(),
        authority,
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: req
            .headers()
            .iter()
            // UTF-8 was checked by `prepare`: every header is shown.
            .filter_map(|(n, v)| {
                let value = std::str::from_utf8(v.as_bytes()).ok()?;
                Some(Header { name: n.as_str().to_string(), value: value.to_string() })
            })
            .collect(),
        client_addr: conn.peer.to_string(),
        tls: conn.tls.as_ref().map(|t| TlsInfo {
            server_name: t.server_name.clone(),
            alpn: t.alpn.clone(),
            version: t.version.clone(),
        }),
    }
}

/// The host name without port, lower case (`[::1]:8080` → `::1`).
fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_ascii_lowercase()
}

/// A route's direct answer, checked: an invalid status or header becomes 502.
fn direct(respond: Respond) -> Response<Body> {
    let Ok(status) = http::StatusCode::from_u16(respond.status) else {
        return json_response(502, "bad_gateway", "the route plugin answered an invalid status");
    };
    let mut response = Response::new(full(Bytes::from(respond.body)));
    *response.status_mut() = status;
    for Header { name, value } in respond.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => return json_response(502, "bad_gateway", "the route plugin answered an invalid header"),
        }
    }
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// `{"error": code, "reason": reason}` with `status`.
pub fn json_response(status: u16, code: &str, reason: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "reason": reason }).to_string() + "\n";
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_of("API.example.com:8080"), "api.example.com");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
