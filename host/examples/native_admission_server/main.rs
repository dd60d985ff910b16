//! The benchmark's baseline: Tollgate's own TLS listener, AdmissionReview
//! parsing and response code, answering pod-validation's decision in native
//! Rust instead of a Wasm plugin. Everything but the plugin call is the same
//! code path, so the difference measures what Wasm adds.
//!
//! `cargo run --release --example native_admission_server -- 127.0.0.1:8444 /tmp/native-ca.pem`

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kube_core::admission::AdmissionResponse;
use tollgate::admission::review;
use tollgate::listener::{Listener, serve, text};
use tollgate::tls::{CertSource, TlsOptions};

mod native_pod;

// The same allocator as `tollgate`, so only the decision differs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:8444".into()).parse().expect("an address");
    let ca_out = args.next().unwrap_or_else(|| "/tmp/native-ca.pem".into());
    let policy = Arc::new(native_pod::Policy::shipped());
    let tls = tollgate::tls::server_config(&TlsOptions {
        cert: CertSource::Generated {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            state_dir: std::env::temp_dir().join("native-baseline-state"),
            ca_out: Some(ca_out.into()),
        },
        client_ca: None,
    })
    .expect("tls");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    eprintln!("native baseline listening on {addr}");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let limits = tollgate::serve::limits::Limits::new(tollgate::serve::limits::raise_open_files(), 128);
    let metrics = tollgate::metrics::Metrics::default();
    serve(
        Listener::new("native", limits.admission, &metrics),
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls.config)),
        move |req: hyper::Request<hyper::body::Incoming>, _peer| {
            let policy = policy.clone();
            async move {
                let Ok(body) = req.into_body().collect().await else { return text(400, "bad body") };
                let review = match review::parse_review(&body.to_bytes()) {
                    Ok(r) => r,
                    Err(e) => return text(400, e.to_string()),
                };
                let request = match review::to_contract(&review) {
                    Ok(r) => r,
                    Err(e) => return text(400, e.to_string()),
                };
                // As the host does before a plugin call (admission/listener.rs).
                tokio::task::yield_now().await;
                let mut response = AdmissionResponse::from(&review);
                if let Err((code, message)) = policy.decide(&request) {
                    response.allowed = false;
                    response.result.code = code;
                    response.result.message = message;
                }
                let json = review::review_json(response).expect("encode");
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .expect("response")
            }
        },
        rx,
    )
    .await;
}
