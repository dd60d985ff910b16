//! The status endpoints of the metrics listener: `/metrics` (Prometheus
//! text format), `/healthz`, `/readyz` (also on the admission listener) and
//! `/plugins` (what serves, as JSON).

use std::sync::Arc;

use crate::listener;
use crate::plugins::summary;
use crate::state::HostState;

/// `/readyz`: 200 when every check passes, else 503; `?verbose` lists them.
pub fn readyz(state: &HostState, query: Option<&str>) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let verbose = query.is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let readiness = state.readiness();
    listener::text(if readiness.ready() { 200 } else { 503 }, readiness.render(verbose))
}

/// `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
/// `/plugins` (what is serving, as JSON).
pub async fn endpoint(
    state: Arc<HostState>,
    plugins_detail: bool,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use listener::text;
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(200, state.metrics.render());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(200, "ok"),
        "/readyz" => readyz(&state, req.uri().query()),
        "/plugins" => {
            let registry = state.registry();
            // Plugins' own words only when asked for: the page has no
            // authentication (see `Refusal::host_words`).
            let refused: Vec<_> = state.refused().iter().map(|r| r.for_status(plugins_detail)).collect();
            let status = summary::ServingSummary {
                plugins: registry.iter().map(|p| summary::PluginSummary::from(p.as_ref())).collect(),
                refused: &refused,
                webhook_sync: state.sync_status(),
                directory: state.plugin_dir(),
            };
            match serde_json::to_string_pretty(&status) {
                Ok(json) => {
                    let mut response = text(200, json);
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                    response
                }
                Err(error) => text(500, error.to_string()),
            }
        }
        _ => text(404, "not found; try /metrics, /healthz, /readyz or /plugins"),
    }
}
