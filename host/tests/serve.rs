//! `serve` in process: it binds first and says where (port 0 resolved), so
//! a test needs no log parsing to reach it; then it serves the bundled
//! plugins until told to stop, and drains.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate::admission::listener::{DEFAULT_MAX_REVIEW_BYTES, DEFAULT_REVIEW_MEMORY_BYTES, ReviewLimits};
use tollgate::gateway::proxy::UpstreamOptions;
use tollgate::plugins::loader::FileLimits;
use tollgate::runtime::engine::EngineOptions;
use tollgate::serve::limits::Limits;
use tollgate::serve::{Bound, GatewayOptions, ServeOptions};
use tollgate::tls::{CertSource, TlsOptions};

fn options(state_dir: &std::path::Path) -> ServeOptions {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let limits = Limits::new(1024, 8);
    ServeOptions {
        plugins: None,
        engine: EngineOptions { max_instances: limits.total_calls() as u32, ..EngineOptions::default() },
        admission_addr: any,
        metrics_addr: Some(any),
        tls: TlsOptions {
            cert: CertSource::Generated { names: vec!["localhost".into()], state_dir: state_dir.into(), ca_out: None },
            client_ca: None,
        },
        watch: false,
        files: FileLimits::default(),
        plugins_detail: false,
        cache_dir: None,
        sync: None,
        gateway: Some(GatewayOptions {
            addr: any,
            tls: false,
            trusted_proxies: Vec::new(),
            upstream: UpstreamOptions::default(),
            threads: 1,
        }),
        reviews: ReviewLimits::new(DEFAULT_MAX_REVIEW_BYTES, DEFAULT_REVIEW_MEMORY_BYTES).unwrap(),
        limits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binds_first_says_where_and_serves_until_stopped() {
    let state = tempfile::tempdir().unwrap();
    let options = options(state.path());
    let bound = Bound::new(&options).await.expect("binds");
    let at = bound.addresses();
    let (metrics, gateway) = (at.metrics.expect("metrics bound"), at.gateway.expect("gateway bound"));
    for port in [at.admission.port(), metrics.port(), gateway.port()] {
        assert_ne!(port, 0, "{at:?}");
    }
    // A second server on the same addresses stops at binding.
    let taken = ServeOptions { admission_addr: at.admission, ..options.clone() };
    assert!(Bound::new(&taken).await.is_err());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(options, async move {
        let _ = stop_rx.await;
    }));
    // reqwest is built without a default crypto provider; it wants one even
    // for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = format!("http://{metrics}/readyz");
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while http.get(&ready).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(tokio::time::Instant::now() < give_up, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bundled jwt-org-router takes every path and wants a bearer token.
    let anonymous = http.get(format!("http://{gateway}/anything")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server).await.expect("drains").unwrap().expect("ends cleanly");
}
