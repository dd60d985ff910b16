//! JWT verification for plugins (`services.verify-jwt`): done natively,
//! because RSA and elliptic-curve signatures are slow in a guest and easy to
//! get wrong.
//!
//! What is checked, in order:
//! - the token is a compact JWS whose header is a JSON object;
//! - the header has no `crit`: Tollgate understands no JWS extension, and
//!   RFC 7515 section 4.1.11 says a token that requires one must be refused;
//! - each key pins its algorithm, so `none`, HMAC with a public key as
//!   secret, and any algorithm the operator did not configure are refused
//!   before a signature is looked at; `kid`, when present, selects the key;
//! - the signature (jsonwebtoken does this, and only this);
//! - the registered claims have their RFC 7519 types: `exp`, `nbf` and `iat`
//!   are NumericDates (numbers of seconds, fractions allowed, up to the year
//!   9999), `iss`, `sub` and `jti` strings, `aud` a string or strings;
//! - `exp` is present and not past, `nbf` not in the future, both with the
//!   policy's leeway; `iss` and `aud` match the policy when it names them.
//!
//! jsonwebtoken's own claim checks are off: it reads `exp` and `nbf` as
//! integers and silently skips one it cannot read (a date string, 2^64), and
//! it ignores `crit`.
//!
//! Parsed keys are cached by their PEM text, and verified tokens by (policy,
//! token) until their real (possibly fractional) `exp` plus leeway, so a
//! client reusing its token pays for the signature once.
//!
//! A refusal is a [`TokenRefusal`], whose text says in words what failed; it
//! reaches the plugin as a `jwt-error` (kind and that text).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::runtime::contract::services::{JwtAlgorithm, JwtError, JwtErrorKind, JwtKey, JwtPolicy};

/// Verified tokens kept at most; the cache is emptied of expired entries,
/// then cleared, when it is full.
pub const MAX_CACHED_TOKENS: usize = 10_000;

/// The latest NumericDate accepted, in seconds: 9999-12-31T23:59:59Z. A
/// later one is no real date but an overflow attempt (2^64) or a mistake
/// (milliseconds instead of seconds), and is refused rather than saturated.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// Characters of token-supplied text (an `alg`, a `kid`) quoted in a refusal
/// at most: the text ends up in a `WWW-Authenticate` header.
const QUOTED_CHARS: usize = 64;

/// Why a token was refused, in words. Converts into the contract's
/// [`JwtError`]: [`TokenRefusal::kind`] and this text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not three dot-separated parts.
    #[error("the token is not a compact JWS (three base64url parts separated by dots)")]
    NotCompact,
    /// The first part does not decode to a JSON object.
    #[error("the token's header is not a base64url-encoded JSON object")]
    BadHeader,
    /// A part is not base64url.
    #[error("a part of the token is not base64url")]
    NotBase64,
    /// A part decodes to bytes that are not UTF-8.
    #[error("a part of the token is not UTF-8 text")]
    NotUtf8,
    /// The header or claims are not JSON of the shape a JWT has.
    #[error("the token's header or claims are not valid JSON of the shape a JWT has")]
    NotJson,
    /// The header has no string `alg`.
    #[error("the token's header has no alg naming its signature algorithm")]
    NoAlgorithm,
    /// `alg` is none, HMAC, unknown, or not the algorithm of any key.
    #[error("the token's algorithm {alg} is not one the route allows")]
    AlgorithmNotAllowed {
        /// The algorithm the token names, quoted.
        alg: String,
    },
    /// The header has `crit` (RFC 7515 section 4.1.11).
    #[error(
        "the token's header requires extensions Tollgate does not understand ({detail}), so it is refused \
         (RFC 7515 section 4.1.11)"
    )]
    CriticalExtensions {
        /// What `crit` holds, in words.
        detail: String,
    },
    /// The header's `kid` is not a string.
    #[error("the token's kid is not a string")]
    KidNotString,
    /// The token names a `kid` no key has.
    #[error("no key of the route has the token's kid {kid}")]
    UnknownKey {
        /// The token's `kid`, quoted.
        kid: String,
    },
    /// No candidate key verifies the signature.
    #[error("the signature does not match the key")]
    BadSignature,
    /// The signature could not even be checked (a cryptographic error).
    #[error("the signature could not be checked (it is not a signature of the token's algorithm)")]
    SignatureUnusable,
    /// A key of the policy cannot be used.
    #[error("a key of the route ({key}) is not usable: {why}")]
    BadKey {
        /// Which key: its `kid`, or that it has none.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The claims are JSON but not an object.
    #[error("the token's claims are not a JSON object")]
    ClaimsNotObject,
    /// `exp`, `nbf` or `iat` is not a usable NumericDate.
    #[error("claim {claim} is not a NumericDate (a number of seconds since 1970): {problem}")]
    NotNumericDate {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with its value.
        problem: DateProblem,
    },
    /// `iss`, `sub` or `jti` is not a string.
    #[error("claim {claim} is not a string")]
    NotString {
        /// The claim's name.
        claim: &'static str,
    },
    /// `aud` is neither a string nor an array of strings.
    #[error("claim aud is not a string or an array of strings")]
    AudienceNotStrings,
    /// No `exp`: tokens that never expire are refused.
    #[error("the token has no exp claim; tokens must expire")]
    MissingExp,
    /// Another claim the verification requires is absent.
    #[error("the token has no {claim} claim, which the route requires")]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// `iss` is not the policy's issuer.
    #[error("the token's issuer (iss) is not the one the route requires")]
    WrongIssuer,
    /// `aud` does not name the policy's audience.
    #[error("the token's audience (aud) does not include the one the route requires")]
    WrongAudience,
    /// `sub` is not the one required.
    #[error("the token's subject (sub) is not the one the route requires")]
    WrongSubject,
    /// A failure jsonwebtoken reports that none of the above describes.
    #[error("the token could not be verified")]
    Unverifiable,
}

/// What is wrong with a NumericDate claim's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateProblem {
    /// A string, boolean, null, array or object.
    #[error("it is not a number")]
    NotANumber,
    /// Before 1970.
    #[error("it is negative")]
    Negative,
    /// After [`MAX_NUMERIC_DATE`].
    #[error("it is after the year 9999 (milliseconds instead of seconds?)")]
    TooLate,
}

impl TokenRefusal {
    /// The contract's kind of refusal for this reason.
    pub fn kind(&self) -> JwtErrorKind {
        match self {
            TokenRefusal::NotCompact
            | TokenRefusal::BadHeader
            | TokenRefusal::NotBase64
            | TokenRefusal::NotUtf8
            | TokenRefusal::NotJson
            | TokenRefusal::NoAlgorithm
            | TokenRefusal::KidNotString
            // The contract has no kind of its own for an extension the host
            // does not understand; the token is unusable as it stands.
            | TokenRefusal::CriticalExtensions { .. }
            | TokenRefusal::Unverifiable => JwtErrorKind::Malformed,
            TokenRefusal::AlgorithmNotAllowed { .. } => JwtErrorKind::AlgorithmNotAllowed,
            TokenRefusal::UnknownKey { .. } => JwtErrorKind::UnknownKey,
            TokenRefusal::BadSignature | TokenRefusal::SignatureUnusable => JwtErrorKind::BadSignature,
            TokenRefusal::BadKey { .. } => JwtErrorKind::BadKey,
            TokenRefusal::MissingExp => JwtErrorKind::MissingExp,
            TokenRefusal::Expired => JwtErrorKind::Expired,
            TokenRefusal::NotYetValid => JwtErrorKind::NotYetValid,
            TokenRefusal::ClaimsNotObject
            | TokenRefusal::NotNumericDate { .. }
            | TokenRefusal::NotString { .. }
            | TokenRefusal::AudienceNotStrings
            | TokenRefusal::MissingClaim { .. }
            | TokenRefusal::WrongIssuer
            | TokenRefusal::WrongAudience
            | TokenRefusal::WrongSubject => JwtErrorKind::BadClaims,
        }
    }
}

impl From<TokenRefusal> for JwtError {
    fn from(refusal: TokenRefusal) -> Self {
        JwtError { kind: refusal.kind(), message: refusal.to_string() }
    }
}

/// A parsed key, or why the PEM text is not one; by (algorithm, PEM).
type KeyCache = HashMap<(u8, String), Result<Arc<DecodingKey>, TokenRefusal>>;

/// Verified tokens by (policy fingerprint, token).
type TokenCache = HashMap<(u64, String), Verified>;

/// Keys and verified tokens shared by every plugin call.
#[derive(Default)]
pub struct Verifier {
    keys: Mutex<KeyCache>,
    tokens: Mutex<TokenCache>,
}

/// A token that verified: its claims and until when they hold.
#[derive(Clone)]
struct Verified {
    claims: Arc<str>,
    /// `exp` plus leeway, since the epoch.
    valid_until: Duration,
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    unix_now().as_secs()
}

/// The time since the Unix epoch, to the precision the clock gives.
fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Verifier {
    /// Verifies `token` under `policy` and returns its claims (JSON text).
    pub fn verify(&self, token: &str, policy: &JwtPolicy) -> Result<Arc<str>, JwtError> {
        self.verify_at(token, policy, unix_now()).map_err(JwtError::from)
    }

    /// Verifies at time `now` (since the epoch), through the token cache.
    fn verify_at(&self, token: &str, policy: &JwtPolicy, now: Duration) -> Result<Arc<str>, TokenRefusal> {
        let cache_key = (fingerprint(policy), token.to_string());
        if let Some(hit) = self.tokens.lock().ok().and_then(|cache| cache.get(&cache_key).cloned()) {
            // Everything but expiry was checked when the token was cached,
            // and none of it changes with time.
            return if now < hit.valid_until { Ok(hit.claims) } else { Err(TokenRefusal::Expired) };
        }
        let verified = self.verify_uncached(token, policy, now)?;
        self.remember(cache_key, verified.clone(), now);
        Ok(verified.claims)
    }

    fn verify_uncached(&self, token: &str, policy: &JwtPolicy, now: Duration) -> Result<Verified, TokenRefusal> {
        let header = JoseHeader::read(token)?;
        let candidates = candidate_keys(policy, &header)?;
        let claims = self.check_signature(token, &header, &candidates)?;
        let valid_until = check_claims(&claims, policy, now)?;
        Ok(Verified { claims: claims.to_string().into(), valid_until })
    }

    /// Checks the signature with each candidate key in turn and returns the
    /// claims of the first that verifies; checks no claim.
    fn check_signature(&self, token: &str, header: &JoseHeader, candidates: &[&JwtKey]) -> Result<Value, TokenRefusal> {
        let mut validation = Validation::new(header.alg);
        // `check_claims` does all claim checks; see the module doc for why.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut last = TokenRefusal::BadSignature;
        for key in candidates {
            let decoding = self.key(key)?;
            match jsonwebtoken::decode::<Value>(token, &decoding, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = classify(&e, header);
                    // Only a bad signature means another key might do.
                    if last.kind() != JwtErrorKind::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Caches a verified token, making room first when the cache is full.
    fn remember(&self, cache_key: (u64, String), verified: Verified, now: Duration) {
        let Ok(mut cache) = self.tokens.lock() else { return };
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.retain(|_, v| now < v.valid_until);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(cache_key, verified);
    }

    /// The parsed key, from the cache or parsed now.
    fn key(&self, key: &JwtKey) -> Result<Arc<DecodingKey>, TokenRefusal> {
        let cache_key = (key.algorithm as u8, key.pem.clone());
        if let Some(cached) = self.keys.lock().ok().and_then(|keys| keys.get(&cache_key).cloned()) {
            return cached;
        }
        let pem = key.pem.as_bytes();
        let parsed = match key.algorithm {
            JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem),
            JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(pem),
            JwtAlgorithm::Eddsa => DecodingKey::from_ed_pem(pem),
        }
        .map(Arc::new)
        .map_err(|_| TokenRefusal::BadKey {
            key: describe_key(key),
            why: format!("it is not an {} public key in PEM", algorithm_name(key.algorithm)),
        });
        if let Ok(mut keys) = self.keys.lock() {
            // Keys come from operators' settings: a handful, never unbounded
            // in practice; cap anyway.
            if keys.len() > 1024 {
                keys.clear();
            }
            keys.insert(cache_key, parsed.clone());
        }
        parsed
    }
}

/// The JOSE header fields verification uses, read before any signature is
/// checked (so nothing in it is trusted beyond choosing how to check).
struct JoseHeader {
    alg: Algorithm,
    /// `alg` as the token spells it, for refusals.
    alg_name: String,
    kid: Option<String>,
}

impl JoseHeader {
    /// Reads the header of a compact JWS, refusing `crit` and algorithms
    /// JWS does not define.
    fn read(token: &str) -> Result<JoseHeader, TokenRefusal> {
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenRefusal::NotCompact);
        };
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenRefusal::BadHeader)?;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(TokenRefusal::BadHeader);
        };
        if let Some(crit) = fields.get("crit") {
            return Err(TokenRefusal::CriticalExtensions { detail: describe_crit(crit) });
        }
        let Some(Value::String(alg_name)) = fields.get("alg") else {
            return Err(TokenRefusal::NoAlgorithm);
        };
        // `none` and names JWS does not define do not parse.
        let alg =
            Algorithm::from_str(alg_name).map_err(|_| TokenRefusal::AlgorithmNotAllowed { alg: quoted(alg_name) })?;
        let kid = match fields.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(TokenRefusal::KidNotString),
        };
        Ok(JoseHeader { alg, alg_name: alg_name.clone(), kid })
    }
}

/// What a `crit` header holds, in words.
fn describe_crit(crit: &Value) -> String {
    match crit {
        Value::Array(names) if names.is_empty() => "crit is an empty list".into(),
        Value::Array(names) => {
            let names: Option<Vec<String>> = names.iter().map(|n| n.as_str().map(quoted)).collect();
            match names {
                Some(names) => format!("crit lists {}", names.join(", ")),
                None => "crit is not a list of names".into(),
            }
        }
        _ => "crit is not a list of names".into(),
    }
}

/// The policy's keys that may verify a token with this header: those of its
/// algorithm, narrowed to its `kid` when it names one.
fn candidate_keys<'p>(policy: &'p JwtPolicy, header: &JoseHeader) -> Result<Vec<&'p JwtKey>, TokenRefusal> {
    let of_alg: Vec<&JwtKey> = policy.keys.iter().filter(|k| algorithm(k.algorithm) == header.alg).collect();
    if of_alg.is_empty() {
        return Err(TokenRefusal::AlgorithmNotAllowed { alg: quoted(&header.alg_name) });
    }
    let Some(kid) = &header.kid else { return Ok(of_alg) };
    let named: Vec<&JwtKey> = of_alg.into_iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect();
    if named.is_empty() {
        return Err(TokenRefusal::UnknownKey { kid: quoted(kid) });
    }
    Ok(named)
}

/// The registered claims (RFC 7519 section 4.1) verification looks at,
/// type-checked.
struct Registered<'c> {
    exp: Option<Duration>,
    nbf: Option<Duration>,
    iss: Option<&'c str>,
    aud: Option<Vec<&'c str>>,
}

impl<'c> Registered<'c> {
    /// Reads the registered claims, refusing any of the wrong type.
    fn read(claims: &'c Map<String, Value>) -> Result<Registered<'c>, TokenRefusal> {
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        // No policy field asks for `iat`, `sub` or `jti`; plugins may rely
        // on their types.
        numeric_date(claims, "iat")?;
        let registered = Registered { exp, nbf, iss: string_claim(claims, "iss")?, aud: audience(claims)? };
        string_claim(claims, "sub")?;
        string_claim(claims, "jti")?;
        Ok(registered)
    }
}

/// A NumericDate claim as a time since the epoch, if present.
fn numeric_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<Duration>, TokenRefusal> {
    claims
        .get(claim)
        .map(|value| to_numeric_date(value).map_err(|problem| TokenRefusal::NotNumericDate { claim, problem }))
        .transpose()
}

/// A NumericDate (RFC 7519 section 2): seconds since the epoch, integer or
/// not, within [0, [`MAX_NUMERIC_DATE`]].
fn to_numeric_date(value: &Value) -> Result<Duration, DateProblem> {
    let seconds = value.as_f64().ok_or(DateProblem::NotANumber)?;
    if seconds.is_nan() {
        return Err(DateProblem::NotANumber);
    }
    if seconds < 0.0 {
        return Err(DateProblem::Negative);
    }
    if seconds > MAX_NUMERIC_DATE {
        return Err(DateProblem::TooLate);
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| DateProblem::TooLate)
}

/// A string claim, if present.
fn string_claim<'c>(claims: &'c Map<String, Value>, claim: &'static str) -> Result<Option<&'c str>, TokenRefusal> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenRefusal::NotString { claim }),
    }
}

/// `aud`: one string or an array of strings (RFC 7519 section 4.1.3).
fn audience(claims: &Map<String, Value>) -> Result<Option<Vec<&str>>, TokenRefusal> {
    match claims.get("aud") {
        None => Ok(None),
        Some(Value::String(one)) => Ok(Some(vec![one.as_str()])),
        Some(Value::Array(many)) => many
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
            .map(Some)
            .ok_or(TokenRefusal::AudienceNotStrings),
        Some(_) => Err(TokenRefusal::AudienceNotStrings),
    }
}

/// Checks the claims of a token whose signature verified, and returns until
/// when the token holds (`exp` plus leeway).
fn check_claims(claims: &Value, policy: &JwtPolicy, now: Duration) -> Result<Duration, TokenRefusal> {
    let Value::Object(claims) = claims else { return Err(TokenRefusal::ClaimsNotObject) };
    let registered = Registered::read(claims)?;
    let exp = registered.exp.ok_or(TokenRefusal::MissingExp)?;
    let leeway = Duration::from_secs(u64::from(policy.leeway_seconds));
    let valid_until = exp.saturating_add(leeway);
    // RFC 7519: valid strictly before `exp`, and from `nbf` on.
    if now >= valid_until {
        return Err(TokenRefusal::Expired);
    }
    if registered.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenRefusal::NotYetValid);
    }
    check_issuer(registered.iss, policy.issuer.as_deref())?;
    check_audience(registered.aud.as_deref(), policy.audience.as_deref())?;
    Ok(valid_until)
}

/// The token's `iss` must be the policy's issuer, when it names one.
fn check_issuer(iss: Option<&str>, required: Option<&str>) -> Result<(), TokenRefusal> {
    match (iss, required) {
        (_, None) => Ok(()),
        (None, Some(_)) => Err(TokenRefusal::MissingClaim { claim: "iss".into() }),
        (Some(iss), Some(required)) if iss == required => Ok(()),
        (Some(_), Some(_)) => Err(TokenRefusal::WrongIssuer),
    }
}

/// The token's `aud` must include the policy's audience, when it names one.
fn check_audience(aud: Option<&[&str]>, required: Option<&str>) -> Result<(), TokenRefusal> {
    match (aud, required) {
        (_, None) => Ok(()),
        (None, Some(_)) => Err(TokenRefusal::MissingClaim { claim: "aud".into() }),
        (Some(aud), Some(required)) if aud.contains(&required) => Ok(()),
        (Some(_), Some(_)) => Err(TokenRefusal::WrongAudience),
    }
}

/// Text from a token, quoted for a refusal: printable ASCII only (the text
/// may end up in a response header), and short.
fn quoted(text: &str) -> String {
    let short: String = text.chars().take(QUOTED_CHARS).collect();
    let ellipsis = if short.len() < text.len() { "..." } else { "" };
    format!("\"{}{ellipsis}\"", short.escape_default())
}

/// Which key of the policy, for a refusal.
fn describe_key(key: &JwtKey) -> String {
    match &key.kid {
        Some(kid) => format!("kid {}", quoted(kid)),
        None => "the one without a kid".into(),
    }
}

/// The JWS name of an algorithm.
fn algorithm_name(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::Rs256 => "RS256",
        JwtAlgorithm::Es256 => "ES256",
        JwtAlgorithm::Eddsa => "EdDSA",
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Eddsa => Algorithm::EdDSA,
    }
}

/// A jsonwebtoken error as a refusal in words (its own `Display` prints
/// type names such as `InvalidAlgorithm`). Claim errors cannot happen with
/// the validation `check_signature` uses, but are mapped all the same.
fn classify(e: &jsonwebtoken::errors::Error, header: &JoseHeader) -> TokenRefusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidToken => TokenRefusal::NotCompact,
        K::InvalidSignature => TokenRefusal::BadSignature,
        K::Crypto(_) => TokenRefusal::SignatureUnusable,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            TokenRefusal::AlgorithmNotAllowed { alg: quoted(&header.alg_name) }
        }
        K::InvalidEcdsaKey => bad_key("it is not a valid ECDSA key"),
        K::InvalidRsaKey(_) => bad_key("it is not a valid RSA key"),
        K::InvalidKeyFormat => bad_key("it is not in a format its algorithm accepts"),
        K::RsaFailedSigning => bad_key("signing with it failed"),
        K::MissingRequiredClaim(claim) if claim == "exp" => TokenRefusal::MissingExp,
        K::MissingRequiredClaim(claim) => TokenRefusal::MissingClaim { claim: claim.clone() },
        K::ExpiredSignature => TokenRefusal::Expired,
        K::ImmatureSignature => TokenRefusal::NotYetValid,
        K::InvalidIssuer => TokenRefusal::WrongIssuer,
        K::InvalidAudience => TokenRefusal::WrongAudience,
        K::InvalidSubject => TokenRefusal::WrongSubject,
        K::Base64(_) => TokenRefusal::NotBase64,
        K::Utf8(_) => TokenRefusal::NotUtf8,
        K::Json(_) => TokenRefusal::NotJson,
        // The enum is non-exhaustive.
        _ => TokenRefusal::Unverifiable,
    }
}

/// A key refused by the crypto library; which one is not known there.
fn bad_key(why: &str) -> TokenRefusal {
    TokenRefusal::BadKey { key: "one matching the token".into(), why: why.into() }
}

/// Identifies a policy for the token cache: a token verified under one
/// plugin's keys is never taken as verified under another's.
fn fingerprint(policy: &JwtPolicy) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for key in &policy.keys {
        key.kid.hash(&mut hasher);
        (key.algorithm as u8).hash(&mut hasher);
        key.pem.hash(&mut hasher);
    }
    policy.leeway_seconds.hash(&mut hasher);
    policy.issuer.hash(&mut hasher);
    policy.audience.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const RS_PUB: &str = include_str!("../../../tests/data/jwt/client-rs256.pub.pem");
    const RS_KEY: &str = include_str!("../../../tests/data/jwt/client-rs256.key");
    const ATTACKER_KEY: &str = include_str!("../../../tests/data/jwt/attacker-rs256.key");
    const ES_PUB: &str = include_str!("../../../tests/data/jwt/client-es256.pub.pem");
    const ES_KEY: &str = include_str!("../../../tests/data/jwt/client-es256.key");
    const ED_PUB: &str = include_str!("../../../tests/data/jwt/client-ed25519.pub.pem");
    const ED_KEY: &str = include_str!("../../../tests/data/jwt/client-ed25519.key");

    fn policy(keys: &[(JwtAlgorithm, &str)]) -> JwtPolicy {
        JwtPolicy {
            keys: keys
                .iter()
                .map(|(algorithm, pem)| JwtKey { kid: None, algorithm: *algorithm, pem: pem.to_string() })
                .collect(),
            leeway_seconds: 30,
            issuer: None,
            audience: None,
        }
    }

    fn rs_policy() -> JwtPolicy {
        policy(&[(JwtAlgorithm::Rs256, RS_PUB)])
    }

    fn token(alg: Algorithm, key: EncodingKey) -> String {
        let claims = serde_json::json!({"org": "a", "exp": now_seconds() + 600});
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    }

    fn rs_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RS_KEY.as_bytes()).unwrap()
    }

    /// An RS256 token with exactly this header and payload text, for what
    /// jsonwebtoken's `encode` cannot produce (`crit`, numbers past u64).
    fn raw_rs256(header: &str, payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &rs_key(), Algorithm::RS256).unwrap();
        format!("{message}.{signature}")
    }

    /// An RS256 token with these claims (JSON text) and a plain header.
    fn rs256_claims(payload: &str) -> String {
        raw_rs256(r#"{"alg":"RS256","typ":"JWT"}"#, payload)
    }

    fn refusal(token: &str, policy: &JwtPolicy) -> JwtError {
        Verifier::default().verify(token, policy).unwrap_err()
    }

    #[test]
    fn each_algorithm_verifies_with_its_own_key_only() {
        let verifier = Verifier::default();
        let rs = token(Algorithm::RS256, rs_key());
        let es = token(Algorithm::ES256, EncodingKey::from_ec_pem(ES_KEY.as_bytes()).unwrap());
        let ed = token(Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap());
        let all =
            policy(&[(JwtAlgorithm::Rs256, RS_PUB), (JwtAlgorithm::Es256, ES_PUB), (JwtAlgorithm::Eddsa, ED_PUB)]);
        for t in [&rs, &es, &ed] {
            let claims = verifier.verify(t, &all).unwrap();
            assert!(claims.contains("\"org\":\"a\""), "{claims}");
        }
        let only_rs = rs_policy();
        assert_eq!(verifier.verify(&es, &only_rs).unwrap_err().kind, JwtErrorKind::AlgorithmNotAllowed);
    }

    #[test]
    fn a_cached_token_is_not_valid_under_another_policy() {
        let verifier = Verifier::default();
        let rs = token(Algorithm::RS256, rs_key());
        assert!(verifier.verify(&rs, &rs_policy()).is_ok());
        assert!(verifier.verify(&rs, &rs_policy()).is_ok(), "cache hit");
        // Same algorithm, another plugin's key (here: the ES key's policy
        // with RS256 declared, which cannot even be parsed).
        let other = policy(&[(JwtAlgorithm::Rs256, ES_PUB)]);
        assert_eq!(verifier.verify(&rs, &other).unwrap_err().kind, JwtErrorKind::BadKey);
    }

    #[test]
    fn an_nbf_that_is_a_date_string_is_refused() {
        let exp = now_seconds() + 600;
        let t = rs256_claims(&format!(r#"{{"exp":{exp},"nbf":"2099-01-01T00:00:00Z"}}"#));
        let e = refusal(&t, &rs_policy());
        assert_eq!(e.kind, JwtErrorKind::BadClaims);
        assert_eq!(e.message, "claim nbf is not a NumericDate (a number of seconds since 1970): it is not a number");
    }

    #[test]
    fn numeric_dates_out_of_range_are_refused_not_saturated() {
        let exp = now_seconds() + 600;
        for (claims, claim, problem) in [
            (format!(r#"{{"exp":{exp},"nbf":18446744073709551616}}"#), "nbf", DateProblem::TooLate),
            (format!(r#"{{"exp":{exp},"nbf":1e300}}"#), "nbf", DateProblem::TooLate),
            // Milliseconds by mistake: a date far past the year 9999.
            (format!(r#"{{"exp":{}}}"#, exp * 1000), "exp", DateProblem::TooLate),
            (r#"{"exp":18446744073709551616}"#.to_string(), "exp", DateProblem::TooLate),
            (format!(r#"{{"exp":{exp},"iat":-1}}"#), "iat", DateProblem::Negative),
            (format!(r#"{{"exp":{exp},"nbf":null}}"#), "nbf", DateProblem::NotANumber),
            (r#"{"exp":true}"#.to_string(), "exp", DateProblem::NotANumber),
            (format!(r#"{{"exp":"{exp}"}}"#), "exp", DateProblem::NotANumber),
        ] {
            let e = refusal(&rs256_claims(&claims), &rs_policy());
            let expected = TokenRefusal::NotNumericDate { claim, problem };
            assert_eq!((e.kind, e.message.as_str()), (expected.kind(), expected.to_string().as_str()), "{claims}");
        }
    }

    #[test]
    fn the_registered_string_claims_must_be_strings() {
        let exp = now_seconds() + 600;
        for claim in ["iss", "sub", "jti"] {
            let e = refusal(&rs256_claims(&format!(r#"{{"exp":{exp},"{claim}":7}}"#)), &rs_policy());
            assert_eq!((e.kind, e.message), (JwtErrorKind::BadClaims, format!("claim {claim} is not a string")));
        }
        for aud in ["7", "[\"a\",7]", "{}"] {
            let e = refusal(&rs256_claims(&format!(r#"{{"exp":{exp},"aud":{aud}}}"#)), &rs_policy());
            assert_eq!(e.message, "claim aud is not a string or an array of strings", "{aud}");
        }
        let t = rs256_claims(&format!(r#"{{"exp":{exp},"iss":"i","sub":"s","jti":"j","aud":["x","y"]}}"#));
        assert!(Verifier::default().verify(&t, &rs_policy()).is_ok());
    }

    #[test]
    fn a_fractional_exp_is_honoured_to_the_fraction_and_cached_until_then() {
        let now = Duration::from_secs(now_seconds());
        let exp = now.as_secs() as f64 + 600.25;
        let t = rs256_claims(&format!(r#"{{"exp":{exp}}}"#));
        let verifier = Verifier::default();
        assert!(verifier.verify(&t, &rs_policy()).is_ok(), "first use");
        assert!(verifier.verify(&t, &rs_policy()).is_ok(), "second use, from the cache");
        // Leeway 30 s: valid until now + 630.25 s, cached or not.
        let at = |offset_ms: u64| now + Duration::from_millis(offset_ms);
        assert!(verifier.verify_at(&t, &rs_policy(), at(630_200)).is_ok());
        assert_eq!(verifier.verify_at(&t, &rs_policy(), at(630_300)), Err(TokenRefusal::Expired));
        let fresh = Verifier::default();
        assert!(fresh.verify_at(&t, &rs_policy(), at(630_200)).is_ok());
        assert_eq!(Verifier::default().verify_at(&t, &rs_policy(), at(630_300)), Err(TokenRefusal::Expired));
    }

    #[test]
    fn nbf_in_the_future_and_exp_in_the_past_are_refused_beyond_the_leeway() {
        let now = now_seconds();
        let case = |claims: String| Verifier::default().verify(&rs256_claims(&claims), &rs_policy());
        assert!(case(format!(r#"{{"exp":{},"nbf":{}}}"#, now + 600, now + 20)).is_ok(), "within leeway");
        let e = case(format!(r#"{{"exp":{},"nbf":{}}}"#, now + 600, now + 120)).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (JwtErrorKind::NotYetValid, "the token is not valid yet (its nbf is in the future)")
        );
        assert!(case(format!(r#"{{"exp":{}}}"#, now - 10)).is_ok(), "within leeway");
        let e = case(format!(r#"{{"exp":{}}}"#, now - 120)).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (JwtErrorKind::Expired, "the token has expired"));
        let e = case(r#"{"org":"a"}"#.into()).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (JwtErrorKind::MissingExp, "the token has no exp claim; tokens must expire")
        );
    }

    #[test]
    fn a_crit_header_is_refused_whatever_it_holds() {
        let exp = now_seconds() + 600;
        let claims = format!(r#"{{"exp":{exp}}}"#);
        for (crit, detail) in [
            (r#"["b64"],"b64":false"#, r#"crit lists "b64""#),
            (r#"["exp","x"]"#, r#"crit lists "exp", "x""#),
            ("[]", "crit is an empty list"),
            (r#""b64""#, "crit is not a list of names"),
            ("[1]", "crit is not a list of names"),
            ("null", "crit is not a list of names"),
        ] {
            let t = raw_rs256(&format!(r#"{{"alg":"RS256","crit":{crit}}}"#), &claims);
            let e = refusal(&t, &rs_policy());
            assert_eq!(e.kind, JwtErrorKind::Malformed, "{crit}");
            assert_eq!(
                e.message,
                format!(
                    "the token's header requires extensions Tollgate does not understand ({detail}), so it is \
                     refused (RFC 7515 section 4.1.11)"
                ),
                "{crit}"
            );
        }
        // The same token without `crit` verifies: the refusal is the header's.
        assert!(Verifier::default().verify(&raw_rs256(r#"{"alg":"RS256"}"#, &claims), &rs_policy()).is_ok());
    }

    #[test]
    fn refusals_say_what_failed_in_words() {
        let exp = now_seconds() + 600;
        let claims = serde_json::json!({"exp": exp});
        let public_as_secret = EncodingKey::from_secret(RS_PUB.as_bytes());
        let attacker = EncodingKey::from_rsa_pem(ATTACKER_KEY.as_bytes()).unwrap();
        let mut with_kid = Header::new(Algorithm::RS256);
        with_kid.kid = Some("other".into());
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let cases = [
            (
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &public_as_secret).unwrap(),
                JwtErrorKind::AlgorithmNotAllowed,
                "the token's algorithm \"HS256\" is not one the route allows",
            ),
            (
                format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims.to_string())),
                JwtErrorKind::AlgorithmNotAllowed,
                "the token's algorithm \"none\" is not one the route allows",
            ),
            (
                jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &attacker).unwrap(),
                JwtErrorKind::BadSignature,
                "the signature does not match the key",
            ),
            (
                jsonwebtoken::encode(&with_kid, &claims, &rs_key()).unwrap(),
                JwtErrorKind::UnknownKey,
                "no key of the route has the token's kid \"other\"",
            ),
            (
                "abc".into(),
                JwtErrorKind::Malformed,
                "the token is not a compact JWS (three base64url parts separated by dots)",
            ),
            ("a.b.c".into(), JwtErrorKind::Malformed, "the token's header is not a base64url-encoded JSON object"),
            (
                rs256_claims("[1]"),
                JwtErrorKind::Malformed,
                "the token's header or claims are not valid JSON of the shape a JWT has",
            ),
        ];
        for (t, kind, message) in cases {
            let e = refusal(&t, &rs_policy());
            assert_eq!((e.kind, e.message.as_str()), (kind, message), "{t}");
        }
        let e = refusal(&token(Algorithm::RS256, rs_key()), &policy(&[(JwtAlgorithm::Rs256, ES_PUB)]));
        assert_eq!(
            e.message,
            "a key of the route (the one without a kid) is not usable: it is not an RS256 public key in PEM"
        );
    }

    #[test]
    fn every_jsonwebtoken_error_reads_as_words() {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = JoseHeader { alg: Algorithm::RS256, alg_name: "RS256".into(), kid: None };
        let json = serde_json::from_str::<Value>("{").unwrap_err();
        let kinds = [
            K::InvalidToken,
            K::InvalidSignature,
            K::InvalidEcdsaKey,
            K::InvalidRsaKey("x".into()),
            K::RsaFailedSigning,
            K::InvalidAlgorithmName,
            K::InvalidKeyFormat,
            K::MissingRequiredClaim("exp".into()),
            K::MissingRequiredClaim("sub".into()),
            K::ExpiredSignature,
            K::InvalidIssuer,
            K::InvalidAudience,
            K::InvalidSubject,
            K::ImmatureSignature,
            K::InvalidAlgorithm,
            K::MissingAlgorithm,
            K::Base64(base64::DecodeError::InvalidLength(1)),
            K::Json(Arc::new(json)),
        ];
        for kind in kinds {
            let refusal = classify(&kind.clone().into(), &header);
            let text = refusal.to_string();
            assert!(text.starts_with("the ") || text.starts_with("a ") || text.starts_with("no "), "{kind:?}: {text}");
            assert!(!text.contains("::") && !text.contains("Kind") && !text.contains("Invalid"), "{kind:?}: {text}");
            assert!(text.is_ascii(), "{kind:?}: {text}");
        }
    }

    #[test]
    fn token_text_in_a_refusal_is_quoted_as_short_printable_ascii() {
        assert_eq!(quoted("plain"), "\"plain\"");
        assert_eq!(quoted("caf\u{e9}\r\n"), "\"caf\\u{e9}\\r\\n\"");
        let long = quoted(&"k".repeat(500));
        assert!(long.len() < 80 && long.ends_with("...\""), "{long}");
    }

    #[test]
    fn issuer_and_audience_when_required_must_be_present_and_match() {
        let exp = now_seconds() + 600;
        let mut required = rs_policy();
        required.issuer = Some("https://issuer".into());
        required.audience = Some("tollgate".into());
        let case =
            |claims: serde_json::Value| Verifier::default().verify(&rs256_claims(&claims.to_string()), &required);
        assert!(case(serde_json::json!({"exp": exp, "iss": "https://issuer", "aud": "tollgate"})).is_ok());
        assert!(case(serde_json::json!({"exp": exp, "iss": "https://issuer", "aud": ["x", "tollgate"]})).is_ok());
        for (claims, message) in [
            (
                serde_json::json!({"exp": exp, "aud": "tollgate"}),
                "the token has no iss claim, which the route requires",
            ),
            (
                serde_json::json!({"exp": exp, "iss": "https://issuer"}),
                "the token has no aud claim, which the route requires",
            ),
            (
                serde_json::json!({"exp": exp, "iss": "https://other", "aud": "tollgate"}),
                "the token's issuer (iss) is not the one the route requires",
            ),
            (
                serde_json::json!({"exp": exp, "iss": "https://issuer", "aud": ["x"]}),
                "the token's audience (aud) does not include the one the route requires",
            ),
        ] {
            let e = case(claims.clone()).unwrap_err();
            assert_eq!((e.kind, e.message.as_str()), (JwtErrorKind::BadClaims, message), "{claims}");
        }
    }
}
