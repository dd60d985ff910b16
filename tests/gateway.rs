//! The gateway end to end: the real binary in front of real upstream HTTP
//! servers started here, which record every request they receive. Each test
//! is a table from `../shared/reference/gateway-and-allowlists.md`: the
//! request, the exact status, and exactly what the upstream saw.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Server, client, guests, install, post_review};

/// One request an upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Every header, lower-case names, in order.
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 server on loopback that records what it receives and
/// answers `{"upstream": <name>}`. `GET /stream?bytes=N` answers N bytes:
/// 64 KiB at once, the rest only after [`Upstream::release`].
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Notify>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        Self::start_with(name, None).await
    }

    /// An upstream that speaks HTTPS with `cert`/`key` (PEM).
    async fn start_tls(name: &'static str, cert: &str, key: &str) -> Upstream {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (record, release) = (seen.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (record, release, tls) = (record.clone(), release.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (record, release) = (record.clone(), release.clone());
                        async move { Ok::<_, Infallible>(answer(name, req, record, release).await) }
                    });
                    let http1 = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            http1.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await
                        }
                        None => http1.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        Upstream { addr, seen, gate }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn release(&self) {
        self.gate.notify_one();
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    name: &str,
    req: hyper::Request<hyper::body::Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
) -> hyper::Response<AnyBody> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("<binary>").to_string()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = Seen { method, path: path.clone(), headers, body };
    record.lock().unwrap().push(seen);
    if let Some(bytes) = path.strip_prefix("/stream?bytes=") {
        let total: usize = bytes.parse().unwrap();
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
        tokio::spawn(async move {
            let first = 64 << 10;
            let _ = tx.send_data(Bytes::from(vec![b'a'; first])).await;
            release.notified().await;
            let mut left = total - first;
            while left > 0 {
                let n = left.min(1 << 20);
                if tx.send_data(Bytes::from(vec![b'b'; n])).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        return hyper::Response::new(body.boxed());
    }
    let body = json!({"upstream": name}).to_string();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    // A hop-by-hop header the gateway must not pass back.
    response.headers_mut().insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    response
}

fn data(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(path)).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn client_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(data("jwt/client-rs256.key").as_bytes()).unwrap()
}

fn rs256(claims: Value) -> String {
    sign(Algorithm::RS256, &client_key(), Some("client-1"), &claims)
}

/// A compact JWS with `alg: none` and no signature.
fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

fn write_settings(dir: &Path, stem: &str, settings: &Value) {
    // Write then rename, as operators' tools do, so the watcher never reads half a file.
    let tmp = dir.join(format!(".{stem}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(settings).unwrap()).unwrap();
    std::fs::rename(tmp, dir.join(format!("{stem}.settings.json"))).unwrap();
}

/// `jwt-org-router` sending org-a's tokens (signed by the client key) to
/// `upstream` with the backend token `backend-token-a`.
fn install_org_router(dir: &Path, upstream: &str) {
    let router = json!({
        "keys": [{"kid": "client-1", "algorithm": "RS256", "pem": data("jwt/client-rs256.pub.pem")}],
        "orgs": {"org-a": {"upstream": upstream, "backendToken": "backend-token-a"}}
    });
    install(dir, "jwt-org-router", guests::JWT_ORG_ROUTER, Some(&router.to_string()));
}

/// `pass-route` forwarding everything to `upstream`.
fn install_pass_route(dir: &Path, upstream: &str) {
    install(dir, "pass-route", guests::PASS_ROUTE, Some(&json!({ "upstream": upstream }).to_string()));
}

fn gateway_url(server: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.gateway.expect("gateway listening").port())
}

fn http() -> reqwest::Client {
    support::plain()
}

/// Polls until `request` answers `status` (a live edit has applied).
async fn eventually(request: impl Fn() -> reqwest::RequestBuilder, status: u16) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let got = request().send().await.unwrap().status().as_u16();
        if got == status {
            return;
        }
        assert!(Instant::now() < give_up, "still {got}, expected {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct JwtCase {
    name: &'static str,
    authorization: Option<String>,
    status: u16,
    /// Which upstream must have received it (index), when forwarded.
    upstream: Option<usize>,
    /// Text the WWW-Authenticate header must hold (401s).
    challenge: Option<&'static str>,
    /// The body's `reason`, exactly, when the case checks it.
    reason: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_org_router_follows_the_reference_table() {
    let upstreams = [Upstream::start("org-a").await, Upstream::start("org-b").await];
    let dir = tempfile::tempdir().unwrap();
    let settings = json!({
        "keys": [{"kid": "client-1", "algorithm": "RS256", "pem": data("jwt/client-rs256.pub.pem")}],
        "orgs": {
            "org-a": {"upstream": upstreams[0].url(), "backendToken": "backend-token-a"},
            "org-b": {"upstream": upstreams[1].url(), "backendToken": "backend-token-b"}
        },
        "clockSkewSeconds": 30,
        "maxTokenLifetimeSeconds": 3600
    });
    install(dir.path(), "jwt-org-router", guests::JWT_ORG_ROUTER, Some(&settings.to_string()));
    let server = Server::start(dir.path(), &[]);

    let t = now();
    let attacker = EncodingKey::from_rsa_pem(data("jwt/attacker-rs256.key").as_bytes()).unwrap();
    let es256 = EncodingKey::from_ec_pem(data("jwt/client-es256.key").as_bytes()).unwrap();
    let public_as_secret = EncodingKey::from_secret(data("jwt/client-rs256.pub.pem").as_bytes());
    let bearer = |token: String| Some(format!("Bearer {token}"));
    let valid = |org: &str| json!({"org": org, "sub": "client-7", "exp": t + 600});
    let cases = vec![
        JwtCase {
            name: "valid org A",
            authorization: bearer(rs256(valid("org-a"))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "valid org B",
            authorization: bearer(rs256(valid("org-b"))),
            status: 200,
            upstream: Some(1),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "lower-case bearer scheme",
            authorization: Some(format!("bearer {}", rs256(valid("org-a")))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "expired within the clock skew",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t - 10}))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "expired",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t - 3600}))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "bad signature",
            authorization: bearer(sign(Algorithm::RS256, &attacker, Some("client-1"), &valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "alg none",
            authorization: bearer(unsigned(&valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "HS256 with the public key as secret",
            authorization: bearer(sign(Algorithm::HS256, &public_as_secret, Some("client-1"), &valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "HS256, reason in the body",
            authorization: bearer(sign(Algorithm::HS256, &public_as_secret, Some("client-1"), &valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("is not one the route allows"),
            reason: Some("algorithm-not-allowed"),
        },
        JwtCase {
            name: "valid for two hours, over the one-hour cap",
            authorization: bearer(rs256(json!({"org": "org-a", "iat": t, "exp": t + 7200}))),
            status: 401,
            upstream: None,
            challenge: Some("longer than this route's 3600 s"),
            reason: Some("lifetime-too-long"),
        },
        JwtCase {
            // A later iat cannot make the token look shorter-lived.
            name: "over the cap, with an iat in the future",
            authorization: bearer(rs256(json!({"org": "org-a", "iat": t + 5400, "exp": t + 7200}))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: Some("lifetime-too-long"),
        },
        JwtCase {
            name: "within the cap, with an iat",
            authorization: bearer(rs256(json!({"org": "org-a", "iat": t, "exp": t + 600}))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "ES256, not configured",
            authorization: bearer(sign(Algorithm::ES256, &es256, None, &valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "no exp",
            authorization: bearer(rs256(json!({"org": "org-a"}))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "nbf in the future",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t + 7200, "nbf": t + 3600}))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "nbf a date string, not a NumericDate",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t + 600, "nbf": "2020-01-01T00:00:00Z"}))),
            status: 401,
            upstream: None,
            challenge: Some("claim nbf is not a NumericDate"),
            reason: None,
        },
        JwtCase {
            name: "fractional exp",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t as f64 + 600.25}))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            // The same token again: the verified-token cache must keep the
            // real expiry, not read a fractional exp as 0.
            name: "fractional exp, again (from the cache)",
            authorization: bearer(rs256(json!({"org": "org-a", "exp": t as f64 + 600.25}))),
            status: 200,
            upstream: Some(0),
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "unknown kid",
            authorization: bearer(sign(Algorithm::RS256, &client_key(), Some("other"), &valid("org-a"))),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
        JwtCase {
            name: "unknown org",
            authorization: bearer(rs256(valid("org-c"))),
            status: 403,
            upstream: None,
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "org in upper case",
            authorization: bearer(rs256(valid("ORG-A"))),
            status: 403,
            upstream: None,
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "org in mixed case",
            authorization: bearer(rs256(valid("Org-a"))),
            status: 403,
            upstream: None,
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "org with a trailing space",
            authorization: bearer(rs256(valid("org-a "))),
            status: 403,
            upstream: None,
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "org claim not a string",
            authorization: bearer(rs256(json!({"org": ["org-a"], "exp": t + 600}))),
            status: 403,
            upstream: None,
            challenge: None,
            reason: None,
        },
        JwtCase {
            name: "no Authorization header",
            authorization: None,
            status: 401,
            upstream: None,
            challenge: Some("Bearer realm=\"tollgate\""),
            reason: None,
        },
        JwtCase {
            name: "Basic auth",
            authorization: Some("Basic dXNlcjpwYXNz".into()),
            status: 401,
            upstream: None,
            challenge: Some("Bearer realm=\"tollgate\""),
            reason: None,
        },
        JwtCase {
            name: "Bearer, not a JWT",
            authorization: Some("Bearer abc".into()),
            status: 401,
            upstream: None,
            challenge: Some("invalid_token"),
            reason: None,
        },
    ];
    let gateway_port = server.gateway.unwrap().port();
    for case in cases {
        let before = [upstreams[0].seen().len(), upstreams[1].seen().len()];
        let mut request = http()
            .get(gateway_url(&server, "/rest/items?select=id"))
            // Identity and forwarding headers a client may try to forge.
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6");
        if let Some(auth) = &case.authorization {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, case.status, "{}: {body}", case.name);
        if let Some(reason) = case.reason {
            assert_eq!(body["reason"], reason, "{}: {body}", case.name);
        }
        match case.challenge {
            Some(expected) => {
                let challenge = challenge.unwrap_or_else(|| panic!("{}: no WWW-Authenticate", case.name));
                assert!(challenge.starts_with("Bearer realm=\"tollgate\""), "{}: {challenge}", case.name);
                assert!(challenge.contains(expected), "{}: {challenge}", case.name);
            }
            None => assert!(challenge.is_none(), "{}", case.name),
        }
        let after = [upstreams[0].seen().len(), upstreams[1].seen().len()];
        match case.upstream {
            Some(i) => {
                assert_eq!(body["upstream"], ["org-a", "org-b"][i], "{}", case.name);
                assert_eq!(after[i], before[i] + 1, "{}", case.name);
                assert_eq!(after[1 - i], before[1 - i], "{}", case.name);
                let seen = upstreams[i].seen().pop().unwrap();
                assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/rest/items?select=id"));
                // Exactly these headers, nothing the client forged.
                let mut headers = seen.headers.clone();
                headers.sort();
                let mut expected = vec![
                    ("accept".to_string(), "*/*".to_string()),
                    ("authorization".into(), format!("Bearer backend-token-{}", ["a", "b"][i])),
                    ("host".into(), upstreams[i].addr.to_string()),
                    ("x-forwarded-for".into(), "127.0.0.1".into()),
                    ("x-forwarded-host".into(), format!("127.0.0.1:{gateway_port}")),
                    ("x-forwarded-proto".into(), "http".into()),
                    ("x-real-ip".into(), "127.0.0.1".into()),
                ];
                expected.sort();
                assert_eq!(headers, expected, "{}", case.name);
            }
            None => {
                assert_eq!(after, before, "{}: nothing may reach an upstream", case.name);
                assert!(body["error"].as_str().is_some(), "{}: {body}", case.name);
            }
        }
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_gateway_requests_total{route=\"jwt-org-router\",status=\"401\"}"), "{metrics}");
    assert!(metrics.contains("tollgate_upstream_responses_total{route=\"jwt-org-router\",status=\"200\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_allowlist_follows_oauth2_proxy_and_applies_edits_live() {
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let list = |entries: Value| json!({"emails": entries, "identityHeader": "X-Forwarded-Email", "trustedProxies": ["127.0.0.1/32"]});
    install(
        dir.path(),
        "email-allowlist",
        guests::EMAIL_ALLOWLIST,
        Some(&list(json!(["alice@example.org", "example.com", ".corp.example.net"])).to_string()),
    );
    let server = Server::start(dir.path(), &[]);
    let ask = |email: Option<&'static str>| {
        let mut request = http().get(gateway_url(&server, "/"));
        if let Some(email) = email {
            request = request.header("x-forwarded-email", email);
        }
        request
    };
    for (email, status, reason) in [
        (Some("alice@example.org"), 200, None),
        (Some("ALICE@Example.ORG"), 200, None),
        (Some("  alice@example.org "), 200, None),
        (Some("bob@example.org"), 403, Some("email-not-listed")),
        (Some("anyone@example.com"), 200, None),
        (Some("anyone@sub.example.com"), 403, Some("email-not-listed")),
        (Some("dev@eu.corp.example.net"), 200, None),
        (Some("dev@corp.example.net"), 403, Some("email-not-listed")),
        (Some("alice@example.org@evil.com"), 403, Some("email-malformed")),
        (Some("alice"), 403, Some("email-malformed")),
        (Some("@example.com"), 403, Some("email-malformed")),
        (None, 403, Some("no-identity")),
    ] {
        let before = upstream.seen().len();
        let response = ask(email).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{email:?}");
        let body: Value = response.json().await.unwrap();
        match reason {
            Some(reason) => {
                assert_eq!(body, json!({"error": "forbidden", "reason": reason}), "{email:?}");
                assert_eq!(upstream.seen().len(), before, "{email:?} must not reach the app");
            }
            None => {
                // From the trusted SSO proxy, the header goes on to the app
                // (HTTP drops the spaces around a field value).
                assert_eq!(
                    upstream.seen().pop().unwrap().header("x-forwarded-email"),
                    email.map(str::trim),
                    "{email:?}"
                );
            }
        }
    }

    // Removing a line revokes access on the next requests.
    write_settings(dir.path(), "email-allowlist", &list(json!(["example.com"])));
    eventually(|| ask(Some("alice@example.org")), 403).await;
    assert_eq!(ask(Some("x@example.com")).send().await.unwrap().status(), 200);
    // A broken edit keeps the last good list, and says why.
    write_settings(dir.path(), "email-allowlist", &list(json!(["not an address@"])));
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value =
            http().get(format!("http://{}/plugins", server.metrics)).send().await.unwrap().json().await.unwrap();
        if status["refused"].to_string().contains("is not an e-mail address") {
            break;
        }
        assert!(Instant::now() < give_up, "refusal not reported: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ask(Some("x@example.com")).send().await.unwrap().status(), 200);
    assert_eq!(ask(Some("alice@example.org")).send().await.unwrap().status(), 403);

    // Lists per route: this route's own list applies, not the default one.
    let scoped = |route: &str| {
        let mut settings = list(json!(["example.com"]));
        settings["routes"] = json!({ route: {"list": "# this app only\nalice@example.org\n"} });
        settings
    };
    write_settings(dir.path(), "email-allowlist", &scoped("pass-route"));
    eventually(|| ask(Some("alice@example.org")), 200).await;
    assert_eq!(ask(Some("x@example.com")).send().await.unwrap().status(), 403, "the default list does not apply");
    write_settings(dir.path(), "email-allowlist", &scoped("another-route"));
    eventually(|| ask(Some("x@example.com")), 200).await;
    assert_eq!(ask(Some("alice@example.org")).send().await.unwrap().status(), 403);

    // `*` lets everyone in, and the log says so loudly.
    write_settings(dir.path(), "email-allowlist", &list(json!(["*"])));
    eventually(|| ask(Some("anyone@anywhere.net")), 200).await;
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("lists '*': every authenticated address passes"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_clients_are_neither_trusted_nor_passed_on() {
    // The SSO proxy is elsewhere (10.0.0.0/8): a client's own
    // X-Forwarded-Email is ignored; the identity comes from its verified token.
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    install_org_router(dir.path(), &upstream.url());
    let emails = json!({"emails": ["alice@example.org"], "identityHeader": "X-Forwarded-Email", "trustedProxies": ["10.0.0.0/8"]});
    install(dir.path(), "email-allowlist", guests::EMAIL_ALLOWLIST, Some(&emails.to_string()));
    // A second route on the same paths, at a lower priority: never chosen.
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &[]);
    let unauthenticated = http().get(gateway_url(&server, "/")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401, "jwt-org-router (priority 0) wins over pass-route (-10)");
    let token = |email: &str| rs256(json!({"org": "org-a", "email": email, "exp": now() + 600}));
    let ask = |email: &str, spoof: &str| {
        http()
            .get(gateway_url(&server, "/"))
            .header("authorization", format!("Bearer {}", token(email)))
            .header("x-forwarded-email", spoof)
    };
    let response = ask("alice@example.org", "mallory@example.org").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-email"), None, "the client's copy is removed");
    assert_eq!(seen.header("authorization"), Some("Bearer backend-token-a"));
    let response = ask("mallory@example.org", "alice@example.org").send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["reason"], "email-not-listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_allowlist_checks_the_real_client_address() {
    let upstream = Upstream::start("digdag").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    install(
        dir.path(),
        "cidr-allowlist",
        guests::CIDR_ALLOWLIST,
        Some(&json!({"allow": ["127.0.0.1/32"]}).to_string()),
    );
    // Dual stack: IPv4 clients arrive as ::ffff:127.0.0.1.
    let server = Server::start(dir.path(), &["--gateway-addr", "[::]:0"]);
    let port = server.gateway.unwrap().port();
    let v4 = |xff: Option<&'static str>| {
        let request = http().get(format!("http://127.0.0.1:{port}/workflows"));
        match xff {
            Some(xff) => request.header("x-forwarded-for", xff),
            None => request,
        }
    };
    let v6 = |xff: Option<&'static str>| {
        let request = http().get(format!("http://[::1]:{port}/workflows"));
        match xff {
            Some(xff) => request.header("x-forwarded-for", xff),
            None => request,
        }
    };
    let status = |request: reqwest::RequestBuilder| async move { request.send().await.unwrap().status().as_u16() };
    assert_eq!(status(v4(None)).await, 200, "inside");
    assert_eq!(status(v6(None)).await, 403, "IPv6 peer outside the list");
    assert_eq!(status(v6(Some("127.0.0.1"))).await, 403, "spoofed X-Forwarded-For from an untrusted peer");
    let denied: Value = v6(None).send().await.unwrap().json().await.unwrap();
    assert_eq!(denied, json!({"error": "forbidden", "reason": "address-not-allowed"}));

    // Only ::1, and 127.0.0.1 is now a trusted proxy.
    write_settings(dir.path(), "cidr-allowlist", &json!({"allow": ["::1/128"], "trustedProxies": ["127.0.0.1"]}));
    eventually(|| v6(None), 200).await;
    assert_eq!(status(v4(None)).await, 403, "the proxy itself is not the client");
    assert_eq!(status(v4(Some("::1"))).await, 200, "the client named by a trusted proxy");
    assert_eq!(status(v4(Some("::1, 127.0.0.1"))).await, 200, "trusted hops are skipped");
    assert_eq!(status(v4(Some("2001:db8::1"))).await, 403);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("denied") && log.contains("peer=[::1]"), "denials are logged with the peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_routing_and_streaming() {
    let upstream = Upstream::start("big").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--upstream-timeout-ms", "2000"]);

    // HTTP/2 clients (h2c) are served; the upstream still gets HTTP/1.1.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2.get(gateway_url(&server, "/h2?x=1")).send().await.unwrap();
    assert_eq!((response.version(), response.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/h2?x=1");
    assert_eq!(seen.header("host"), Some(upstream.addr.to_string().as_str()));

    // A large request body arrives whole.
    let body: Vec<u8> = (0..(48u32 << 20)).map(|i| (i % 251) as u8).collect();
    let response = http().post(gateway_url(&server, "/upload")).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the body arrived changed");

    // The response streams: its first bytes reach the client before the
    // upstream has written the rest (buffering would deadlock here).
    let total = 32usize << 20;
    let mut response = http().get(gateway_url(&server, &format!("/stream?bytes={total}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("first bytes stream");
    let mut received = first.unwrap().unwrap().len();
    upstream.release();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, total);

    // Upstream down: 502 with a short reason. Upstream slow: 504.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    write_settings(dir.path(), "pass-route", &json!({"upstream": format!("http://{closed}")}));
    eventually(|| http().get(gateway_url(&server, "/")), 502).await;
    let body: Value = http().get(gateway_url(&server, "/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, json!({"error": "bad_gateway", "reason": "upstream unreachable"}));
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    write_settings(dir.path(), "pass-route", &json!({"upstream": format!("http://{}", silent.local_addr().unwrap())}));
    eventually(|| http().get(gateway_url(&server, "/")), 504).await;

    // A route answering directly; and no route at all.
    write_settings(dir.path(), "pass-route", &json!({"upstream": upstream.url(), "respond": 418}));
    eventually(|| http().get(gateway_url(&server, "/")), 418).await;
    let response = http().get(gateway_url(&server, "/")).send().await.unwrap();
    assert_eq!(response.headers()["x-answered-by"], "pass-route");
    std::fs::remove_file(dir.path().join("pass-route.wasm")).unwrap();
    eventually(|| http().get(gateway_url(&server, "/")), 404).await;
    drop(silent);
}

/// Sends `request` as raw bytes to the gateway (clients build well-formed
/// requests only) and returns the status line and the body.
async fn raw_request(server: &Server, request: impl AsRef<[u8]>) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.gateway.expect("gateway listening")).await.unwrap();
    stream.write_all(request.as_ref()).await.unwrap();
    read_answer(stream).await
}

/// The status line and body the server sends on `stream` before closing it.
async fn read_answer(mut stream: impl tokio::io::AsyncRead + Unpin) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_request_whose_host_is_ambiguous_or_invalid_is_refused_before_routing() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &[]);

    let two = "GET /a HTTP/1.1\r\nHost: api.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n";
    let (status, body) = raw_request(&server, two).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"error": "bad_host", "reason": "the request has more than one Host header"}));

    let none = "GET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
    let (status, body) = raw_request(&server, none).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(body.contains("an HTTP/1.1 request needs a Host header"), "{body}");
    // Not a host: the upstream would get it in X-Forwarded-Host.
    for host in ["b.example, c.example", "a b", "api.example:99999", "user@api.example"] {
        let (status, body) =
            raw_request(&server, format!("GET /e HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{host}: {status}");
        assert!(body.contains("the Host header is not a host name or address"), "{host}: {body}");
    }
    assert!(upstream.seen().is_empty(), "refused requests must not reach the upstream");

    // HTTP/1.0 has no Host requirement; HTTP/1.1 has, even with an absolute
    // URI (RFC 9112 §3.2), and the two must agree.
    let (status, _) = raw_request(&server, "GET /c HTTP/1.0\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    let absolute = "GET http://api.example/d HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n";
    let (status, _) = raw_request(&server, absolute).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for (request, why) in [
        ("GET http://api.example/x HTTP/1.1\r\nConnection: close\r\n\r\n", "needs a Host header"),
        ("GET http://api.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n", "different hosts"),
        ("GET /x HTTP/1.1\r\nHost: [zz]\r\nConnection: close\r\n\r\n", "not a host name"),
    ] {
        let (status, body) = raw_request(&server, request).await;
        assert!(status.starts_with("HTTP/1.1 400") && body.contains(why), "{request}: {status} {body}");
    }
    let paths: Vec<String> = upstream.seen().into_iter().map(|seen| seen.path).collect();
    assert_eq!(paths, ["/c", "/d"]);
}

/// A gateway forwarding everything to an upstream named "airbyte", guarded
/// by the catalog allowlist with its shipped settings.
async fn catalog_gateway() -> (Upstream, Server, tempfile::TempDir) {
    catalog_gateway_with(&[]).await
}

/// [`catalog_gateway`], the server started with `args`.
async fn catalog_gateway_with(args: &[&str]) -> (Upstream, Server, tempfile::TempDir) {
    let upstream = Upstream::start("airbyte").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/catalog-allowlist/catalog-allowlist.settings.json"),
    )
    .unwrap();
    install(dir.path(), "catalog-allowlist", guests::CATALOG_ALLOWLIST, Some(&catalog));
    let server = Server::start(dir.path(), args);
    (upstream, server, dir)
}

/// A POST that declares 100 bytes of body and sends 10.
const STALLED_POST: &str = "POST /api/v1/source_definitions/create HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sourceDe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_answered_408() {
    // Buffered for the catalog allowlist, which inspects bodies.
    let (upstream, server, _dir) = catalog_gateway_with(&["--gateway-idle-secs", "1"]).await;
    let (status, body) = raw_request(&server, STALLED_POST).await;
    assert!(status.contains(" 408 "), "{status} {body}");
    assert!(body.contains("slow_body") && body.contains("paused longer than 1s"), "{body}");
    assert!(upstream.seen().is_empty());

    // Streamed to the upstream: the upstream request is abandoned.
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--gateway-idle-secs", "1"]);
    let (status, body) = raw_request(&server, STALLED_POST).await;
    assert!(status.contains(" 408 "), "{status} {body}");
    assert!(body.contains("paused longer than 1s"), "{body}");
    // A body that keeps coming, if slowly, is forwarded whole.
    let (status, _) = slow_post(&server, 6, Duration::from_millis(300)).await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(upstream.seen().pop().unwrap().body, "abcdef".as_bytes());
}

/// POSTs a body of `chunks` bytes to the gateway, one byte every `pause`.
async fn slow_post(server: &Server, chunks: usize, pause: Duration) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.gateway.expect("gateway listening")).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {chunks}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in (b'a'..).take(chunks) {
        tokio::time::sleep(pause).await;
        stream.write_all(&[byte]).await.unwrap();
    }
    read_answer(stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_allowlist_guards_admission_and_gateway_creation() {
    let (upstream, server, _dir) = catalog_gateway().await;

    let create = |path: &str, body: Value| http().post(gateway_url(&server, path)).json(&body).send();
    let cases = [
        ("/api/v1/source_definitions/create_custom", json!({"sourceDefinition": {"name": "Coin API"}}), 200, None),
        (
            "/api/v1/source_definitions/create_custom",
            json!({"sourceDefinition": {"name": "coingecko coins "}}),
            200,
            None,
        ),
        (
            "/api/v1/source_definitions/create_custom",
            json!({"sourceDefinition": {"name": "Postgres"}}),
            403,
            Some("connector-not-listed"),
        ),
        ("/api/v1/destination_definitions/create", json!({"destinationDefinition": {"name": "BigQuery"}}), 200, None),
        (
            "/api/v1/destination_definitions/create",
            json!({"destinationDefinition": {"name": "Snowflake"}}),
            403,
            Some("connector-not-listed"),
        ),
        ("/api/v1/destination_definitions/create", json!({"other": 1}), 403, Some("no-connector-name")),
        ("/api/v1/sources/list", json!({"workspaceId": "w"}), 200, None),
    ];
    for (path, body, status, reason) in cases {
        let before = upstream.seen().len();
        let response = create(path, body.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path} {body}");
        let answer: Value = response.json().await.unwrap();
        match reason {
            Some(reason) => {
                assert_eq!(answer["reason"], reason, "{path} {body}");
                assert_eq!(upstream.seen().len(), before);
            }
            None => {
                // The inspected body still reaches the upstream, whole.
                let seen = upstream.seen().pop().unwrap();
                assert_eq!(seen.body, body.to_string(), "{path}");
            }
        }
    }

    // A key given twice, or the name in two places, is refused: the
    // upstream's parser may read the copy the allowlist did not.
    let before = upstream.seen().len();
    for body in [
        r#"{"sourceDefinition": {"name": "Coin API"}, "sourceDefinition": {"name": "Postgres"}}"#,
        r#"{"sourceDefinition": {"name": "Postgres", "name": "Coin API"}}"#,
        r#"{"sourceDefinition": {"name": "Coin API"}, "name": "Postgres"}"#,
    ] {
        let path = "/api/v1/source_definitions/create";
        let response = http().post(gateway_url(&server, path)).body(body).send().await.unwrap();
        assert_eq!(response.status(), 403, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert!(["duplicate-key", "ambiguous-name"].contains(&answer["reason"].as_str().unwrap()), "{body}");
    }
    assert_eq!(upstream.seen().len(), before);

    // The same list as an admission plugin.
    let tls = client(&server.ca(), None);
    let review = |kind: &str, connector: &str| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "c1", "kind": {"group": "airbyte.tollgate.io", "version": "v1", "kind": kind},
            "resource": {"group": "airbyte.tollgate.io", "version": "v1", "resource": "sources"},
            "namespace": "data", "operation": "CREATE", "userInfo": {"username": "dev"},
            "object": {"metadata": {"name": "x"}, "spec": {"connector": connector}}}})
    };
    let url = server.url("/validate/catalog-allowlist");
    let allowed = post_review(&tls, &url, &review("Source", "CoinMarketCap")).await;
    assert_eq!(allowed["response"]["allowed"], true, "{allowed}");
    let denied = post_review(&tls, &url, &review("Destination", "Snowflake")).await;
    assert_eq!(denied["response"]["allowed"], false);
    assert_eq!(denied["response"]["status"]["code"], 403);
    assert!(denied["response"]["status"]["message"].as_str().unwrap().contains("Snowflake"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_and_says_so_upstream() {
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--gateway-tls"]);
    let port = server.gateway.unwrap().port();
    let response = client(&server.ca(), None).get(format!("https://localhost:{port}/secure")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some(format!("localhost:{port}").as_str()));
    // Plain HTTP to the TLS listener gets no answer.
    assert!(http().get(format!("http://127.0.0.1:{port}/")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let (ca, cert, key) = support::server_identity("localhost");
    let upstream = Upstream::start_tls("tls-app", &cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}", upstream.addr.port());
    install(dir.path(), "pass-route", guests::PASS_ROUTE, Some(&json!({"upstream": url}).to_string()));
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    let trusting = Server::start(dir.path(), &["--upstream-ca", ca_file.to_str().unwrap()]);
    let response = http().get(gateway_url(&trusting, "/over-tls")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["upstream"], "tls-app");
    assert_eq!(
        upstream.seen().pop().unwrap().header("host"),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );

    // Without the CA, the upstream's certificate is not trusted: 502.
    let wary = Server::start(dir.path(), &[]);
    let before = upstream.seen().len();
    let response = http().get(gateway_url(&wary, "/over-tls")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(upstream.seen().len(), before, "nothing reaches an untrusted upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_loop_serves_and_a_busy_port_is_refused() {
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--gateway-threads", "3"]);
    assert!(server.log.lock().unwrap().iter().any(|l| l.contains("gateway listening") && l.contains("threads=3")));

    // Connections land on the three sockets as the kernel spreads them;
    // each must be answered, whichever event loop took it.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let url = gateway_url(&server, &format!("/conn/{i}"));
        tasks.spawn(async move {
            // A client per request: a new connection each time.
            let response = http().get(url).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap()["upstream"].clone())
        });
    }
    while let Some(answer) = tasks.join_next().await {
        assert_eq!(answer.unwrap(), (reqwest::StatusCode::OK, json!("app")));
    }

    // SO_REUSEPORT must not let a second server share the port unnoticed.
    let addr = server.gateway.unwrap().to_string();
    let second = std::process::Command::new(support::TOLLGATE)
        .args(["serve", "--no-watch", "--admission-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--gateway-addr", &addr])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains(&addr) && said.to_lowercase().contains("in use"), "{said}");
}

/// The spellings of `/slow/secret` an upstream reads as that path.
const SLOW_SECRET: [&str; 6] = [
    "/x/../slow/secret",
    "/./slow/secret",
    "/%73low/secret",
    "//slow/secret",
    "/%2e%2e/slow/secret",
    "/open/../slow/secret",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_are_normalised_before_any_plugin_sees_them() {
    let (upstream, server, _dir) = catalog_gateway().await;

    // HTTP/1.1, sent byte for byte (clients normalise paths themselves).
    for path in SLOW_SECRET {
        let (status, _) =
            raw_request(&server, format!("GET {path}?q=1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")).await;
        assert!(status.contains(" 200 "), "{path}: {status}");
        assert_eq!(upstream.seen().pop().unwrap().path, "/slow/secret?q=1", "{path}");
    }
    // HTTP/2 (h2c), the same.
    let tcp = tokio::net::TcpStream::connect(server.gateway.unwrap()).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    for path in SLOW_SECRET {
        let request =
            hyper::Request::get(format!("http://gw{path}")).body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(upstream.seen().pop().unwrap().path, "/slow/secret", "{path}");
    }

    // The catalog allowlist sees creation however it is spelled.
    let post = |path: &str| {
        let body = json!({"sourceDefinition": {"name": "Postgres"}}).to_string();
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let before = upstream.seen().len();
    for path in [
        "/api/v1/source_definitions/%63reate",
        "/api/v1/source%5fdefinitions/create",
        "/api/v1/source_definitions/create/.",
        "/api/v1/x/../source_definitions//create",
    ] {
        let (status, body) = raw_request(&server, post(path)).await;
        assert!(status.contains(" 403 "), "{path}: {status} {body}");
        assert!(body.contains("connector-not-listed"), "{path}: {body}");
    }
    // What cannot be normalised safely is refused, with the reason.
    for (path, why) in [
        ("/api/v1/source_definitions/create;x", "';'"),
        ("/api/v1/source_definitions/create%2f", "%2F"),
        ("/api/v1/source_definitions%2Fcreate", "%2F"),
        ("/a%5cb", "%5C"),
        ("/a%252f", "%25"),
        ("/a%00", "control character"),
        ("/a%zz", "malformed"),
    ] {
        let (status, body) = raw_request(&server, post(path)).await;
        assert!(status.contains(" 400 "), "{path}: {status} {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
    // Methods are case-sensitive: `post` is not forwarded as if it were POST.
    let (status, body) =
        raw_request(&server, post("/api/v1/source_definitions/create").replacen("POST", "post", 1)).await;
    assert!(status.contains(" 400 ") && body.contains("not upper case"), "{status} {body}");
    assert_eq!(upstream.seen().len(), before, "nothing refused reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_header_is_visible_to_plugins_and_forwarding_headers_are_tollgates() {
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    install_org_router(dir.path(), &upstream.url());
    // The SSO proxy's header is X-Auth-Email; a client's copy must go.
    let emails =
        json!({"emails": ["alice@example.org"], "identityHeader": "X-Auth-Email", "trustedProxies": ["10.0.0.0/8"]});
    install(dir.path(), "email-allowlist", guests::EMAIL_ALLOWLIST, Some(&emails.to_string()));
    let server = Server::start(dir.path(), &[]);
    let token = rs256(json!({"org": "org-a", "email": "alice@example.org", "exp": now() + 600}));
    let ask = || http().get(gateway_url(&server, "/")).header("authorization", format!("Bearer {token}"));

    // A UTF-8 value beyond ASCII is shown to the allowlist, which removes it.
    let value = http::HeaderValue::from_bytes("bøss@example.org".as_bytes()).unwrap();
    let response = ask().header("x-auth-email", value).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-auth-email"), None, "the client's copy is removed");
    // A value that is not UTF-8 cannot be shown to plugins: refused.
    let before = upstream.seen().len();
    let value = http::HeaderValue::from_bytes(b"boss@example.org\xe9").unwrap();
    let response = ask().header("x-auth-email", value).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("x-auth-email is not UTF-8"));
    assert_eq!(upstream.seen().len(), before);

    // Forwarding headers are Tollgate's: a client's are dropped or replaced.
    let response = ask()
        .header("x-real-ip", "10.1.2.3")
        .header("x-original-url", "/admin")
        .header("x_forwarded_for", "10.1.2.3")
        .header("x_auth_email", "alice@example.org")
        .header("true-client-ip", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    for dropped in ["x-original-url", "x_forwarded_for", "x_auth_email", "true-client-ip"] {
        assert_eq!(seen.header(dropped), None, "{dropped} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_still_streaming_is_not_an_idle_connection() {
    let upstream = Upstream::start("big").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--gateway-idle-secs", "1"]);
    let total = 1usize << 20;
    let mut response = http().get(gateway_url(&server, &format!("/stream?bytes={total}"))).send().await.unwrap();
    let mut received = response.chunk().await.unwrap().unwrap().len();
    // The upstream pauses for three idle timeouts before the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    upstream.release();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, total);
    let metrics = server.metrics_text().await;
    assert!(!metrics.contains(r#"listener="gateway",reason="idle""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start("big").await;
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &upstream.url());
    let server = Server::start(dir.path(), &["--gateway-idle-secs", "1", "--header-timeout-secs", "1"]);
    let total = 200usize << 20;
    upstream.release();
    let mut stream = tokio::net::TcpStream::connect(server.gateway.unwrap()).await.unwrap();
    let request = format!("GET /stream?bytes={total} HTTP/1.1\r\nHost: gw\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read nothing for longer than the idle timeout and the grace after it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            received += n;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all).await.expect("the connection ends");
    assert!(received < total, "the whole response arrived: the stalled connection was kept");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(r#"tollgate_connections_closed_total{listener="gateway",reason="stalled"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Accepts connections and never reads from them.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = blackhole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    install_pass_route(dir.path(), &format!("http://{address}"));
    let server = Server::start(dir.path(), &["--upstream-timeout-ms", "1000"]);
    let stream = tokio::net::TcpStream::connect(server.gateway.unwrap()).await.unwrap();
    let (read_half, mut write_half) = stream.into_split();
    let total = 64usize << 20;
    // The client keeps sending as fast as the gateway takes it.
    let sender = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {total}\r\n\r\n");
        write_half.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..total / chunk.len() {
            write_half.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(write_half)
    });
    // Whatever the connection does after, the answer's head comes.
    let mut read_half = read_half;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") && read_half.read(&mut byte).await.is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_head).await.expect("answered");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    sender.abort();
    held.abort();
}
