//! End-to-end: identity-based authorization over real meshed mTLS.
//!
//! One proxy serves the pod `demo/web` with one port per kind of
//! authorization (meshTLS `serviceAccounts`, `identities` exact, `*.suffix`
//! and `*`, `unauthenticatedTLS`, `unauthenticated`), and a table of
//! clients (DNS identity, SPIFFE identity, another namespace, TLS without a
//! certificate, plaintext, another CA) checks every pair over HTTP/1, HTTP/2
//! and gRPC. Opaque ports are reached with identity through the direct path
//! (Linkerd's transport header).

#[path = "support/apps.rs"]
mod apps;
#[path = "support/mesh.rs"]
mod mesh;

use std::net::SocketAddr;
use std::time::Duration;

use apps::*;
use e2e::Proxy;
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROXY_ID: &str = "web.demo.serviceaccount.identity.linkerd.cluster.local";

/// The kinds of authorization, one port each.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    ServiceAccount,
    Exact,
    Suffix,
    Any,
    UnauthTls,
    Unauth,
}

const KINDS: [Kind; 6] = [
    Kind::ServiceAccount,
    Kind::Exact,
    Kind::Suffix,
    Kind::Any,
    Kind::UnauthTls,
    Kind::Unauth,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "sa",
            Kind::Exact => "exact",
            Kind::Suffix => "suffix",
            Kind::Any => "any",
            Kind::UnauthTls => "unauth-tls",
            Kind::Unauth => "unauth",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "meshTLS:\n      serviceAccounts:\n        - name: frontend",
            Kind::Exact => "meshTLS:\n      identities:\n        - api.other.serviceaccount.identity.linkerd.cluster.local",
            Kind::Suffix => "meshTLS:\n      identities:\n        - \"*.other.serviceaccount.identity.linkerd.cluster.local\"",
            Kind::Any => "meshTLS:\n      identities:\n        - \"*\"",
            Kind::UnauthTls => "meshTLS:\n      unauthenticatedTLS: true",
            Kind::Unauth => "unauthenticated: true",
        }
    }
}

/// The clients of the table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Who {
    /// `frontend.demo...` as a DNS SAN.
    Frontend,
    /// `spiffe://cluster.local/ns/demo/sa/frontend`: the same service account.
    FrontendSpiffe,
    /// `api.other...`: another namespace.
    OtherNs,
    /// Meshed TLS without a client certificate.
    NoCert,
    /// No TLS at all.
    Plain,
}

const WHO: [Who; 5] = [
    Who::Frontend,
    Who::FrontendSpiffe,
    Who::OtherNs,
    Who::NoCert,
    Who::Plain,
];

/// The table: does `who` get in through `kind`?
fn allowed(kind: Kind, who: Who) -> bool {
    use Kind::*;
    use Who::*;
    match (kind, who) {
        (Unauth, _) => true,
        (UnauthTls, Plain) => false,
        (UnauthTls, _) => true,
        (_, Plain | NoCert) => false,
        (Any, _) => true,
        (ServiceAccount, Frontend | FrontendSpiffe) => true,
        (ServiceAccount, OtherNs) => false,
        (Exact | Suffix, OtherNs) => true,
        (Exact | Suffix, Frontend | FrontendSpiffe) => false,
    }
}

fn resources(ports: &[(u16, &str, &str, &str)]) -> String {
    // (port, server name, protocol, authorization client block)
    let decl: String = ports
        .iter()
        .map(|(p, ..)| format!("        - containerPort: {p}\n"))
        .collect();
    let mut out = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n  labels:\n    app: web\n\
         spec:\n  serviceAccountName: web\n  containers:\n    - name: web\n      image: web\n      ports:\n{decl}"
    );
    for (port, name, protocol, client) in ports {
        out += &format!(
            "---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata:\n  name: {name}\n  namespace: demo\n\
             spec:\n  podSelector:\n    matchLabels:\n      app: web\n  port: {port}\n  proxyProtocol: {protocol}\n\
             ---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata:\n  name: {name}-authz\n  namespace: demo\n\
             spec:\n  server:\n    name: {name}\n  client:\n    {client}\n"
        );
    }
    out
}

struct Mesh {
    id: ProxyIdentity,
    proxy: Proxy,
    /// Per kind: the proxy's listener for that port.
    listeners: Vec<(Kind, SocketAddr)>,
    /// The listener of the `HTTP/2` port.
    h2_listen: SocketAddr,
    _apps: Vec<App>,
    /// The opaque (echo) port allowing `frontend` only, and the HTTP port
    /// of `Kind::ServiceAccount` (for the direct path).
    opaque_port: u16,
    sa_port: u16,
    frontend: Leaf,
    frontend_spiffe: Leaf,
    other_ns: Leaf,
    _dir: tempfile::TempDir,
}

async fn mesh() -> Mesh {
    let id = ProxyIdentity::new(PROXY_ID);
    let mut apps_ = Vec::new();
    let mut ports = Vec::new();
    let mut maps = Vec::new();
    let mut listeners = Vec::new();
    for kind in KINDS {
        let app = http_app().await;
        let (listen, m) = map(app.port());
        ports.push((app.port(), kind.name(), "unknown", kind.client()));
        maps.extend(["--map".to_string(), m]);
        listeners.push((kind, listen));
        apps_.push(app);
    }
    let sa_port = ports[0].0;
    // A port whose Server says HTTP/2: clients offering both versions get h2.
    let h2_app = http_app().await;
    let (h2_listen, m) = map(h2_app.port());
    ports.push((h2_app.port(), "h2", "HTTP/2", "unauthenticated: true"));
    maps.extend(["--map".to_string(), m]);
    apps_.push(h2_app);
    let echo = echo_app().await;
    let opaque_port = echo.port();
    ports.push((
        opaque_port,
        "db",
        "opaque",
        "meshTLS:\n      serviceAccounts:\n        - name: frontend",
    ));
    apps_.push(echo);

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, resources(&ports)).unwrap();
    let mut args = id.args();
    args.extend(maps);
    args.extend([
        "--policy-file".into(),
        policy.display().to_string(),
        "--workload".into(),
        "demo/web".into(),
        // The test clients connect from loopback: it is the "cluster" here.
        "--cluster-networks".into(),
        "127.0.0.0/8".into(),
    ]);
    let proxy = Proxy::start(&args);
    assert!(
        proxy.wait_ready(Duration::from_secs(10)),
        "{}",
        proxy.logs()
    );
    let frontend = id.client(&[&sa("frontend", "demo")]);
    let frontend_spiffe = id.client(&["spiffe://cluster.local/ns/demo/sa/frontend"]);
    let other_ns = id.client(&[&sa("api", "other")]);
    Mesh {
        id,
        proxy,
        listeners,
        h2_listen,
        _apps: apps_,
        opaque_port,
        sa_port,
        frontend,
        frontend_spiffe,
        other_ns,
        _dir: dir,
    }
}

impl Mesh {
    fn leaf(&self, who: Who) -> Option<&Leaf> {
        match who {
            Who::Frontend => Some(&self.frontend),
            Who::FrontendSpiffe => Some(&self.frontend_spiffe),
            Who::OtherNs => Some(&self.other_ns),
            Who::NoCert | Who::Plain => None,
        }
    }

    /// The identity the app should see in `l5d-client-id`.
    fn presented(&self, who: Who) -> &'static str {
        match who {
            Who::Frontend => "frontend.demo.serviceaccount.identity.linkerd.cluster.local",
            Who::FrontendSpiffe => "spiffe://cluster.local/ns/demo/sa/frontend",
            Who::OtherNs => "api.other.serviceaccount.identity.linkerd.cluster.local",
            Who::NoCert | Who::Plain => "<none>",
        }
    }

    /// One request as `who` over HTTP/1 or HTTP/2 (ALPN `h2`); the request
    /// carries a forged `l5d-client-id`, which must never reach the app.
    async fn request(
        &self,
        addr: SocketAddr,
        who: Who,
        h2: bool,
        grpc: bool,
    ) -> (StatusCode, http::HeaderMap, Option<http::HeaderMap>) {
        let uri = if h2 {
            "http://web.example/grpc"
        } else {
            "/grpc"
        };
        let mut req = Request::builder()
            .method("POST")
            .uri(if grpc {
                uri
            } else {
                uri.trim_end_matches("grpc")
            })
            .header("l5d-client-id", "forged.identity.example");
        if !h2 {
            req = req.header("host", "web.example");
        }
        if grpc {
            req = req.header("content-type", "application/grpc");
        }
        let req = req
            .body(Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let rsp = if who == Who::Plain {
            if h2 {
                h2c(addr).await.send_request(req).await.unwrap()
            } else {
                h1(addr).await.send_request(req).await.unwrap()
            }
        } else {
            let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
            let tls = connect_tls(addr, PROXY_ID, self.id.client_config(self.leaf(who), alpn))
                .await
                .unwrap_or_else(|e| panic!("{who:?} handshake: {e}"));
            if h2 {
                h2_over(tls).await.unwrap().send_request(req).await.unwrap()
            } else {
                h1_over(tls).await.unwrap().send_request(req).await.unwrap()
            }
        };
        let (status, headers, _body, trailers) = read(rsp).await;
        (status, headers, trailers)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authorization_kind_against_every_client_over_http1_and_http2() {
    let mesh = mesh().await;
    let mut failures = Vec::new();
    for &(kind, addr) in &mesh.listeners {
        for who in WHO {
            for h2 in [false, true] {
                let (status, headers, _) = mesh.request(addr, who, h2, false).await;
                let want = if allowed(kind, who) {
                    StatusCode::OK
                } else {
                    StatusCode::FORBIDDEN
                };
                if status != want {
                    failures.push(format!("{kind:?} {who:?} h2={h2}: {status}, want {want}"));
                    continue;
                }
                if status == StatusCode::OK {
                    // The app sees the verified identity, never the forged one.
                    let seen = headers.get("x-seen-client-id").unwrap();
                    if seen != mesh.presented(who) {
                        failures.push(format!("{kind:?} {who:?} h2={h2}: app saw {seen:?}"));
                    }
                    let version = headers.get("x-seen-version").unwrap();
                    let want_version = if h2 { "HTTP/2.0" } else { "HTTP/1.1" };
                    if version != want_version {
                        failures.push(format!("{kind:?} {who:?}: app spoke {version:?}"));
                    }
                } else if headers
                    .get("l5d-proxy-error")
                    .is_none_or(|v| v != "unauthorized request on route")
                {
                    failures.push(format!("{kind:?} {who:?}: 403 without l5d-proxy-error"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        mesh.proxy.logs()
    );

    // Metrics label meshed connections with the client identity.
    let allowed_mesh = mesh.proxy.metric(
        "inbound_http_authz_allow_total",
        &[
            ("tls", "true"),
            ("client_id", mesh.presented(Who::OtherNs)),
            ("srv_name", "exact"),
        ],
    );
    assert_eq!(allowed_mesh, 2.0, "{}", mesh.proxy.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_prefers_http1_on_detected_ports_and_h2_where_the_server_says_so() {
    let mesh = mesh().await;
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let (_, detected) = mesh.listeners[0];
    for (addr, want) in [(detected, &b"http/1.1"[..]), (mesh.h2_listen, &b"h2"[..])] {
        let tls = connect_tls(
            addr,
            PROXY_ID,
            mesh.id.client_config(Some(&mesh.frontend), both),
        )
        .await
        .unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().unwrap().to_vec();
        assert_eq!(alpn, want);
        let (status, headers, _, _) = if alpn == b"h2" {
            read(
                h2_over(tls)
                    .await
                    .unwrap()
                    .send_request(get("http://web.example/"))
                    .await
                    .unwrap(),
            )
            .await
        } else {
            read(
                h1_over(tls)
                    .await
                    .unwrap()
                    .send_request(get("/"))
                    .await
                    .unwrap(),
            )
            .await
        };
        assert_eq!(status, StatusCode::OK, "{}", mesh.proxy.logs());
        let version = if alpn == b"h2" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(headers.get("x-seen-version").unwrap(), version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_denials_are_permission_denied_and_allows_keep_trailers() {
    let mesh = mesh().await;
    let (_, sa_addr) = mesh.listeners[0];
    let (status, headers, trailers) = mesh.request(sa_addr, Who::OtherNs, true, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("grpc-status").unwrap(), "7");
    let (status, headers, trailers_ok) = mesh.request(sa_addr, Who::Frontend, true, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-seen-client-id").unwrap(),
        mesh.presented(Who::Frontend)
    );
    assert_eq!(trailers_ok.unwrap().get("grpc-status").unwrap(), "0");
    drop(trailers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_ca_cannot_complete_the_handshake() {
    let mesh = mesh().await;
    let rogue_ca = Ca::new("rogue root");
    let rogue = rogue_ca.issue(&[&sa("frontend", "demo")]);
    for &(_, addr) in &mesh.listeners {
        let tls = connect_tls(
            addr,
            PROXY_ID,
            mesh.id.client_config(Some(&rogue), &[b"http/1.1"]),
        )
        .await;
        // TLS 1.3: the client may finish before the server rejects its
        // certificate; the first request then fails.
        let failed = match tls {
            Err(_) => true,
            Ok(tls) => match h1_over(tls).await {
                Err(_) => true,
                Ok(mut tx) => tx.send_request(get("/")).await.is_err(),
            },
        };
        assert!(failed, "a certificate of another CA was accepted");
    }
    assert!(mesh
        .proxy
        .wait_log(&["meshed TLS handshake failed"], Duration::from_secs(5)));
}

/// The direct path: mTLS to the inbound port itself with ALPN
/// `transport.l5d.io/v1` and a transport header naming the port.
async fn direct(
    mesh: &Mesh,
    who: Option<&Leaf>,
    alpn: &[&[u8]],
    header: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let tls = connect_tls(
        mesh.proxy.inbound,
        PROXY_ID,
        mesh.id.client_config(who, alpn),
    )
    .await;
    let Ok(mut tls) = tls else {
        return Vec::new();
    };
    let mut first = header.to_vec();
    first.extend_from_slice(payload);
    if tls.write_all(&first).await.is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < payload.len() {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "direct connection neither answered nor closed"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_ports_are_reached_with_identity_through_the_direct_path() {
    let mesh = mesh().await;
    let header = transport_header(mesh.opaque_port, "db.demo.svc.cluster.local", None);
    let alpn: &[&[u8]] = &[TRANSPORT_ALPN];

    // frontend is authorized on the opaque port: bytes flow both ways.
    let got = direct(&mesh, Some(&mesh.frontend), alpn, &header, b"hello db").await;
    assert_eq!(got, b"hello db", "{}", mesh.proxy.logs());
    // ... and so is its SPIFFE form.
    let got = direct(&mesh, Some(&mesh.frontend_spiffe), alpn, &header, b"spiffe").await;
    assert_eq!(got, b"spiffe");

    // Another identity: authorized as TCP and denied, nothing forwarded.
    let got = direct(&mesh, Some(&mesh.other_ns), alpn, &header, b"nope").await;
    assert!(got.is_empty(), "denied client got {got:?}");
    assert!(
        mesh.proxy.wait_metric(
            "inbound_tcp_authz_deny_total",
            &[
                ("srv_name", "db"),
                ("client_id", mesh.presented(Who::OtherNs))
            ],
            1.0,
            Duration::from_secs(5)
        ) >= 1.0,
        "{}",
        mesh.proxy.metrics()
    );

    // Without a client certificate, without the ALPN, or plaintext: closed.
    assert!(direct(&mesh, None, alpn, &header, b"x").await.is_empty());
    assert!(
        direct(&mesh, Some(&mesh.frontend), &[b"http/1.1"], &header, b"x")
            .await
            .is_empty()
    );
    let mut plain = tokio::net::TcpStream::connect(mesh.proxy.inbound)
        .await
        .unwrap();
    plain.write_all(&header).await.unwrap();
    plain.write_all(b"plaintext").await.unwrap();
    assert_eq!(
        read_until_closed(&mut plain, Duration::from_secs(5)).await,
        Some(Vec::new())
    );
    // A header naming the inbound port itself would loop: closed.
    let looped = transport_header(mesh.proxy.inbound.port(), "", None);
    assert!(direct(&mesh, Some(&mesh.frontend), alpn, &looped, b"x")
        .await
        .is_empty());
    // Garbage instead of a header: closed.
    assert!(direct(
        &mesh,
        Some(&mesh.frontend),
        alpn,
        b"GET / HTTP/1.1\r\n\r\n",
        b"x"
    )
    .await
    .is_empty());
    for why in [
        "client sent none",
        "needs ALPN transport.l5d.io/v1",
        "without meshed TLS",
        "would loop",
        "bad transport header",
    ] {
        assert!(
            mesh.proxy.wait_log(&[why], Duration::from_secs(5)),
            "no log for {why:?}:\n{}",
            mesh.proxy.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_path_carries_http_with_the_clients_identity() {
    let mesh = mesh().await;
    for (session, version) in [(1u8, "HTTP/1.1"), (2u8, "HTTP/2.0")] {
        let tls = connect_tls(
            mesh.proxy.inbound,
            PROXY_ID,
            mesh.id
                .client_config(Some(&mesh.frontend), &[TRANSPORT_ALPN]),
        )
        .await
        .unwrap();
        let mut tls = tls;
        tls.write_all(&transport_header(mesh.sa_port, "", Some(session)))
            .await
            .unwrap();
        let req = Request::builder()
            .uri(if session == 2 {
                "http://web.example/"
            } else {
                "/"
            })
            .header("host", "web.example")
            .header("l5d-client-id", "forged")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let rsp = if session == 1 {
            h1_over(tls).await.unwrap().send_request(req).await.unwrap()
        } else {
            h2_over(tls).await.unwrap().send_request(req).await.unwrap()
        };
        let (status, headers, _, _) = read(rsp).await;
        assert_eq!(status, StatusCode::OK, "{}", mesh.proxy.logs());
        assert_eq!(
            headers.get("x-seen-client-id").unwrap(),
            mesh.presented(Who::Frontend)
        );
        assert_eq!(headers.get("x-seen-version").unwrap(), version);
    }
    // The same port through the direct path denies another identity.
    let mut tls = connect_tls(
        mesh.proxy.inbound,
        PROXY_ID,
        mesh.id
            .client_config(Some(&mesh.other_ns), &[TRANSPORT_ALPN]),
    )
    .await
    .unwrap();
    tls.write_all(&transport_header(mesh.sa_port, "", Some(1)))
        .await
        .unwrap();
    let rsp = h1_over(tls)
        .await
        .unwrap()
        .send_request(get("/"))
        .await
        .unwrap();
    assert_eq!(read(rsp).await.0, StatusCode::FORBIDDEN);
}
