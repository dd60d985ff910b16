//! The HTTP gateway: each request is matched to a route plugin by its
//! metadata (host, path prefix, methods, priority), checked by the allowlists
//! guarding that route, and forwarded to the upstream the route names, or
//! answered by the route directly.
//!
//! The steps of one request, each a method of [`Gateway`] that returns a
//! typed [`Rejection`] when the gateway answers itself ([`rejection`] turns
//! it into the response):
//! 1. [`Gateway::route`]: the host must be unambiguous and valid (two
//!    `Host` headers, HTTP/1.1 without one, `a, b`, a port past 65535 are
//!    400); the request is made what plugins decide on and the upstream
//!    gets ([`request::prepare`]: target normalised, `_` headers dropped)
//!    or refused (400); the [`routes::RouteTable`] of the serving registry
//!    picks the route (404 when none);
//! 2. [`Gateway::guard`] with the allowlists on the client address (they
//!    need nothing else): 403 on deny;
//! 3. [`Gateway::decide`]: the route plugin responds (sent as is) or
//!    forwards;
//! 4. [`Gateway::guard`] with the other allowlists (e-mail, names), with
//!    the identity the route established and, for those that inspect it,
//!    the body ([`Gateway::read_body`]): 403 on deny;
//! 5. [`Gateway::upstream`] ([`proxy`]): 502/504 when it does not answer.
//!
//! Plugin calls hold one of the gateway's call permits (a budget apart from
//! admission's); waiting on the upstream does not. A call that finds none
//! free within the budget's wait gets 503 with `Retry-After`.

pub mod client_body;
pub mod proxy;
pub mod rejection;
pub mod request;
pub mod routes;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::listener::Connection;
use crate::metrics::{GatewayDecisionLabels, RouteLabels, RouteStatusLabels, UpstreamLabels};
use crate::plugins::plugin::{AllowCheck, Plugin};
use crate::plugins::registry::Registry;
use crate::runtime::contract::types::{AllowDecision, Forward, Identity, RequestHead, RouteDecision};
use crate::runtime::metadata::PluginMetadata;
use crate::state::{Budget, HostState, Overloaded};
use crate::throttle::Throttle;
use client_body::{ClientBody, stalled};
use gateway_rules::Cidrs;
use proxy::{Body, ClientFacts, Upstreams};
use rejection::{Rejection, direct, full};
use routes::{Guards, RouteTable};

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
    /// The route table of the registry serving now, built at its first
    /// request.
    table: ArcSwap<Tables>,
}

/// A registry and the route table built from it.
struct Tables {
    registry: Arc<Registry>,
    routes: RouteTable,
}

impl Tables {
    fn of(registry: Arc<Registry>) -> Self {
        Self { routes: RouteTable::new(&registry), registry }
    }
}

/// A request once routed: what plugins see, the route plugin and its guards.
struct Routed {
    head: RequestHead,
    plugin: Arc<Plugin>,
    guards: Arc<Guards>,
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
        let tables = Tables::of(state.registry());
        Self {
            state,
            upstreams,
            trusted_proxies,
            scheme: if tls { "https" } else { "http" },
            body_gap,
            table: ArcSwap::from_pointee(tables),
        }
    }

    /// Answers one gateway request.
    pub async fn handle(&self, req: Request<Incoming>, conn: Arc<Connection>) -> Response<Body> {
        let started = Instant::now();
        let mut route = String::from("none");
        let response = match self.answer(req, &conn, &mut route).await {
            Ok(response) => response,
            Err(rejection) => rejection.respond(&conn),
        };
        let status = response.status().as_u16();
        let metrics = &self.state.metrics;
        metrics.gateway_requests.get_or_create(&RouteStatusLabels { route: route.clone(), status }).inc();
        metrics.gateway_seconds.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
        response
    }

    /// The steps of one request; `route` is set to the route's name (for
    /// metrics) once it is known.
    async fn answer(
        &self,
        mut req: Request<Incoming>,
        conn: &Connection,
        route: &mut String,
    ) -> Result<Response<Body>, Rejection> {
        let Routed { head, plugin, guards } = self.route(&mut req, conn)?;
        let head = &head;
        *route = plugin.name().to_string();
        let mut remove = Vec::new();
        let anonymous = Identity { email: None, subject: None };
        let check = AllowCheck { request: head, route: plugin.name(), identity: &anonymous, body: None };
        self.guard(&guards.by_address, check, conn, &mut remove).await?;
        let forward = match self.decide(&plugin, head, conn).await? {
            RouteDecision::Respond(respond) => return direct(respond),
            RouteDecision::Forward(forward) => forward,
        };
        let identity = forward.identity.clone().unwrap_or(anonymous);
        let inspect = guards.inspect_body && request::has_body(&req);
        let (parts, body) = req.into_parts();
        let (body, text) = self.read_body(body, inspect).await?;
        let text = text.as_ref().and_then(|b| std::str::from_utf8(b).ok());
        let check = AllowCheck { request: head, route: plugin.name(), identity: &identity, body: text };
        self.guard(&guards.after_route, check, conn, &mut remove).await?;
        self.upstream(Request::from_parts(parts, body), &forward, &remove, head, conn, plugin.name()).await
    }

    /// Step 1: the request made what plugins see, and its route.
    fn route(&self, req: &mut Request<Incoming>, conn: &Connection) -> Result<Routed, Rejection> {
        if let Some(reason) = request::host_error(req) {
            return Err(Rejection::BadHost(reason));
        }
        request::prepare(req).map_err(Rejection::Unforwardable)?;
        let head = request::request_head(req, conn, self.scheme);
        let host = request::host_of(&head.authority);
        let tables = self.tables();
        let route = tables.routes.route(&host, &head.path, &head.method).ok_or(Rejection::NoRoute)?;
        Ok(Routed { plugin: route.plugin.clone(), guards: route.guards.clone(), head })
    }

    /// The route table of the registry serving now, built once per registry.
    fn tables(&self) -> Arc<Tables> {
        let registry = self.state.registry();
        let cached = self.table.load_full();
        if Arc::ptr_eq(&cached.registry, &registry) {
            return cached;
        }
        let fresh = Arc::new(Tables::of(registry));
        self.table.store(fresh.clone());
        fresh
    }

    /// Steps 2 and 4: each allowlist of `allowlists` in turn on `check`
    /// (the body only to those that inspect it); the headers they ask to
    /// remove are added to `remove`.
    async fn guard(
        &self,
        allowlists: &[Arc<Plugin>],
        check: AllowCheck<'_>,
        conn: &Connection,
        remove: &mut Vec<String>,
    ) -> Result<(), Rejection> {
        for allowlist in allowlists {
            let check = AllowCheck { body: check.body.filter(|_| inspects_body(allowlist)), ..check };
            remove.extend(self.allow(allowlist, &check, conn).await?);
        }
        Ok(())
    }

    /// Runs one allowlist: the headers it removes when it allows.
    async fn allow(
        &self,
        allowlist: &Plugin,
        check: &AllowCheck<'_>,
        conn: &Connection,
    ) -> Result<Vec<String>, Rejection> {
        match self.call(allowlist.check_request_async(check), conn).await? {
            Ok(AllowDecision { allowed: true, remove_headers, .. }) => {
                self.count(allowlist.name(), "allowed");
                Ok(remove_headers)
            }
            Ok(AllowDecision { reason, .. }) => {
                self.count(allowlist.name(), "denied");
                tracing::info!(plugin = allowlist.name(), route = check.route, peer = %conn.peer, %reason, "denied");
                Err(Rejection::Denied(reason))
            }
            Err(error) => {
                self.count(allowlist.name(), "error");
                tracing::warn!(plugin = allowlist.name(), %error, "allowlist failed; denying");
                // An allowlist that cannot answer never lets a request through.
                Err(Rejection::AllowlistFailed)
            }
        }
    }

    /// Step 3: the route plugin's decision.
    async fn decide(&self, plugin: &Plugin, head: &RequestHead, conn: &Connection) -> Result<RouteDecision, Rejection> {
        let name = plugin.name();
        match self.call(plugin.route_async(head), conn).await? {
            Ok(decision) => {
                self.count(name, if matches!(decision, RouteDecision::Respond(_)) { "respond" } else { "forward" });
                Ok(decision)
            }
            Err(error) => {
                self.count(name, "error");
                tracing::warn!(route = %name, %error, "route plugin failed");
                Err(Rejection::RouteFailed)
            }
        }
    }

    /// The body as the upstream will get it, and its bytes when an
    /// allowlist inspects it (read whole, up to [`MAX_INSPECTED_BODY`]).
    async fn read_body(&self, body: Incoming, inspect: bool) -> Result<(Body, Option<Bytes>), Rejection> {
        let body = ClientBody::new(body, self.body_gap);
        if !inspect {
            return Ok((body.boxed(), None));
        }
        match Limited::new(body, MAX_INSPECTED_BODY).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                Ok((full(bytes.clone()), Some(bytes)))
            }
            Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Rejection::BodyTooLarge),
            Err(error) if let Some(&slow) = stalled(&*error) => Err(Rejection::SlowBody(slow)),
            Err(_) => Err(Rejection::BodyUnreadable),
        }
    }

    /// Step 5: the upstream's response.
    async fn upstream(
        &self,
        req: Request<Body>,
        forward: &Forward,
        remove: &[String],
        head: &RequestHead,
        conn: &Connection,
        route: &str,
    ) -> Result<Response<Body>, Rejection> {
        let peer = conn.peer.ip();
        let facts = ClientFacts {
            peer,
            trusted: self.trusted_proxies.contains(peer),
            scheme: self.scheme,
            authority: &head.authority,
        };
        let result = self.upstreams.forward(req, forward, remove, &facts).await;
        let status = match &result {
            Ok(response) => response.status().as_str().to_string(),
            // The client's fault, not the upstream's: refused as such.
            Err(proxy::UpstreamError::SlowBody(slow)) => return Err(Rejection::SlowBody(*slow)),
            Err(error) => {
                tracing::warn!(route, upstream = %forward.upstream, %error, "upstream did not answer");
                error.label().into()
            }
        };
        let labels = UpstreamLabels { route: route.to_string(), status };
        self.state.metrics.upstream_responses.get_or_create(&labels).inc();
        result.map_err(Rejection::Upstream)
    }

    /// Runs a plugin call holding one of the gateway's call permits, or
    /// gives up when none is free within the budget's wait.
    async fn call<T>(&self, call: impl Future<Output = T>, conn: &Connection) -> Result<T, Rejection> {
        let wait = self.state.calls.gateway_wait;
        let _permit = self.state.call_permit(Budget::Gateway, wait).await.map_err(|Overloaded(_)| {
            if let Some(suppressed) = OVERLOAD_LOG.admit() {
                tracing::warn!(peer = %conn.peer, suppressed, "gateway plugin calls are all busy; answering 503");
            }
            Rejection::Overloaded
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

fn inspects_body(plugin: &Plugin) -> bool {
    matches!(plugin.metadata(), PluginMetadata::Allowlist(m) if m.inspect_body)
}
