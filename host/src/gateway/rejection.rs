//! The one place a gateway request the gateway answers itself becomes a
//! response (as linkerd's `DefaultRescue`): each step returns a typed
//! [`Rejection`], and only here are its status, error code, reason and log
//! line decided.

use bytes::Bytes;
use http::Response;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http_body_util::{BodyExt, Full};

use super::client_body::Stalled;
use super::proxy::{Body, UpstreamError};
use super::request::Unforwardable;
use crate::listener::Connection;
use crate::runtime::contract::types::{Header, Respond};
use crate::throttle::Throttle;

/// Why the gateway answered a request itself.
#[derive(Debug)]
pub enum Rejection {
    /// The host is ambiguous or invalid (400).
    BadHost(&'static str),
    /// The request cannot be made one plugins decide on safely (400).
    Unforwardable(Unforwardable),
    /// No route matches (404).
    NoRoute,
    /// An allowlist denied, with its reason (403).
    Denied(String),
    /// An allowlist could not answer: never a pass (403).
    AllowlistFailed,
    /// No plugin call became free in time (503, `Retry-After`).
    Overloaded,
    /// The route plugin failed (502).
    RouteFailed,
    /// The route plugin answered an invalid status or header (502).
    BadDirectAnswer(&'static str),
    /// A body an allowlist inspects is over [`super::MAX_INSPECTED_BODY`] (413).
    BodyTooLarge,
    /// The body could not be read (400).
    BodyUnreadable,
    /// The body paused too long (408).
    SlowBody(Stalled),
    /// The upstream did not answer (502, 504; never its `SlowBody`, which
    /// the gateway turns into [`Rejection::SlowBody`]).
    Upstream(UpstreamError),
}

/// Requests refused for what the client sent are logged a few per window.
static REFUSED_LOG: Throttle = Throttle::new(10);

/// Seconds a client is told to wait after a 503 for overload.
const RETRY_AFTER_SECS: &str = "1";

impl Rejection {
    /// The response, logged (rate-limited) when the client caused it.
    pub fn respond(self, conn: &Connection) -> Response<Body> {
        if let Rejection::Unforwardable(reason) = &self {
            refused(conn, reason);
        }
        if let Rejection::SlowBody(slow) = &self {
            refused(conn, slow);
        }
        let (status, code, reason) = self.parts();
        let mut response = json_response(status, code, &reason);
        if status == 503 {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }

    /// Status, error code and reason.
    fn parts(self) -> (u16, &'static str, String) {
        match self {
            Rejection::BadHost(reason) => (400, "bad_host", reason.into()),
            Rejection::Unforwardable(reason) => (400, "bad_request", reason.to_string()),
            Rejection::NoRoute => (404, "not_found", "no route matches this request".into()),
            Rejection::Denied(reason) => (403, "forbidden", reason),
            Rejection::AllowlistFailed => (403, "forbidden", "allowlist-unavailable".into()),
            Rejection::Overloaded => {
                (503, "overloaded", "the gateway is busy; no plugin call became free in time, retry later".into())
            }
            Rejection::RouteFailed => (502, "bad_gateway", "the route plugin failed".into()),
            Rejection::BadDirectAnswer(reason) => (502, "bad_gateway", reason.into()),
            Rejection::BodyTooLarge => {
                (413, "too_large", "the body is larger than the 1 MiB an allowlist inspects".into())
            }
            Rejection::BodyUnreadable => (400, "bad_request", "the body could not be read".into()),
            Rejection::SlowBody(slow) => (408, "slow_body", slow.to_string()),
            Rejection::Upstream(error) => {
                let code = if error.status() == 504 { "gateway_timeout" } else { "bad_gateway" };
                (error.status(), code, error.to_string())
            }
        }
    }
}

fn refused(conn: &Connection, reason: &dyn std::fmt::Display) {
    if let Some(suppressed) = REFUSED_LOG.admit() {
        tracing::info!(peer = %conn.peer, %reason, suppressed, "gateway request refused");
    }
}

/// A route's direct answer, checked: an invalid status or header is a
/// [`Rejection::BadDirectAnswer`].
pub fn direct(respond: Respond) -> Result<Response<Body>, Rejection> {
    let Ok(status) = http::StatusCode::from_u16(respond.status) else {
        return Err(Rejection::BadDirectAnswer("the route plugin answered an invalid status"));
    };
    let mut response = Response::new(full(Bytes::from(respond.body)));
    *response.status_mut() = status;
    for Header { name, value } in respond.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => return Err(Rejection::BadDirectAnswer("the route plugin answered an invalid header")),
        }
    }
    Ok(response)
}

/// A whole body.
pub fn full(bytes: Bytes) -> Body {
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_rejection_has_its_status_and_code() {
        let cases = [
            (Rejection::BadHost("two"), 400, "bad_host"),
            (Rejection::NoRoute, 404, "not_found"),
            (Rejection::Denied("not-listed".into()), 403, "forbidden"),
            (Rejection::AllowlistFailed, 403, "forbidden"),
            (Rejection::Overloaded, 503, "overloaded"),
            (Rejection::RouteFailed, 502, "bad_gateway"),
            (Rejection::BodyTooLarge, 413, "too_large"),
            (Rejection::BodyUnreadable, 400, "bad_request"),
            (Rejection::SlowBody(Stalled(Duration::from_secs(1))), 408, "slow_body"),
            (Rejection::Upstream(UpstreamError::Timeout), 504, "gateway_timeout"),
            (Rejection::Upstream(UpstreamError::Connect), 502, "bad_gateway"),
        ];
        for (rejection, status, code) in cases {
            let (got_status, got_code, reason) = rejection.parts();
            assert_eq!((got_status, got_code), (status, code), "{reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn an_invalid_direct_answer_is_a_rejection() {
        let respond = |status, headers| Respond { status, headers, body: String::new() };
        assert!(matches!(direct(respond(1000, vec![])), Err(Rejection::BadDirectAnswer(_))));
        let bad = vec![Header { name: "bad name".into(), value: "v".into() }];
        assert!(matches!(direct(respond(200, bad)), Err(Rejection::BadDirectAnswer(_))));
        assert_eq!(direct(respond(204, vec![])).map(|r| r.status().as_u16()).ok(), Some(204));
    }
}
