//! Enforcement: applies the policy decisions of `portcullis_policy` to live
//! traffic.
//!
//! This module owns
//! - the checks: a TCP connection when it is accepted ([`Enforcer::check_tcp`])
//!   and every HTTP request ([`HttpAuthz::check`]), with their metrics and the
//!   one info-level log line per deny (port, client, identity, server, reason);
//! - the registry of live TCP connections per port, and revocation: when the
//!   `PolicyTable` generation changes, [`Enforcer::revoke_on_update`]
//!   re-checks every live connection and cancels those no longer authorized
//!   (`inbound_tcp_authz_terminate_total`);
//! - the one place that turns a refusal into what the client sees
//!   ([`respond`]: `403` + `l5d-proxy-error`, gRPC `grpc-status`, `502`; a
//!   TCP refusal is a closed connection, done by the caller dropping it).
//!
//! It must not decide policy itself (that is `portcullis_policy::authorize`,
//! a pure function) nor do I/O beyond logging. Callers: `inbound.rs` (TCP) and
//! `http.rs` (requests); `lib.rs` spawns the revocation task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Method, Response, StatusCode};
use portcullis_policy::{
    authorize, authorize_request, Authorizer, Client, ClientTls, Denied, HttpRequest, Meta, Permit,
    PolicyTable, RequestHeaders,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::http::ProxyBody;
use crate::metrics::{AllowCache, ConnLabels, Metrics};

/// The fixed text of `l5d-proxy-error` on a denial: it tells a denial by the
/// proxy from a 403 by the app without leaking anything about the policy.
pub const UNAUTHORIZED: &str = "unauthorized request on route";
const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

/// One accepted connection, as enforcement sees it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The target port (original destination or `--map` port).
    pub port: u16,
    pub peer: SocketAddr,
    pub client: Client,
    pub labels: Arc<ConnLabels>,
}

impl ConnInfo {
    /// The client identity for logs: the presented name, or `none`.
    fn identity(&self) -> &str {
        match &self.client.tls {
            ClientTls::Mesh { identity: Some(id) } => &id.presented,
            _ => "none",
        }
    }
}

/// Decides, counts and logs; keeps the live-connection registry.
#[derive(Debug)]
pub struct Enforcer {
    table: Arc<PolicyTable>,
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<u16, HashMap<u64, Live>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Live {
    conn: ConnInfo,
    revoke: CancellationToken,
}

/// A TCP connection was denied: the caller closes it without forwarding.
#[derive(Debug, thiserror::Error)]
#[error("connection denied by policy")]
pub struct TcpDenied;

/// A TCP connection's authorization: keeps it in the registry while it
/// lives; `revoked` fires when a policy update no longer admits it.
#[derive(Debug)]
pub struct TcpGrant {
    enforcer: Arc<Enforcer>,
    port: u16,
    id: u64,
    pub revoked: CancellationToken,
}

impl Drop for TcpGrant {
    fn drop(&mut self) {
        let mut live = lock(&self.enforcer.live);
        if let Some(conns) = live.get_mut(&self.port) {
            conns.remove(&self.id);
            if conns.is_empty() {
                live.remove(&self.port);
            }
        }
    }
}

/// The registry lock is only held for map updates, never across `await`; a
/// panic elsewhere cannot leave the map half-updated, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Enforcer {
    pub fn new(table: Arc<PolicyTable>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Enforcer {
            table,
            metrics,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    pub fn table(&self) -> &Arc<PolicyTable> {
        &self.table
    }

    /// Checks a TCP (opaque or TLS passthrough) connection. `Err` means close
    /// it without forwarding a byte; the deny is already counted and logged.
    pub fn check_tcp(self: &Arc<Self>, conn: &ConnInfo) -> Result<TcpGrant, TcpDenied> {
        // Register before reading the policy: an update published after this
        // point is seen by the revocation task, one before it by the check.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        lock(&self.live).entry(conn.port).or_default().insert(
            id,
            Live {
                conn: conn.clone(),
                revoke: revoked.clone(),
            },
        );
        let grant = TcpGrant {
            enforcer: self.clone(),
            port: conn.port,
            id,
            revoked,
        };
        let authorizer = self.table.get(conn.port);
        match authorize(&authorizer, &conn.client) {
            Ok(permit) => {
                self.metrics
                    .tcp_authz_allow
                    .get_or_create(&conn.labels.authz(
                        permit.server,
                        None,
                        Some(permit.authorization),
                    ))
                    .inc();
                log_permit(conn, &permit, "tcp");
                Ok(grant)
            }
            Err(denied) => {
                self.metrics
                    .tcp_authz_deny
                    .get_or_create(&conn.labels.authz(denied.server, None, None))
                    .inc();
                log_deny(conn, &denied, "tcp", None);
                Err(TcpDenied)
            }
        }
    }

    /// Closes a TCP connection without a policy decision (e.g. the inbound
    /// port as target before the direct path exists); counted and logged.
    pub fn refuse(&self, peer: SocketAddr, port: u16, reason: &'static str, why: &str) {
        self.metrics.refused(reason);
        info!(%peer, port, reason, "connection refused: {why}");
    }

    /// Runs until the table's sender is gone: on every policy update, closes
    /// the live TCP connections the new policy no longer admits.
    /// Subscribes at once (before the returned future first runs), so no
    /// update published after this call is missed.
    pub fn revoke_on_update(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send {
        let mut updates = self.table.subscribe();
        async move {
            while updates.changed().await.is_ok() {
                self.recheck_live();
            }
        }
    }

    /// Re-checks every live TCP connection against the policy in force.
    pub fn recheck_live(&self) {
        let snapshot = self.table.load();
        let live = lock(&self.live);
        for (port, conns) in live.iter() {
            let authorizer = snapshot.get(*port);
            for l in conns.values() {
                if l.revoke.is_cancelled() {
                    continue;
                }
                if let Err(denied) = authorize(&authorizer, &l.conn.client) {
                    self.metrics
                        .tcp_authz_terminate
                        .get_or_create(&l.conn.labels.authz(denied.server, None, None))
                        .inc();
                    info!(
                        port,
                        client = %l.conn.peer,
                        identity = l.conn.identity(),
                        server = %denied.server,
                        reason = %denied.reason,
                        "connection closed: revoked by policy"
                    );
                    l.revoke.cancel();
                }
            }
        }
    }

    /// The per-connection request checker of an HTTP connection.
    pub fn http(self: &Arc<Self>, conn: ConnInfo) -> HttpAuthz {
        HttpAuthz {
            enforcer: self.clone(),
            conn,
            cache: Mutex::new(None),
        }
    }

    /// How many TCP connections are registered (for tests and debugging).
    pub fn live_connections(&self) -> usize {
        lock(&self.live).values().map(HashMap::len).sum()
    }
}

fn log_permit(conn: &ConnInfo, permit: &Permit<'_>, proto: &'static str) {
    // The `audit` default allows everything and logs each allow as audited.
    let audit_default = matches!(permit.authorization, Meta::Default { name } if name == "audit");
    if permit.audited.is_none() && audit_default {
        info!(
            port = conn.port,
            client = %conn.peer,
            identity = conn.identity(),
            server = %permit.server,
            proto,
            "audit: allowed by the audit default policy"
        );
        return;
    }
    match permit.audited {
        Some(reason) => info!(
            port = conn.port,
            client = %conn.peer,
            identity = conn.identity(),
            server = %permit.server,
            reason = %reason,
            proto,
            "audit: allowed what policy would deny"
        ),
        None => debug!(
            port = conn.port,
            client = %conn.peer,
            identity = conn.identity(),
            server = %permit.server,
            authz = %permit.authorization,
            proto,
            "authorized"
        ),
    }
}

fn log_deny(
    conn: &ConnInfo,
    denied: &Denied<'_>,
    proto: &'static str,
    req: Option<(&Method, &str)>,
) {
    let (method, path) = req.unwrap_or((&Method::GET, ""));
    info!(
        port = conn.port,
        client = %conn.peer,
        identity = conn.identity(),
        server = %denied.server,
        route = denied.route.map(|r| r.to_string()).unwrap_or_default(),
        reason = %denied.reason,
        proto,
        method = if req.is_some() { method.as_str() } else { "" },
        path,
        "denied"
    );
}

/// Request checks of one HTTP connection. Caches the port's policy per table
/// generation, so a request costs one decision, not a policy lookup.
#[derive(Debug)]
pub struct HttpAuthz {
    enforcer: Arc<Enforcer>,
    conn: ConnInfo,
    cache: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    authorizer: Arc<Authorizer>,
}

impl HttpAuthz {
    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    fn current(&self) -> (u64, Arc<Authorizer>) {
        // Read the generation before the snapshot: the snapshot is then at
        // least that new, and a later publish bumps the generation again.
        let generation = self.enforcer.table.generation();
        let mut cache = lock(&self.cache);
        match &*cache {
            Some(c) if c.generation == generation => (generation, c.authorizer.clone()),
            _ => {
                let authorizer = self.enforcer.table.get(self.conn.port);
                *cache = Some(Cached {
                    generation,
                    authorizer: authorizer.clone(),
                });
                (generation, authorizer)
            }
        }
    }

    /// Checks one request. `Err` carries the response to send instead of
    /// forwarding; the deny is already counted and logged.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &dyn RequestHeaders,
    ) -> Result<(), Response<ProxyBody>> {
        let (generation, authorizer) = self.current();
        let request = HttpRequest {
            method,
            path,
            headers,
        };
        match authorize_request(&authorizer, &self.conn.client, &request) {
            Ok(permit) => {
                self.count_allow(generation, &authorizer, &permit);
                log_permit(&self.conn, &permit, "http");
                Ok(())
            }
            Err(denied) => {
                let route = denied.route.cloned().unwrap_or_else(default_route);
                self.enforcer
                    .metrics
                    .http_authz_deny
                    .get_or_create(&self.conn.labels.authz(denied.server, Some(&route), None))
                    .inc();
                log_deny(&self.conn, &denied, "http", Some((method, path)));
                Err(respond(Refusal::Unauthorized, is_grpc(headers)))
            }
        }
    }

    fn count_allow(&self, generation: u64, authorizer: &Arc<Authorizer>, permit: &Permit<'_>) {
        let key_authz = permit.authorization as *const Meta as usize;
        let key_route = permit.route.map_or(0, |r| r as *const Meta as usize);
        // Shared by the connections of this label set; keyed by addresses
        // inside `authorizer`, which the cache keeps alive.
        let mut shared = lock(&self.conn.labels.allow);
        let current = shared
            .as_ref()
            .is_some_and(|c| c.generation == generation && Arc::ptr_eq(&c.authorizer, authorizer));
        if !current {
            *shared = Some(AllowCache {
                generation,
                authorizer: authorizer.clone(),
                counters: Vec::new(),
            });
        }
        let Some(cache) = shared.as_mut() else {
            return;
        };
        if let Some((_, _, counter)) = cache
            .counters
            .iter()
            .find(|(a, r, _)| *a == key_authz && *r == key_route)
        {
            counter.inc();
            return;
        }
        let route = permit.route.cloned().unwrap_or_else(default_route);
        let counter =
            self.enforcer
                .metrics
                .http_authz_allow
                .get_or_create_owned(&self.conn.labels.authz(
                    permit.server,
                    Some(&route),
                    Some(permit.authorization),
                ));
        counter.inc();
        cache.counters.push((key_authz, key_route, counter));
    }
}

/// Linkerd labels requests on a port without routes with the default route.
fn default_route() -> Meta {
    Meta::default("default")
}

/// Whether a request is gRPC (`content-type: application/grpc*`), which
/// changes how refusals are expressed.
pub fn is_grpc(headers: &dyn RequestHeaders) -> bool {
    // The first `content-type` decides, as `HeaderMap::get` reads it.
    let mut first = true;
    headers.any_value(&header::CONTENT_TYPE, &mut |v| {
        std::mem::take(&mut first) && v.starts_with(b"application/grpc")
    })
}

/// Why the proxy answers a request itself instead of the app.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Policy denied the request.
    Unauthorized,
    /// The app could not be reached or failed mid-request.
    AppUnavailable,
}

/// The one place a refusal becomes a response. HTTP: `403` or `502` with
/// `l5d-proxy-error`. gRPC: HTTP 200 with `grpc-status` (7
/// PERMISSION_DENIED, 14 UNAVAILABLE) and `grpc-message`, as a trailers-only
/// response. The texts are fixed: nothing about the policy or the app's
/// address reaches the client (details are in the logs).
pub fn respond(refusal: Refusal, grpc: bool) -> Response<ProxyBody> {
    let (status, grpc_status, text) = match refusal {
        Refusal::Unauthorized => (StatusCode::FORBIDDEN, "7", UNAUTHORIZED),
        Refusal::AppUnavailable => (
            StatusCode::BAD_GATEWAY,
            "14",
            "connection to the application failed",
        ),
    };
    let mut rsp = Response::new(ProxyBody::empty());
    if !grpc {
        *rsp.status_mut() = status;
    }
    let headers = rsp.headers_mut();
    headers.insert(L5D_PROXY_ERROR, HeaderValue::from_static(text));
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static(grpc_status));
        headers.insert("grpc-message", HeaderValue::from_static(text));
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TlsLabel;
    use http::HeaderMap;
    use portcullis_policy::{DefaultPolicy, PolicyConfig, Snapshot};

    fn conn(port: u16, ip: &str) -> ConnInfo {
        let peer: SocketAddr = format!("{ip}:5000").parse().unwrap();
        ConnInfo {
            port,
            peer,
            client: Client {
                addr: peer.ip(),
                tls: ClientTls::None,
            },
            labels: Arc::new(ConnLabels::new(
                format!("127.0.0.1:{port}").parse().unwrap(),
                &TlsLabel::Plain,
            )),
        }
    }

    fn table(default: DefaultPolicy) -> Arc<PolicyTable> {
        let cfg = PolicyConfig {
            default_policy: default,
            ..PolicyConfig::default()
        };
        Arc::new(PolicyTable::new(Snapshot::from_config(&cfg, "test")))
    }

    #[tokio::test]
    async fn a_policy_update_revokes_live_connections_it_no_longer_admits() {
        let table = table(DefaultPolicy::AllUnauthenticated);
        let metrics = Arc::new(Metrics::new());
        let enforcer = Enforcer::new(table.clone(), metrics.clone());
        let task = tokio::spawn(enforcer.clone().revoke_on_update());

        let inside = enforcer.check_tcp(&conn(8080, "10.1.2.3")).unwrap();
        let outside = enforcer.check_tcp(&conn(8080, "203.0.113.9")).unwrap();
        assert_eq!(enforcer.live_connections(), 2);

        let cfg = PolicyConfig {
            default_policy: DefaultPolicy::ClusterUnauthenticated,
            ..PolicyConfig::default()
        };
        table.publish(Snapshot::from_config(&cfg, "update"));
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            outside.revoked.cancelled(),
        )
        .await
        .expect("the outside connection is revoked");
        assert!(!inside.revoked.is_cancelled());
        assert!(metrics
            .encode()
            .contains("inbound_tcp_authz_terminate_total{"));
        drop(outside);
        assert_eq!(enforcer.live_connections(), 1);
        drop(inside);
        assert_eq!(enforcer.live_connections(), 0);
        task.abort();
    }

    #[test]
    fn denied_connections_are_not_registered() {
        let enforcer = Enforcer::new(table(DefaultPolicy::Deny), Arc::new(Metrics::new()));
        assert!(enforcer.check_tcp(&conn(8080, "10.1.2.3")).is_err());
        assert_eq!(enforcer.live_connections(), 0);
    }

    #[test]
    fn requests_are_denied_with_403_or_grpc_status() {
        let enforcer = Enforcer::new(table(DefaultPolicy::Deny), Arc::new(Metrics::new()));
        let http = enforcer.http(conn(8080, "10.1.2.3"));
        let mut headers = HeaderMap::new();
        let rsp = http.check(&Method::GET, "/", &headers).unwrap_err();
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert_eq!(rsp.headers()[L5D_PROXY_ERROR], UNAUTHORIZED);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let rsp = http.check(&Method::POST, "/a.B/C", &headers).unwrap_err();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "7");
    }

    #[test]
    fn allowed_requests_are_counted_per_authorization() {
        let metrics = Arc::new(Metrics::new());
        let enforcer = Enforcer::new(table(DefaultPolicy::AllUnauthenticated), metrics.clone());
        let http = enforcer.http(conn(8080, "10.1.2.3"));
        for _ in 0..3 {
            http.check(&Method::GET, "/", &HeaderMap::new()).unwrap();
        }
        let text = metrics.encode();
        assert!(
            text.contains("route_kind=\"default\",route_name=\"default\",authz_group=\"\",authz_kind=\"default\",authz_name=\"all-unauthenticated\"} 3"),
            "{text}"
        );
    }
}
