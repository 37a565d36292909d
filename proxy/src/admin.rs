//! The admin server (`--admin-addr`, default 127.0.0.1:4191).
//!
//! - `GET /metrics`: every metric, Prometheus/OpenMetrics text.
//! - `GET /ready`: 200 once a policy is loaded (from the file, from the
//!   controller for every known port, or the default policy when there is no
//!   source); 503 before, and while draining.
//! - `GET /live`: 200 while the process runs.
//! - `GET /policy`: the policy table in force, as JSON (for debugging).
//! - `GET /config`: the validated configuration, as JSON.
//!
//! Read-only: nothing here changes the proxy's state. `lib.rs` binds it
//! before the listeners so probes work from the start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_policy::PolicyTable;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::metrics::Metrics;

/// What the admin server reads.
#[derive(Debug)]
pub struct Admin {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub table: Arc<PolicyTable>,
    /// True once a policy is loaded; false again while draining.
    pub ready: watch::Receiver<bool>,
}

impl Admin {
    /// Serves until `stop` fires.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10));
                if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                    debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/metrics" => {
                let mut rsp = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                rsp
            }
            "/ready" => {
                if *self.ready.borrow() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/policy" => {
                let generation = self.table.generation();
                json(&self.table.load().to_json(generation))
            }
            "/config" => json(&serde_json::to_value(&*self.config).unwrap_or_default()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics /ready /live /policy /config\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    rsp
}

/// Binding the admin address failed.
#[derive(Debug, thiserror::Error)]
#[error("binding --admin-addr {addr}: {source}")]
pub struct AdminBindError {
    addr: SocketAddr,
    source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminBindError { addr, source })
}
