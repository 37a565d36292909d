//! The decision function as a readable spec: one row per rule from the seeds
//! (Linkerd's authorization policy docs, the NetworkAuthenticationPolicy
//! walkthrough) and DESIGN.md's "Policy semantics".
//!
//! Owns only decisions over hand-built `PortPolicy` values: compiling resources
//! into those values is tested with the compiler. Every row runs under each
//! indexing strategy (always scan, always index, the default), so the spec
//! holds whichever the authorizer picks. Run with
//! `cargo test -p portcullis-policy --test decisions`.

use std::collections::BTreeSet;

use portcullis_policy::{
    authorize, authorize_request, Access, Authentication, Authorization, Authorizer, Client,
    ClientIdentity, ClientTls, DefaultPolicy, DenyReason, HeaderMatch, HeaderValueMatch,
    HttpRequest, HttpRoute, Meta, Network, PathMatch, PolicyConfig, PortPolicy, Protocol,
    RouteMatch, Snapshot, WorkloadPolicy,
};

// ---------------------------------------------------------------------------
// Vocabulary for the rows.

const EMOJIVOTO_SA: &str = "emojivoto.serviceaccount.identity.linkerd.cluster.local";
const WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const PROMETHEUS: &str = "prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local";

fn cfg() -> PolicyConfig {
    PolicyConfig::default()
}

fn nets(cidrs: &[&str]) -> Vec<Network> {
    cidrs
        .iter()
        .map(|c| Network::new(c.parse().unwrap()))
        .collect()
}

fn net_except(cidr: &str, except: &[&str]) -> Vec<Network> {
    vec![Network {
        net: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }]
}

fn any_net() -> Vec<Network> {
    nets(&["0.0.0.0/0", "::/0"])
}

fn identities(ids: &[&str]) -> Authentication {
    let (suffixes, exact): (Vec<&str>, Vec<&str>) =
        ids.iter().partition(|i| **i == "*" || i.starts_with("*."));
    Authentication::TlsAuthenticated {
        identities: exact.iter().map(|s| s.to_string()).collect(),
        suffixes: suffixes
            .iter()
            .map(|s| {
                s.trim_start_matches('*')
                    .trim_start_matches('.')
                    .to_string()
            })
            .collect(),
    }
}

/// `serviceAccounts: [{name, namespace}]`, as the compiler writes them.
fn service_accounts(sas: &[(&str, &str)]) -> Authentication {
    Authentication::TlsAuthenticated {
        identities: sas
            .iter()
            .map(|(name, ns)| cfg().service_account_identity(name, ns))
            .collect(),
        suffixes: BTreeSet::new(),
    }
}

fn authz(name: &str, networks: Vec<Network>, authentication: Authentication) -> Authorization {
    Authorization {
        meta: Meta::policy("serverauthorization", name),
        networks,
        authentication,
    }
}

/// A Server selecting the port, with these authorizations.
fn server(authorizations: Vec<Authorization>) -> PortPolicy {
    PortPolicy {
        port: 8080,
        protocol: Protocol::Detect,
        server: Meta::policy("server", "web-http"),
        access: Access::Enforce,
        authorizations,
        http_routes: Vec::new(),
    }
}

fn default_policy(policy: DefaultPolicy) -> PortPolicy {
    PortPolicy::for_default(8080, Protocol::Detect, policy, &cfg().cluster_networks)
}

/// Kubelet probes as the compiler adds them: the probe route, and a catch-all
/// route that leaves every other request to the port's authorizations.
fn with_probes(mut policy: PortPolicy, paths: &[&str]) -> PortPolicy {
    policy.http_routes = vec![
        HttpRoute {
            meta: Meta::default("probe"),
            matches: paths
                .iter()
                .map(|p| RouteMatch {
                    path: Some(PathMatch::Exact(p.to_string())),
                    method: Some("GET".into()),
                    headers: Vec::new(),
                })
                .collect(),
            authorizations: vec![Authorization {
                meta: Meta::default("probe"),
                networks: any_net(),
                authentication: Authentication::Unauthenticated,
            }],
        },
        HttpRoute {
            meta: Meta::default("default"),
            matches: Vec::new(),
            authorizations: Vec::new(),
        },
    ];
    policy
}

/// The same routes in the order Linkerd's controller sends them: the
/// catch-all route first, the probe route second.
fn catch_all_first(mut policy: PortPolicy) -> PortPolicy {
    policy.http_routes.reverse();
    policy
}

fn with_routes(mut policy: PortPolicy, routes: Vec<HttpRoute>) -> PortPolicy {
    policy.http_routes = routes;
    policy
}

fn route(name: &str, matches: Vec<RouteMatch>, authorizations: Vec<Authorization>) -> HttpRoute {
    HttpRoute {
        meta: Meta::policy("httproute", name),
        matches,
        authorizations,
    }
}

fn path(p: PathMatch) -> RouteMatch {
    RouteMatch {
        path: Some(p),
        ..Default::default()
    }
}

fn plain(ip: &str) -> Client {
    Client {
        addr: ip.parse().unwrap(),
        tls: ClientTls::None,
    }
}

fn mesh_no_id(ip: &str) -> Client {
    Client {
        addr: ip.parse().unwrap(),
        tls: ClientTls::Mesh { identity: None },
    }
}

fn mesh(ip: &str, id: &str) -> Client {
    Client {
        addr: ip.parse().unwrap(),
        tls: ClientTls::Mesh {
            identity: Some(ClientIdentity::new(id, &cfg())),
        },
    }
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

fn get(path: &'static str) -> Option<Req> {
    Some(Req {
        method: "GET",
        path,
        headers: &[],
    })
}

fn post(path: &'static str) -> Option<Req> {
    Some(Req {
        method: "POST",
        path,
        headers: &[],
    })
}

#[derive(Debug, PartialEq)]
enum Want {
    /// Allowed by this authorization (`kind/name`), on this route if any.
    Allow(&'static str, Option<&'static str>),
    /// Allowed in audit mode; would have been denied for this reason.
    Audited(DenyReason),
    /// Denied for this reason, on this route if any.
    Deny(DenyReason, Option<&'static str>),
}

use DenyReason::*;
use Want::*;

struct Row {
    rule: &'static str,
    policy: PortPolicy,
    client: Client,
    /// `None`: the connection-level decision.
    request: Option<Req>,
    want: Want,
}

fn row(
    rule: &'static str,
    policy: PortPolicy,
    client: Client,
    request: Option<Req>,
    want: Want,
) -> Row {
    Row {
        rule,
        policy,
        client,
        request,
        want,
    }
}

// ---------------------------------------------------------------------------
// The spec.

fn rows() -> Vec<Row> {
    // Seed: "A ServerAuthorization that allows any unauthenticated clients" (web-public).
    let web_public = || {
        server(vec![authz(
            "web-public",
            any_net(),
            Authentication::Unauthenticated,
        )])
    };
    let unauthenticated_tls = || {
        server(vec![authz(
            "identity-bootstrap",
            any_net(),
            Authentication::TlsUnauthenticated,
        )])
    };
    let exact = || server(vec![authz("web-only", any_net(), identities(&[WEB]))]);
    // Seed: "allows meshed clients with *.emojivoto.serviceaccount... i.e. all
    // service accounts in the emojivoto namespace" (emoji-grpc).
    let emoji_grpc = || {
        server(vec![authz(
            "emoji-grpc",
            any_net(),
            identities(&["*.emojivoto.serviceaccount.identity.linkerd.cluster.local"]),
        )])
    };
    let star = || server(vec![authz("all-meshed", any_net(), identities(&["*"]))]);
    // Seed: "allows meshed clients with a specific service account" (prom-prometheus).
    let prom = || {
        server(vec![authz(
            "prom-prometheus",
            any_net(),
            service_accounts(&[("prometheus", "linkerd-viz")]),
        )])
    };
    let pod_net = || {
        server(vec![authz(
            "pod-net",
            net_except("10.0.0.0/8", &["10.1.0.0/16"]),
            Authentication::Unauthenticated,
        )])
    };
    // Networks written as IPv4-mapped IPv6 are read as the IPv4 networks they
    // carry, like mapped clients (hand-built: the authorizer canonicalizes).
    let mapped_except = || {
        server(vec![authz(
            "pod-net",
            net_except("10.0.0.0/8", &["::ffff:10.1.0.0/112"]),
            Authentication::Unauthenticated,
        )])
    };
    let mapped_cidr = || {
        server(vec![authz(
            "pod-net",
            net_except("::ffff:10.0.0.0/104", &["10.1.0.0/16"]),
            Authentication::Unauthenticated,
        )])
    };
    // An except of the other family would exclude nothing; entry points
    // reject it, and a hand-built one admits nothing rather than everything.
    let mixed_families = || {
        server(vec![authz(
            "mixed",
            net_except("0.0.0.0/0", &["fd00::/8"]),
            Authentication::Unauthenticated,
        )])
    };
    let cluster = || {
        server(vec![authz(
            "cluster-only",
            cfg().cluster_networks,
            Authentication::Unauthenticated,
        )])
    };
    let ordered = || {
        server(vec![
            authz("a-first", nets(&["192.168.0.0/16"]), identities(&["*"])),
            authz("b-second", any_net(), identities(&[WEB])),
            authz("c-third", any_net(), Authentication::Unauthenticated),
        ])
    };
    let audit_server = || {
        let mut p = exact();
        p.access = Access::Audit;
        p
    };
    let api_routes = || {
        with_routes(
            server(vec![authz(
                "port-cluster",
                cfg().cluster_networks,
                Authentication::Unauthenticated,
            )]),
            vec![
                route(
                    "api",
                    vec![path(PathMatch::Prefix("/api/".into()))],
                    vec![authz("api-web", any_net(), identities(&[WEB]))],
                ),
                route(
                    "tenant",
                    vec![RouteMatch {
                        path: Some(PathMatch::Regex("/t/[0-9]+".into())),
                        method: Some("GET".into()),
                        headers: vec![HeaderMatch {
                            name: "x-tenant".into(),
                            value: HeaderValueMatch::Exact("blue".into()),
                        }],
                    }],
                    vec![authz(
                        "tenant-any",
                        any_net(),
                        Authentication::Unauthenticated,
                    )],
                ),
            ],
        )
    };

    // Route precedence (Gateway API): every pair lists the broader route
    // first, so list order alone would pick the wrong one.
    let open = |name: &str| vec![authz(name, any_net(), Authentication::Unauthenticated)];
    let web_only = |name: &str| vec![authz(name, any_net(), identities(&[WEB]))];
    let prefixes = || {
        with_routes(
            server(Vec::new()),
            vec![
                route(
                    "broad",
                    vec![path(PathMatch::Prefix("/api".into()))],
                    open("broad-open"),
                ),
                route(
                    "narrow",
                    vec![path(PathMatch::Prefix("/api/admin/".into()))],
                    web_only("admin-web"),
                ),
            ],
        )
    };
    let exact_vs_prefix = || {
        with_routes(
            server(Vec::new()),
            vec![
                route(
                    "prefix",
                    vec![path(PathMatch::Prefix("/a/b".into()))],
                    open("prefix-open"),
                ),
                route(
                    "exact",
                    vec![path(PathMatch::Exact("/a/b".into()))],
                    web_only("exact-web"),
                ),
            ],
        )
    };
    let methods = || {
        let get = RouteMatch {
            method: Some("GET".into()),
            ..path(PathMatch::Prefix("/m".into()))
        };
        with_routes(
            server(Vec::new()),
            vec![
                route(
                    "any-method",
                    vec![path(PathMatch::Prefix("/m".into()))],
                    open("any-open"),
                ),
                route("get-only", vec![get], web_only("get-web")),
            ],
        )
    };
    let header = |name: &str| HeaderMatch {
        name: name.into(),
        value: HeaderValueMatch::Exact("1".into()),
    };
    let headers = || {
        let with = |names: &[&str]| RouteMatch {
            headers: names.iter().map(|n| header(n)).collect(),
            ..path(PathMatch::Prefix("/h".into()))
        };
        with_routes(
            server(Vec::new()),
            vec![
                route("one-header", vec![with(&["x-a"])], open("one-open")),
                route(
                    "two-headers",
                    vec![with(&["x-a", "x-b"])],
                    web_only("two-web"),
                ),
            ],
        )
    };
    let equal = |first: &str, second: &str| {
        let m = || RouteMatch {
            method: Some("GET".into()),
            ..path(PathMatch::Prefix("/e".into()))
        };
        with_routes(
            server(Vec::new()),
            vec![
                route(first, vec![m()], open(&format!("{first}-open"))),
                route(second, vec![m()], open(&format!("{second}-open"))),
            ],
        )
    };

    #[rustfmt::skip]
    let rows = vec![
        // --- client.unauthenticated: true ---
        row("unauthenticated admits plaintext clients", web_public(), plain("8.8.8.8"), None, Allow("serverauthorization/web-public", None)),
        row("unauthenticated admits IPv6 clients when ::/0 is listed", web_public(), plain("2001:db8::1"), None, Allow("serverauthorization/web-public", None)),
        row("unauthenticated admits meshed TLS without identity", web_public(), mesh_no_id("10.0.0.1"), None, Allow("serverauthorization/web-public", None)),
        row("unauthenticated admits meshed clients with an identity", web_public(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/web-public", None)),
        // --- meshTLS.unauthenticatedTLS: true ---
        row("unauthenticatedTLS refuses plaintext", unauthenticated_tls(), plain("10.0.0.1"), None, Deny(TlsRequired, None)),
        row("unauthenticatedTLS admits meshed TLS without a certificate", unauthenticated_tls(), mesh_no_id("10.0.0.1"), None, Allow("serverauthorization/identity-bootstrap", None)),
        row("unauthenticatedTLS admits meshed TLS with an identity", unauthenticated_tls(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/identity-bootstrap", None)),
        // --- meshTLS.identities: exact ---
        row("an exact identity admits that identity", exact(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/web-only", None)),
        row("an exact identity refuses another identity", exact(), mesh("10.0.0.1", PROMETHEUS), None, Deny(IdentityNotAuthorized, None)),
        row("identities require a client certificate", exact(), mesh_no_id("10.0.0.1"), None, Deny(IdentityRequired, None)),
        row("identities require meshed TLS", exact(), plain("10.0.0.1"), None, Deny(TlsRequired, None)),
        row("an exact DNS identity admits the SPIFFE ID of the same service account", exact(), mesh("10.0.0.1", "spiffe://cluster.local/ns/emojivoto/sa/web"), None, Allow("serverauthorization/web-only", None)),
        row("an exact URI identity admits that URI", server(vec![authz("uri", any_net(), identities(&["spiffe://example.org/ns/x/sa/y"]))]), mesh("10.0.0.1", "spiffe://example.org/ns/x/sa/y"), None, Allow("serverauthorization/uri", None)),
        // --- meshTLS.identities: *.suffix ---
        row("*.suffix admits a name in the domain", emoji_grpc(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/emoji-grpc", None)),
        row("*.suffix admits a deeper name in the domain", emoji_grpc(), mesh("10.0.0.1", &format!("a.{WEB}")), None, Allow("serverauthorization/emoji-grpc", None)),
        row("*.suffix does not admit the suffix itself", emoji_grpc(), mesh("10.0.0.1", EMOJIVOTO_SA), None, Deny(IdentityNotAuthorized, None)),
        row("*.suffix does not admit xsuffix (no dot boundary)", emoji_grpc(), mesh("10.0.0.1", &format!("x{EMOJIVOTO_SA}")), None, Deny(IdentityNotAuthorized, None)),
        row("*.suffix does not admit another namespace", emoji_grpc(), mesh("10.0.0.1", PROMETHEUS), None, Deny(IdentityNotAuthorized, None)),
        row("*.suffix admits a SPIFFE ID of our trust domain in the domain", emoji_grpc(), mesh("10.0.0.1", "spiffe://cluster.local/ns/emojivoto/sa/voting"), None, Allow("serverauthorization/emoji-grpc", None)),
        row("*.suffix does not admit a SPIFFE ID of another trust domain", emoji_grpc(), mesh("10.0.0.1", "spiffe://example.org/ns/emojivoto/sa/web"), None, Deny(IdentityNotAuthorized, None)),
        // --- meshTLS.identities: * ---
        row("* admits any DNS identity", star(), mesh("8.8.8.8", "anything.example.com"), None, Allow("serverauthorization/all-meshed", None)),
        row("* admits a SPIFFE ID of our trust domain", star(), mesh("8.8.8.8", "spiffe://cluster.local/ns/a/sa/b"), None, Allow("serverauthorization/all-meshed", None)),
        row("* does not admit other URIs (they match only exact entries)", star(), mesh("8.8.8.8", "spiffe://example.org/ns/a/sa/b"), None, Deny(IdentityNotAuthorized, None)),
        row("* requires a client certificate", star(), mesh_no_id("8.8.8.8"), None, Deny(IdentityRequired, None)),
        // --- meshTLS.serviceAccounts ---
        row("serviceAccounts admit the DNS identity NAME.NS.serviceaccount.identity.DOMAIN", prom(), mesh("10.0.0.1", PROMETHEUS), None, Allow("serverauthorization/prom-prometheus", None)),
        row("serviceAccounts admit the SPIFFE ID of our trust domain", prom(), mesh("10.0.0.1", "spiffe://cluster.local/ns/linkerd-viz/sa/prometheus"), None, Allow("serverauthorization/prom-prometheus", None)),
        row("serviceAccounts refuse the same name in another namespace", prom(), mesh("10.0.0.1", "prometheus.emojivoto.serviceaccount.identity.linkerd.cluster.local"), None, Deny(IdentityNotAuthorized, None)),
        row("serviceAccounts refuse a SPIFFE ID of another trust domain", prom(), mesh("10.0.0.1", "spiffe://example.org/ns/linkerd-viz/sa/prometheus"), None, Deny(IdentityNotAuthorized, None)),
        row("serviceAccounts refuse a SPIFFE ID with extra segments", prom(), mesh("10.0.0.1", "spiffe://cluster.local/ns/linkerd-viz/sa/prometheus/x"), None, Deny(IdentityNotAuthorized, None)),
        // --- networks ---
        row("a client inside the cidr is admitted", pod_net(), plain("10.2.3.4"), None, Allow("serverauthorization/pod-net", None)),
        row("a client in an except is refused", pod_net(), plain("10.1.3.4"), None, Deny(NetworkNotAuthorized, None)),
        row("a client outside the cidr is refused", pod_net(), plain("192.168.0.1"), None, Deny(NetworkNotAuthorized, None)),
        row("an IPv4-mapped IPv6 client is matched as IPv4", pod_net(), plain("::ffff:10.2.3.4"), None, Allow("serverauthorization/pod-net", None)),
        row("an IPv4-mapped IPv6 client in an except is refused", pod_net(), plain("::ffff:10.1.3.4"), None, Deny(NetworkNotAuthorized, None)),
        row("an except written as IPv4-mapped IPv6 excludes IPv4 clients", mapped_except(), plain("10.1.3.4"), None, Deny(NetworkNotAuthorized, None)),
        row("an except written as IPv4-mapped IPv6 excludes mapped clients", mapped_except(), plain("::ffff:10.1.3.4"), None, Deny(NetworkNotAuthorized, None)),
        row("outside a mapped except the cidr admits", mapped_except(), plain("10.2.3.4"), None, Allow("serverauthorization/pod-net", None)),
        row("a cidr written as IPv4-mapped IPv6 admits IPv4 clients", mapped_cidr(), plain("10.2.3.4"), None, Allow("serverauthorization/pod-net", None)),
        row("a mapped cidr still honours its IPv4 except", mapped_cidr(), plain("10.1.3.4"), None, Deny(NetworkNotAuthorized, None)),
        row("a network whose except is of the other family admits nothing", mixed_families(), plain("192.168.0.1"), None, Deny(NetworkNotAuthorized, None)),
        row("... whichever family the cidr is", with_routes(server(vec![authz("mixed", net_except("::/0", &["10.0.0.0/8"]), Authentication::Unauthenticated)]), Vec::new()), plain("fd00::1"), None, Deny(NetworkNotAuthorized, None)),
        row("an identity is refused outside the networks", server(vec![authz("web-pods", nets(&["10.0.0.0/8"]), identities(&[WEB]))]), mesh("8.8.8.8", WEB), None, Deny(NetworkNotAuthorized, None)),
        row("an empty network list admits no address", server(vec![authz("nowhere", Vec::new(), Authentication::Unauthenticated)]), plain("10.0.0.1"), None, Deny(NetworkNotAuthorized, None)),
        row("without networks, the cluster networks apply (IPv4 inside)", cluster(), plain("172.16.0.9"), None, Allow("serverauthorization/cluster-only", None)),
        row("without networks, the cluster networks apply (IPv6 inside)", cluster(), plain("fd00::9"), None, Allow("serverauthorization/cluster-only", None)),
        row("without networks, the cluster networks apply (outside refused)", cluster(), plain("8.8.8.8"), None, Deny(NetworkNotAuthorized, None)),
        // --- servers and ordering ---
        row("a Server with no authorizations denies everything", server(Vec::new()), mesh("10.0.0.1", WEB), None, Deny(NoAuthorizations, None)),
        row("the first authorization in order that admits the client decides", ordered(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/b-second", None)),
        row("an earlier authorization wins when it admits too", ordered(), mesh("192.168.1.1", WEB), None, Allow("serverauthorization/a-first", None)),
        row("a later catch-all decides when the earlier refuse", ordered(), plain("10.0.0.1"), None, Allow("serverauthorization/c-third", None)),
        // --- default policies (no Server selects the port) ---
        row("all-unauthenticated allows any client", default_policy(DefaultPolicy::AllUnauthenticated), plain("8.8.8.8"), None, Allow("default/all-unauthenticated", None)),
        row("all-authenticated refuses plaintext", default_policy(DefaultPolicy::AllAuthenticated), plain("10.0.0.1"), None, Deny(TlsRequired, None)),
        row("all-authenticated refuses TLS without identity", default_policy(DefaultPolicy::AllAuthenticated), mesh_no_id("10.0.0.1"), None, Deny(IdentityRequired, None)),
        row("all-authenticated allows meshed clients from anywhere", default_policy(DefaultPolicy::AllAuthenticated), mesh("8.8.8.8", WEB), None, Allow("default/all-authenticated", None)),
        row("cluster-authenticated allows meshed clients in the cluster", default_policy(DefaultPolicy::ClusterAuthenticated), mesh("10.0.0.1", WEB), None, Allow("default/cluster-authenticated", None)),
        row("cluster-authenticated refuses meshed clients outside the cluster", default_policy(DefaultPolicy::ClusterAuthenticated), mesh("8.8.8.8", WEB), None, Deny(NetworkNotAuthorized, None)),
        row("cluster-authenticated refuses plaintext in the cluster", default_policy(DefaultPolicy::ClusterAuthenticated), plain("10.0.0.1"), None, Deny(TlsRequired, None)),
        row("cluster-unauthenticated allows plaintext in the cluster", default_policy(DefaultPolicy::ClusterUnauthenticated), plain("192.168.3.4"), None, Allow("default/cluster-unauthenticated", None)),
        row("cluster-unauthenticated refuses clients outside the cluster", default_policy(DefaultPolicy::ClusterUnauthenticated), mesh("8.8.8.8", WEB), None, Deny(NetworkNotAuthorized, None)),
        row("deny refuses everything", default_policy(DefaultPolicy::Deny), mesh("10.0.0.1", WEB), None, Deny(DefaultDeny, None)),
        row("audit allows plaintext and flags it", default_policy(DefaultPolicy::Audit), plain("8.8.8.8"), None, Audited(NoAuthorizations)),
        row("audit allows meshed clients and flags them too", default_policy(DefaultPolicy::Audit), mesh("10.0.0.1", WEB), None, Audited(NoAuthorizations)),
        row("audit flags HTTP requests", default_policy(DefaultPolicy::Audit), plain("8.8.8.8"), get("/"), Audited(NoAuthorizations)),
        // --- a Server in audit mode (accessPolicy: audit) ---
        row("audit mode: an authorized client is allowed unflagged", audit_server(), mesh("10.0.0.1", WEB), None, Allow("serverauthorization/web-only", None)),
        row("audit mode: an unauthorized client is allowed and flagged with the reason", audit_server(), plain("10.0.0.1"), None, Audited(TlsRequired)),
        // --- kubelet probes ---
        row("a probe path is allowed for plaintext clients from anywhere on a deny port", with_probes(default_policy(DefaultPolicy::Deny), &["/ready", "/live"]), plain("8.8.8.8"), get("/live"), Allow("default/probe", Some("default/probe"))),
        row("probes are GET only; other methods fall to the catch-all route", with_probes(default_policy(DefaultPolicy::Deny), &["/ready"]), plain("8.8.8.8"), post("/ready"), Deny(DefaultDeny, Some("default/default"))),
        row("probe paths match exactly", with_probes(default_policy(DefaultPolicy::Deny), &["/ready"]), plain("8.8.8.8"), get("/ready/x"), Deny(DefaultDeny, Some("default/default"))),
        row("the catch-all route applies the port's authorizations", with_probes(default_policy(DefaultPolicy::AllUnauthenticated), &["/ready"]), plain("8.8.8.8"), get("/app"), Allow("default/all-unauthenticated", Some("default/default"))),
        row("probe routes do not open the connection level", with_probes(default_policy(DefaultPolicy::Deny), &["/ready"]), plain("8.8.8.8"), None, Deny(DefaultDeny, None)),
        row("probes on a Server without routes", with_probes(server(vec![authz("web-only", any_net(), identities(&[WEB]))]), &["/ready"]), plain("10.0.0.1"), get("/ready"), Allow("default/probe", Some("default/probe"))),
        row("probes win when the catch-all route is listed first (as Linkerd sends it)", catch_all_first(with_probes(default_policy(DefaultPolicy::Deny), &["/ready"])), plain("8.8.8.8"), get("/ready"), Allow("default/probe", Some("default/probe"))),
        row("with the catch-all listed first, other requests still take it", catch_all_first(with_probes(default_policy(DefaultPolicy::Deny), &["/ready"])), plain("8.8.8.8"), get("/app"), Deny(DefaultDeny, Some("default/default"))),
        row("other requests on that Server need its authorizations", with_probes(server(vec![authz("web-only", any_net(), identities(&[WEB]))]), &["/ready"]), plain("10.0.0.1"), get("/"), Deny(TlsRequired, Some("default/default"))),
        // --- HTTP routes ---
        row("a request no route matches is denied", api_routes(), mesh("10.0.0.1", WEB), get("/other"), Deny(NoRoute, None)),
        row("a route's authorizations admit first", api_routes(), mesh("8.8.8.8", WEB), get("/api/users"), Allow("serverauthorization/api-web", Some("httproute/api"))),
        row("then the port's authorizations apply on the route", api_routes(), plain("10.0.0.1"), get("/api/users"), Allow("serverauthorization/port-cluster", Some("httproute/api"))),
        row("a request on a route neither admits is denied naming the route", api_routes(), plain("8.8.8.8"), get("/api"), Deny(TlsRequired, Some("httproute/api"))),
        row("a path prefix matches whole segments only", api_routes(), mesh("10.0.0.1", WEB), get("/apiv2"), Deny(NoRoute, None)),
        row("a regex path, method and header all match", api_routes(), plain("8.8.8.8"), Some(Req { method: "GET", path: "/t/42", headers: &[("x-tenant", "blue")] }), Allow("serverauthorization/tenant-any", Some("httproute/tenant"))),
        row("a regex path matches the whole path", api_routes(), plain("8.8.8.8"), Some(Req { method: "GET", path: "/t/42/x", headers: &[("x-tenant", "blue")] }), Deny(NoRoute, None)),
        row("a header match must match", api_routes(), plain("8.8.8.8"), Some(Req { method: "GET", path: "/t/42", headers: &[("x-tenant", "red")] }), Deny(NoRoute, None)),
        row("a method match must match", api_routes(), plain("8.8.8.8"), Some(Req { method: "POST", path: "/t/42", headers: &[("x-tenant", "blue")] }), Deny(NoRoute, None)),
        // --- route precedence: the most specific match wins, not the first route ---
        row("a longer prefix beats a shorter one listed first", prefixes(), plain("8.8.8.8"), get("/api/admin/users"), Deny(TlsRequired, Some("httproute/narrow"))),
        row("the longer prefix's authorizations admit", prefixes(), mesh("8.8.8.8", WEB), get("/api/admin/users"), Allow("serverauthorization/admin-web", Some("httproute/narrow"))),
        row("outside the longer prefix the shorter one applies", prefixes(), plain("8.8.8.8"), get("/api/users"), Allow("serverauthorization/broad-open", Some("httproute/broad"))),
        row("an exact path beats an equal prefix listed first", exact_vs_prefix(), plain("8.8.8.8"), get("/a/b"), Deny(TlsRequired, Some("httproute/exact"))),
        row("below an exact path the prefix applies", exact_vs_prefix(), plain("8.8.8.8"), get("/a/b/c"), Allow("serverauthorization/prefix-open", Some("httproute/prefix"))),
        row("a match with a method beats one without", methods(), plain("8.8.8.8"), get("/m"), Deny(TlsRequired, Some("httproute/get-only"))),
        row("other methods take the method-less match", methods(), plain("8.8.8.8"), post("/m"), Allow("serverauthorization/any-open", Some("httproute/any-method"))),
        row("more header matches beat fewer", headers(), plain("8.8.8.8"), Some(Req { method: "GET", path: "/h", headers: &[("x-a", "1"), ("x-b", "1")] }), Deny(TlsRequired, Some("httproute/two-headers"))),
        row("the fewer-header match applies when the other does not match", headers(), plain("8.8.8.8"), Some(Req { method: "GET", path: "/h", headers: &[("x-a", "1")] }), Allow("serverauthorization/one-open", Some("httproute/one-header"))),
        row("equal specificity keeps list order", equal("alpha", "beta"), plain("8.8.8.8"), get("/e"), Allow("serverauthorization/alpha-open", Some("httproute/alpha"))),
        row("equal specificity keeps list order, whatever the names", equal("beta", "alpha"), plain("8.8.8.8"), get("/e"), Allow("serverauthorization/beta-open", Some("httproute/beta"))),
        row("without routes, requests use the port's authorizations", exact(), mesh("10.0.0.1", WEB), get("/anything"), Allow("serverauthorization/web-only", None)),
    ];
    rows
}

fn decide(a: &Authorizer, client: &Client, request: &Option<Req>) -> Want {
    let result = match request {
        None => authorize(a, client),
        Some(req) => {
            let method: http::Method = req.method.parse().unwrap();
            let mut headers = http::HeaderMap::new();
            for (k, v) in req.headers {
                headers.append(*k, v.parse().unwrap());
            }
            let r = HttpRequest {
                method: &method,
                path: req.path,
                headers: &headers,
            };
            return to_want(authorize_request(a, client, &r));
        }
    };
    to_want(result)
}

fn to_want(result: Result<portcullis_policy::Permit<'_>, portcullis_policy::Denied<'_>>) -> Want {
    // Leak the names so `Want` can stay `'static` and readable in the rows.
    let name = |m: &Meta| -> &'static str { Box::leak(m.to_string().into_boxed_str()) };
    match result {
        Ok(p) => match p.audited {
            Some(reason) => {
                assert_eq!(
                    p.authorization, p.server,
                    "an audited allow names the server"
                );
                Audited(reason)
            }
            None => Allow(name(p.authorization), p.route.map(name)),
        },
        Err(d) => Deny(d.reason, d.route.map(name)),
    }
}

#[test]
fn the_spec() {
    let mut failures = Vec::new();
    let rows = rows();
    for row in &rows {
        for threshold in [
            0,
            usize::MAX,
            portcullis_policy::authorize::DEFAULT_SCAN_THRESHOLD,
        ] {
            let a = Authorizer::with_scan_threshold(row.policy.clone(), threshold);
            assert!(a.problems().is_empty(), "{}: {:?}", row.rule, a.problems());
            let got = decide(&a, &row.client, &row.request);
            if got != row.want {
                failures.push(format!(
                    "{} (threshold {threshold}): want {:?}, got {:?}",
                    row.rule, row.want, got
                ));
            }
        }
    }
    assert!(rows.len() >= 60, "the spec lost rows: {}", rows.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_denial_names_the_server() {
    let a = Authorizer::from(server(Vec::new()));
    let denied = authorize(&a, &plain("10.0.0.1")).unwrap_err();
    assert_eq!(denied.server, &Meta::policy("server", "web-http"));
    assert_eq!(denied.route, None);
}

#[test]
fn every_deny_reason_describes_itself_distinctly() {
    let all = [
        DefaultDeny,
        NoAuthorizations,
        NetworkNotAuthorized,
        TlsRequired,
        IdentityRequired,
        IdentityNotAuthorized,
        NoRoute,
    ];
    let described: BTreeSet<&str> = all.iter().map(|r| r.describe()).collect();
    assert_eq!(described.len(), all.len());
    for r in all {
        assert_eq!(r.to_string(), r.describe());
        assert!(!r.describe().is_empty());
    }
    assert_eq!(
        serde_json::to_value(IdentityNotAuthorized).unwrap(),
        serde_json::json!("identity-not-authorized")
    );
}

#[test]
fn snapshots_decide_for_their_own_ports_and_the_fallback() {
    let mut ports = std::collections::BTreeMap::new();
    ports.insert(8080, exact_policy());
    let workload = WorkloadPolicy {
        workload: "emojivoto/web".into(),
        ports,
        default_policy: DefaultPolicy::Deny,
        opaque_ports: BTreeSet::from([3306]),
        cluster_networks: cfg().cluster_networks,
    };
    let snap = Snapshot::from_workload(workload, "test");
    let web = snap.get(8080);
    assert!(authorize(&web, &mesh("10.0.0.1", WEB)).is_ok());
    let other = snap.get(9999);
    assert_eq!(other.port, 9999);
    assert_eq!(
        authorize(&other, &mesh("10.0.0.1", WEB))
            .unwrap_err()
            .reason,
        DefaultDeny
    );
    assert_eq!(snap.protocol(3306), Protocol::Opaque);
    assert_eq!(snap.get(3306).protocol, Protocol::Opaque);
    let json = snap.to_json(7);
    assert_eq!(json["generation"], 7);
    assert_eq!(json["default_policy"], "deny");
}

fn exact_policy() -> PortPolicy {
    server(vec![authz("web-only", any_net(), identities(&[WEB]))])
}
