//! `jwt-org-router`: routes each client organisation to its own upstream.
//!
//! Skeleton of the gateway route: it declares its routes and validates its
//! settings (keys, orgs with upstream and backend token, clock skew), and it
//! already answers requests without a bearer token with 401 and
//! `WWW-Authenticate: Bearer`. Token verification needs the host's JWT
//! function, which arrives with the gateway; until then a request carrying a
//! token is answered 503 rather than forwarded unverified.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "route-plugin" });

use exports::tollgate::plugin::route::Guest;
use tollgate::plugin::types::{Header, PluginInfo, RequestHead, Respond, RouteDecision, RouteMatch, RouteMetadata};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// PEM-encoded RSA public keys that may sign client tokens.
    #[serde(default)]
    public_keys: Vec<String>,
    /// Organisation name (exact) to its backend.
    #[serde(default)]
    orgs: BTreeMap<String, Org>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    #[serde(default = "default_skew")]
    clock_skew_seconds: u32,
}

fn default_skew() -> u32 {
    30
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Org {
    upstream: String,
    backend_token: String,
}

thread_local! {
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

struct JwtOrgRouter;

fn respond(status: u16, headers: Vec<Header>, body: &str) -> RouteDecision {
    RouteDecision::Respond(Respond { status, headers, body: body.into() })
}

fn unauthorized(reason: &str) -> RouteDecision {
    let challenge = Header {
        name: "www-authenticate".into(),
        value: format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
    };
    respond(401, vec![challenge], reason)
}

/// The token of an `Authorization: Bearer <jwt>` header, if the request has one
/// that at least looks like a JWT (three dot-separated parts).
fn bearer_token(req: &RequestHead) -> Option<&str> {
    let value = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("authorization"))?.value.as_str();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.split('.').count() == 3).then_some(token)
}

impl Guest for JwtOrgRouter {
    fn metadata() -> RouteMetadata {
        RouteMetadata {
            info: PluginInfo {
                name: "jwt-org-router".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Routes each organisation's RS256 client token to its own backend.".into(),
                doc: "Verifies the client's RS256 bearer token, reads its `org` claim, forwards to \
                      that org's upstream and replaces `Authorization` with the org's backend \
                      token. Missing or malformed tokens get 401 with `WWW-Authenticate: Bearer`."
                    .into(),
                settings_doc: Some(
                    "`publicKeys`: PEM RSA public keys. `orgs`: org name to `{upstream, \
                     backendToken}`. `clockSkewSeconds`: tolerance on exp/nbf (default 30)."
                        .into(),
                ),
            },
            matches: vec![RouteMatch { hosts: vec![], path_prefix: "/".into(), methods: vec![], priority: 0 }],
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        for (name, org) in &parsed.orgs {
            if name.trim() != name || name.is_empty() {
                return Err(format!("invalid settings: org name {name:?} has surrounding spaces or is empty"));
            }
            if !(org.upstream.starts_with("http://") || org.upstream.starts_with("https://")) {
                return Err(format!(
                    "invalid settings: org {name:?} upstream {:?} is not an http(s) URL",
                    org.upstream
                ));
            }
            if org.backend_token.is_empty() {
                return Err(format!("invalid settings: org {name:?} has an empty backendToken"));
            }
        }
        if parsed.clock_skew_seconds > 300 {
            return Err(format!(
                "invalid settings: clockSkewSeconds {} is above the 300 s this plugin accepts",
                parsed.clock_skew_seconds
            ));
        }
        if let Some(bad) = parsed.public_keys.iter().find(|k| !k.contains("-----BEGIN PUBLIC KEY-----")) {
            return Err(format!("invalid settings: publicKeys entry is not a PEM public key: {:.40}", bad));
        }
        SETTINGS.with(|s| *s.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn route(req: RequestHead) -> RouteDecision {
        if bearer_token(&req).is_none() {
            return unauthorized("a Bearer JWT is required");
        }
        respond(503, vec![], "token verification is not available in this host version")
    }
}

export!(JwtOrgRouter);
