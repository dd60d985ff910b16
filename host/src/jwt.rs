//! JWT verification for plugins (`services.verify-jwt`): done natively,
//! because RSA and elliptic-curve signatures are slow in a guest and easy to
//! get wrong. Each key pins its algorithm, so `none`, HMAC with a public key
//! as secret, and any algorithm the operator did not configure are refused
//! before a signature is looked at. `exp` is required; `nbf` is honoured;
//! both with the policy's leeway.
//!
//! Parsed keys are cached by their PEM text, and verified tokens by (policy,
//! token) until they expire, so a client reusing its token pays for the
//! signature once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::contract::services::{JwtAlgorithm, JwtError, JwtErrorKind, JwtKey, JwtPolicy};

/// Verified tokens kept at most; the cache is emptied of expired entries,
/// then cleared, when it is full.
pub const MAX_CACHED_TOKENS: usize = 10_000;

/// A parsed key, or why the PEM text is not one; by (algorithm, PEM).
type KeyCache = HashMap<(u8, String), Result<Arc<DecodingKey>, String>>;

/// Keys and verified tokens shared by every plugin call.
#[derive(Default)]
pub struct Verifier {
    keys: Mutex<KeyCache>,
    tokens: Mutex<HashMap<(u64, String), Verified>>,
}

/// A token that verified: its claims and until when they hold.
#[derive(Clone)]
struct Verified {
    claims: Arc<str>,
    /// `exp` plus leeway, in seconds since the epoch.
    valid_until: u64,
}

fn error(kind: JwtErrorKind, message: impl Into<String>) -> JwtError {
    JwtError { kind, message: message.into() }
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// Verifies `token` under `policy` and returns its claims (JSON text).
    pub fn verify(&self, token: &str, policy: &JwtPolicy) -> Result<Arc<str>, JwtError> {
        let fingerprint = fingerprint(policy);
        let now = now_seconds();
        let cache_key = (fingerprint, token.to_string());
        if let Some(hit) = self.tokens.lock().ok().and_then(|cache| cache.get(&cache_key).cloned()) {
            if now <= hit.valid_until {
                return Ok(hit.claims);
            }
            return Err(error(JwtErrorKind::Expired, "token has expired"));
        }
        let verified = self.verify_uncached(token, policy)?;
        if let Ok(mut cache) = self.tokens.lock() {
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.retain(|_, v| now <= v.valid_until);
                if cache.len() >= MAX_CACHED_TOKENS {
                    cache.clear();
                }
            }
            cache.insert(cache_key, verified.clone());
        }
        Ok(verified.claims)
    }

    fn verify_uncached(&self, token: &str, policy: &JwtPolicy) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `none` and unknown algorithms fail to parse as a header.
            jsonwebtoken::errors::ErrorKind::Json(_) if token_alg(token).is_some() => error(
                JwtErrorKind::AlgorithmNotAllowed,
                format!("algorithm {:?} is not allowed", token_alg(token).unwrap_or_default()),
            ),
            _ => error(JwtErrorKind::Malformed, format!("not a JWT: {e}")),
        })?;
        let candidates: Vec<&JwtKey> = policy.keys.iter().filter(|k| algorithm(k.algorithm) == header.alg).collect();
        if candidates.is_empty() {
            return Err(error(JwtErrorKind::AlgorithmNotAllowed, format!("algorithm {:?} is not allowed", header.alg)));
        }
        let candidates: Vec<&JwtKey> = match &header.kid {
            Some(kid) => {
                let named: Vec<&JwtKey> =
                    candidates.iter().copied().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if named.is_empty() {
                    return Err(error(JwtErrorKind::UnknownKey, format!("no key has kid {kid:?}")));
                }
                named
            }
            None => candidates,
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = u64::from(policy.leeway_seconds);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        if let Some(issuer) = &policy.issuer {
            validation.set_issuer(&[issuer]);
        }
        if let Some(audience) = &policy.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
        }
        let mut last = error(JwtErrorKind::BadSignature, "signature does not verify");
        for key in candidates {
            let decoding = self.key(key)?;
            match jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation) {
                Ok(data) => {
                    let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
                    return Ok(Verified {
                        claims: data.claims.to_string().into(),
                        valid_until: exp.saturating_add(u64::from(policy.leeway_seconds)),
                    });
                }
                Err(e) => {
                    last = classify(&e);
                    // Only a bad signature means another key might do.
                    if last.kind != JwtErrorKind::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// The parsed key, from the cache or parsed now.
    fn key(&self, key: &JwtKey) -> Result<Arc<DecodingKey>, JwtError> {
        let cache_key = (key.algorithm as u8, key.pem.clone());
        if let Some(cached) = self.keys.lock().ok().and_then(|keys| keys.get(&cache_key).cloned()) {
            return cached.map_err(|m| error(JwtErrorKind::BadKey, m));
        }
        let pem = key.pem.as_bytes();
        let parsed = match key.algorithm {
            JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem),
            JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(pem),
            JwtAlgorithm::Eddsa => DecodingKey::from_ed_pem(pem),
        }
        .map(Arc::new)
        .map_err(|e| format!("key {:?} is not a {:?} public key in PEM: {e}", key.kid, key.algorithm));
        if let Ok(mut keys) = self.keys.lock() {
            // Keys come from operators' settings: a handful, never unbounded
            // in practice; cap anyway.
            if keys.len() > 1024 {
                keys.clear();
            }
            keys.insert(cache_key, parsed.clone());
        }
        parsed.map_err(|m| error(JwtErrorKind::BadKey, m))
    }
}

/// The `alg` a token's header claims, read without trusting it.
fn token_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_string)
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Eddsa => Algorithm::EdDSA,
    }
}

fn classify(e: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => error(JwtErrorKind::BadSignature, "signature does not verify"),
        K::ExpiredSignature => error(JwtErrorKind::Expired, "token has expired"),
        K::ImmatureSignature => error(JwtErrorKind::NotYetValid, "token is not valid yet (nbf)"),
        K::MissingRequiredClaim(claim) if claim == "exp" => {
            error(JwtErrorKind::MissingExp, "token has no exp claim; tokens must expire")
        }
        K::MissingRequiredClaim(claim) => error(JwtErrorKind::BadClaims, format!("missing claim {claim}")),
        K::InvalidIssuer => error(JwtErrorKind::BadClaims, "wrong issuer"),
        K::InvalidAudience => error(JwtErrorKind::BadClaims, "wrong audience"),
        K::InvalidAlgorithm => error(JwtErrorKind::AlgorithmNotAllowed, "algorithm not allowed"),
        K::InvalidRsaKey(_) | K::InvalidEcdsaKey | K::InvalidKeyFormat => {
            error(JwtErrorKind::BadKey, format!("key cannot be used: {e}"))
        }
        K::Json(_) => error(JwtErrorKind::BadClaims, format!("claims are not valid: {e}")),
        _ => error(JwtErrorKind::Malformed, format!("not a valid JWT: {e}")),
    }
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
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const RS_PUB: &str = include_str!("../../tests/data/jwt/client-rs256.pub.pem");
    const RS_KEY: &str = include_str!("../../tests/data/jwt/client-rs256.key");
    const ES_PUB: &str = include_str!("../../tests/data/jwt/client-es256.pub.pem");
    const ES_KEY: &str = include_str!("../../tests/data/jwt/client-es256.key");
    const ED_PUB: &str = include_str!("../../tests/data/jwt/client-ed25519.pub.pem");
    const ED_KEY: &str = include_str!("../../tests/data/jwt/client-ed25519.key");

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

    fn token(alg: Algorithm, key: EncodingKey) -> String {
        let claims = serde_json::json!({"org": "a", "exp": now_seconds() + 600});
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    }

    #[test]
    fn each_algorithm_verifies_with_its_own_key_only() {
        let verifier = Verifier::default();
        let rs = token(Algorithm::RS256, EncodingKey::from_rsa_pem(RS_KEY.as_bytes()).unwrap());
        let es = token(Algorithm::ES256, EncodingKey::from_ec_pem(ES_KEY.as_bytes()).unwrap());
        let ed = token(Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap());
        let all =
            policy(&[(JwtAlgorithm::Rs256, RS_PUB), (JwtAlgorithm::Es256, ES_PUB), (JwtAlgorithm::Eddsa, ED_PUB)]);
        for t in [&rs, &es, &ed] {
            let claims = verifier.verify(t, &all).unwrap();
            assert!(claims.contains("\"org\":\"a\""), "{claims}");
        }
        let only_rs = policy(&[(JwtAlgorithm::Rs256, RS_PUB)]);
        assert_eq!(verifier.verify(&es, &only_rs).unwrap_err().kind, JwtErrorKind::AlgorithmNotAllowed);
    }

    #[test]
    fn a_cached_token_is_not_valid_under_another_policy() {
        let verifier = Verifier::default();
        let rs = token(Algorithm::RS256, EncodingKey::from_rsa_pem(RS_KEY.as_bytes()).unwrap());
        assert!(verifier.verify(&rs, &policy(&[(JwtAlgorithm::Rs256, RS_PUB)])).is_ok());
        assert!(verifier.verify(&rs, &policy(&[(JwtAlgorithm::Rs256, RS_PUB)])).is_ok(), "cache hit");
        // Same algorithm, another plugin's key (here: the ES key's policy
        // with RS256 declared, which cannot even be parsed).
        let other = policy(&[(JwtAlgorithm::Rs256, ES_PUB)]);
        assert_eq!(verifier.verify(&rs, &other).unwrap_err().kind, JwtErrorKind::BadKey);
    }
}
