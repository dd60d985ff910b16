//! The admission listener's requests: `POST <plugin path>` with an
//! AdmissionReview, plus `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::decision::{self, Decision, Failure};
use crate::admission::review::{self, Request as ReviewRequest};
use crate::listener::text;
use crate::metrics::{DecisionLabels, FailureLabels, PluginLabels, RejectLabels};
use crate::plugins::plugin::Plugin;
use crate::runtime::contract::types;
use crate::state::{Budget, HostState};
use crate::throttle::Throttle;

const MIB: usize = 1 << 20;

/// The largest object the API server stores: etcd refuses requests over its
/// `--max-request-bytes`, 1.5 MiB by default, which the Kubernetes docs
/// give as the object size limit.
pub const MAX_STORED_OBJECT: usize = 3 * MIB / 2;

/// Default cap on a review's body: an UPDATE carries the object and its old
/// version, each as JSON in which the API server (Go's encoding/json)
/// writes `<`, `>`, `&`, control characters and invalid UTF-8 as 6-byte
/// `\u00XX` escapes, so each byte of a stored object can take 6:
/// 2 × 6 × 1.5 MiB = 18 MiB, plus 1 MiB for the rest of the review (user,
/// kinds, options) = 19 MiB. A 900 KB ConfigMap of markup is a 10.8 MB review.
pub const DEFAULT_MAX_REVIEW_BYTES: usize = 2 * 6 * MAX_STORED_OBJECT + MIB;

/// Default budget for review bodies held in memory at once, across all
/// requests: thirteen reviews of the default largest size.
pub const DEFAULT_REVIEW_MEMORY_BYTES: usize = 256 * MIB;

/// Budget permits are KiB, so a 256 MiB budget fits a semaphore's count.
const PERMIT_BYTES: usize = 1024;

/// How big reviews may be, alone and together.
#[derive(Debug, Clone)]
pub struct ReviewLimits {
    /// Cap on one review's body (413 past it).
    pub max_bytes: usize,
    /// Bodies being read or answered hold their size of this (KiB permits);
    /// a request that cannot get its share before its deadline gets 503.
    budget: Arc<Semaphore>,
}

impl ReviewLimits {
    /// A cap of `max_bytes` per review and `memory_bytes` for all reviews
    /// in memory at once. The budget must hold at least one largest review.
    pub fn new(max_bytes: usize, memory_bytes: usize) -> Result<Self, String> {
        if memory_bytes < max_bytes {
            return Err(format!(
                "the memory budget for reviews ({} MiB) must hold at least one review of the largest size ({} MiB)",
                memory_bytes / MIB,
                max_bytes / MIB
            ));
        }
        Ok(Self { max_bytes, budget: Arc::new(Semaphore::new(memory_bytes.div_ceil(PERMIT_BYTES))) })
    }

    /// The message of a 413.
    fn too_large(&self) -> String {
        format!("body is larger than the {} MiB cap on an AdmissionReview (--max-review-mib)", self.max_bytes / MIB)
    }
}

/// Oversized reviews are logged at warn, a few per window: the API server
/// repeats a write that fails this way.
static TOO_LARGE_LOG: Throttle = Throttle::new(10);

/// Answers one request on the admission listener: a probe, or a review
/// for a plugin's path (checked, read, parsed, then decided).
pub async fn handle(
    state: Arc<HostState>,
    limits: Arc<ReviewLimits>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    match req.uri().path() {
        "/healthz" => return text(200, "ok"),
        "/readyz" => return crate::status::readyz(&state, req.uri().query()),
        _ => {}
    }
    let plugin = match admissible(&state, &limits, peer, &req) {
        Ok(plugin) => plugin,
        Err(rejection) => return refuse(req.into_body(), &limits, *rejection).await,
    };
    let give_up = tokio::time::Instant::from_std(started) + plugin.call_deadline();
    // The body's share of the budget (`_held`) is held until the answer:
    // the parsed review and the plugin's copy (not counted, about as large
    // again) live until then.
    let (review, request, _held) = match read_review(&state, &limits, &plugin, peer, req, give_up).await {
        Ok(read) => read,
        Err(rejection) => return *rejection,
    };
    decide(&state, plugin, &review, request, started).await
}

/// Answers `rejection` to a request that will not be read.
async fn refuse(body: Incoming, limits: &ReviewLimits, rejection: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    // Read what the client sends (up to the cap) before answering. Over
    // HTTP/2 an answer given mid-upload is followed by a RST_STREAM(NO_ERROR),
    // as RFC 9113 8.1 allows, but curl 7.88 (Debian 12's, which operators
    // debug with) then reports error 92 and drops the status and the reason.
    if rejection.status() != 413 {
        drain(body, limits.max_bytes).await;
    }
    rejection
}

/// A review read off the wire: the parsed review, the plugin's request,
/// and the share of the memory budget its body holds.
type ReadReview = (ReviewRequest, types::AdmissionRequest, Option<OwnedSemaphorePermit>);

/// Reads and parses the review of `req` for `plugin`, by `give_up`; the
/// rejection to answer when it cannot be.
async fn read_review(
    state: &HostState,
    limits: &ReviewLimits,
    plugin: &Plugin,
    peer: SocketAddr,
    req: Request<Incoming>,
    give_up: tokio::time::Instant,
) -> Result<ReadReview, Box<Response<Full<Bytes>>>> {
    let declared = content_length(&req);
    let (body, held) = match read_body(req.into_body(), limits, declared, give_up).await {
        Ok(read) => read,
        Err(error) => return Err(Box::new(unread(state, limits, plugin, peer, error))),
    };
    let bad_review = |error: String| Box::new(reject(state, 400, "bad_review", &error));
    let review = review::parse_review(&body).map_err(|e| bad_review(e.to_string()))?;
    let request = review::to_contract(&review).map_err(|e| bad_review(e.to_string()))?;
    Ok((review, request, held))
}

/// The answer to a body that could not be read.
fn unread(
    state: &HostState,
    limits: &ReviewLimits,
    plugin: &Plugin,
    peer: SocketAddr,
    error: BodyError,
) -> Response<Full<Bytes>> {
    match error {
        BodyError::TooLarge(size) => too_large(state, limits, plugin, peer, size),
        BodyError::Busy => {
            reject(state, 503, "busy", "too many large reviews in memory at once (--max-review-memory-mib); try again")
        }
        BodyError::Slow => reject(state, 408, "slow_body", "the body did not arrive before the plugin's deadline"),
        BodyError::Read(error) => reject(state, 400, "bad_body", &format!("could not read the body: {error}")),
    }
}

/// Why a body was not read.
enum BodyError {
    /// Past the cap; the size read (or declared) so far.
    TooLarge(usize),
    /// The memory budget had no room before the deadline.
    Busy,
    /// The client had not sent the whole body by the deadline.
    Slow,
    /// The connection failed mid-body.
    Read(hyper::Error),
}

/// The declared body length, if any.
fn content_length(req: &Request<Incoming>) -> Option<usize> {
    req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
}

/// Reads a body up to the cap by `give_up` (the plugin's deadline: a
/// stalled upload cannot keep its share of the budget), taking its size
/// from the memory budget, and returns it with the share it holds.
///
/// The declared length (the API server always sends one) is taken from the
/// budget at once: large reviews taking it piece by piece could each hold
/// part of it and all wait for the rest.
async fn read_body(
    mut body: Incoming,
    limits: &ReviewLimits,
    declared: Option<usize>,
    give_up: tokio::time::Instant,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0).min(limits.max_bytes));
    let waiting = std::sync::atomic::AtomicBool::new(false);
    let read = async {
        reserve(limits, &mut held, declared.unwrap_or(0), &waiting).await?;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else { continue };
            if bytes.len() + data.len() > limits.max_bytes {
                return Err(BodyError::TooLarge(bytes.len() + data.len()));
            }
            bytes.extend_from_slice(&data);
            reserve(limits, &mut held, bytes.len(), &waiting).await?;
        }
        Ok(())
    };
    match tokio::time::timeout_at(give_up, read).await {
        Ok(Ok(())) => Ok((bytes.freeze(), held)),
        Ok(Err(error)) => Err(error),
        // Out of time while waiting for room is the budget's doing (503);
        // while the body was still coming, the client's (408).
        Err(_) if waiting.load(std::sync::atomic::Ordering::Relaxed) => Err(BodyError::Busy),
        Err(_) => Err(BodyError::Slow),
    }
}

/// Grows `held` to cover `size` bytes of the budget, waiting for room
/// (`waiting` says so meanwhile).
async fn reserve(
    limits: &ReviewLimits,
    held: &mut Option<OwnedSemaphorePermit>,
    size: usize,
    waiting: &std::sync::atomic::AtomicBool,
) -> Result<(), BodyError> {
    let wanted = size.div_ceil(PERMIT_BYTES);
    let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    if wanted <= have {
        return Ok(());
    }
    // Bounded by the cap, which is checked against the budget's size.
    let more = u32::try_from(wanted - have).map_err(|_| BodyError::TooLarge(size))?;
    let permit = match limits.budget.clone().try_acquire_many_owned(more) {
        Ok(permit) => permit,
        Err(_) => {
            waiting.store(true, std::sync::atomic::Ordering::Relaxed);
            let permit = limits.budget.clone().acquire_many_owned(more).await.map_err(|_| BodyError::Busy)?;
            waiting.store(false, std::sync::atomic::Ordering::Relaxed);
            permit
        }
    };
    match held {
        Some(held) => held.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// How long a refused request's body is read before the answer goes out
/// anyway (and the connection closes, its body unread): a client that
/// stalls its body must not hold the connection, and with enough of them
/// the listener, for ever.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Reads and drops a refused request's body, up to `max` bytes and for at
/// most [`REFUSED_BODY_WAIT`], without keeping it in memory.
async fn drain(mut body: Incoming, max: usize) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > max {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, read).await;
}

/// The 413 answer, logged (throttled) with the plugin, size and peer: the
/// API server shows the user only "the server responded with the status code 413".
fn too_large(
    state: &HostState,
    limits: &ReviewLimits,
    plugin: &Plugin,
    peer: SocketAddr,
    size: usize,
) -> Response<Full<Bytes>> {
    if let Some(suppressed) = TOO_LARGE_LOG.admit() {
        tracing::warn!(
            plugin = plugin.name(),
            %peer,
            size_bytes = size,
            cap_bytes = limits.max_bytes,
            suppressed,
            "admission review refused with 413: larger than --max-review-mib"
        );
    }
    reject(state, 413, "too_large", &limits.too_large())
}

/// Decides the review ([`decision::decide`]), records the metrics and
/// encodes the answer.
async fn decide(
    state: &HostState,
    plugin: Arc<Plugin>,
    review: &ReviewRequest,
    request: types::AdmissionRequest,
    started: Instant,
) -> Response<Full<Bytes>> {
    // Let the other requests that arrived with this one be read and parsed
    // first, so the plugin calls of a burst run one after another while the
    // guest's code and memory are still in the CPU's caches, and their
    // responses leave together. Under load (32 connections) this cut the
    // server's CPU per request by about 15% (BENCHMARKS.md, "Plugin calls
    // after the burst is read"); with one request at a time it costs a
    // reschedule.
    tokio::task::yield_now().await;
    // The deadline counts from the request's arrival, so time spent reading
    // the body is not given twice and the answer beats the API server's
    // timeout.
    let deadline = started + plugin.call_deadline();
    let decision = decision::decide(&plugin, review, &request, &state.calls.admission, deadline).await;
    record(state, plugin.name(), &decision, started);
    match review::review_json(decision.response) {
        Ok(json) => Response::builder()
            .status(200)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| text(500, "could not build the response")),
        Err(error) => text(500, format!("could not encode the response: {error}")),
    }
}

/// Counts a decision: its label, the failure's cause, the time taken.
fn record(state: &HostState, plugin: &str, decision: &Decision, started: Instant) {
    let metrics = &state.metrics;
    if let Some(failure) = &decision.failure {
        if matches!(failure, Failure::Overloaded) {
            state.overloaded(Budget::Admission);
        }
        let labels = FailureLabels { plugin: plugin.to_string(), cause: failure.cause() };
        metrics.plugin_failures.get_or_create(&labels).inc();
    }
    let labels = DecisionLabels { plugin: plugin.to_string(), decision: decision.label() };
    metrics.admission_requests.get_or_create(&labels).inc();
    let labels = PluginLabels { plugin: plugin.to_string() };
    metrics.admission_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
}

/// The plugin for the request's path, or the refusal of a request that no
/// plugin can take, decided from its head alone.
fn admissible(
    state: &HostState,
    limits: &ReviewLimits,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Arc<Plugin>, Box<Response<Full<Bytes>>>> {
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
    if let Some(len) = content_length(req).filter(|len| *len > limits.max_bytes) {
        return Err(Box::new(too_large(state, limits, &plugin, peer, len)));
    }
    Ok(plugin)
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
