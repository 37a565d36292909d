//! Small applications and clients for the proxy's end-to-end tests
//! (`tests/proxy_*.rs` include this file with `#[path]`; it needs tokio and
//! hyper, which the std-only `e2e` support library does not depend on).
//!
//! Apps listen on 127.0.0.1 port 0; the proxy reaches them with
//! `--map LISTEN=APP_PORT`, so a test's proxy and apps never collide.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running test app.
pub struct App {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: Arc<AtomicUsize>,
    /// HTTP requests received so far (`http_app`).
    pub reqs: Arc<AtomicUsize>,
}

impl App {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.reqs.load(Ordering::SeqCst)
    }
}

/// A TCP app that runs `handler` for every connection.
pub async fn tcp_app<F, Fut>(handler: F) -> App
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(s));
        }
    });
    App {
        addr,
        conns,
        reqs: Arc::default(),
    }
}

/// An app that terminates its own TLS (not the mesh's) and echoes what it reads.
pub async fn tls_echo_app(server: rustls::ServerConfig) -> App {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tcp_app(move |s| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(mut tls) = acceptor.accept(s).await {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = tls.flush().await;
                }
            }
        }
    })
    .await
}

/// An app that greets first (like MySQL or SMTP), then echoes.
pub async fn greeting_app(greeting: &'static [u8]) -> App {
    tcp_app(move |mut s| async move {
        let _ = s.write_all(greeting).await;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// An echo app.
pub async fn echo_app() -> App {
    tcp_app(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A port with nothing listening (the app is down).
pub fn closed_port() -> u16 {
    // Not an ephemeral port: another connection could take that as its
    // source, or another test's listener as its port (see `free_addr`).
    e2e::free_addr().port()
}

/// `--map` for an app port: (the proxy's listen address, the flag value).
pub fn map(app_port: u16) -> (SocketAddr, String) {
    let listen = e2e::free_addr();
    (listen, format!("{listen}={app_port}"))
}

/// A deterministic pseudo-random payload (xorshift), so both ends can
/// compute what the other sent.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64: a checksum both ends compute the same way.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

// ===== HTTP app

/// An HTTP/1 + HTTP/2 app (auto-detected) that describes what it saw:
/// - default: 200, `x-seen-*` headers (host, l5d-client-id, version, path,
///   connection-level headers), body echoed;
/// - `/slow?ms=N`: answers after N ms;
/// - `/grpc`: a gRPC-style response with `grpc-status: 0` in trailers;
/// - `Upgrade: echo`: 101, then echoes bytes on the upgraded connection.
pub async fn http_app() -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let reqs = Arc::new(AtomicUsize::new(0));
    let (counter, req_counter) = (conns.clone(), reqs.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let req_counter = req_counter.clone();
            let svc = service_fn(move |req| {
                req_counter.fetch_add(1, Ordering::SeqCst);
                describe(req)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    App { addr, conns, reqs }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn describe(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut rsp = Response::new(full(""));
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        rsp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("echo"));
        return Ok(rsp);
    }
    let mut seen = HeaderMap::new();
    let copy = |name: &str| {
        req.headers()
            .get(name)
            .cloned()
            .unwrap_or(HeaderValue::from_static("<none>"))
    };
    let host = req
        .headers()
        .get("host")
        .cloned()
        .or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .unwrap_or(HeaderValue::from_static("<none>"));
    seen.insert("x-seen-host", host);
    seen.insert("x-seen-client-id", copy("l5d-client-id"));
    seen.insert("x-seen-keep-alive", copy("keep-alive"));
    seen.insert("x-seen-te", copy("te"));
    seen.insert(
        "x-seen-version",
        HeaderValue::from_str(&format!("{:?}", req.version())).unwrap(),
    );
    seen.insert("x-seen-path", HeaderValue::from_str(&path).unwrap());
    if path == "/grpc" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ];
        let mut rsp = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        rsp.headers_mut().extend(seen);
        return Ok(rsp);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut rsp = Response::new(full(body));
    rsp.headers_mut().extend(seen);
    // A hop-by-hop header the proxy must not pass on.
    rsp.headers_mut()
        .insert("connection", HeaderValue::from_static("x-hop"));
    rsp.headers_mut()
        .insert("x-hop", HeaderValue::from_static("1"));
    Ok(rsp)
}

// ===== clients

/// An HTTP/1.1 client connection.
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

/// An HTTP/2 (prior knowledge) client connection.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A request with an empty body: HTTP/1 style (`Host`), or for HTTP/2 with
/// an absolute URI.
pub fn get(uri: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(uri);
    if !uri.starts_with("http") {
        b = b.header("host", "web.example");
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Reads a response fully: (status, headers, body, trailers).
pub async fn read(rsp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// Reads until EOF or error, within `timeout`; `None` on timeout.
pub async fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    let fut = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.ok()?;
    Some(all)
}
