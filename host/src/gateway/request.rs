//! The request as plugins see it and the upstream receives it: the host it
//! is for (checked), its target normalised, headers every plugin can read,
//! and the [`RequestHead`] of the contract.

use http::header::{CONTENT_LENGTH, HOST, HeaderName};
use http::{Method, Request, Version};
use hyper::body::Incoming;

use super::{proxy, target};
use crate::listener::Connection;
use crate::runtime::contract::types::{Header, RequestHead, TlsInfo};

/// Why the host a request is for is ambiguous or invalid, if it is (RFC
/// 9112 §3.2, RFC 9113 §8.3.1): two `Host` headers, an HTTP/1.1 request
/// without one (even with an absolute URI), a host that is not one
/// ([`target::is_valid_host`]), or a `Host` that differs from the absolute
/// URI's or HTTP/2 `:authority`. Routes match on the host and the upstream
/// gets it in `X-Forwarded-Host`, so such a request is refused rather than
/// routed by one reading of it.
pub(super) fn host_error(req: &Request<Incoming>) -> Option<&'static str> {
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
pub(super) fn request_head(req: &Request<Incoming>, conn: &Connection, scheme: &str) -> RequestHead {
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
pub(super) fn prepare(req: &mut Request<Incoming>) -> Result<(), Unforwardable> {
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
pub enum Unforwardable {
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

/// The host name without port, lower case (`[::1]:8080` → `::1`).
pub(super) fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_ascii_lowercase()
}

/// Only requests that carry a body are buffered for inspection.
pub(super) fn has_body(req: &Request<Incoming>) -> bool {
    matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && req.headers().get(CONTENT_LENGTH).is_none_or(|v| v != "0")
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
