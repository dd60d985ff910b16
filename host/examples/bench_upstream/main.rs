//! The upstream of the gateway benchmarks: answers every request with a
//! small 200 over HTTP/1.1 keep-alive, as fast as hyper can.
//! Usage: bench_upstream ADDR

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}\n"))))
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
