//! `jwt-org-router`: the JWT API gateway of `../shared/reference`, section 1.
//! A client presents `Authorization: Bearer <RS256 JWT>`; the token is
//! verified by the host (algorithm pinned per key, `exp` required, `nbf` and
//! clock skew honoured); its `org` claim picks the org's upstream, and the
//! client's token is replaced by that org's backend token, so the client
//! never holds the backend token and the backend never sees the client's.
//!
//! With `maxTokenLifetimeSeconds`, a verified token valid for longer than
//! that (from its `iat`, or from now when `iat` is absent or later, to its
//! `exp`) is refused too: the WIT policy record has no field for a cap, so
//! the plugin checks it on the claims the host returns.
//!
//! Answers: no or non-Bearer credentials, or a token that fails
//! verification → 401 with `WWW-Authenticate: Bearer`; a valid token for an
//! org that is not configured (matched exactly: `ACME` is not `acme`) → 403.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "route-plugin" });

use exports::tollgate::plugin::route::Guest;
use tollgate::plugin::services::{JwtAlgorithm, JwtErrorKind, JwtKey, JwtPolicy, now_millis, verify_jwt};
use tollgate::plugin::types::{
    Forward, Header, Identity, PluginInfo, RequestHead, Respond, RouteDecision, RouteMatch, RouteMetadata,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Keys that may sign client tokens.
    #[serde(default)]
    keys: Vec<KeySetting>,
    /// Organisation name (matched exactly) to its backend.
    #[serde(default)]
    orgs: BTreeMap<String, Org>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    #[serde(default = "default_skew")]
    clock_skew_seconds: u32,
    /// The claim naming the organisation.
    #[serde(default = "default_org_claim")]
    org_claim: String,
    /// Required `iss`, if any.
    #[serde(default)]
    issuer: Option<String>,
    /// Required `aud`, if any.
    #[serde(default)]
    audience: Option<String>,
    /// Longest lifetime a token may have, in seconds; none: no cap.
    #[serde(default)]
    max_token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeySetting {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    pem: String,
}

fn default_skew() -> u32 {
    30
}

fn default_org_claim() -> String {
    "org".into()
}

fn default_algorithm() -> String {
    "RS256".into()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Org {
    upstream: String,
    backend_token: String,
}

/// Settings checked and turned into what requests need.
struct Config {
    policy: JwtPolicy,
    orgs: BTreeMap<String, Org>,
    org_claim: String,
    max_token_lifetime_seconds: Option<u64>,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

const CHALLENGE: &str = "Bearer realm=\"tollgate\"";

fn respond(status: u16, challenge: Option<String>, error: &str, reason: &str) -> RouteDecision {
    let mut headers = vec![Header { name: "content-type".into(), value: "application/json".into() }];
    if let Some(challenge) = challenge {
        headers.push(Header { name: "www-authenticate".into(), value: challenge });
    }
    let body = format!("{{\"error\":\"{error}\",\"reason\":\"{reason}\"}}\n");
    RouteDecision::Respond(Respond { status, headers, body })
}

/// 401 for a request with a token that is not acceptable (RFC 6750 §3.1).
fn invalid_token(reason: &str, description: &str) -> RouteDecision {
    let description = description.replace(['"', '\\'], "'");
    let challenge = format!("{CHALLENGE}, error=\"invalid_token\", error_description=\"{description}\"");
    respond(401, Some(challenge), "invalid_token", reason)
}

fn configure(settings: Settings) -> Result<Config, String> {
    let mut keys = Vec::with_capacity(settings.keys.len());
    for (i, key) in settings.keys.into_iter().enumerate() {
        let algorithm = match key.algorithm.as_str() {
            "RS256" => JwtAlgorithm::Rs256,
            "ES256" => JwtAlgorithm::Es256,
            "EdDSA" => JwtAlgorithm::Eddsa,
            other => return Err(format!("keys[{i}].algorithm {other:?}: use RS256, ES256 or EdDSA")),
        };
        if !key.pem.contains("-----BEGIN") {
            return Err(format!("keys[{i}].pem is not PEM"));
        }
        keys.push(JwtKey { kid: key.kid, algorithm, pem: key.pem });
    }
    let mut seen = BTreeMap::new();
    for (name, org) in &settings.orgs {
        if name.is_empty() || name.trim() != name || name.chars().any(char::is_control) {
            return Err(format!("orgs: {name:?} is not a usable org name"));
        }
        // Two orgs that differ only by case would make matching ambiguous.
        if let Some(other) = seen.insert(name.to_lowercase(), name) {
            return Err(format!("orgs: {other:?} and {name:?} differ only by case"));
        }
        if !(org.upstream.starts_with("http://") || org.upstream.starts_with("https://")) {
            return Err(format!("orgs.{name}.upstream {:?} must be an http:// or https:// URL", org.upstream));
        }
        if org.backend_token.is_empty() || org.backend_token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("orgs.{name}.backendToken must be a token without spaces or line breaks"));
        }
    }
    if settings.max_token_lifetime_seconds == Some(0) {
        return Err("maxTokenLifetimeSeconds must be at least 1 (leave it out for no cap)".into());
    }
    Ok(Config {
        policy: JwtPolicy {
            keys,
            leeway_seconds: settings.clock_skew_seconds,
            issuer: settings.issuer,
            audience: settings.audience,
        },
        orgs: settings.orgs,
        org_claim: settings.org_claim,
        max_token_lifetime_seconds: settings.max_token_lifetime_seconds,
    })
}

/// The reason a refusal gives: the contract's name for the kind
/// (`jwt-error-kind` in wit/plugin.wit).
fn reason(kind: JwtErrorKind) -> &'static str {
    match kind {
        JwtErrorKind::Malformed => "malformed",
        JwtErrorKind::AlgorithmNotAllowed => "algorithm-not-allowed",
        JwtErrorKind::UnknownKey => "unknown-key",
        JwtErrorKind::BadSignature => "bad-signature",
        JwtErrorKind::Expired => "expired",
        JwtErrorKind::NotYetValid => "not-yet-valid",
        JwtErrorKind::MissingExp => "missing-exp",
        JwtErrorKind::BadClaims => "bad-claims",
        JwtErrorKind::BadKey => "bad-key",
    }
}

/// Refuses verified claims valid for longer than `max` seconds: from `iat`
/// to `exp`, or from now when `iat` is absent or later than now, so a token
/// cannot look shorter-lived by claiming a later `iat`. The host has checked
/// that `exp` and `iat` are NumericDates (seconds, fractions allowed).
fn check_lifetime(claims: &serde_json::Value, max: u64, now_millis: u64) -> Result<(), RouteDecision> {
    let now = now_millis as f64 / 1000.0;
    let date = |name: &str| claims.get(name).and_then(serde_json::Value::as_f64);
    let Some(exp) = date("exp") else {
        return Err(invalid_token("bad-claims", "the token has no numeric exp claim"));
    };
    let from = date("iat").filter(|iat| *iat <= now).unwrap_or(now);
    let lifetime = exp - from;
    if lifetime > max as f64 {
        // Whole seconds rounded up, so it never reads "3600 s, longer than 3600 s".
        let shown = lifetime.ceil() as u64;
        return Err(invalid_token(
            "lifetime-too-long",
            &format!("the token is valid for {shown} s, longer than this route's {max} s"),
        ));
    }
    Ok(())
}

fn route(config: &Config, req: &RequestHead) -> RouteDecision {
    let authorization =
        gateway_rules::header_values(req.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())), "authorization");
    let credentials = match authorization.as_slice() {
        [] => return respond(401, Some(CHALLENGE.into()), "unauthorized", "no-credentials"),
        [one] => *one,
        _ => return respond(401, Some(CHALLENGE.into()), "invalid_request", "several-authorization-headers"),
    };
    let (scheme, token) = credentials.trim().split_once(' ').unwrap_or((credentials.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Basic and other schemes: say which one we want.
        return respond(401, Some(CHALLENGE.into()), "unauthorized", "not-bearer");
    }
    let token = token.trim();
    if token.split('.').count() != 3 {
        return invalid_token("malformed", "the bearer token is not a JWT");
    }
    let claims = match verify_jwt(token, &config.policy) {
        Ok(claims) => claims,
        Err(error) => return invalid_token(reason(error.kind), &error.message),
    };
    let Ok(claims) = serde_json::from_str::<serde_json::Value>(&claims) else {
        return invalid_token("bad-claims", "claims are not JSON");
    };
    if let Some(max) = config.max_token_lifetime_seconds
        && let Err(refusal) = check_lifetime(&claims, max, now_millis())
    {
        return refusal;
    }
    let Some(org_name) = claims.get(&config.org_claim).and_then(|v| v.as_str()) else {
        return respond(403, None, "forbidden", "no-org");
    };
    // Exact match only: no case folding, trimming or normalisation.
    let Some(org) = config.orgs.get(org_name) else {
        return respond(403, None, "forbidden", "unknown-org");
    };
    let claim = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_string);
    RouteDecision::Forward(Forward {
        upstream: org.upstream.clone(),
        set_headers: vec![Header { name: "authorization".into(), value: format!("Bearer {}", org.backend_token) }],
        remove_headers: vec![],
        identity: Some(Identity { email: claim("email"), subject: claim("sub") }),
    })
}

struct JwtOrgRouter;

impl Guest for JwtOrgRouter {
    fn metadata() -> RouteMetadata {
        RouteMetadata {
            info: PluginInfo {
                name: "jwt-org-router".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Routes each organisation's signed client token to its own backend.".into(),
                doc: "Takes `Authorization: Bearer <JWT>`, has the host verify it (algorithm pinned per key, \
                      `exp` required, `nbf` and clock skew honoured), reads the `org` claim, forwards to that \
                      org's upstream and replaces `Authorization` with the org's backend token. Missing, \
                      non-Bearer or invalid tokens, and tokens valid for longer than the route's \
                      `maxTokenLifetimeSeconds`, get 401 with `WWW-Authenticate: Bearer`; a valid token \
                      for an org not configured (matched exactly, case included) gets 403."
                    .into(),
                settings_doc: Some(
                    "`keys`: `[{kid?, algorithm: RS256|ES256|EdDSA, pem}]` public keys that may sign \
                     client tokens. `orgs`: org name to `{upstream, backendToken}`. `clockSkewSeconds` \
                     (default 30), `orgClaim` (default `org`), `issuer`, `audience`: optional checks. \
                     `maxTokenLifetimeSeconds` (default none: no cap): refuse tokens valid for longer, \
                     from `iat` (or now, when absent or later) to `exp`."
                        .into(),
                ),
            },
            matches: vec![RouteMatch { hosts: vec![], path_prefix: "/".into(), methods: vec![], priority: 0 }],
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        let config = configure(parsed).map_err(|e| format!("invalid settings: {e}"))?;
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn route(req: RequestHead) -> RouteDecision {
        CONFIG.with(|c| match c.borrow().as_ref() {
            Some(config) => route(config, &req),
            None => respond(500, None, "internal", "not-configured"),
        })
    }
}

export!(JwtOrgRouter);
