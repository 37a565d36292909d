//! One inbound connection, top to bottom.
//!
//! [`Inbound::serve`] follows a connection through every stage in order —
//! accept, original destination, detect TLS, [terminate mesh TLS], detect
//! HTTP, authorize, forward — calling one module per stage. Read it to know
//! what happens to a connection; read the stage modules to know how.
//!
//! This module holds no policy logic (`authz.rs`), no parsing (`detect.rs`)
//! and no protocol code (`http.rs`, `forward.rs`). `lib.rs` creates one
//! [`Inbound`] and hands it every accepted connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use portcullis_policy::{Client, ClientTls, Protocol};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::accept::{Accepted, Target};
use crate::authz::{ConnInfo, Enforcer};
use crate::config::Config;
use crate::detect::{detect_http, detect_tls, HttpDetect, PrefixedIo, TlsDetect};
use crate::forward::{self, CountingIo};
use crate::http::{log_conn_error, HttpConn, HttpServer, HttpVersion, Upstreams};
use crate::metrics::{ConnLabels, Metrics, TlsLabel};

/// Everything connections share.
#[derive(Debug)]
pub struct Inbound {
    pub config: Arc<Config>,
    pub enforcer: Arc<Enforcer>,
    pub metrics: Arc<Metrics>,
    pub http: HttpServer,
    pub upstreams: Upstreams,
    /// SIGTERM: HTTP connections finish in-flight requests and close.
    pub drain: CancellationToken,
    /// `--shutdown-grace` expired: whatever is left is closed now.
    pub stop: CancellationToken,
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
            _slot,
        } = conn;

        // orig dst: the app port. The inbound port itself is the direct
        // path (opaque transport, which needs mesh identity): closed, and
        // never forwarded to the inbound port.
        let target = match target {
            Target::App { addr } => addr,
            Target::Direct => {
                self.enforcer.refuse(
                    peer,
                    self.config.inbound_addr.port(),
                    "direct",
                    "addressed to the inbound port itself (opaque transport needs mesh identity)",
                );
                return;
            }
        };
        let port = target.port();
        // Best effort: a failure only costs latency.
        let _ = stream.set_nodelay(true);

        let mut stream = stream;
        let mut prefix = BytesMut::new();
        let path = match self.detect(&mut stream, &mut prefix, port).await {
            Ok(path) => path,
            Err(e) => {
                debug!(client = %peer, port, error = %e, "connection failed during detection");
                return;
            }
        };
        let io = PrefixedIo::new(prefix.freeze(), stream);

        // authorize -> forward
        match path {
            Path::Tcp(tls) => self.serve_tcp(io, peer, target, tls).await,
            Path::Http { client, app } => self.serve_http(io, peer, target, client, app).await,
            Path::Refuse(reason, why) => self.enforcer.refuse(peer, port, reason, why),
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
    ) -> std::io::Result<Path> {
        let protocol = self.enforcer.table().load().protocol(port);
        if protocol == Protocol::Opaque {
            return Ok(Path::Tcp(TlsLabel::Plain));
        }
        // One deadline bounds all of detection (--detect-timeout).
        let deadline = Instant::now() + self.config.detect_timeout;

        // detect: TLS?
        if let TlsDetect::ClientHello(hello) = detect_tls(stream, buf, deadline).await? {
            // [tls] A ClientHello whose SNI is this proxy's identity is meshed
            // TLS: terminate it here (tls.rs), read the client identity
            // (identity.rs), and continue with HTTP detection on the
            // decrypted stream. Until mesh identity lands, every ClientHello
            // is passed through untouched and authorized on its network only.
            return Ok(Path::Tcp(TlsLabel::Passthrough { sni: hello.sni }));
        }
        if protocol == Protocol::Tls {
            return Ok(Path::Tcp(TlsLabel::Passthrough { sni: None }));
        }

        // detect http
        let (client, app) = match protocol {
            Protocol::Http2 | Protocol::Grpc => (HttpVersion::Http2, HttpVersion::Http2),
            _ => {
                let found = detect_http(stream, buf, deadline).await?;
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
                    (HttpDetect::NotHttp(_), _) => return Ok(Path::Tcp(TlsLabel::Plain)),
                }
            }
        };
        Ok(Path::Http { client, app })
    }

    /// The client as the decision function sees it. Meshed TLS will set
    /// `ClientTls::Mesh` with the verified identity.
    fn client(peer: SocketAddr) -> Client {
        Client {
            addr: peer.ip(),
            tls: ClientTls::None,
        }
    }

    async fn serve_tcp(
        &self,
        io: PrefixedIo<TcpStream>,
        peer: SocketAddr,
        target: SocketAddr,
        tls: TlsLabel,
    ) {
        let port = target.port();
        let labels = Arc::new(ConnLabels::new(target, &tls));
        let counters = self.metrics.conn_open(&labels);
        let conn = ConnInfo {
            port,
            peer,
            client: Self::client(peer),
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
        let mut client = CountingIo::new(io, counters);
        match forward::copy(&mut client, &mut app, &grant.revoked, &self.stop).await {
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

    async fn serve_http(
        &self,
        io: PrefixedIo<TcpStream>,
        peer: SocketAddr,
        target: SocketAddr,
        client_version: HttpVersion,
        app_version: HttpVersion,
    ) {
        let port = target.port();
        let labels = Arc::new(ConnLabels::new(target, &TlsLabel::Plain));
        let counters = self.metrics.conn_open(&labels);
        let conn = ConnInfo {
            port,
            peer,
            client: Self::client(peer),
            labels: labels.clone(),
        };

        // authorize (per request, in http.rs) -> forward (pooled client)
        let http = HttpConn::new(
            self.enforcer.http(conn),
            self.upstreams.pool(port, app_version),
            self.metrics.clone(),
            client_version,
        );
        let io = CountingIo::new(io, counters);
        let served = tokio::select! {
            res = self.http.serve(io, client_version, http, self.drain.clone()) => res,
            _ = self.stop.cancelled() => Ok(()),
        };
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
