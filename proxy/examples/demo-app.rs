//! The demo application behind the proxy in `proxy/demo/run.sh`: a tiny
//! HTTP/1 server that says hello, names the path, and shows the
//! `l5d-client-id` it received (what the proxy vouches for).
//!
//! Usage: `demo-app [LISTEN_ADDR]` (default 127.0.0.1:8080).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req
        .headers()
        .get("l5d-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none (plaintext client)");
    let body = format!(
        "hello from the demo app: {} {}\nclient identity: {client}\n",
        req.method(),
        req.uri().path()
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("demo-app listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}
