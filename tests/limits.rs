//! What clients can do to the host through its listeners, and what they
//! cannot: starve admission with gateway traffic, hold connections open
//! without sending anything, or flood HTTP/2 with reset streams. Each test
//! runs the real binary with small limits, so a limit that does not hold
//! shows within seconds; waits are hang guards, not timing assertions.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Server, client, configmap_review, guests, install, plain, post_review};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `pass-route` answering 204 itself, so no upstream is needed.
fn install_answering_route(dir: &std::path::Path) {
    install(dir, "pass-route", guests::PASS_ROUTE, Some(r#"{"upstream": "http://127.0.0.1:9", "respond": 204}"#));
}

/// Far longer than any limit under test: reaching it means the server
/// never closed or never answered.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// The counter `series` (name and labels) in the Prometheus text, or 0.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

/// Waits for the server to close `stream`, reading and discarding what it
/// sends first; panics if it is still open after [`HANG_GUARD`].
async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin, what: &str) {
    let mut buf = vec![0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read_all).await.unwrap_or_else(|_| panic!("{what}: still open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_flood_cannot_turn_admission_answers_into_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    // Denies every ConfigMap; failurePolicy Ignore would allow them if the
    // plugin could not run in time.
    install(dir.path(), "deny-ignore", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "fail"}"#));
    // A route that takes 300 ms per call.
    install(
        dir.path(),
        "pass-route",
        guests::PASS_ROUTE,
        Some(r#"{"upstream": "http://127.0.0.1:9", "respond": 204, "sleepMs": 300}"#),
    );
    // 8 calls at once: 2 for admission, 6 for the gateway. Shared, 200
    // gateway requests would queue 10 s for them, past admission's 800 ms.
    let server = Server::start(dir.path(), &["--max-instances", "8", "--gateway-wait-ms", "200"]);
    let gateway = format!("http://{}/flood", server.gateway.unwrap());

    let flood = plain();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (flood, url) = (flood.clone(), gateway.clone());
        clients.spawn(async move {
            let response = flood.get(url).send().await.expect("gateway answers");
            (response.status().as_u16(), response.headers().get("retry-after").cloned())
        });
    }
    let tls = client(&server.ca(), None);
    let mut reviews = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (tls, url) = (tls.clone(), server.url("/validate/misbehave-ignore"));
        reviews.spawn(async move { post_review(&tls, &url, &configmap_review(&format!("r{i}"))).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(answer) = reviews.join_next().await {
        let answer = answer.unwrap();
        let response = &answer["response"];
        assert_eq!(response["allowed"], false, "the plugin's own answer, not the failure policy's: {answer}");
        assert_eq!(response["status"]["message"], "refused on purpose", "{answer}");
    }
    let (mut served, mut shed) = (0, 0);
    while let Some(outcome) = clients.join_next().await {
        match outcome.unwrap() {
            (204, _) => served += 1,
            (503, Some(retry_after)) => {
                assert_eq!(retry_after, "1");
                shed += 1;
            }
            other => panic!("unexpected gateway answer {other:?}"),
        }
    }
    assert!(served > 0 && shed > 0, "served {served}, shed {shed}");
    let metrics = server.metrics_text().await;
    assert_eq!(counter(&metrics, r#"tollgate_overloaded_total{listener="gateway"}"#), shed, "{metrics}");
    assert_eq!(counter(&metrics, r#"tollgate_overloaded_total{listener="admission"}"#), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_and_each_listener_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    install_answering_route(dir.path());
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    let server = Server::start(
        dir.path(),
        &[
            "--header-timeout-secs",
            "1",
            "--gateway-idle-secs",
            "1",
            "--admission-idle-secs",
            "1",
            "--max-gateway-connections",
            "20",
            "--max-admission-connections",
            "8",
        ],
    );
    let gateway = server.gateway.unwrap();

    // 60 connections that send nothing: 20 fill the gateway, the other 40
    // are closed at once; the 20 are closed after the header timeout.
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(gateway).await.unwrap());
    }
    // Meanwhile admission and the probes answer.
    let tls = client(&server.ca(), None);
    let answer = post_review(&tls, &server.url("/validate/misbehave"), &configmap_review("u1")).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let ready = plain().get(format!("http://{}/readyz", server.metrics)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Its kept-alive connection would count against the per-client cap below.
    drop(tls);
    for (i, stream) in silent.into_iter().enumerate() {
        closed_by_server(stream, &format!("silent gateway connection {i}")).await;
    }

    // A finished TLS handshake on admission, then nothing.
    let stream = tls_handshake(server.admission, &server.ca(), LOOPBACK).await;
    closed_by_server(stream, "admission connection after its handshake").await;

    // One client may hold a quarter of admission's 8 connections (at least
    // 4): its fifth and sixth are closed at once, and another client (the
    // API server) still gets in.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(TcpStream::connect(server.admission).await.unwrap());
    }
    let other = tls_handshake(server.admission, &server.ca(), "127.0.0.2".parse().unwrap()).await;
    let answer = review_over(other, &configmap_review("u2")).await;
    assert!(answer.contains(r#""allowed":true"#), "{answer}");
    for (i, stream) in held.into_iter().enumerate() {
        closed_by_server(stream, &format!("held admission connection {i}")).await;
    }

    // A keep-alive connection after its request.
    let mut keep_alive = TcpStream::connect(gateway).await.unwrap();
    keep_alive.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    closed_by_server(keep_alive, "idle HTTP/1.1 keep-alive connection").await;

    // HTTP/2 (h2c) after the preface and settings, with no stream.
    let mut h2c = TcpStream::connect(gateway).await.unwrap();
    h2c.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
    closed_by_server(h2c, "idle HTTP/2 connection").await;

    let metrics = server.metrics_text().await;
    let closed = |reason: &str| {
        counter(&metrics, &format!(r#"tollgate_connections_closed_total{{listener="gateway",reason="{reason}"}}"#))
    };
    assert_eq!(closed("limit"), 40, "{metrics}");
    assert!(closed("header_timeout") >= 20, "the 20 silent ones: {metrics}");
    // The keep-alive connection, and the HTTP/2 one (counted as idle or
    // as silent, depending on whether its settings frame came first).
    assert!(closed("idle") >= 1 && closed("header_timeout") + closed("idle") >= 22, "{metrics}");
    let admission = |reason: &str| {
        counter(&metrics, &format!(r#"tollgate_connections_closed_total{{listener="admission",reason="{reason}"}}"#))
    };
    assert_eq!(admission("peer_limit"), 2, "{metrics}");
    // The 4 held ones never start TLS; the idle one above had.
    assert_eq!((admission("handshake_timeout"), admission("header_timeout")), (4, 1), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_must_be_complete_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    install_answering_route(dir.path());
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    // Idle timeouts past the hang guard: only the header timeout can close
    // these connections in time.
    let server = Server::start(
        dir.path(),
        &["--header-timeout-secs", "1", "--gateway-idle-secs", "60", "--admission-idle-secs", "60"],
    );
    let gateway = server.gateway.unwrap();

    // A request line, then nothing.
    let mut line_only = TcpStream::connect(gateway).await.unwrap();
    line_only.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // Headers trickled a line at a time, each well within any idle timeout.
    let trickled = TcpStream::connect(gateway).await.unwrap();
    let (read_half, mut write_half) = trickled.into_split();
    let trickle = tokio::spawn(async move {
        let mut sent = write_half.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n").await;
        while sent.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sent = write_half.write_all(b"X-Slow: yes\r\n").await;
        }
        sent
    });
    // HTTP/2 (h2c): the preface and settings, then a HEADERS frame whose
    // header block never ends (no END_HEADERS, no CONTINUATION).
    let mut h2c = TcpStream::connect(gateway).await.unwrap();
    h2c.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[]), &frame(HEADERS, 0, 1, &[0x82])].concat()).await.unwrap();
    // Admission: a finished TLS handshake, then half a request head.
    let mut admission = tls_handshake(server.admission, &server.ca(), LOOPBACK).await;
    admission.write_all(b"POST /validate/misbehave HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();

    closed_by_server(line_only, "request line without headers").await;
    closed_by_server(read_half, "trickled headers").await;
    trickle.await.unwrap().expect_err("the server stopped reading");
    closed_by_server(h2c, "unfinished HTTP/2 header block").await;
    closed_by_server(admission, "unfinished admission request head").await;

    let metrics = server.metrics_text().await;
    let closed = |listener: &str| {
        counter(
            &metrics,
            &format!(r#"tollgate_connections_closed_total{{listener="{listener}",reason="header_timeout"}}"#),
        )
    };
    assert_eq!((closed("gateway"), closed("admission")), (3, 1), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_review_whose_body_stalls_is_answered_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    // Default timeouts: idle 120 s, far past the hang guard.
    let server = Server::start(dir.path(), &[]);
    for (path, content_type, status) in
        [("/validate/nope", "application/json", "404"), ("/validate/misbehave", "text/plain", "415")]
    {
        let mut stream = tls_handshake(server.admission, &server.ca(), LOOPBACK).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut answer)).await.expect("answered and closed").ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {answer}");
    }
}

/// The usual client address.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// POSTs `review` on `stream` (HTTP/1.1) and returns the whole answer.
async fn review_over(mut stream: tokio_rustls::client::TlsStream<TcpStream>, review: &serde_json::Value) -> String {
    let body = review.to_string();
    let request = format!(
        "POST /validate/misbehave HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut answer)).await.expect("answered").ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A TLS connection from `from` to `addr` whose handshake has finished.
async fn tls_handshake(
    addr: SocketAddr,
    ca: &[u8],
    from: std::net::IpAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    connector.connect("localhost".try_into().unwrap(), tcp).await.expect("handshake")
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

/// One HTTP/2 frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_answered_with_goaway() {
    let dir = tempfile::tempdir().unwrap();
    install_answering_route(dir.path());
    let server = Server::start(dir.path(), &[]);
    // 1,000 requests, each reset as soon as it is sent (CVE-2023-44487),
    // written at once, frame by frame.
    let mut flood = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
    // GET http://gw/ in HPACK: :method GET, :scheme http, :path / (static
    // table entries 2, 6, 4), :authority "gw" (literal, name index 1).
    let request = [0x82, 0x86, 0x84, 0x41, 0x02, b'g', b'w'];
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(HEADERS, 0x5, stream, &request)); // END_STREAM | END_HEADERS
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    let mut tcp = TcpStream::connect(server.gateway.unwrap()).await.unwrap();
    // The server may close before reading it all.
    let _ = tcp.write_all(&flood).await;
    let mut answer = Vec::new();
    let _ =
        tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut answer)).await.expect("the server closes the connection");
    // Walk the frames the server sent, to its GOAWAY.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= answer.len() {
        let len = u32::from_be_bytes([0, answer[at], answer[at + 1], answer[at + 2]]) as usize;
        if answer[at + 3] == GOAWAY && at + 9 + len <= answer.len() {
            let payload = &answer[at + 9..at + 9 + len];
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM (0xb) expected; got {goaway:?}");
    // The gateway still serves.
    let response = plain().get(format!("http://{}/", server.gateway.unwrap())).send().await.unwrap();
    assert_eq!(response.status(), 204);
}
