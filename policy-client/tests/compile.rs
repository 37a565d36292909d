//! Compiling resources into per-port policy: the seeds' examples end to end
//! (down to decisions), and one test per compilation rule.

use std::collections::BTreeSet;

use portcullis_policy::{
    authorize, authorize_request, compile, Access, Authentication, Authorization, Authorizer,
    Client, ClientIdentity, ClientTls, CompileError, DefaultPolicy, HttpRequest, Meta, Network,
    PathMatch, PolicyConfig, PortPolicy, Protocol, Resources, RouteMatch,
};

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn load_fixture(name: &str) -> Resources {
    Resources::load(&[fixture(name)]).unwrap_or_else(|e| panic!("{e}"))
}

fn load(yaml: &str) -> Resources {
    Resources::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn cfg() -> PolicyConfig {
    PolicyConfig::default()
}

fn port(res: &Resources, workload: &str, port: u16) -> PortPolicy {
    let compiled = compile(res, workload, &cfg()).unwrap_or_else(|e| panic!("{e}"));
    compiled
        .policy
        .ports
        .get(&port)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{workload} has no port {port}: {:?}",
                compiled.policy.ports.keys()
            )
        })
}

fn plain(ip: &str) -> Client {
    Client {
        addr: ip.parse().expect("ip"),
        tls: ClientTls::None,
    }
}

fn mesh(ip: &str, id: &str) -> Client {
    Client {
        addr: ip.parse().expect("ip"),
        tls: ClientTls::Mesh {
            identity: Some(ClientIdentity::new(id, &cfg())),
        },
    }
}

/// The connection-level decision: the deciding authorization, or the reason.
fn decide(policy: &PortPolicy, client: &Client) -> Result<String, String> {
    let authz = Authorizer::from(policy.clone());
    match authorize(&authz, client) {
        Ok(p) => Ok(p.authorization.to_string()),
        Err(d) => Err(format!("{:?}", d.reason)),
    }
}

/// A request decision: `route authorization`, or the reason.
fn decide_request(
    policy: &PortPolicy,
    client: &Client,
    method: &str,
    path: &str,
) -> Result<String, String> {
    let authz = Authorizer::from(policy.clone());
    let method = http::Method::from_bytes(method.as_bytes()).expect("method");
    let headers = http::HeaderMap::new();
    let req = HttpRequest {
        method: &method,
        path,
        headers: &headers,
    };
    match authorize_request(&authz, client, &req) {
        Ok(p) => Ok(format!(
            "{} {}",
            p.route.map(|r| r.to_string()).unwrap_or_default(),
            p.authorization
        )),
        Err(d) => Err(format!("{:?}", d.reason)),
    }
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const EMOJI_SA: &str = "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const WEB_SA: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const PROMETHEUS: &str = "prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local";

#[test]
fn emojivoto_emoji_pod() {
    let res = load_fixture("emojivoto.yaml");
    let compiled = compile(&res, "emojivoto/emoji", &cfg()).expect("compile");
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    assert_eq!(compiled.policy.workload, "emojivoto/emoji");
    assert_eq!(
        compiled.policy.ports.keys().copied().collect::<Vec<_>>(),
        [8080, 8801]
    );

    // grpc (8080): emoji-grpc, gRPC; the emoji-grpc ServerAuthorization
    // selects the Server by label and admits *.emojivoto identities from the
    // cluster networks (it has no networks of its own).
    let grpc = port(&res, "emojivoto/emoji", 8080);
    assert_eq!(grpc.server, Meta::policy("server", "emoji-grpc"));
    assert_eq!(grpc.protocol, Protocol::Grpc);
    assert_eq!(grpc.access, Access::Enforce);
    assert_eq!(
        grpc.authorizations,
        [Authorization {
            meta: Meta::policy("serverauthorization", "emoji-grpc"),
            networks: cfg().cluster_networks,
            authentication: Authentication::TlsAuthenticated {
                identities: BTreeSet::new(),
                suffixes: ids(&["emojivoto.serviceaccount.identity.linkerd.cluster.local"]),
            },
        }]
    );
    assert!(grpc.http_routes.is_empty());
    assert_eq!(
        decide(&grpc, &mesh("10.1.2.3", WEB_SA))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Ok("serverauthorization/emoji-grpc")
    );
    // The SPIFFE form of the same service account matches the suffix too.
    assert!(decide(
        &grpc,
        &mesh("10.1.2.3", "spiffe://cluster.local/ns/emojivoto/sa/web")
    )
    .is_ok());
    assert_eq!(
        decide(&grpc, &mesh("10.1.2.3", PROMETHEUS))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("IdentityNotAuthorized")
    );
    assert_eq!(
        decide(&grpc, &plain("10.1.2.3"))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("TlsRequired")
    );
    assert_eq!(
        decide(&grpc, &mesh("8.8.8.8", WEB_SA))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("NetworkNotAuthorized")
    );

    // prom (8801): the `prom` Server (empty podSelector) and the
    // prom-prometheus service account; plus the readiness probe route.
    let prom = port(&res, "emojivoto/emoji", 8801);
    assert_eq!(prom.server, Meta::policy("server", "prom"));
    assert_eq!(prom.protocol, Protocol::Detect);
    assert_eq!(
        prom.authorizations[0].authentication,
        Authentication::TlsAuthenticated {
            identities: ids(&[PROMETHEUS]),
            suffixes: BTreeSet::new(),
        }
    );
    assert_eq!(prom.http_routes.len(), 2);
    assert_eq!(prom.http_routes[0].meta, Meta::default("probe"));
    assert_eq!(
        prom.http_routes[0].matches,
        [RouteMatch {
            path: Some(PathMatch::Exact("/ready".into())),
            method: Some("GET".into()),
            headers: vec![],
        }]
    );
    assert_eq!(prom.http_routes[1].meta, Meta::default("default"));
    assert!(prom.http_routes[1].matches.is_empty());
    assert!(prom.http_routes[1].authorizations.is_empty());
    // kubelet (plaintext, any address) may GET /ready, nothing else.
    assert_eq!(
        decide_request(&prom, &plain("172.17.0.1"), "GET", "/ready")
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Ok("default/probe default/probe")
    );
    assert_eq!(
        decide_request(&prom, &plain("8.8.8.8"), "GET", "/ready")
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Ok("default/probe default/probe")
    );
    assert!(decide_request(&prom, &plain("172.17.0.1"), "POST", "/ready").is_err());
    assert!(decide_request(&prom, &plain("172.17.0.1"), "GET", "/metrics").is_err());
    assert!(decide_request(&prom, &plain("172.17.0.1"), "GET", "/ready/x").is_err());
    // Prometheus keeps its access through the catch-all route.
    assert_eq!(
        decide_request(&prom, &mesh("10.9.9.9", PROMETHEUS), "GET", "/metrics")
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Ok("default/default serverauthorization/prom-prometheus")
    );
}

#[test]
fn emojivoto_voting_and_web_pods() {
    let res = load_fixture("emojivoto.yaml");
    // backend-services selects voting's 8080 (HTTP/2); no ServerAuthorization
    // targets it, so everything is denied.
    let voting = port(&res, "emojivoto/voting", 8080);
    assert_eq!(voting.server, Meta::policy("server", "backend-services"));
    assert_eq!(voting.protocol, Protocol::Http2);
    assert!(voting.authorizations.is_empty());
    assert_eq!(
        decide(&voting, &mesh("10.0.0.1", WEB_SA))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("NoAuthorizations")
    );
    // The liveness probe path loses its query string.
    let metrics = port(&res, "emojivoto/voting", 8801);
    assert_eq!(
        metrics.http_routes[0].matches[0].path,
        Some(PathMatch::Exact("/healthz".into()))
    );
    assert!(decide_request(&metrics, &plain("10.0.0.9"), "GET", "/healthz").is_ok());

    // web-http with web-public: every address (0.0.0.0/0 and ::/0),
    // unauthenticated.
    let web = port(&res, "emojivoto/web", 8080);
    assert_eq!(web.server, Meta::policy("server", "web-http"));
    assert_eq!(web.protocol, Protocol::Http1);
    assert_eq!(
        web.authorizations,
        [Authorization {
            meta: Meta::policy("serverauthorization", "web-public"),
            networks: Network::all(),
            authentication: Authentication::Unauthenticated,
        }]
    );
    assert!(decide(&web, &plain("8.8.8.8")).is_ok());
    assert!(decide(&web, &plain("2001:db8::1")).is_ok());
    assert!(decide(&web, &mesh("10.0.0.1", EMOJI_SA)).is_ok());

    // A port no Server selects: the cluster default (all-unauthenticated).
    let compiled = compile(&res, "emojivoto/web", &cfg()).expect("compile");
    assert_eq!(
        compiled.policy.default_policy,
        DefaultPolicy::AllUnauthenticated
    );
    let other = compiled.policy.port(9999);
    assert_eq!(other.server, Meta::default("all-unauthenticated"));
    assert_eq!(compiled.policy.port(3306).protocol, Protocol::Opaque);
}

#[test]
fn walkthrough_network_authentication_policy() {
    let res = load_fixture("walkthrough.yaml");
    let compiled = compile(&res, "demo/backend", &cfg()).expect("compile");
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    // The demo namespace's default is deny.
    assert_eq!(compiled.policy.default_policy, DefaultPolicy::Deny);
    let backend = port(&res, "demo/backend", 8080);
    let nap = Meta::policy(
        "networkauthenticationpolicy",
        "frontend-can-talk-to-backend",
    );
    assert_eq!(backend.server, nap);
    assert_eq!(backend.protocol, Protocol::Detect);
    assert_eq!(
        backend.authorizations,
        [Authorization {
            meta: nap.clone(),
            networks: cfg().cluster_networks,
            // frontend runs as the namespace's default service account.
            authentication: Authentication::TlsAuthenticated {
                identities: ids(&["default.demo.serviceaccount.identity.linkerd.cluster.local"]),
                suffixes: BTreeSet::new(),
            },
        }]
    );
    let frontend_id = "default.demo.serviceaccount.identity.linkerd.cluster.local";
    assert!(decide(&backend, &mesh("10.42.0.5", frontend_id)).is_ok());
    assert_eq!(
        decide(&backend, &plain("10.42.0.5"))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("TlsRequired"),
        "curl without the mesh fails"
    );
    // "allows a frontend to talk to a backend on port 80, but not on 9000".
    let other = compiled.policy.port(9000);
    assert_eq!(other.server, Meta::default("deny"));
    assert_eq!(
        decide(&other, &mesh("10.42.0.5", frontend_id))
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("DefaultDeny")
    );
    // The frontend itself: port 80 under the namespace's deny default.
    let frontend = port(&res, "demo/frontend", 80);
    assert_eq!(frontend.server, Meta::default("deny"));
}

#[test]
fn network_authentication_policy_details() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 9000, name: admin}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: checkout, namespace: shop, labels: {app: checkout}}
spec: {serviceAccountName: checkout, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: checkout-2, namespace: shop, labels: {app: checkout}}
spec: {serviceAccountName: checkout, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: scraper, namespace: monitoring, labels: {app: scraper}}
spec: {serviceAccountName: prom, containers: []}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-admin, namespace: shop}
spec: {podSelector: {matchLabels: {app: api}}, port: admin, proxyProtocol: HTTP/1}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: admin-ops, namespace: shop}
spec: {server: {name: api-admin}, client: {meshTLS: {identities: [ops.example]}}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthenticationPolicy
metadata: {name: scrape, namespace: shop}
spec:
  target: {selector: {matchLabels: {app: api}}}
  ports: [{port: admin}]
  sources: [{podSelector: {matchLabels: {app: scraper}}, namespace: monitoring}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthenticationPolicy
metadata: {name: checkout-to-api, namespace: shop}
spec:
  target: {selector: {matchLabels: {app: api}}}
  ports: [{port: http}]
  sources: [{podSelector: {matchLabels: {app: checkout}}}, {podSelector: {matchLabels: {app: scraper}}}]
";
    let res = load(yaml);
    // Port by name; sources in the policy's namespace (the scraper source
    // matches nothing there); service accounts deduplicated.
    let http = port(&res, "shop/api", 8080);
    assert_eq!(
        http.server,
        Meta::policy("networkauthenticationpolicy", "checkout-to-api")
    );
    assert_eq!(
        http.authorizations[0].authentication,
        Authentication::TlsAuthenticated {
            identities: ids(&["checkout.shop.serviceaccount.identity.linkerd.cluster.local"]),
            suffixes: BTreeSet::new(),
        }
    );
    // A port with a Server: the policy's authorization joins the Server's,
    // after them; the Server stays the deciding server.
    let admin = port(&res, "shop/api", 9000);
    assert_eq!(admin.server, Meta::policy("server", "api-admin"));
    assert_eq!(admin.protocol, Protocol::Http1);
    let metas: Vec<String> = admin
        .authorizations
        .iter()
        .map(|a| a.meta.to_string())
        .collect();
    assert_eq!(
        metas,
        [
            "serverauthorization/admin-ops",
            "networkauthenticationpolicy/scrape"
        ]
    );
    assert_eq!(
        admin.authorizations[1].authentication,
        Authentication::TlsAuthenticated {
            identities: ids(&["prom.monitoring.serviceaccount.identity.linkerd.cluster.local"]),
            suffixes: BTreeSet::new(),
        }
    );
    // Pods the target does not select are untouched.
    let compiled = compile(&res, "shop/checkout", &cfg()).expect("compile");
    assert!(compiled.policy.ports.is_empty());
}

#[test]
fn authorizations_compile_to_plain_data() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns, labels: {app: x}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: s, namespace: ns, labels: {tier: front}}
spec: {podSelector: {matchLabels: {app: x}}, port: 80, proxyProtocol: TLS}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: zz-any, namespace: ns}
spec: {server: {selector: {matchExpressions: [{key: tier, operator: Exists}]}}, client: {meshTLS: {identities: ['*']}}}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: aa-sa, namespace: ns}
spec:
  server: {name: s}
  client:
    meshTLS: {serviceAccounts: [{name: web}, {name: prometheus, namespace: linkerd-viz}]}
    networks: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: mm-tls, namespace: ns}
spec: {server: {name: s}, client: {meshTLS: {unauthenticatedTLS: true}}}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: other-ns, namespace: elsewhere}
spec: {server: {name: s}, client: {unauthenticated: true}}
";
    let mut config = cfg();
    config.identity_domain = "example.org".into();
    let res = load(yaml);
    let compiled = compile(&res, "ns/p", &config).expect("compile");
    let p = &compiled.policy.ports[&80];
    assert_eq!(p.protocol, Protocol::Tls);
    // Sorted by name; the one in another namespace does not apply.
    let metas: Vec<String> = p
        .authorizations
        .iter()
        .map(|a| a.meta.to_string())
        .collect();
    assert_eq!(
        metas,
        [
            "serverauthorization/aa-sa",
            "serverauthorization/mm-tls",
            "serverauthorization/zz-any"
        ]
    );
    assert_eq!(
        p.authorizations[0].authentication,
        Authentication::TlsAuthenticated {
            identities: ids(&[
                "prometheus.linkerd-viz.serviceaccount.identity.example.org",
                "web.ns.serviceaccount.identity.example.org",
            ]),
            suffixes: BTreeSet::new(),
        }
    );
    assert_eq!(
        p.authorizations[0].networks,
        [Network {
            net: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.9.0.0/16".parse().unwrap()],
        }]
    );
    assert_eq!(
        p.authorizations[1].authentication,
        Authentication::TlsUnauthenticated
    );
    assert_eq!(p.authorizations[1].networks, config.cluster_networks);
    assert_eq!(
        p.authorizations[2].authentication,
        Authentication::any_identity()
    );
    // Deterministic: compiling twice gives the same policy.
    assert_eq!(compile(&res, "ns/p", &config).expect("compile"), compiled);
}

#[test]
fn overlapping_servers_older_wins_with_a_warning() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: x}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: zz-older}
spec: {podSelector: {matchLabels: {app: x}}, port: http, proxyProtocol: HTTP/1}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: aa-newer}
spec: {podSelector: {}, port: 8080, proxyProtocol: opaque}
";
    let res = load(yaml);
    let compiled = compile(&res, "default/p", &cfg()).expect("compile");
    let p = &compiled.policy.ports[&8080];
    assert_eq!(p.server, Meta::policy("server", "zz-older"));
    assert_eq!(p.protocol, Protocol::Http1);
    assert_eq!(compiled.warnings.len(), 1);
    assert!(
        compiled.warnings[0]
            .contains("Server/default/zz-older and Server/default/aa-newer both select port 8080"),
        "{}",
        compiled.warnings[0]
    );
    assert_eq!(res.check(&cfg()).len(), 1);
}

#[test]
fn port_names_resolve_only_through_declared_ports() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: x}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}, {name: d, ports: [{containerPort: 9090, name: metrics}]}]}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: by-name}
spec: {podSelector: {}, port: metrics}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: undeclared-name}
spec: {podSelector: {}, port: grpc}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: undeclared-number}
spec: {podSelector: {}, port: 7000}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: other-pods}
spec: {podSelector: {matchLabels: {app: y}}, port: 8080}
";
    let res = load(yaml);
    let compiled = compile(&res, "default/p", &cfg()).expect("compile");
    let ports: Vec<(u16, String)> = compiled
        .policy
        .ports
        .iter()
        .map(|(p, pp)| (*p, pp.server.to_string()))
        .collect();
    assert_eq!(
        ports,
        [
            (7000, "server/undeclared-number".to_string()),
            (8080, "default/all-unauthenticated".to_string()),
            (9090, "server/by-name".to_string()),
        ]
    );
    assert_eq!(compiled.warnings.len(), 1, "{:?}", compiled.warnings);
    assert!(compiled.warnings[0].contains("\"grpc\" is not a declared container port"));
}

#[test]
fn default_policy_precedence() {
    let doc = |pod_ann: Option<&str>, ns_ann: Option<&str>| {
        let ann = |v: Option<&str>| {
            v.map(|v| format!(", annotations: {{config.linkerd.io/default-inbound-policy: '{v}'}}"))
                .unwrap_or_default()
        };
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns{}}}\n\
             spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n",
            ann(ns_ann),
            ann(pod_ann)
        )
    };
    let mut config = cfg();
    config.default_policy = DefaultPolicy::ClusterAuthenticated;
    let cases: &[(Option<&str>, Option<&str>, DefaultPolicy, usize)] = &[
        (None, None, DefaultPolicy::ClusterAuthenticated, 0),
        (None, Some("deny"), DefaultPolicy::Deny, 0),
        (
            Some("all-authenticated"),
            Some("deny"),
            DefaultPolicy::AllAuthenticated,
            0,
        ),
        (Some("audit"), None, DefaultPolicy::Audit, 0),
        (
            Some("cluster-unauthenticated"),
            None,
            DefaultPolicy::ClusterUnauthenticated,
            0,
        ),
        (
            Some("all-unauthenticated"),
            None,
            DefaultPolicy::AllUnauthenticated,
            0,
        ),
        // An unknown value skips its level, never allows.
        (Some("allow"), Some("deny"), DefaultPolicy::Deny, 1),
        (
            Some("allow"),
            Some("alow"),
            DefaultPolicy::ClusterAuthenticated,
            2,
        ),
        (None, Some("Deny"), DefaultPolicy::ClusterAuthenticated, 1),
    ];
    for (pod, ns, want, warnings) in cases {
        let res = load(&doc(*pod, *ns));
        let compiled = compile(&res, "ns/p", &config).expect("compile");
        assert_eq!(compiled.policy.default_policy, *want, "{pod:?} {ns:?}");
        assert_eq!(
            compiled.policy.ports[&80].server,
            Meta::default(want.as_str())
        );
        assert_eq!(
            compiled.warnings.len(),
            *warnings,
            "{:?}",
            compiled.warnings
        );
        for w in &compiled.warnings {
            assert!(w.contains("Pod/ns/p") || w.contains("Namespace/ns"), "{w}");
        }
    }
    // Audit marks the port's access.
    let res = load(&doc(Some("audit"), None));
    let p = &compile(&res, "ns/p", &config)
        .expect("compile")
        .policy
        .ports[&80];
    assert_eq!(p.access, Access::Audit);
    // Without a Namespace resource in the input, the pod's annotation or the config.
    let res = load(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\nspec: {containers: []}\n",
    );
    assert_eq!(
        compile(&res, "ns/p", &config)
            .expect("compile")
            .policy
            .default_policy,
        DefaultPolicy::ClusterAuthenticated
    );
}

#[test]
fn opaque_ports() {
    let yaml = |pod_ann: &str, ns_ann: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns, annotations: {{{ns_ann}}}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, annotations: {{{pod_ann}}}}}\n\
             spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 3306}}, {{containerPort: 4001}}, {{containerPort: 7000, name: mysql-x}}, {{containerPort: 8443}}]}}]}}\n---\n\
             apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {{name: s, namespace: ns}}\n\
             spec: {{podSelector: {{}}, port: 8443, proxyProtocol: HTTP/2}}\n"
        )
    };
    let protocols = |res: &Resources| -> Vec<(u16, Protocol)> {
        compile(res, "ns/p", &cfg())
            .expect("compile")
            .policy
            .ports
            .iter()
            .map(|(p, pp)| (*p, pp.protocol))
            .collect()
    };
    use Protocol::*;
    // The configured list (3306) only.
    let res = load(&yaml("", ""));
    assert_eq!(
        protocols(&res),
        [
            (80, Detect),
            (3306, Opaque),
            (4001, Detect),
            (7000, Detect),
            (8443, Http2)
        ]
    );
    // Pod annotation: numbers, ranges, names; a Server's protocol wins.
    let res = load(&yaml(
        "config.linkerd.io/opaque-ports: '80, 4000-4100,mysql-x,8443'",
        "",
    ));
    assert_eq!(
        protocols(&res),
        [
            (80, Opaque),
            (3306, Opaque),
            (4001, Opaque),
            (7000, Opaque),
            (8443, Http2)
        ]
    );
    let compiled = compile(&res, "ns/p", &cfg()).expect("compile");
    assert!(compiled.policy.opaque_ports.contains(&4100));
    assert!(
        compiled.policy.opaque_ports.contains(&25),
        "config list kept"
    );
    assert_eq!(
        compiled.policy.port(4050).protocol,
        Opaque,
        "undeclared port"
    );
    // The namespace's annotation when the pod has none.
    let res = load(&yaml("", "config.linkerd.io/opaque-ports: '80'"));
    assert_eq!(protocols(&res)[0], (80, Opaque));
    // The pod's annotation replaces the namespace's.
    let res = load(&yaml(
        "config.linkerd.io/opaque-ports: '4001'",
        "config.linkerd.io/opaque-ports: '80'",
    ));
    assert_eq!(protocols(&res)[0], (80, Detect));
    // Bad entries are skipped with a warning naming the pod.
    let res = load(&yaml(
        "config.linkerd.io/opaque-ports: '80,x_y,90-80,nope,0'",
        "",
    ));
    let compiled = compile(&res, "ns/p", &cfg()).expect("compile");
    assert_eq!(compiled.policy.ports[&80].protocol, Opaque);
    assert_eq!(compiled.warnings.len(), 4, "{:?}", compiled.warnings);
    assert!(compiled.warnings.iter().all(|w| w.starts_with("Pod/ns/p")));
}

#[test]
fn probes() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns, labels: {app: x}, annotations: {config.linkerd.io/default-inbound-policy: deny}}
spec:
  containers:
  - name: app
    ports: [{containerPort: 8080, name: http}]
    livenessProbe: {httpGet: {path: /live, port: http}}
    readinessProbe: {httpGet: {path: '/ready?full=1', port: 8080}}
    startupProbe: {httpGet: {port: 9990}}
  - name: other
    ports: [{containerPort: 9443, name: https}]
    livenessProbe: {httpGet: {path: /tls, port: https, scheme: HTTPS}}
    readinessProbe: {tcpSocket: {port: 9443}}
  - name: misnamed
    livenessProbe: {httpGet: {path: /x, port: http}}
";
    let res = load(yaml);
    let compiled = compile(&res, "ns/p", &cfg()).expect("compile");
    // 9990 is probed but not declared: it still gets a policy.
    assert_eq!(
        compiled.policy.ports.keys().copied().collect::<Vec<_>>(),
        [8080, 9443, 9990]
    );
    // A probe port name resolves through its own container's ports only.
    assert_eq!(compiled.warnings.len(), 1, "{:?}", compiled.warnings);
    assert!(compiled.warnings[0].contains("container misnamed"));
    let app = &compiled.policy.ports[&8080];
    assert_eq!(app.server, Meta::default("deny"));
    let paths: Vec<_> = app.http_routes[0]
        .matches
        .iter()
        .map(|m| m.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            Some(PathMatch::Exact("/live".into())),
            Some(PathMatch::Exact("/ready".into()))
        ]
    );
    assert_eq!(
        app.http_routes[0].authorizations,
        [Authorization {
            meta: Meta::default("probe"),
            networks: Network::all(),
            authentication: Authentication::Unauthenticated,
        }]
    );
    assert!(decide_request(app, &plain("192.0.2.1"), "GET", "/live").is_ok());
    assert!(decide_request(app, &plain("192.0.2.1"), "GET", "/ready").is_ok());
    assert_eq!(
        decide_request(app, &plain("192.0.2.1"), "GET", "/other")
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("DefaultDeny")
    );
    // TCP (opaque) use of the port is still denied: probes are HTTP only.
    assert!(decide(app, &plain("192.0.2.1")).is_err());
    // No path: `/`.
    assert_eq!(
        compiled.policy.ports[&9990].http_routes[0].matches[0].path,
        Some(PathMatch::Exact("/".into()))
    );
    // HTTPS probes get no route: the proxy never sees their requests.
    assert!(compiled.policy.ports[&9443].http_routes.is_empty());

    // A Server on the probe port (with no routes of its own) keeps the probe.
    let with_server = format!(
        "{yaml}---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {{name: s, namespace: ns}}\nspec: {{podSelector: {{}}, port: http}}\n"
    );
    let res = load(&with_server);
    let p = port(&res, "ns/p", 8080);
    assert_eq!(p.server, Meta::policy("server", "s"));
    assert_eq!(p.http_routes.len(), 2);
    assert_eq!(
        decide_request(&p, &plain("192.0.2.1"), "GET", "/other")
            .as_ref()
            .map(String::as_str)
            .map_err(String::as_str),
        Err("NoAuthorizations")
    );
    assert!(decide_request(&p, &plain("192.0.2.1"), "GET", "/live").is_ok());
}

#[test]
fn workloads_and_errors() {
    let res = load_fixture("kubectl-pod.yaml");
    let compiled = compile(&res, "emojivoto/web-5f86686c4d-58p7k", &cfg()).expect("compile");
    let ports: Vec<u16> = compiled.policy.ports.keys().copied().collect();
    assert_eq!(ports, [4000, 4143, 4191, 8080]);
    assert_eq!(
        compiled.policy.default_policy,
        DefaultPolicy::AllAuthenticated
    );
    // opaque-ports `4000-4002,metrics` (metrics = 4000).
    assert_eq!(compiled.policy.ports[&4000].protocol, Protocol::Opaque);
    assert_eq!(compiled.policy.port(4002).protocol, Protocol::Opaque);
    assert_eq!(compiled.policy.ports[&8080].protocol, Protocol::Detect);
    // The proxy's own probes and the app's.
    assert_eq!(compiled.policy.ports[&4191].http_routes[0].matches.len(), 2);
    assert_eq!(
        compiled.policy.ports[&8080].http_routes[0].matches[0].path,
        Some(PathMatch::Exact("/healthz".into()))
    );

    for bad in ["", "web", "/web", "emojivoto/", "a/b/c"] {
        assert_eq!(
            compile(&res, bad, &cfg()),
            Err(CompileError::BadWorkload(bad.to_string()))
        );
    }
    let err = compile(&res, "emojivoto/nope", &cfg()).unwrap_err();
    assert_eq!(
        err,
        CompileError::UnknownPod {
            namespace: "emojivoto".into(),
            name: "nope".into()
        }
    );
    assert!(err.to_string().contains("emojivoto/nope"));
}
