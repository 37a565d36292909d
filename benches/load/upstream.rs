//! The upstream app every target forwards to: a minimal hyper server
//! answering every request with `200 OK` and a 13-byte body, speaking
//! HTTP/1.1 and HTTP/2 prior knowledge (h2c) on one plain port, and
//! HTTP/1.1 over mTLS on a second port (the "direct" baseline for the mTLS
//! scenarios). It runs in its own process (the harness binary re-executed
//! with `__upstream`), on a current-thread tokio runtime pinned to the
//! serving core: a single-threaded hyper server answers far faster than any
//! proxy in front of it forwards, so it is not the bottleneck, and
//! in-process Rust keeps the harness free of another external dependency.
//!
//! Must not: do anything per request beyond answering (no logging, no
//! allocation beyond hyper's own). Started by `scenarios.rs`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub const BODY: &[u8] = b"hello, world\n";

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

/// `__upstream [--tls CA CERT KEY]`: prints `READY http=ADDR tls=ADDR|-`
/// on stdout once listening, then serves until killed.
pub fn main(args: &[String]) -> Result<(), String> {
    let tls = match args {
        [] => None,
        [flag, ca, cert, key] if flag == "--tls" => {
            Some((PathBuf::from(ca), PathBuf::from(cert), PathBuf::from(key)))
        }
        _ => {
            return Err(format!(
                "usage: __upstream [--tls CA CERT KEY], got {args:?}"
            ))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(tls))
}

async fn serve(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Result<(), String> {
    let plain = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let plain_addr = plain.local_addr().map_err(|e| e.to_string())?;
    let mut tls_addr: Option<SocketAddr> = None;
    if let Some((ca, cert, key)) = tls {
        let cfg = crate::tls::server(&ca, &cert, &key)?;
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        tls_addr = Some(l.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(serve_tls(l, tokio_rustls::TlsAcceptor::from(cfg)));
    }
    {
        let mut out = std::io::stdout().lock();
        let tls = tls_addr.map_or("-".to_string(), |a| a.to_string());
        writeln!(out, "READY http={plain_addr} tls={tls}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    loop {
        let Ok((stream, _)) = plain.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn serve_tls(l: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service_fn(answer))
                .await;
        });
    }
}
