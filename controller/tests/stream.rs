//! The stream client (`portcullis_policy::client`) against a controller over a
//! real loopback socket: our own gRPC service (`portcullis_controller::grpc`)
//! and a scripted one that sends hand-built messages, as another controller
//! (Linkerd's) would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_controller::grpc::{self, Policies};
use portcullis_policy::client::{ClientConfig, FirstPolicy, PolicyClient, Workload};
use portcullis_policy::proto::pb;
use portcullis_policy::{
    authorize, authorize_request, Access, Authentication, Authorization, Client, ClientIdentity,
    ClientTls, DefaultPolicy, DenyReason, HttpRequest, Meta, Network, PolicyConfig, PolicyTable,
    PortPolicy, Protocol, Snapshot, WorkloadPolicy,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

// --- helpers ---

fn workload() -> Workload {
    "shop/web-0".parse().unwrap()
}

fn net(s: &str) -> Network {
    Network::new(s.parse().unwrap())
}

fn server_policy(port: u16, authorizations: Vec<Authorization>) -> PortPolicy {
    PortPolicy {
        port,
        protocol: Protocol::Http1,
        server: Meta::policy("server", "web-http"),
        access: Access::Enforce,
        authorizations,
        http_routes: vec![],
    }
}

fn allow_net(name: &str, cidr: &str) -> Authorization {
    Authorization {
        meta: Meta::policy("serverauthorization", name),
        networks: vec![net(cidr)],
        authentication: Authentication::Unauthenticated,
    }
}

/// `shop/web-0`: port 8080 has a Server; every other port is `deny` by default.
fn web(ports: Vec<PortPolicy>) -> Policies {
    let policy = WorkloadPolicy {
        workload: workload().to_string(),
        ports: ports
            .into_iter()
            .map(|p| (p.port, p))
            .collect::<BTreeMap<_, _>>(),
        default_policy: DefaultPolicy::Deny,
        opaque_ports: BTreeSet::new(),
        cluster_networks: PolicyConfig::default().cluster_networks,
    };
    Policies {
        workloads: HashMap::from([(workload(), Arc::new(policy))]),
    }
}

/// A table whose fallback is the proxy's own default (all-unauthenticated),
/// so a default that came from the controller (`deny`) is told apart.
fn table() -> Arc<PolicyTable> {
    Arc::new(PolicyTable::new(Snapshot::from_config(
        &PolicyConfig::default(),
        "controller",
    )))
}

fn config(addr: SocketAddr, ports: &[u16]) -> ClientConfig {
    let mut c = ClientConfig::new(format!("http://{addr}"), workload());
    c.ports = ports.to_vec();
    c.policy_timeout = Duration::from_secs(5);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(300);
    c.first_message_timeout = Duration::from_secs(2);
    c
}

fn plain(ip: &str) -> Client {
    Client {
        addr: ip.parse::<IpAddr>().unwrap(),
        tls: ClientTls::None,
    }
}

/// Polls `f` every 10 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Controller {
    addr: SocketAddr,
    policies: watch::Sender<Arc<Policies>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn controller(addr: SocketAddr, policies: Policies) -> Controller {
    let (tx, rx) = watch::channel(Arc::new(policies));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (addr, task) = grpc::spawn(addr, rx, shutdown_rx).await.unwrap();
    Controller {
        addr,
        policies: tx,
        shutdown,
        task,
    }
}

impl Controller {
    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("controller stops gracefully")
            .unwrap()
            .unwrap();
    }
}

// --- against our controller ---

#[tokio::test]
async fn initial_policy_then_updates_only_for_the_changed_port() {
    let ctl = controller(
        "127.0.0.1:0".parse().unwrap(),
        web(vec![
            server_policy(8080, vec![allow_net("web-public", "10.0.0.0/8")]),
            server_policy(9090, vec![allow_net("metrics", "10.0.0.0/8")]),
        ]),
    )
    .await;
    let table = table();
    let client = PolicyClient::spawn(config(ctl.addr, &[8080, 9090]), table.clone()).unwrap();

    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    assert_eq!(client.wait_for_port(9090).await, FirstPolicy::Received);
    assert!(client.is_ready());
    let p = table.get(8080);
    assert_eq!(p.server, Meta::policy("server", "web-http"));
    assert_eq!(
        authorize(&p, &plain("10.1.2.3")).unwrap().authorization,
        &Meta::policy("serverauthorization", "web-public")
    );
    assert!(eventually(Duration::from_secs(1), || client.stats().messages == 2).await);

    // Revoke port 8080's authorization: the table changes within a second,
    // and port 9090, unchanged, is not sent again.
    let generation = table.generation();
    ctl.policies.send_replace(Arc::new(web(vec![
        server_policy(8080, vec![]),
        server_policy(9090, vec![allow_net("metrics", "10.0.0.0/8")]),
    ])));
    assert!(
        eventually(Duration::from_secs(1), || table.generation() > generation).await,
        "update applied within 1 s"
    );
    let revoked = table.get(8080);
    let denied = authorize(&revoked, &plain("10.1.2.3")).unwrap_err();
    assert_eq!(denied.reason, DenyReason::NoAuthorizations);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.stats().messages,
        3,
        "only the changed port was pushed"
    );
    assert!(authorize(&table.get(9090), &plain("10.1.2.3")).is_ok());

    // A port first seen on a connection is watched on demand; the pod's
    // default (deny, from the controller) applies, not the proxy's own.
    assert_eq!(client.wait_for_port(7000).await, FirstPolicy::Received);
    assert_eq!(table.get(7000).server, Meta::default("deny"));
    assert_eq!(
        client.ports(),
        vec![(7000, true), (8080, true), (9090, true)]
    );
    let stats = client.stats();
    assert_eq!(stats.invalid_messages, 0);
    assert_eq!(stats.stream_errors, 0);
    ctl.stop().await;
}

#[tokio::test]
async fn controller_restart_keeps_the_policy_and_resumes() {
    let ctl = controller(
        "127.0.0.1:0".parse().unwrap(),
        web(vec![server_policy(
            8080,
            vec![allow_net("a", "10.0.0.0/8")],
        )]),
    )
    .await;
    let addr = ctl.addr;
    let table = table();
    let client = PolicyClient::spawn(config(addr, &[8080]), table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);

    ctl.stop().await;
    // Down: reconnects fail, the last policy stays in force.
    assert!(eventually(Duration::from_secs(3), || client.stats().stream_errors >= 2).await);
    let held = table.get(8080);
    assert_eq!(
        held.authorizations[0].meta,
        Meta::policy("serverauthorization", "a")
    );
    assert!(client.is_ready());

    let ctl = controller(
        addr,
        web(vec![server_policy(
            8080,
            vec![allow_net("b", "10.0.0.0/8")],
        )]),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(3), || {
            table.get(8080).authorizations[0].meta == Meta::policy("serverauthorization", "b")
        })
        .await,
        "resumed after the restart"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn unreachable_controller_means_the_default_after_the_timeout() {
    // Nothing listens here (yet).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let table = table();
    let mut cfg = config(addr, &[8080]);
    cfg.policy_timeout = Duration::from_millis(400);
    let client = PolicyClient::spawn(cfg, table.clone()).unwrap();

    let started = tokio::time::Instant::now();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::TimedOut);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    // The proxy's configured default applies; the port is not ready.
    assert_eq!(table.get(8080).server, Meta::default("all-unauthenticated"));
    assert!(!client.is_ready());
    assert!(client.stats().stream_errors >= 1);
    // Later connections do not wait again.
    let again = tokio::time::Instant::now();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::TimedOut);
    assert!(again.elapsed() < Duration::from_millis(100));

    // The controller comes up: the policy arrives and the proxy is ready.
    let ctl = controller(addr, web(vec![server_policy(8080, vec![])])).await;
    assert!(eventually(Duration::from_secs(3), || client.is_ready()).await);
    assert_eq!(table.get(8080).server, Meta::policy("server", "web-http"));
    ctl.stop().await;
}

#[tokio::test]
async fn unknown_pods_are_retried_not_final() {
    let ctl = controller("127.0.0.1:0".parse().unwrap(), Policies::default()).await;
    let table = table();
    let mut cfg = config(ctl.addr, &[8080]);
    cfg.policy_timeout = Duration::from_millis(200);
    let client = PolicyClient::spawn(cfg, table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::TimedOut);
    assert!(eventually(Duration::from_secs(2), || client.stats().stream_errors >= 2).await);
    assert_eq!(client.stats().config_errors, 0);

    // The pod appears (e.g. its resources were added): the watch succeeds.
    ctl.policies
        .send_replace(Arc::new(web(vec![server_policy(8080, vec![])])));
    assert!(eventually(Duration::from_secs(3), || client.is_ready()).await);
    ctl.stop().await;
}

// --- GetPort, as any client would call it ---

#[tokio::test]
async fn get_port_reads_workloads_and_ports_as_linkerd_does() {
    let ctl = controller(
        "127.0.0.1:0".parse().unwrap(),
        web(vec![server_policy(
            8080,
            vec![allow_net("a", "10.0.0.0/8")],
        )]),
    )
    .await;
    let mut grpc = pb::client::InboundServerPoliciesClient::connect(format!("http://{}", ctl.addr))
        .await
        .unwrap();
    let get = |workload: &str, port: u32| pb::PortSpec {
        workload: workload.into(),
        port,
    };

    for w in [r#"{"ns":"shop","pod":"web-0"}"#, "shop:web-0"] {
        let s = grpc.get_port(get(w, 8080)).await.unwrap().into_inner();
        assert_eq!(s.labels["name"], "web-http", "{w}");
        assert_eq!(s.labels["kind"], "server");
        assert_eq!(s.labels["group"], "policy.linkerd.io");
        let a = &s.authorizations[0];
        assert_eq!(a.labels["kind"], "serverauthorization");
        assert!(a.metadata.is_some());
    }
    // An unknown port of a known pod: the pod's default policy.
    let s = grpc
        .get_port(get("shop:web-0", 4444))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            s.labels["group"].as_str(),
            s.labels["kind"].as_str(),
            s.labels["name"].as_str()
        ),
        ("", "default", "deny")
    );
    assert!(s.authorizations.is_empty());

    let code = |r: Result<Response<pb::Server>, Status>| r.unwrap_err().code();
    use tonic::Code;
    assert_eq!(
        code(grpc.get_port(get("shop/web-0", 8080)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(grpc.get_port(get("", 8080)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(grpc.get_port(get(r#"{"ns":"shop"}"#, 8080)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(grpc.get_port(get("shop:web-0", 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(grpc.get_port(get("shop:web-0", 70000)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(grpc.get_port(get("shop:other", 8080)).await),
        Code::NotFound
    );
    let watch = grpc.watch_port(get("shop:other", 8080)).await;
    assert_eq!(watch.err().map(|s| s.code()), Some(Code::NotFound));
    ctl.stop().await;
}

// --- against a scripted controller sending hand-built messages ---

/// A controller that streams whatever the test puts in `current` (the value
/// at call time first, then every change); an `Err` answers the call itself.
#[derive(Clone)]
struct Scripted {
    current: watch::Receiver<Result<pb::Server, Status>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl pb::server::InboundServerPolicies for Scripted {
    async fn get_port(&self, _: Request<pb::PortSpec>) -> Result<Response<pb::Server>, Status> {
        self.current.borrow().clone().map(Response::new)
    }

    type WatchPortStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Server, Status>> + Send>>;

    async fn watch_port(
        &self,
        req: Request<pb::PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let spec = req.into_inner();
        assert_eq!(spec.workload, r#"{"ns":"shop","pod":"web-0"}"#);
        let mut rx = self.current.clone();
        let first = rx.borrow_and_update().clone()?;
        let stream = futures::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, rx)));
            }
            rx.changed().await.ok()?;
            let next = rx.borrow_and_update().clone();
            Some((next, (None, rx)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn scripted(
    first: Result<pb::Server, Status>,
) -> (
    SocketAddr,
    watch::Sender<Result<pb::Server, Status>>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = watch::channel(first);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = Scripted {
        current: rx,
        calls: calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::server::InboundServerPoliciesServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, tx, calls)
}

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_string(), group.to_string()),
        ("kind".to_string(), kind.to_string()),
        ("name".to_string(), name.to_string()),
    ])
}

fn network(cidr: &str, except: &[&str]) -> pb::Network {
    pb::Network {
        net: Some(cidr.parse::<ipnet::IpNet>().unwrap().into()),
        except: except
            .iter()
            .map(|e| e.parse::<ipnet::IpNet>().unwrap().into())
            .collect(),
    }
}

fn resource(kind: &str, name: &str) -> pb::meta::Metadata {
    pb::meta::Metadata {
        kind: Some(pb::meta::metadata::Kind::Resource(pb::meta::Resource {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "shop".into(),
            section: String::new(),
            port: 0,
        })),
    }
}

/// What Linkerd's policy controller sends for a `Server` `web-http`
/// (proxyProtocol unknown) with two ServerAuthorizations: meshed clients of
/// the `shop` namespace from the cluster, and Prometheus' plaintext scrapes
/// from 10.0.0.0/8 except 10.9.0.0/16; plus the default route.
fn linkerd_server() -> pb::Server {
    use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    pb::Server {
        protocol: Some(pb::ProxyProtocol {
            kind: Some(pb::proxy_protocol::Kind::Detect(
                pb::proxy_protocol::Detect {
                    timeout: Duration::from_secs(10).try_into().ok(),
                    http_routes: vec![pb::HttpRoute {
                        metadata: Some(pb::meta::Metadata {
                            kind: Some(pb::meta::metadata::Kind::Default("default".into())),
                        }),
                        hosts: vec![],
                        authorizations: vec![],
                        rules: vec![pb::http_route::Rule {
                            matches: vec![pb::http_match::HttpRouteMatch {
                                path: Some(pb::http_match::PathMatch {
                                    kind: Some(pb::http_match::path_match::Kind::Prefix(
                                        "/".into(),
                                    )),
                                }),
                                headers: vec![],
                                query_params: vec![],
                                method: None,
                            }],
                            filters: vec![],
                        }],
                    }],
                    http_local_rate_limit: None,
                },
            )),
        }),
        server_ips: vec![],
        authorizations: vec![
            pb::Authz {
                networks: vec![network("10.0.0.0/8", &[]), network("fd00::/8", &[])],
                authentication: Some(pb::Authn {
                    permit: Some(pb::authn::Permit::MeshTls(pb::authn::PermitMeshTls {
                        clients: Some(Clients::Identities(PermitClientIdentities {
                            identities: vec![],
                            suffixes: vec![pb::IdentitySuffix {
                                parts: "shop.serviceaccount.identity.linkerd.cluster.local"
                                    .split('.')
                                    .map(String::from)
                                    .collect(),
                            }],
                        })),
                    })),
                }),
                labels: labels("policy.linkerd.io", "serverauthorization", "shop-meshed"),
                metadata: Some(resource("serverauthorization", "shop-meshed")),
            },
            pb::Authz {
                networks: vec![network("10.0.0.0/8", &["10.9.0.0/16"])],
                authentication: Some(pb::Authn {
                    permit: Some(pb::authn::Permit::Unauthenticated(
                        pb::authn::PermitUnauthenticated {},
                    )),
                }),
                labels: labels("policy.linkerd.io", "serverauthorization", "prometheus"),
                metadata: Some(resource("serverauthorization", "prometheus")),
            },
        ],
        labels: labels("policy.linkerd.io", "server", "web-http"),
    }
}

fn mesh(identity: &str) -> Client {
    Client {
        addr: "10.1.2.3".parse().unwrap(),
        tls: ClientTls::Mesh {
            identity: Some(ClientIdentity::new(identity, &PolicyConfig::default())),
        },
    }
}

/// A `Server` built by hand as Linkerd's controller sends it converts, and
/// is enforced as Linkerd would enforce it.
#[tokio::test]
async fn a_linkerd_server_message_is_enforced_as_sent() {
    let (addr, _tx, _) = scripted(Ok(linkerd_server())).await;
    let table = table();
    let client = PolicyClient::spawn(config(addr, &[8080]), table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    let p = table.get(8080);
    assert_eq!(p.server, Meta::policy("server", "web-http"));
    assert_eq!(p.protocol, Protocol::Detect);

    let allowed_by = |c: &Client| authorize(&p, c).map(|a| a.authorization.name().to_string());
    let denied_for = |c: &Client| authorize(&p, c).map_err(|d| d.reason);
    // Meshed clients of the namespace, by identity suffix.
    assert_eq!(
        allowed_by(&mesh(
            "web.shop.serviceaccount.identity.linkerd.cluster.local"
        )),
        Ok("shop-meshed".into())
    );
    assert_eq!(
        allowed_by(&mesh("spiffe://cluster.local/ns/shop/sa/web")),
        Ok("shop-meshed".into())
    );
    // Plaintext scrapes from the cluster, but not from the excluded range.
    assert_eq!(allowed_by(&plain("10.1.2.3")), Ok("prometheus".into()));
    assert_eq!(denied_for(&plain("10.9.1.1")), Err(DenyReason::TlsRequired));
    assert_eq!(
        denied_for(&plain("192.168.1.1")),
        Err(DenyReason::NetworkNotAuthorized)
    );
    // Another namespace's identity is not in the suffix; from 10.9/16 it
    // is not covered by the plaintext authorization either.
    let mut other = mesh("web.other.serviceaccount.identity.linkerd.cluster.local");
    other.addr = "10.9.1.1".parse().unwrap();
    assert_eq!(denied_for(&other), Err(DenyReason::IdentityNotAuthorized));

    // HTTP requests go through the default route, then the port's authorizations.
    let method = http::Method::GET;
    let headers = http::HeaderMap::new();
    let req = HttpRequest {
        method: &method,
        path: "/api/cart",
        headers: &headers,
    };
    let permit = authorize_request(&p, &plain("10.1.2.3"), &req).unwrap();
    assert_eq!(permit.route, Some(&Meta::default("default")));
    assert_eq!(
        permit.authorization,
        &Meta::policy("serverauthorization", "prometheus")
    );
    assert!(authorize_request(&p, &plain("10.9.0.1"), &req).is_err());
}

/// The probe route as Linkerd's policy controller sends it: `GET` on each
/// probe path, open to every client, listed after the default route.
fn linkerd_probe_route(paths: &[&str]) -> pb::HttpRoute {
    pb::HttpRoute {
        metadata: Some(pb::meta::Metadata {
            kind: Some(pb::meta::metadata::Kind::Default("probe".into())),
        }),
        hosts: vec![],
        authorizations: vec![pb::Authz {
            networks: vec![network("0.0.0.0/0", &[]), network("::/0", &[])],
            authentication: Some(pb::Authn {
                permit: Some(pb::authn::Permit::Unauthenticated(
                    pb::authn::PermitUnauthenticated {},
                )),
            }),
            labels: HashMap::new(),
            metadata: Some(pb::meta::Metadata {
                kind: Some(pb::meta::metadata::Kind::Default("probe".into())),
            }),
        }],
        rules: vec![pb::http_route::Rule {
            matches: paths
                .iter()
                .map(|p| pb::http_match::HttpRouteMatch {
                    path: Some(pb::http_match::PathMatch {
                        kind: Some(pb::http_match::path_match::Kind::Exact((*p).into())),
                    }),
                    headers: vec![],
                    query_params: vec![],
                    method: Some(http::Method::GET.into()),
                })
                .collect(),
            filters: vec![],
        }],
    }
}

/// Linkerd's controller lists the default (catch-all) route first and the
/// probe route second; the probe route is more specific, so kubelet probes
/// from anywhere, in plaintext, are allowed while every other request still
/// needs the Server's authorizations.
#[tokio::test]
async fn probes_are_allowed_when_the_probe_route_comes_after_the_default_route() {
    let mut server = linkerd_server();
    match server.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
        Some(pb::proxy_protocol::Kind::Detect(detect)) => {
            assert_eq!(detect.http_routes.len(), 1, "the default route");
            detect
                .http_routes
                .push(linkerd_probe_route(&["/ready", "/live"]));
        }
        other => panic!("linkerd_server() is a detect server: {other:?}"),
    }
    let (addr, _tx, _) = scripted(Ok(server)).await;
    let table = table();
    let client = PolicyClient::spawn(config(addr, &[8080]), table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    let p = table.get(8080);
    assert_eq!(
        p.http_routes
            .iter()
            .map(|r| r.meta.clone())
            .collect::<Vec<_>>(),
        [Meta::default("default"), Meta::default("probe")],
        "sent in Linkerd's order"
    );

    let headers = http::HeaderMap::new();
    let decide = |method: http::Method, path: &str, client: &Client| {
        let req = HttpRequest {
            method: &method,
            path,
            headers: &headers,
        };
        authorize_request(&p, client, &req)
            .map(|permit| (permit.authorization.clone(), permit.route.cloned()))
            .map_err(|d| (d.reason, d.route.cloned()))
    };
    // The kubelet: plaintext, from outside the Server's networks.
    let kubelet = plain("192.168.1.1");
    for path in ["/ready", "/live"] {
        assert_eq!(
            decide(http::Method::GET, path, &kubelet),
            Ok((Meta::default("probe"), Some(Meta::default("probe")))),
            "GET {path}"
        );
    }
    // Anything else takes the default route and the Server's authorizations.
    assert_eq!(
        decide(http::Method::POST, "/ready", &kubelet),
        Err((
            DenyReason::NetworkNotAuthorized,
            Some(Meta::default("default"))
        ))
    );
    assert_eq!(
        decide(http::Method::GET, "/api/cart", &kubelet),
        Err((
            DenyReason::NetworkNotAuthorized,
            Some(Meta::default("default"))
        ))
    );
    assert_eq!(
        decide(http::Method::GET, "/api/cart", &plain("10.1.2.3")),
        Ok((
            Meta::policy("serverauthorization", "prometheus"),
            Some(Meta::default("default"))
        ))
    );
    // The connection level is not opened by the probe route.
    assert!(authorize(&p, &kubelet).is_err());
}

/// A message that cannot be converted makes the port deny until a good one
/// arrives; it never leaves the previous (or a default) policy in force.
#[tokio::test]
async fn malformed_messages_deny_until_a_good_one_arrives() {
    let mut good = linkerd_server();
    let (addr, tx, _) = scripted(Ok(good.clone())).await;
    let table = table();
    let client = PolicyClient::spawn(config(addr, &[8080]), table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    assert!(authorize(&table.get(8080), &plain("10.1.2.3")).is_ok());

    type Mutation = Box<dyn Fn(&mut pb::Server)>;
    let malformed: Vec<(&str, Mutation)> = vec![
        ("no protocol", Box::new(|s| s.protocol = None)),
        (
            "bad network",
            Box::new(|s| {
                s.authorizations[1].networks[0].net = Some(pb::net::IpNetwork {
                    ip: None,
                    prefix_len: 8,
                })
            }),
        ),
        (
            "bad except",
            Box::new(|s| s.authorizations[1].networks[0].except[0].prefix_len = 99),
        ),
        (
            "except of the other address family (would exclude nothing)",
            Box::new(|s| {
                s.authorizations[1].networks[0].except =
                    vec!["fd00::/8".parse::<ipnet::IpNet>().unwrap().into()]
            }),
        ),
        (
            "no authentication",
            Box::new(|s| s.authorizations[1].authentication = None),
        ),
        (
            "empty identity",
            Box::new(|s| {
                use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
                s.authorizations[0].authentication = Some(pb::Authn {
                    permit: Some(pb::authn::Permit::MeshTls(pb::authn::PermitMeshTls {
                        clients: Some(Clients::Identities(PermitClientIdentities {
                            identities: vec![pb::Identity {
                                name: String::new(),
                            }],
                            suffixes: vec![],
                        })),
                    })),
                })
            }),
        ),
    ];
    for (n, (what, mutate)) in malformed.iter().enumerate() {
        let mut bad = linkerd_server();
        mutate(&mut bad);
        let _ = tx.send_replace(Ok(bad));
        assert!(
            eventually(Duration::from_secs(1), || table.get(8080).server
                == Meta::default("invalid"))
            .await,
            "{what}: port denies"
        );
        let p = table.get(8080);
        assert!(authorize(&p, &plain("10.1.2.3")).is_err(), "{what}");
        assert!(authorize(
            &p,
            &mesh("web.shop.serviceaccount.identity.linkerd.cluster.local")
        )
        .is_err());
        assert_eq!(client.stats().invalid_messages, n as u64 + 1);
        assert!(client.is_ready(), "a denied port still has a policy");

        // A good message restores the port.
        good.labels.insert("name".into(), format!("web-http-{n}"));
        let _ = tx.send_replace(Ok(good.clone()));
        assert!(
            eventually(Duration::from_secs(1), || authorize(
                &table.get(8080),
                &plain("10.1.2.3")
            )
            .is_ok())
            .await,
            "{what}: restored"
        );
    }
}

/// An invalid first message denies at once: the wait does not run into the
/// timeout and then fall back to the (allowing) default.
#[tokio::test]
async fn an_invalid_first_message_denies_rather_than_defaulting() {
    let mut bad = linkerd_server();
    bad.protocol = None;
    let (addr, _tx, _) = scripted(Ok(bad)).await;
    let table = table();
    let mut cfg = config(addr, &[8080]);
    cfg.policy_timeout = Duration::from_millis(300);
    let client = PolicyClient::spawn(cfg, table.clone()).unwrap();
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    assert!(authorize(&table.get(8080), &plain("10.1.2.3")).is_err());
}

/// `InvalidArgument` and `FailedPrecondition` are configuration errors: no retry.
#[tokio::test]
async fn bad_request_statuses_are_final() {
    for code in [
        tonic::Code::InvalidArgument,
        tonic::Code::FailedPrecondition,
    ] {
        let (addr, _tx, calls) = scripted(Err(Status::new(code, "no such workload kind"))).await;
        let table = table();
        let mut cfg = config(addr, &[8080]);
        cfg.policy_timeout = Duration::from_millis(200);
        let client = PolicyClient::spawn(cfg, table.clone()).unwrap();
        assert!(eventually(Duration::from_secs(2), || client.stats().config_errors == 1).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}: not retried");
        assert_eq!(client.wait_for_port(8080).await, FirstPolicy::TimedOut);
        assert!(!client.is_ready());
    }
    // Anything else is retried with backoff.
    let (addr, _tx, calls) = scripted(Err(Status::unavailable("starting"))).await;
    let client = PolicyClient::spawn(config(addr, &[8080]), table()).unwrap();
    assert!(eventually(Duration::from_secs(3), || calls.load(Ordering::SeqCst) >= 3).await);
    assert_eq!(client.stats().config_errors, 0);
}

/// A controller that accepts the call but never sends a message is given up
/// on after the first-message timeout and tried again.
#[tokio::test]
async fn a_silent_stream_is_retried_after_the_first_message_timeout() {
    let ctl_addr = {
        // A listener that accepts TCP and never speaks HTTP/2.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        addr
    };
    let mut cfg = config(ctl_addr, &[8080]);
    cfg.first_message_timeout = Duration::from_millis(200);
    let client = PolicyClient::spawn(cfg, table()).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || client.stats().stream_errors >= 2).await,
        "{:?}",
        client.stats()
    );
    assert!(client.stats().streams_opened >= 2);
}
