//! HTTP forwarding: a hyper server per client connection, a hyper client
//! pool per app port. HTTP/1.1 to an HTTP/1 app starts on the fast path
//! (`http1.rs`) and comes here from the first request that path hands off
//! ([`HttpServer::serve`]); the fast path keeps its app connections in the
//! same [`Pool`] (`checkout_raw`/`checkin_raw`).
//!
//! Each request is checked by `authz.rs` ([`crate::authz::HttpAuthz`]),
//! stripped of what the app must not trust (`l5d-client-id` from the
//! client, hop-by-hop headers per RFC 9110 §7.6.1), and sent to the app over
//! a pooled connection of the app's protocol. HTTP/1 upgrades (WebSocket)
//! are spliced through; HTTP/2 and gRPC keep streams, trailers and flow
//! control because bodies are forwarded frame by frame. A refusal or an
//! unreachable app is answered by [`crate::authz::respond`], never here.
//!
//! Server limits (`--http1-max-head-bytes`, `--http-header-read-timeout`,
//! `--http-idle-timeout`, `--http2-*`) are set on the builders in
//! [`HttpServer::new`]. This module does not decide policy and does not
//! detect protocols. Called by `inbound.rs` once detection found HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::authz::{is_grpc, respond, HttpAuthz, Refusal};
use crate::config::HttpLimits;
use crate::detect::PrefixedIo;
use crate::forward::{connect_app, ForwardError};
use crate::metrics::{Labels, Metrics};
use crate::signal::Signal;
use crate::{http1, http2};

/// The header that carries a verified client identity to the app.
pub const L5D_CLIENT_ID: &str = "l5d-client-id";

/// A denied HTTP/1 request's body is read and discarded up to this size
/// and time, so the connection stays usable for the next request (HTTP/1
/// cannot skip an unread body); a bigger or slower body closes it.
const DENIED_BODY_DRAIN: usize = 256 * 1024;
pub(crate) const DENIED_BODY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// How long an idle pooled connection to the app is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most idle HTTP/1 connections kept per app port.
const POOL_MAX_IDLE: usize = 256;
/// How long a client connection's own app connection may take to become
/// ready for the next request before another one is used.
const OWN_READY_WAIT: Duration = Duration::from_millis(100);

// ===== bodies

/// The body of requests to the app and of responses to the client: the
/// peer's streaming body, or a small body the proxy made itself.
#[derive(Debug)]
pub enum ProxyBody {
    Incoming(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A response body that records `response_total` and `response_latency_ms`
/// when the response ends (so gRPC trailers classify it), and keeps the
/// connection counted as busy until then (for `--http-idle-timeout`).
#[derive(Debug)]
pub struct ResponseBody {
    inner: ProxyBody,
    done: Option<ResponseDone>,
}

#[derive(Debug)]
struct ResponseDone {
    conn: Arc<HttpConn>,
    status: StatusCode,
    grpc_status: Option<u32>,
    latency: Duration,
    _busy: Busy,
}

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.conn
            .record_response(self.status, self.grpc_status, self.latency);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(done)) = (frame.trailers_ref(), this.done.as_mut()) {
                    if let Some(s) = grpc_status(trailers) {
                        done.grpc_status = Some(s);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.done.take();
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

// ===== idle tracking

/// Requests in flight and the time the connection last became idle.
#[derive(Debug)]
struct Idle {
    active: AtomicUsize,
    since: Mutex<Instant>,
}

/// One request in flight; dropping it may make the connection idle.
#[derive(Debug)]
struct Busy(Arc<HttpConn>);

impl Busy {
    fn new(conn: &Arc<HttpConn>) -> Self {
        conn.idle.active.fetch_add(1, Ordering::AcqRel);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.idle.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

impl Idle {
    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn expired(&self, timeout: Duration) {
        loop {
            let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
            tokio::time::sleep_until(since + timeout).await;
            let since_now = *self.since.lock().unwrap_or_else(|p| p.into_inner());
            if self.active.load(Ordering::Acquire) == 0 && since_now == since {
                return;
            }
            if self.active.load(Ordering::Acquire) > 0 {
                // Busy: look again one timeout from now at the earliest.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

// ===== server

/// The HTTP server builders, configured once from the limits.
#[derive(Clone, Debug)]
pub struct HttpServer {
    h1: server1::Builder,
    h2: server2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    fast: http1::Limits,
    relay: http2::Limits,
}

/// Which HTTP version a connection (client side or app side) speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl HttpServer {
    pub fn new(limits: &HttpLimits) -> Self {
        let mut h1 = server1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.http1_max_head_bytes)
            .keep_alive(true);
        let mut h2 = server2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.http2_max_header_list_bytes)
            .max_pending_accept_reset_streams(limits.http2_max_pending_accept_resets)
            .max_local_error_reset_streams(limits.http2_max_local_error_resets);
        HttpServer {
            h1,
            h2,
            idle_timeout: limits.idle_timeout,
            fast: http1::Limits {
                max_head: limits.http1_max_head_bytes,
                header_read_timeout: limits.header_read_timeout,
                idle_timeout: limits.idle_timeout,
            },
            relay: http2::Limits {
                max_concurrent_streams: limits.http2_max_concurrent_streams,
                max_header_list: limits.http2_max_header_list_bytes,
                max_pending_resets: limits.http2_max_pending_accept_resets,
                max_local_resets: limits.http2_max_local_error_resets,
                idle_timeout: limits.idle_timeout,
            },
        }
    }

    /// Serves one client connection until it ends, the idle timeout passes,
    /// or `drain` fires (then in-flight requests finish and the connection
    /// closes gracefully: HTTP/2 gets GOAWAY). HTTP/1 to an HTTP/1 app
    /// starts on the fast path (`http1.rs`) and continues here with hyper
    /// from the first request that path hands off.
    pub async fn serve<I>(
        &self,
        io: I,
        version: HttpVersion,
        conn: Arc<HttpConn>,
        drain: &Signal,
    ) -> Result<(), ServeError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if version == HttpVersion::Http1 && conn.upstream.version == HttpVersion::Http1 {
            match http1::serve(io, &conn, &self.fast, drain).await {
                http1::Served::Closed(res) => res.map_err(ServeError::Fast),
                http1::Served::Handoff { io, buffered, why } => {
                    debug!(client = %conn.authz.conn().peer, why, "HTTP/1 request served by hyper");
                    conn.touch();
                    let io = PrefixedIo::new(buffered.freeze(), io);
                    Box::pin(self.serve_hyper(io, version, conn, drain))
                        .await
                        .map_err(ServeError::Hyper)
                }
            }
        } else if version == HttpVersion::Http2 && conn.upstream.version == HttpVersion::Http2 {
            Box::pin(http2::serve(io, &conn, &self.relay, drain))
                .await
                .map_err(ServeError::Relay)
        } else {
            // Boxed: hyper's connection state would otherwise size every
            // connection task, fast path included.
            Box::pin(self.serve_hyper(io, version, conn, drain))
                .await
                .map_err(ServeError::Hyper)
        }
    }

    async fn serve_hyper<I>(
        &self,
        io: I,
        version: HttpVersion,
        conn: Arc<HttpConn>,
        drain: &Signal,
    ) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc_conn = conn.clone();
        let svc = service_fn(move |req| {
            let conn = svc_conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let io = TokioIo::new(io);
        // Both connection types expose `graceful_shutdown`; a macro avoids
        // restating hyper's bounds for a trait over them.
        macro_rules! drive {
            ($c:expr) => {{
                let c = $c;
                tokio::pin!(c);
                let mut closing = false;
                loop {
                    tokio::select! {
                        res = c.as_mut() => break res,
                        _ = drain.token().cancelled(), if !closing => {
                            closing = true;
                            c.as_mut().graceful_shutdown();
                        }
                        _ = conn.idle.expired(self.idle_timeout), if !closing => {
                            debug!(client = %conn.authz.conn().peer, "closing idle HTTP connection");
                            closing = true;
                            c.as_mut().graceful_shutdown();
                        }
                    }
                }
            }};
        }
        match version {
            HttpVersion::Http1 => drive!(self.h1.serve_connection(io, svc).with_upgrades()),
            HttpVersion::Http2 => drive!(self.h2.serve_connection(io, svc)),
        }
    }
}

/// How serving a client connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    Fast(http1::Error),
    #[error(transparent)]
    Relay(http2::Error),
}

impl ServeError {
    pub fn is_timeout(&self) -> bool {
        match self {
            ServeError::Hyper(e) => e.is_timeout(),
            ServeError::Fast(e) => e.is_timeout(),
            ServeError::Relay(_) => false,
        }
    }
}

/// What a client connection's lifetime is tied to: its `--max-connections`
/// slot, the tracker the shutdown drain waits on, and the hard-stop signal.
/// An upgraded (spliced) connection outlives the HTTP server of its
/// connection, so it carries these along.
#[derive(Clone, Debug)]
pub struct ConnScope {
    pub slot: Arc<OwnedSemaphorePermit>,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

/// Everything one client connection's requests share.
#[derive(Debug)]
pub struct HttpConn {
    scope: ConnScope,
    authz: HttpAuthz,
    upstream: Arc<Pool>,
    metrics: Arc<Metrics>,
    downstream: HttpVersion,
    idle: Idle,
    requests: Counter,
    /// The app connection this client's HTTP/1 requests go to first. A
    /// client HTTP/1 connection carries one request at a time, so keeping
    /// its app connection spares a pool round trip (a lock and a spawned
    /// task to wait for readiness) per request; it goes back to the pool
    /// when the client connection ends.
    own_h1: Mutex<Option<client1::SendRequest<ProxyBody>>>,
    /// The verified client identity as the `l5d-client-id` value.
    client_id: Option<HeaderValue>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        let own = self
            .own_h1
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = own {
            self.upstream.checkin_h1(tx);
        }
    }
}

impl HttpConn {
    pub fn new(
        authz: HttpAuthz,
        upstream: Arc<Pool>,
        metrics: Arc<Metrics>,
        downstream: HttpVersion,
        scope: ConnScope,
    ) -> Arc<Self> {
        let requests = authz
            .conn()
            .labels
            .requests
            .get_or_init(|| {
                metrics
                    .request_total
                    .get_or_create_owned(&request_labels(&authz))
            })
            .clone();
        let client_id = match &authz.conn().client.tls {
            portcullis_policy::ClientTls::Mesh { identity: Some(id) } => {
                HeaderValue::from_str(&id.presented).ok()
            }
            _ => None,
        };
        Arc::new(HttpConn {
            scope,
            authz,
            upstream,
            metrics,
            downstream,
            idle: Idle {
                active: AtomicUsize::new(0),
                since: Mutex::new(Instant::now()),
            },
            requests,
            own_h1: Mutex::new(None),
            client_id,
        })
    }

    pub(crate) fn authz(&self) -> &HttpAuthz {
        &self.authz
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.upstream
    }

    pub(crate) fn client_id(&self) -> Option<&HeaderValue> {
        self.client_id.as_ref()
    }

    /// Counts a request (`request_total`).
    pub(crate) fn request_started(&self) {
        self.requests.inc();
    }

    /// The idle clock restarts now (hyper takes over a busy connection).
    fn touch(&self) {
        *self.idle.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let busy = Busy::new(&self);
        self.requests.inc();

        // The app trusts l5d-client-id, so whatever the client sent is
        // dropped; only an identity the proxy verified is set.
        let headers = req.headers_mut();
        headers.remove(L5D_CLIENT_ID);
        if let Some(v) = &self.client_id {
            headers.insert(L5D_CLIENT_ID, v.clone());
        }
        let grpc = is_grpc(req.headers());

        let rsp = match self
            .authz
            .check(req.method(), req.uri().path(), req.headers())
        {
            Err(mut denied) => {
                if self.downstream == HttpVersion::Http1 && !Box::pin(drain(req.into_body())).await
                {
                    denied
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                denied
            }
            Ok(()) => match self.forward(req).await {
                Ok(rsp) => rsp.map(ProxyBody::Incoming),
                Err(e) => {
                    warn!(
                        port = self.authz.conn().port,
                        client = %self.authz.conn().peer,
                        error = %e,
                        "request to the application failed"
                    );
                    respond(Refusal::AppUnavailable, grpc)
                }
            },
        };
        let status = rsp.status();
        let grpc_status = grpc_status(rsp.headers());
        rsp.map(|inner| ResponseBody {
            inner,
            done: Some(ResponseDone {
                conn: self.clone(),
                status,
                grpc_status,
                latency: start.elapsed(),
                _busy: busy,
            }),
        })
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // HTTP/1 upgrades (WebSocket) keep their Connection/Upgrade headers
        // and, on 101, both upgraded connections are spliced together.
        let upgrade = self.downstream == HttpVersion::Http1
            && self.upstream.version == HttpVersion::Http1
            && wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let req = to_upstream(req, self.downstream, self.upstream.version, upgrade)?;
        let mut rsp = if self.downstream == HttpVersion::Http1
            && self.upstream.version == HttpVersion::Http1
        {
            let own = self.own_h1.lock().unwrap_or_else(|p| p.into_inner()).take();
            // Boxed (here and for the HTTP/2 connect): rare, large states
            // that every request's future would otherwise carry and move.
            let (rsp, tx) = Box::pin(self.upstream.send_h1_on(own, req)).await?;
            if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
                // Upgraded: the pool's readiness wait drops it when it ends.
                self.upstream.checkin_h1(tx);
            } else {
                *self.own_h1.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            }
            rsp
        } else {
            self.upstream.send(req).await?
        };

        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let app_upgrade = hyper::upgrade::on(&mut rsp);
                let peer = self.authz.conn().peer;
                let scope = self.scope.clone();
                self.scope.tasks.spawn(async move {
                    // Holds the connection's slot until the splice ends.
                    let _slot = scope.slot;
                    let splice = async {
                        let (c, a) = tokio::try_join!(client_upgrade, app_upgrade)?;
                        let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
                        crate::forward::copy_both(&mut c, &mut a)
                            .await
                            .map_err(UpstreamError::Splice)
                    };
                    tokio::select! {
                        res = splice => if let Err(e) = res {
                            debug!(client = %peer, error = %e, "upgraded connection ended");
                        },
                        _ = scope.stop.cancelled() => {}
                    }
                });
                return Ok(rsp);
            }
        }
        strip_hop_by_hop(rsp.headers_mut(), false);
        *rsp.version_mut() = match self.downstream {
            HttpVersion::Http1 => Version::HTTP_11,
            HttpVersion::Http2 => Version::HTTP_2,
        };
        Ok(rsp)
    }

    pub(crate) fn record_response(
        &self,
        status: StatusCode,
        grpc_status: Option<u32>,
        latency: Duration,
    ) {
        let failure = status.is_server_error() || grpc_status.is_some_and(|s| s != 0);
        // Shared by the connections of this label set (see `ConnLabels`).
        let code = status.as_u16();
        let mut cache = self
            .authz
            .conn()
            .labels
            .responses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = match cache
            .iter()
            .position(|(s, f, _, _)| *s == code && *f == failure)
        {
            Some(i) => &cache[i],
            None => {
                let mut labels = request_labels(&self.authz);
                labels.push(("status_code", status.as_u16().to_string()));
                let latency_h = self
                    .metrics
                    .response_latency_ms
                    .get_or_create_owned(&labels);
                labels.push((
                    "classification",
                    if failure { "failure" } else { "success" }.to_string(),
                ));
                let total = self.metrics.response_total.get_or_create_owned(&labels);
                cache.push((code, failure, total, latency_h));
                &cache[cache.len() - 1]
            }
        };
        entry.2.inc();
        entry.3.observe(latency.as_secs_f64() * 1000.0);
    }
}

/// Reads and discards a body, within [`DENIED_BODY_DRAIN`] bytes and
/// [`DENIED_BODY_DRAIN_TIME`]; `true` when it ended within both.
async fn drain(mut body: Incoming) -> bool {
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return true;
    }
    let mut read = 0usize;
    let all = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > DENIED_BODY_DRAIN {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DENIED_BODY_DRAIN_TIME, all)
        .await
        .unwrap_or(false)
}

fn request_labels(authz: &HttpAuthz) -> Labels {
    let mut l = vec![("direction", "inbound".to_string())];
    l.extend(authz.conn().labels.base());
    l
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in
/// `Connection`, and the fixed list. `te: trailers` survives (gRPC needs it).
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these headers: one pass over the names
    // (standard names compare as enum tags) spares the hashed removals
    // below, which cost several thousand instructions per request.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether `name` is one of the fixed hop-by-hop headers, or `Connection`
/// (which may list more), or `TE` (kept only as `trailers`): the names the
/// fast path knows too (`http1::is_hop_by_hop`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    http1::is_hop_by_hop(name.as_str())
}

/// Rewrites a client request for the app's HTTP version: HTTP/2 requests
/// carry the authority in the URI, HTTP/1 in `Host`.
fn to_upstream(
    req: Request<Incoming>,
    from: HttpVersion,
    to: HttpVersion,
    upgrade: bool,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    match (from, to) {
        (HttpVersion::Http2, HttpVersion::Http1) => {
            if let Some(authority) = parts.uri.authority() {
                if !parts.headers.contains_key(header::HOST) {
                    let host = HeaderValue::from_str(authority.as_str())
                        .map_err(|_| UpstreamError::BadRequest("authority"))?;
                    parts.headers.insert(header::HOST, host);
                }
            }
            let pq = parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            parts.uri = Uri::try_from(pq).map_err(|_| UpstreamError::BadRequest("path"))?;
            parts.version = Version::HTTP_11;
        }
        (HttpVersion::Http1, HttpVersion::Http2) => {
            if parts.uri.authority().is_none() {
                let host = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                parts.uri = Uri::builder()
                    .scheme("http")
                    .authority(host)
                    .path_and_query(pq)
                    .build()
                    .map_err(|_| UpstreamError::BadRequest("host"))?;
            }
            parts.version = Version::HTTP_2;
        }
        (HttpVersion::Http1, HttpVersion::Http1) => {
            if parts.version != Version::HTTP_10 {
                parts.version = Version::HTTP_11;
            }
        }
        (HttpVersion::Http2, HttpVersion::Http2) => {}
    }
    Ok(Request::from_parts(parts, ProxyBody::Incoming(body)))
}

// ===== client pool

/// Why a request could not be sent to the app or got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ForwardError),
    #[error("HTTP to the application: {0}")]
    Http(#[from] hyper::Error),
    #[error("the request's {0} cannot be expressed to the application")]
    BadRequest(&'static str),
    #[error("copying an upgraded connection: {0}")]
    Splice(std::io::Error),
}

/// Pools of connections to the app, one per (port, version).
#[derive(Debug)]
pub struct Upstreams {
    app_ip: IpAddr,
    connect_timeout: Duration,
    pools: Mutex<HashMap<(u16, HttpVersion), Arc<Pool>>>,
}

impl Upstreams {
    pub fn new(app_ip: IpAddr, connect_timeout: Duration) -> Self {
        Upstreams {
            app_ip,
            connect_timeout,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for the app's `port` spoken in `version`.
    pub fn pool(&self, port: u16, version: HttpVersion) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry((port, version))
            .or_insert_with(|| {
                Arc::new(Pool {
                    addr: SocketAddr::new(self.app_ip, port),
                    version,
                    connect_timeout: self.connect_timeout,
                    h1_idle: Mutex::new(Vec::new()),
                    raw_idle: Mutex::new(Vec::new()),
                    h2: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

/// Connections to one app port: idle HTTP/1 connections (one request at a
/// time each), or one shared, multiplexed HTTP/2 connection.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    version: HttpVersion,
    connect_timeout: Duration,
    h1_idle: Mutex<Vec<(client1::SendRequest<ProxyBody>, Instant)>>,
    /// Idle connections of the HTTP/1 fast path (`http1.rs`), which speaks
    /// HTTP/1 on the socket itself.
    raw_idle: Mutex<Vec<(TcpStream, Instant)>>,
    h2: tokio::sync::Mutex<Option<client2::SendRequest<ProxyBody>>>,
}

impl Pool {
    /// An idle fast-path connection the app has not closed, if any.
    pub(crate) fn checkout_raw(&self) -> Option<TcpStream> {
        let mut idle = self.raw_idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < POOL_IDLE && http1::still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a fast-path connection (between exchanges) for reuse.
    pub(crate) fn checkin_raw(&self, stream: TcpStream) {
        keep_idle(&self.raw_idle, stream);
    }

    pub(crate) async fn connect_raw(&self) -> Result<TcpStream, ForwardError> {
        connect_app(self.addr, self.connect_timeout).await
    }

    async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match self.version {
            HttpVersion::Http1 => self.send_h1(req).await,
            HttpVersion::Http2 => self.send_h2(req).await,
        }
    }

    fn checkout_h1(&self) -> Option<client1::SendRequest<ProxyBody>> {
        let mut idle = self.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((tx, since)) = idle.pop() {
            if tx.is_ready() && since.elapsed() < POOL_IDLE {
                return Some(tx);
            }
        }
        None
    }

    /// Returns a connection to the pool once its response has been read in
    /// full (HTTP/1 carries one exchange at a time).
    fn checkin_h1(self: &Arc<Self>, mut tx: client1::SendRequest<ProxyBody>) {
        if tx.is_ready() {
            keep_idle(&self.h1_idle, tx);
            return;
        }
        // Outside a runtime (a connection dropped at shutdown) the
        // connection is simply closed.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        rt.spawn(async move {
            if tx.ready().await.is_ok() {
                keep_idle(&pool.h1_idle, tx);
            }
        });
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (rsp, tx) = self.send_h1_on(None, req).await?;
        self.checkin_h1(tx);
        Ok(rsp)
    }

    /// Sends on `own` (a client connection's own app connection) if it is
    /// usable, else on an idle pooled connection, else on a new one.
    /// Returns the response and the connection, which the caller keeps or
    /// checks in.
    async fn send_h1_on(
        self: &Arc<Self>,
        mut own: Option<client1::SendRequest<ProxyBody>>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, client1::SendRequest<ProxyBody>), UpstreamError> {
        // A connection the app closed meanwhile hands the request back
        // unsent; it is then tried on another, or a new, connection.
        loop {
            let mut tx = match own.take() {
                Some(mut tx) => {
                    // The previous response has been read in full, but the
                    // connection's task may not have run since: wait a
                    // little for it, and give a stuck one to the pool.
                    if !tx.is_ready()
                        && !matches!(
                            tokio::time::timeout(OWN_READY_WAIT, tx.ready()).await,
                            Ok(Ok(()))
                        )
                    {
                        self.checkin_h1(tx);
                        continue;
                    }
                    tx
                }
                None => match self.checkout_h1() {
                    Some(tx) => tx,
                    None => break,
                },
            };
            match tx.try_send_request(req).await {
                Ok(rsp) => return Ok((rsp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let stream = connect_app(self.addr, self.connect_timeout).await?;
        let (mut tx, conn) = client1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(app = %addr, error = %e, "connection to the application ended");
            }
        });
        let rsp = tx.send_request(req).await?;
        Ok((rsp, tx))
    }

    async fn send_h2(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut tx = {
            let mut shared = self.h2.lock().await;
            match &*shared {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let tx = Box::pin(self.connect_h2()).await?;
                    *shared = Some(tx.clone());
                    tx
                }
            }
        };
        Ok(tx.send_request(req).await?)
    }

    async fn connect_h2(&self) -> Result<client2::SendRequest<ProxyBody>, UpstreamError> {
        let stream = connect_app(self.addr, self.connect_timeout).await?;
        let (tx, conn) = client2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(app = %addr, error = %e, "HTTP/2 connection to the application ended");
            }
        });
        Ok(tx)
    }
}

/// Adds an idle connection to a pool list, up to [`POOL_MAX_IDLE`].
fn keep_idle<T>(idle: &Mutex<Vec<(T, Instant)>>, conn: T) {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < POOL_MAX_IDLE {
        idle.push((conn, Instant::now()));
    }
}

/// Logged once per connection when the client's HTTP ends badly.
pub fn log_conn_error(peer: SocketAddr, port: u16, e: &ServeError) {
    if e.is_timeout() {
        info!(client = %peer, port, "HTTP connection closed: header read timeout");
    } else {
        debug!(client = %peer, port, error = %e, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::HOST], "web");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn hop_by_hop_fast_path_still_sees_each_name() {
        // Each hop-by-hop header alone must still be removed (the scan that
        // skips the removals must not miss a custom name like keep-alive).
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "upgrade",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert(header::HOST, HeaderValue::from_static("web"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }
}
