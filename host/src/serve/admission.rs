//! The admission listener's requests: `POST <plugin path>` with an
//! AdmissionReview, plus `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::admission::{self, Request as ReviewRequest};
use crate::contract::types;
use crate::error::PluginError;
use crate::metrics::{DecisionLabels, FailureLabels, PluginLabels, RejectLabels};
use crate::plugin::Plugin;
use crate::serve::listener::text;
use crate::state::HostState;

/// The API server never sends more than 3 MiB; neither do we accept more.
pub const MAX_BODY_BYTES: usize = 3 << 20;
const TOO_LARGE: &str = "body is larger than the 3 MiB the API server may send";

/// Answers one request on the admission listener.
pub async fn handle(state: Arc<HostState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => return text(200, "ok"),
        "/readyz" if state.is_ready() => return text(200, "ready"),
        "/readyz" => return text(503, "loading plugins"),
        _ => {}
    }
    let plugin = match admissible(&state, &req) {
        Ok(plugin) => plugin,
        Err(rejection) => {
            // Read what the client sends (up to the cap) before answering.
            // Over HTTP/2 an answer given mid-upload is followed by a
            // RST_STREAM(NO_ERROR), as RFC 9113 8.1 allows, but curl 7.88
            // (Debian 12's, which operators debug with) then reports error
            // 92 and drops the status and the reason.
            if rejection.status() != 413 {
                let _ = Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await;
            }
            return *rejection;
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return reject(&state, 413, "too_large", TOO_LARGE);
        }
        Err(error) => return reject(&state, 400, "bad_body", &format!("could not read the body: {error}")),
    };
    let review = match admission::parse_review(&body) {
        Ok(review) => review,
        Err(error) => return reject(&state, 400, "bad_review", &error.to_string()),
    };
    let request = match admission::to_contract(&review) {
        Ok(request) => request,
        Err(error) => return reject(&state, 400, "bad_review", &error.to_string()),
    };
    decide(&state, plugin, &review, request).await
}

/// Runs the plugin, bounded by the instance permits, and turns its verdict,
/// or its failure under the failure policy, into the response.
async fn decide(
    state: &HostState,
    plugin: Arc<Plugin>,
    review: &ReviewRequest,
    request: types::AdmissionRequest,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let deadline = plugin.call_deadline();
    // Let the other requests that arrived with this one be read and parsed
    // first, so the plugin calls of a burst run one after another while the
    // guest's code and memory are still in the CPU's caches, and their
    // responses leave together. Under load (32 connections) this cut the
    // server's CPU per request by about 15% (BENCHMARKS.md, "Plugin calls
    // after the burst is read"); with one request at a time it costs a
    // reschedule.
    tokio::task::yield_now().await;
    // A free permit is taken at once; only waiting for one needs a timer
    // (registering one on every request cost 0.1-0.7 µs in the server).
    let permit = match state.permits.clone().try_acquire_owned() {
        Ok(permit) => Ok(Ok(permit)),
        Err(_) => tokio::time::timeout(deadline, state.permits.clone().acquire_owned()).await,
    };
    let outcome = match permit {
        Ok(Ok(_permit)) => {
            // The guest runs here, as a future that yields at every epoch
            // tick: no thread hand-off, and a long guest never holds the
            // worker thread.
            let remaining = deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
            match plugin.validate_async(&request, remaining).await {
                Ok(verdict) => admission::response(review, &plugin, verdict).map_err(Failure::Plugin),
                Err(error) => Err(Failure::Plugin(error)),
            }
        }
        Ok(Err(_closed)) => Err(Failure::Internal("host is shutting down".into())),
        Err(_elapsed) => Err(Failure::Overloaded),
    };

    let name = plugin.name().to_string();
    let response = match outcome {
        Ok(response) => {
            let decision = if response.allowed { "allowed" } else { "denied" };
            state.metrics.admission_requests.get_or_create(&DecisionLabels { plugin: name.clone(), decision }).inc();
            response
        }
        Err(failure) => {
            let (cause, text) = failure.describe();
            tracing::warn!(plugin = %name, cause, error = %text, "plugin failed; answering by its failure policy");
            state.metrics.plugin_failures.get_or_create(&FailureLabels { plugin: name.clone(), cause }).inc();
            state
                .metrics
                .admission_requests
                .get_or_create(&DecisionLabels { plugin: name.clone(), decision: "error" })
                .inc();
            admission::failure_response(review, &plugin, &text)
        }
    };
    state
        .metrics
        .admission_seconds
        .get_or_create(&PluginLabels { plugin: name })
        .observe(started.elapsed().as_secs_f64());
    match admission::review_json(response) {
        Ok(json) => Response::builder()
            .status(200)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| text(500, "could not build the response")),
        Err(error) => text(500, format!("could not encode the response: {error}")),
    }
}

/// The plugin for the request's path, or the refusal of a request that no
/// plugin can take, decided from its head alone.
fn admissible(state: &HostState, req: &Request<Incoming>) -> Result<Arc<Plugin>, Box<Response<Full<Bytes>>>> {
    let registry = state.registry();
    let Some(plugin) = registry.by_admission_path(req.uri().path()).cloned() else {
        return Err(Box::new(reject(state, 404, "not_found", "no admission plugin serves this path")));
    };
    if req.method() != Method::POST {
        let mut response = reject(state, 405, "method", "admission requests must be POST");
        response.headers_mut().insert(ALLOW, http::HeaderValue::from_static("POST"));
        return Err(Box::new(response));
    }
    if !is_json(req.headers().get(CONTENT_TYPE)) {
        return Err(Box::new(reject(state, 415, "media_type", "Content-Type must be application/json")));
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(Box::new(reject(state, 413, "too_large", TOO_LARGE)));
    }
    Ok(plugin)
}

/// Why a plugin produced no verdict.
enum Failure {
    Plugin(PluginError),
    Overloaded,
    Internal(String),
}

impl Failure {
    fn describe(self) -> (&'static str, String) {
        match self {
            Failure::Plugin(error) => (error.cause(), error.to_string()),
            Failure::Overloaded => ("overloaded", "no plugin instance became free before the deadline".into()),
            Failure::Internal(text) => ("internal", text),
        }
    }
}

fn reject(state: &HostState, status: u16, reason: &'static str, message: &str) -> Response<Full<Bytes>> {
    state.metrics.rejected_requests.get_or_create(&RejectLabels { reason }).inc();
    text(status, message)
}

/// `application/json`, any case, parameters (charset) allowed.
fn is_json(value: Option<&http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else { return false };
    value.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;
    use http::HeaderValue;

    #[test]
    fn json_media_types() {
        assert!(is_json(Some(&HeaderValue::from_static("application/json"))));
        assert!(is_json(Some(&HeaderValue::from_static("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&HeaderValue::from_static("text/plain"))));
        assert!(!is_json(Some(&HeaderValue::from_static("application/jsonx"))));
        assert!(!is_json(None));
    }
}
