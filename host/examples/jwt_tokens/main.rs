//! Writes RS256 client tokens for the gateway benchmarks, one per line,
//! signed with the test key in tests/data/jwt, for org `org-a`, valid for
//! an hour. Distinct tokens (a `jti` each) defeat the verified-token cache.
//! Usage: jwt_tokens COUNT

use std::io::Write;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/jwt/client-rs256.key")).expect("key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("client-1".into());
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for jti in 0..count {
        let claims = serde_json::json!({"org": "org-a", "sub": "bench", "exp": exp, "jti": jti.to_string()});
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        writeln!(out, "{token}").expect("write");
    }
}
