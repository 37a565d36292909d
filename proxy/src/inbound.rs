//! One inbound connection, top to bottom.
//!
//! [`Inbound::serve`] follows a connection through every stage in order —
//! accept, original destination, detect TLS, terminate mesh TLS, detect
//! HTTP, authorize, forward — calling one module per stage. Read it to know
//! what happens to a connection; read the stage modules to know how.
//! `Inbound::serve_direct` is the same for the direct path (a connection
//! to the inbound port itself: mTLS, then Linkerd's transport header names
//! the port).
//!
//! This module holds no policy logic (`authz.rs`), no parsing (`detect.rs`)
//! and no protocol code (`http.rs`, `forward.rs`). `lib.rs` creates one
//! [`Inbound`] and hands it every accepted connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use portcullis_policy::client::PolicyClient;
use portcullis_policy::{Client, ClientTls, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::accept::{Accepted, Target};
use crate::authz::{ConnInfo, Enforcer};
use crate::config::{Config, OpaqueTransfer};
use crate::detect::{detect_http, detect_tls, HttpDetect, IntoPlain, PrefixedIo, TlsDetect};
use crate::forward::{self, CountingIo};
use crate::http::{log_conn_error, ConnScope, HttpConn, HttpServer, HttpVersion, Upstreams};
use crate::identity::{IdentityStore, LocalIdentity};
use crate::metrics::{Metrics, TlsLabel};
use crate::signal::Signal;
use crate::tls::{self, Fault, Prefer, Terminated};
use crate::transport::{self, SessionProtocol};

/// Everything connections share.
#[derive(Debug)]
pub struct Inbound {
    pub config: Arc<Config>,
    pub enforcer: Arc<Enforcer>,
    /// With `--policy-controller`: the stream client, to wait for a port's
    /// first policy.
    pub policy_client: Option<PolicyClient>,
    pub metrics: Arc<Metrics>,
    pub http: HttpServer,
    pub upstreams: Upstreams,
    /// The mesh identity; `None`: no mTLS termination, TLS passes through.
    pub identity: Option<Arc<IdentityStore>>,
    /// SIGTERM: HTTP connections finish in-flight requests and close.
    pub drain: Signal,
    /// `--shutdown-grace` expired: whatever is left is closed now.
    pub stop: Signal,
    /// Every connection task (and spliced upgrade); the drain waits on it.
    pub tasks: TaskTracker,
}

/// How the connection is handled after detection.
enum Path {
    /// Bytes both ways, authorized once (and on every policy update).
    Tcp(TlsLabel),
    /// HTTP: the client speaks `client`, the app `app`; every request is authorized.
    Http {
        client: HttpVersion,
        app: HttpVersion,
    },
    /// Meshed TLS for this proxy's identity: terminate it, then detect
    /// again inside. The identity is the snapshot whose name matched the SNI.
    Mesh(Arc<LocalIdentity>),
    /// Not acceptable on this port: closed, with why.
    Refuse(&'static str, &'static str),
}

impl Inbound {
    pub async fn serve(self: Arc<Self>, conn: Accepted) {
        // accept: who is calling, and where were they going?
        let Accepted {
            stream,
            peer,
            target,
            slot,
        } = conn;
        // Best effort: a failure only costs latency.
        let _ = stream.set_nodelay(true);

        // orig dst: the app port. The inbound port itself is the direct
        // path (opaque transport, which needs mesh identity); it is never
        // forwarded to the inbound port.
        let target = match target {
            Target::App { addr } => addr,
            // Boxed here and below: a connection task is as large as its
            // largest state, and most connections are plain HTTP; inline
            // TLS and hyper states made every task 12.5 KiB.
            Target::Direct => return Box::pin(self.serve_direct(stream, peer, slot)).await,
        };
        let port = target.port();
        self.first_policy(port).await;
        // One deadline bounds all of detection, TLS handshake included
        // (--detect-timeout).
        let deadline = Instant::now() + self.config.detect_timeout;

        let mut stream = stream;
        let mut prefix = BytesMut::new();
        let path = match self.detect(&mut stream, &mut prefix, port, deadline).await {
            Ok(path) => path,
            Err(e) => {
                debug!(client = %peer, port, error = %e, "connection failed during detection");
                return;
            }
        };
        let io = PrefixedIo::new(prefix.freeze(), stream);

        // [tls] -> authorize -> forward
        match path {
            Path::Mesh(identity) => {
                Box::pin(self.serve_mesh(io, peer, target, &identity, deadline, slot)).await
            }
            path => {
                let client = Self::client(peer, ClientTls::None);
                self.serve_path(io, peer, target, client, path, slot).await
            }
        }
    }

    /// policy: with a controller, the port's first policy may still be on
    /// its way (or the port is new: watching starts now). Waits for it, up
    /// to --policy-timeout; then the default applies. Detection needs the
    /// port's protocol, so this comes first.
    async fn first_policy(&self, port: u16) {
        if let Some(client) = &self.policy_client {
            client.wait_for_port(port).await;
        }
    }

    /// Authorizes and forwards a detected connection. `slot` (its share of
    /// `--max-connections`) is held until the connection ends.
    async fn serve_path<I>(
        &self,
        io: I,
        peer: SocketAddr,
        target: SocketAddr,
        client: Client,
        path: Path,
        slot: OwnedSemaphorePermit,
    ) where
        I: AsyncRead + AsyncWrite + IntoPlain + Unpin + Send + 'static,
    {
        match path {
            Path::Tcp(tls) => Box::pin(self.serve_tcp(io, peer, target, client, tls)).await,
            Path::Http { client: v, app } => {
                self.serve_http(io, peer, target, client, (v, app), slot)
                    .await
            }
            Path::Refuse(reason, why) => self.enforcer.refuse(peer, target.port(), reason, why),
            // `detect_inner` never finds TLS inside TLS.
            Path::Mesh(_) => self.enforcer.refuse(
                peer,
                target.port(),
                "tls_in_tls",
                "TLS inside meshed TLS is not supported",
            ),
        }
    }

    /// Detection, as the port's protocol allows: `opaque` skips it all
    /// (server-speaks-first apps greet at once), `TLS` only reads the SNI,
    /// `HTTP/2`/`gRPC` skip HTTP detection, `HTTP/1` admits only HTTP.
    async fn detect(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        port: u16,
        deadline: Instant,
    ) -> std::io::Result<Path> {
        let protocol = self.enforcer.table().load().protocol(port);
        if protocol == Protocol::Opaque {
            return Ok(Path::Tcp(TlsLabel::Plain));
        }

        // detect: TLS?
        if let TlsDetect::ClientHello(hello) = detect_tls(stream, buf, deadline).await? {
            // A ClientHello whose SNI is this proxy's identity is meshed TLS:
            // terminated here. Any other TLS (the app's own) is passed
            // through untouched, authorized on its network only; so is all
            // TLS on a `TLS` port, which by definition the app terminates.
            if protocol != Protocol::Tls {
                if let Some(identity) = self.mesh_identity(hello.sni.as_deref()) {
                    return Ok(Path::Mesh(identity));
                }
            }
            return Ok(match protocol {
                // A Server that says HTTP admits only HTTP (meshed TLS aside).
                Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => Path::Refuse(
                    "not_http",
                    "the port's Server says HTTP and the client sent TLS not for the proxy",
                ),
                // Clients choose their SNI: the label's values are bounded.
                _ => Path::Tcp(TlsLabel::Passthrough {
                    sni: hello.sni.map(|s| self.metrics.sni.label(&s)),
                }),
            });
        }
        if protocol == Protocol::Tls {
            return Ok(Path::Tcp(TlsLabel::Passthrough { sni: None }));
        }
        self.detect_http_path(stream, buf, port, protocol, deadline, TlsLabel::Plain)
            .await
    }

    /// The identity snapshot, if `sni` names it.
    fn mesh_identity(&self, sni: Option<&str>) -> Option<Arc<LocalIdentity>> {
        let identity = self.identity.as_ref()?.current();
        sni.filter(|sni| identity.matches_sni(sni))?;
        Some(identity)
    }

    /// HTTP detection (plaintext, or inside terminated TLS) and the HTTP
    /// versions of both sides; not HTTP is TCP labelled `tls`.
    async fn detect_http_path<I: AsyncRead + Unpin>(
        &self,
        io: &mut I,
        buf: &mut BytesMut,
        port: u16,
        protocol: Protocol,
        deadline: Instant,
        tls: TlsLabel,
    ) -> std::io::Result<Path> {
        let (client, app) = match protocol {
            Protocol::Http2 | Protocol::Grpc => (HttpVersion::Http2, HttpVersion::Http2),
            _ => {
                let found = detect_http(io, buf, deadline).await?;
                self.metrics.detect_result(port, found.label());
                match (found, protocol) {
                    (HttpDetect::Http1, Protocol::Http1) => {
                        (HttpVersion::Http1, HttpVersion::Http1)
                    }
                    (HttpDetect::Http2, Protocol::Http1) => {
                        (HttpVersion::Http2, HttpVersion::Http1)
                    }
                    (HttpDetect::NotHttp(_), Protocol::Http1) => {
                        return Ok(Path::Refuse(
                            "not_http",
                            "the port's Server says HTTP/1 and the client did not send HTTP",
                        ))
                    }
                    (HttpDetect::Http1, _) => (HttpVersion::Http1, HttpVersion::Http1),
                    (HttpDetect::Http2, _) => (HttpVersion::Http2, HttpVersion::Http2),
                    // Not HTTP, or nothing before the timeout: opaque TCP.
                    (HttpDetect::NotHttp(_), _) => return Ok(Path::Tcp(tls)),
                }
            }
        };
        Ok(Path::Http { client, app })
    }

    /// tls: the mTLS handshake, bounded by what is left of the detection
    /// deadline. Failures are logged by whose fault they were and counted.
    async fn terminate<I>(
        &self,
        io: I,
        peer: SocketAddr,
        port: u16,
        identity: &LocalIdentity,
        prefer: Prefer,
        deadline: Instant,
    ) -> Option<Terminated<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tls::terminate(io, Some(identity), prefer, &self.config.policy, timeout).await {
            Ok(t) => Some(t),
            Err(e) => {
                self.metrics.refused("tls_handshake");
                match e.fault() {
                    Fault::Peer => {
                        info!(client = %peer, port, error = %e, "meshed TLS handshake failed")
                    }
                    Fault::Local => {
                        warn!(client = %peer, port, error = %e, "cannot terminate meshed TLS")
                    }
                }
                None
            }
        }
    }

    /// Meshed TLS to an app port: terminate, then HTTP detection and
    /// authorization on the plaintext with the client's TLS state.
    async fn serve_mesh(
        &self,
        io: PrefixedIo<TcpStream>,
        peer: SocketAddr,
        target: SocketAddr,
        identity: &LocalIdentity,
        deadline: Instant,
        slot: OwnedSemaphorePermit,
    ) {
        let port = target.port();
        let protocol = self.enforcer.table().load().protocol(port);
        // A client that can speak both HTTP versions gets the one the app
        // is known to speak: HTTP/2 only where the Server says so.
        let prefer = match protocol {
            Protocol::Http2 | Protocol::Grpc => Prefer::Http2,
            _ => Prefer::Http1,
        };
        let Some(Terminated {
            mut stream,
            client: tls,
            alpn,
        }) = self
            .terminate(io, peer, port, identity, prefer, deadline)
            .await
        else {
            return;
        };
        // The opaque-transport ALPN promises a transport header, which is
        // only valid on the direct path (the inbound port).
        if alpn.as_deref() == Some(tls::ALPN_TRANSPORT) {
            self.enforcer.refuse(
                peer,
                port,
                "transport_header_on_app_port",
                "the client negotiated transport.l5d.io/v1, which is only served on the inbound port",
            );
            return;
        }
        let label = mesh_label(&tls);

        // detect http, inside TLS, under the same deadline.
        let mut buf = BytesMut::new();
        let path = match self
            .detect_http_path(&mut stream, &mut buf, port, protocol, deadline, label)
            .await
        {
            Ok(path) => path,
            Err(e) => {
                debug!(client = %peer, port, error = %e, "meshed connection failed during detection");
                return;
            }
        };
        let io = PrefixedIo::new(buf.freeze(), stream);
        self.serve_path(io, peer, target, Self::client(peer, tls), path, slot)
            .await
    }

    /// The direct path: Linkerd's opaque transport to the inbound port
    /// itself. Requires mTLS for our identity with a client identity and
    /// ALPN `transport.l5d.io/v1`, then the transport header (within the
    /// detection deadline) names the target port; the connection is then
    /// authorized and forwarded as one to that port, with that identity.
    /// Anything else is closed and logged, never forwarded (no loops).
    async fn serve_direct(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                debug!(client = %peer, error = %e, "direct connection lost before detection");
                return;
            }
        };
        let inbound_port = local.port();
        let refuse = |why: &str| self.enforcer.refuse(peer, inbound_port, "direct", why);
        let deadline = Instant::now() + self.config.detect_timeout;

        // detect: a ClientHello for our identity, nothing else.
        let mut buf = BytesMut::new();
        let hello = match detect_tls(&mut stream, &mut buf, deadline).await {
            Ok(TlsDetect::ClientHello(hello)) => hello,
            Ok(TlsDetect::NotTls(_)) => {
                return refuse("addressed to the inbound port without meshed TLS (opaque transport needs mesh identity)")
            }
            Err(e) => {
                debug!(client = %peer, error = %e, "direct connection failed during detection");
                return;
            }
        };
        let Some(identity) = self.mesh_identity(hello.sni.as_deref()) else {
            let why = match (&self.identity, &hello.sni) {
                (None, _) => {
                    "opaque transport needs mesh identity, and none is configured (--identity-*)"
                        .to_string()
                }
                (Some(_), sni) => format!(
                    "TLS for {sni:?}, not for this proxy's identity, addressed to the inbound port"
                ),
            };
            return refuse(&why);
        };

        // tls: mTLS with a client identity and the transport ALPN.
        let io = PrefixedIo::new(buf.freeze(), stream);
        let Some(Terminated {
            mut stream,
            client: tls,
            alpn,
        }) = self
            .terminate(io, peer, inbound_port, &identity, Prefer::Http1, deadline)
            .await
        else {
            return;
        };
        if !matches!(&tls, ClientTls::Mesh { identity: Some(_) }) {
            return refuse("opaque transport needs a client certificate; the client sent none");
        }
        if alpn.as_deref() != Some(tls::ALPN_TRANSPORT) {
            return refuse("opaque transport needs ALPN transport.l5d.io/v1");
        }

        // transport header: the real target port.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (header, rest) = match transport::read(&mut stream, remaining).await {
            Ok(h) => h,
            Err(e) => return refuse(&format!("bad transport header: {e}")),
        };
        if header.port == inbound_port {
            return refuse("the transport header names the inbound port itself; it would loop");
        }
        let target = SocketAddr::new(local.ip(), header.port);
        debug!(client = %peer, port = header.port, name = ?header.name, protocol = ?header.protocol, "direct connection");

        // The header says how the client speaks; the port's protocol how
        // the app does.
        let label = mesh_label(&tls);
        self.first_policy(header.port).await;
        let protocol = self.enforcer.table().load().protocol(header.port);
        let path = match header.protocol {
            None => Path::Tcp(label),
            Some(p) => {
                let client = match p {
                    SessionProtocol::Http1 => HttpVersion::Http1,
                    SessionProtocol::Http2 => HttpVersion::Http2,
                };
                let app = match protocol {
                    Protocol::Http2 | Protocol::Grpc => HttpVersion::Http2,
                    Protocol::Http1 => HttpVersion::Http1,
                    _ => client,
                };
                Path::Http { client, app }
            }
        };
        let io = PrefixedIo::new(Bytes::from(rest), stream);
        self.serve_path(io, peer, target, Self::client(peer, tls), path, slot)
            .await
    }

    /// The client as the decision function sees it.
    fn client(peer: SocketAddr, tls: ClientTls) -> Client {
        Client {
            addr: peer.ip(),
            tls,
        }
    }

    async fn serve_tcp<I>(
        &self,
        io: I,
        peer: SocketAddr,
        target: SocketAddr,
        client: Client,
        tls: TlsLabel,
    ) where
        I: AsyncRead + AsyncWrite + IntoPlain + Unpin,
    {
        let port = target.port();
        let labels = self.metrics.conn_labels(target, &tls);
        let counters = self.metrics.conn_open(&labels);
        let conn = ConnInfo {
            port,
            peer,
            client,
            labels: labels.clone(),
        };

        // authorize: once now, and again on every policy update (`grant.revoked`).
        let Ok(grant) = self.enforcer.check_tcp(&conn) else {
            // Denied: closed without forwarding a byte.
            self.metrics.conn_close(&labels, "");
            return;
        };

        // forward: opaque bytes, half-close respected.
        let app_addr = SocketAddr::new(self.config.app_addr, port);
        let mut app = match forward::connect_app(app_addr, self.config.app_connect_timeout).await {
            Ok(app) => app,
            Err(e) => {
                warn!(client = %peer, port, error = %e, "closing connection: the application is unreachable");
                self.metrics.conn_close(&labels, &e.errno());
                return;
            }
        };
        let plain = match self.config.opaque_transfer {
            OpaqueTransfer::Splice => io.into_plain(),
            OpaqueTransfer::Copy => Err(io),
        };
        let forwarded = match plain {
            Ok((prefix, tcp)) => {
                forward::splice(
                    prefix,
                    &tcp,
                    &mut app,
                    &counters,
                    &grant.revoked,
                    self.stop.token(),
                )
                .await
            }
            Err(io) => {
                let mut client = CountingIo::new(io, counters);
                forward::copy(&mut client, &mut app, &grant.revoked, self.stop.token()).await
            }
        };
        match forwarded {
            Ok((up, down)) => {
                debug!(client = %peer, port, up, down, "connection closed");
                self.metrics.conn_close(&labels, "");
            }
            Err(e) => {
                match e {
                    forward::ForwardError::Revoked | forward::ForwardError::Shutdown => {
                        info!(client = %peer, port, "{e}")
                    }
                    _ => debug!(client = %peer, port, error = %e, "connection ended"),
                }
                self.metrics.conn_close(&labels, &e.errno());
            }
        }
    }

    async fn serve_http<I>(
        &self,
        io: I,
        peer: SocketAddr,
        target: SocketAddr,
        client: Client,
        (client_version, app_version): (HttpVersion, HttpVersion),
        slot: OwnedSemaphorePermit,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let port = target.port();
        let tls = match &client.tls {
            ClientTls::None => TlsLabel::Plain,
            mesh => mesh_label(mesh),
        };
        let labels = self.metrics.conn_labels(target, &tls);
        let counters = self.metrics.conn_open(&labels);
        let conn = ConnInfo {
            port,
            peer,
            client,
            labels: labels.clone(),
        };

        // authorize (per request, in http.rs) -> forward (pooled client)
        let http = HttpConn::new(
            self.enforcer.http(conn),
            self.upstreams.pool(port, app_version),
            self.metrics.clone(),
            client_version,
            ConnScope {
                slot: Arc::new(slot),
                tasks: self.tasks.clone(),
                stop: self.stop.token().clone(),
            },
        );
        let io = CountingIo::new(io, counters);
        // Pinned here, not moved into `until_stopped`: a future moved into
        // an async fn is stored twice in the connection's task.
        let serve = pin!(self.http.serve(io, client_version, http, &self.drain));
        let served = until_stopped(serve, &self.stop).await.unwrap_or(Ok(()));
        match served {
            Ok(()) => self.metrics.conn_close(&labels, ""),
            Err(e) => {
                log_conn_error(peer, port, &e);
                self.metrics
                    .conn_close(&labels, if e.is_timeout() { "timeout" } else { "error" });
            }
        }
    }
}

/// `fut`'s output, or `None` once `stop` fires (checked at every wake-up
/// of the connection's task without a lock: [`Signal`]).
async fn until_stopped<F: Future>(mut fut: Pin<&mut F>, stop: &Signal) -> Option<F::Output> {
    let mut stopped = pin!(stop.watch());
    std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// The `tls` metric labels of a terminated meshed connection.
fn mesh_label(tls: &ClientTls) -> TlsLabel {
    TlsLabel::Mesh {
        client_id: match tls {
            ClientTls::Mesh { identity: Some(id) } => Some(id.presented.clone()),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use portcullis_policy::{PolicyConfig, PolicyTable, Snapshot};

    /// What an idle connection costs is mostly its task: the future
    /// `serve` returns, every stage's state inline. A future moved where it
    /// should have been pinned, or a large state kept inline instead of
    /// boxed, shows here before the `memory-plain` benchmark sees it at
    /// 10,000 connections (2,600 bytes when this was written, 3,960 with the
    /// serve future moved into `until_stopped`; the target is ≤ 4 KiB of
    /// RSS per idle connection, allocator overhead included).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let config = Arc::new(
            crate::config::Args::try_parse_from(["portcullis"])
                .unwrap()
                .validate()
                .unwrap(),
        );
        let metrics = Arc::new(Metrics::new());
        let table = Arc::new(PolicyTable::new(Snapshot::from_config(
            &PolicyConfig::default(),
            "test",
        )));
        let inbound = Arc::new(Inbound {
            enforcer: Enforcer::new(table, metrics.clone()),
            policy_client: None,
            metrics,
            http: HttpServer::new(&config.http),
            upstreams: Upstreams::new(config.app_addr, config.app_connect_timeout),
            identity: None,
            drain: Signal::new(),
            stop: Signal::new(),
            tasks: TaskTracker::new(),
            config,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let conn = Accepted {
            stream,
            peer,
            target: Target::App { addr },
            slot: slots.acquire_owned().await.unwrap(),
        };
        let size = std::mem::size_of_val(&inbound.serve(conn));
        assert!(size <= 3 * 1024, "a connection task takes {size} bytes");
    }
}
