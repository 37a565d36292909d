//! Loading and validating resource files: every kind, every rule, and every
//! error naming file, document, resource and field. Fixtures are in the
//! workspace's `tests/fixtures/`.

use portcullis_policy::resources::{ClientAuth, PortRef, ResourceError, ServerTarget};
use portcullis_policy::{PolicyConfig, Protocol, Resources};

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn load(yaml: &str) -> Resources {
    Resources::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

fn errors(yaml: &str) -> Vec<ResourceError> {
    match Resources::from_yaml(yaml, "test.yaml") {
        Ok(r) => panic!("expected errors, loaded {r:?}"),
        Err(e) => e.0,
    }
}

/// `(field, message contains)` of each error.
fn assert_errors(yaml: &str, want: &[(&str, &str)]) {
    let got = errors(yaml);
    assert_eq!(
        got.len(),
        want.len(),
        "{yaml}\ngot:\n{}",
        got.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (e, (field, msg)) in got.iter().zip(want) {
        assert_eq!(e.field, *field, "{yaml}\n{e}");
        assert!(e.message.contains(msg), "{yaml}\n{e}\nwant: {msg}");
    }
}

const SERVER: &str =
    "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s, namespace: ns}\n";
const AUTHZ: &str =
    "apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: a, namespace: ns}\n";
const NAP: &str = "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthenticationPolicy\nmetadata: {name: n, namespace: ns}\n";

#[test]
fn fixtures_load_and_are_consistent() {
    let cfg = PolicyConfig::default();
    for name in [
        "emojivoto.yaml",
        "walkthrough.yaml",
        "kubectl-pod.yaml",
        "kubectl-list.yaml",
    ] {
        let res = Resources::load(&[fixture(name)]).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        let problems = res.check(&cfg);
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    let all = Resources::load(&[fixture("")]).unwrap_or_else(|e| panic!("{e}"));
    assert!(all.check(&cfg).is_empty());
    let pods = all.pods();
    for pod in [
        ("emojivoto", "emoji"),
        ("emojivoto", "voting"),
        ("emojivoto", "web"),
        ("emojivoto", "web-5f86686c4d-58p7k"),
        ("demo", "api-7d9c8b6f5-kq2zt"),
        ("demo", "frontend"),
        ("demo", "backend"),
    ] {
        assert!(
            pods.contains(&(pod.0.to_string(), pod.1.to_string())),
            "{pod:?} in {pods:?}"
        );
    }
    assert_eq!(pods.len(), 7);
    // Directory files are read sorted by name: emojivoto.yaml comes first.
    assert!(all.servers[0].origin.file.ends_with("emojivoto.yaml"));
}

#[test]
fn emojivoto_docs_examples_read_as_documented() {
    let res = Resources::load(&[fixture("emojivoto.yaml")]).unwrap_or_else(|e| panic!("{e}"));
    let server = |n: &str| res.servers.iter().find(|s| s.name == n).expect(n);
    assert_eq!(server("emoji-grpc").port, PortRef::Name("grpc".into()));
    assert_eq!(server("emoji-grpc").protocol, Protocol::Grpc);
    assert_eq!(server("backend-services").port, PortRef::Number(8080));
    assert_eq!(server("backend-services").protocol, Protocol::Http2);
    assert_eq!(server("prom").protocol, Protocol::Detect, "default unknown");
    assert!(server("prom").pod_selector.is_empty());
    let authz = |n: &str| res.authorizations.iter().find(|a| a.name == n).expect(n);
    assert!(matches!(
        authz("emoji-grpc").server,
        ServerTarget::Selector(_)
    ));
    assert_eq!(
        authz("emoji-grpc").client,
        ClientAuth::Identities {
            identities: Default::default(),
            suffixes: ["emojivoto.serviceaccount.identity.linkerd.cluster.local".to_string()]
                .into()
        }
    );
    assert_eq!(
        authz("web-public").server,
        ServerTarget::Name("web-http".into())
    );
    assert_eq!(authz("web-public").client, ClientAuth::Unauthenticated);
    assert_eq!(authz("web-public").networks.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        authz("prom-prometheus").client,
        ClientAuth::ServiceAccounts(vec![("prometheus".into(), "linkerd-viz".into())])
    );
    assert_eq!(authz("prom-prometheus").networks, None);
    // Origins: file and 1-based document number.
    assert_eq!(server("emoji-grpc").origin.doc, 5);
    assert!(server("emoji-grpc").origin.file.ends_with("emojivoto.yaml"));
}

#[test]
fn kubectl_output_loads_with_status_and_managed_fields() {
    let res = Resources::load(&[fixture("kubectl-pod.yaml")]).unwrap_or_else(|e| panic!("{e}"));
    let pod = res
        .workload("emojivoto", "web-5f86686c4d-58p7k")
        .expect("pod");
    assert_eq!(pod.kind, "Pod");
    assert_eq!(pod.service_account, "web");
    assert_eq!(pod.pod_ip, Some("10.42.0.17".parse().unwrap()));
    let ports: Vec<u16> = pod.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [4143, 4191, 8080, 4000], "UDP 5353 is not proxied");
    let probes: Vec<(PortRef, &str)> = pod
        .probes
        .iter()
        .map(|p| (p.port.clone(), p.path.as_str()))
        .collect();
    assert_eq!(
        probes,
        [
            (PortRef::Number(4191), "/live"),
            (PortRef::Number(4191), "/ready"),
            (PortRef::Number(8080), "/healthz"),
        ]
    );

    let list = Resources::load(&[fixture("kubectl-list.yaml")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.workloads.len(), 1);
    assert_eq!(list.servers.len(), 1, "the Service is skipped");
    assert_eq!(
        list.workloads[0].pod_ip,
        Some("fd00:10:42::17".parse().unwrap())
    );
    assert_eq!(list.servers[0].origin.doc, 1);
}

#[test]
fn kinds_documents_and_defaults() {
    // Empty documents are skipped; other kinds outside policy.linkerd.io too.
    let res = load(
        "---\n---\n# only a comment\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n\
         apiVersion: example.com/v1\nkind: Server\nmetadata: {name: y}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: z}\ndata: {a: b}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
    );
    assert_eq!(res.pods(), [("default".to_string(), "p".to_string())]);
    assert_eq!(res.workloads[0].service_account, "default");
    assert!(res.servers.is_empty());
    assert_eq!(load("").pods().len(), 0);

    // Namespace defaults to `default` for policies too.
    let res = load(
        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspec: {podSelector: {}, port: 80}\n",
    );
    assert_eq!(res.servers[0].namespace, "default");

    // Every apps/v1 workload kind counts as a pod named after it.
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"] {
        let res = load(&format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: w, namespace: n}}\n\
             spec:\n  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata:\n      \
             labels: {{app: w}}\n      annotations: {{config.linkerd.io/default-inbound-policy: deny}}\n    \
             spec:\n      serviceAccountName: w-sa\n      containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]\n"
        ));
        let w = &res.workloads[0];
        assert_eq!(
            (w.kind.as_str(), w.namespace.as_str(), w.name.as_str()),
            (kind, "n", "w")
        );
        assert_eq!(w.labels.get("app").map(String::as_str), Some("w"));
        assert_eq!(w.service_account, "w-sa");
        assert_eq!(w.ports[0].port, 8080);
        assert!(w
            .annotations
            .contains_key("config.linkerd.io/default-inbound-policy"));
    }

    // Native sidecars (restartPolicy: Always init containers) declare ports;
    // ordinary init containers do not.
    let res = load(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  initContainers:\n  \
         - {name: side, restartPolicy: Always, ports: [{containerPort: 4191, name: admin}]}\n  \
         - {name: init, ports: [{containerPort: 9999}]}\n  containers: [{name: c}]\n",
    );
    let ports: Vec<u16> = res.workloads[0].ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [4191]);

    // YAML merge keys, as Kubernetes' YAML reader applies them.
    let res = load(
        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\n\
         spec:\n  <<: {podSelector: {}, proxyProtocol: opaque}\n  port: 3306\n",
    );
    assert_eq!(res.servers[0].protocol, Protocol::Opaque);
}

#[test]
fn error_display_names_file_doc_resource_and_field() {
    let errs = errors(&format!("{SERVER}spec:\n  podSelecter: {{}}\n  port: 80\n"));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, "test.yaml");
    assert_eq!(errs[0].doc, 1);
    assert_eq!(errs[0].resource.as_deref(), Some("Server/ns/s"));
    assert_eq!(errs[0].field, "spec.podSelecter");
    assert!(
        errs[0].message.contains("did you mean \"podSelector\"?"),
        "{}",
        errs[0]
    );
    // As README's "Resources" section shows it.
    assert_eq!(
        errs[0].to_string(),
        "test.yaml:1 Server/ns/s: spec.podSelecter: unknown field \"podSelecter\" (did you mean \"podSelector\"?); expected one of podSelector, port, proxyProtocol"
    );

    // No resource known: the part is left out.
    let errs = errors("- a\n- b\n");
    assert_eq!(
        errs[0].to_string(),
        "test.yaml:1: a document must be a Kubernetes object (a mapping), not a list"
    );

    // ResourceErrors: one per line, all of them.
    let yaml = format!(
        "{SERVER}spec: {{podSelector: {{}}, port: 0}}\n---\n{AUTHZ}spec: {{server: {{name: s}}}}\n"
    );
    let err = Resources::from_yaml(&yaml, "f.yaml").unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "f.yaml:1 Server/ns/s: spec.port: port 0 is out of range 1-65535",
            "f.yaml:2 ServerAuthorization/ns/a: spec.client: required: one of meshTLS, unauthenticated: true",
        ]
    );
    let _: &dyn std::error::Error = &err;

    // An except of the other address family than its cidr excludes nothing:
    // an error naming file, document, resource and field.
    let yaml = format!(
        "{SERVER}spec: {{podSelector: {{}}, port: 80}}\n---\n{AUTHZ}spec:\n  server: {{name: s}}\n  client:\n    unauthenticated: true\n    networks: [{{cidr: 10.0.0.0/8}}, {{cidr: '::/0', except: ['fd00::/8', '::ffff:10.1.0.0/112']}}]\n"
    );
    let err = Resources::from_yaml(&yaml, "nets.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "nets.yaml:2 ServerAuthorization/ns/a: spec.client.networks[1].except[1]: 10.1.0.0/16 (::ffff:10.1.0.0/112) is not of the address family of cidr ::/0, so it would exclude nothing"
    );
}

#[test]
fn document_level_errors() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("kind: Server\n", &[("apiVersion", "required")]),
        ("apiVersion: v1\n", &[("kind", "required")]),
        ("apiVersion: v1\nkind: [Pod]\n", &[("kind", "must be a string")]),
        ("42\n", &[("", "not a number")]),
        ("a: [1, 2\n", &[("", "invalid YAML")]),
        ("a: *nope\n", &[("", "invalid YAML")]),
        ("{a: 1, a: 2}\n", &[("", "invalid YAML")]),
        // A typo in the kind of a policy must not drop the policy.
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Sever\nmetadata: {name: s}\nspec: {}\n",
            &[("kind", "did you mean \"Server\"?")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: s}\nspec: {}\n",
            &[("kind", "unsupported kind")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1alpha9\nkind: Server\nmetadata: {name: s}\nspec: {}\n",
            &[("apiVersion", "unsupported version")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspce: {}\n",
            &[("spce", "did you mean \"spec\"?"), ("spec", "required")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nspec: {podSelector: {}, port: 1}\n",
            &[("metadata", "required")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {namespace: x}\nspec: {podSelector: {}, port: 1}\n",
            &[("metadata.name", "required")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: Bad_Name}\nspec: {podSelector: {}, port: 1}\n",
            &[("metadata.name", "not a valid resource name")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s, labels: {a: [1]}}\nspec: {podSelector: {}, port: 1}\n",
            &[("metadata.labels.a", "invalid type")],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
            &[("spec", "required")],
        ),
        // Names of every kind must be Kubernetes names (`--workload ns/pod`).
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: dem/o}\nspec: {containers: []}\n",
            &[("metadata.namespace", "not a valid namespace name")],
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: 'a b'}\nspec: {template: {spec: {containers: []}}}\n",
            &[("metadata.name", "not a valid resource name")],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 70000}]}]}\n",
            &[("spec.containers[0].ports[0].containerPort", "out of range")],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: http}]}]}\n",
            &[("spec.containers[0].ports[0].containerPort", "invalid type")],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\nstatus: {podIP: nope}\n",
            &[("status.podIP", "not an IP address")],
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            &[("spec.template", "required")],
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: []}}\n- {apiVersion: policy.linkerd.io/v1beta1, kind: Server, metadata: {name: s}, spec: {podSelector: {}, port: -1}}\n",
            &[("items[1].spec.port", "out of range")],
        ),
        ("apiVersion: v1\nkind: List\nitems: 3\n", &[("items", "must be a list")]),
    ];
    for (yaml, want) in cases {
        assert_errors(yaml, want);
    }
    // Documents are counted with the empty ones: `---` opens each.
    let errs = errors("---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n");
    assert_eq!(errs[0].doc, 2);
    let errs = errors("null\n---\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n");
    assert_eq!(errs[0].doc, 4);
    assert_eq!(errs[0].resource.as_deref(), Some("Pod/default/p"));
}

#[test]
fn server_rules() {
    let s = |spec: &str| format!("{SERVER}spec:\n{spec}");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("  podSelector: {}\n  port: 8080\n", &[]),
        ("  podSelector: {matchLabels: {app: x}}\n  port: admin-http\n  proxyProtocol: HTTP/1\n", &[]),
        ("  port: 8080\n", &[("spec.podSelector", "required")]),
        ("  podSelector: {}\n", &[("spec.port", "required")]),
        ("  podSelector: {}\n  port: 0\n", &[("spec.port", "out of range")]),
        ("  podSelector: {}\n  port: 65536\n", &[("spec.port", "out of range")]),
        // Too large even for the YAML reader: a document-level error.
        ("  podSelector: {}\n  port: 99999999999999999999\n", &[("", "invalid YAML: spec.port")]),
        ("  podSelector: {}\n  port: \"8080\"\n", &[("spec.port", "quoted number")]),
        ("  podSelector: {}\n  port: Admin_HTTP\n", &[("spec.port", "not a valid port name")]),
        ("  podSelector: {}\n  port: 80.5\n", &[("spec.port", "invalid type")]),
        ("  podSelector: {}\n  port: [80]\n", &[("spec.port", "invalid type")]),
        ("  podSelector: {}\n  port: 80\n  proxyProtocol: http/1\n", &[("spec.proxyProtocol", "did you mean \"HTTP/1\"?")]),
        ("  podSelector: {}\n  port: 80\n  proxyProtocol: grpc\n", &[("spec.proxyProtocol", "did you mean \"gRPC\"?")]),
        ("  podSelector: {}\n  port: 80\n  proxyProtocol: \"\"\n", &[("spec.proxyProtocol", "unknown proxyProtocol")]),
        ("  podSelecter: {}\n  port: 80\n", &[("spec.podSelecter", "did you mean \"podSelector\"?")]),
        ("  podSelector: {matchLabel: {a: b}}\n  port: 80\n", &[("spec.podSelector.matchLabel", "did you mean \"matchLabels\"?")]),
        ("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n  port: 80\n", &[("spec.podSelector.matchExpressions[0].values", "needs at least one value")]),
        ("  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}\n  port: 80\n", &[("spec.podSelector.matchExpressions[0].values", "must not have values")]),
        ("  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n  port: 80\n", &[("spec.podSelector.matchExpressions[0].operator", "unknown operator")]),
        // All problems of one spec at once.
        ("  podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [b]}]}\n  port: 0\n  proxyProtocol: h2\n", &[
            ("spec.podSelector.matchExpressions[0].values", "must not have values"),
            ("spec.port", "out of range"),
            ("spec.proxyProtocol", "unknown proxyProtocol"),
        ]),
    ];
    for (spec, want) in cases {
        if want.is_empty() {
            load(&s(spec));
        } else {
            assert_errors(&s(spec), want);
        }
    }
    for (proto, want) in [
        ("unknown", Protocol::Detect),
        ("HTTP/1", Protocol::Http1),
        ("HTTP/2", Protocol::Http2),
        ("gRPC", Protocol::Grpc),
        ("opaque", Protocol::Opaque),
        ("TLS", Protocol::Tls),
    ] {
        let res = load(&s(&format!(
            "  podSelector: {{}}\n  port: 1\n  proxyProtocol: {proto}\n"
        )));
        assert_eq!(res.servers[0].protocol, want, "{proto}");
    }
}

#[test]
fn server_authorization_rules() {
    let a = |spec: &str| format!("{AUTHZ}spec:\n{spec}");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("  server: {name: s}\n  client: {unauthenticated: true}\n", &[]),
        ("  server: {selector: {matchLabels: {a: b}}}\n  client: {meshTLS: {unauthenticatedTLS: true}}\n", &[]),
        ("  server: {name: s}\n  client: {meshTLS: {identities: ['*', '*.a.b', 'x.y']}}\n", &[]),
        ("  server: {name: s}\n  client: {meshTLS: {serviceAccounts: [{name: web}, {name: p, namespace: o}]}}\n", &[]),
        ("  server: {name: s}\n  client:\n    unauthenticated: true\n    networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.1]}, {cidr: '::/0'}, {cidr: 192.168.1.1}]\n", &[]),
        // server: exactly one of name, selector.
        ("  client: {unauthenticated: true}\n", &[("spec.server", "required")]),
        ("  server: {}\n  client: {unauthenticated: true}\n", &[("spec.server", "found neither")]),
        ("  server: {name: s, selector: {}}\n  client: {unauthenticated: true}\n", &[("spec.server", "found both")]),
        ("  server: {nmae: s}\n  client: {unauthenticated: true}\n", &[("spec.server.nmae", "did you mean \"name\"?")]),
        ("  server: {name: ''}\n  client: {unauthenticated: true}\n", &[("spec.server.name", "not a valid resource name")]),
        ("  server: {selector: {matchExpressions: [{key: a, operator: NotIn}]}}\n  client: {unauthenticated: true}\n", &[("spec.server.selector.matchExpressions[0].values", "needs at least one value")]),
        // client: exactly one of meshTLS, unauthenticated.
        ("  server: {name: s}\n", &[("spec.client", "required")]),
        ("  server: {name: s}\n  client: {}\n", &[("spec.client", "found neither")]),
        ("  server: {name: s}\n  client: {unauthenticated: false}\n", &[("spec.client.unauthenticated", "admits no client")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, meshTLS: {unauthenticatedTLS: true}}\n", &[("spec.client", "found both")]),
        ("  server: {name: s}\n  client: {unauthenticated: yes please}\n", &[("spec.client.unauthenticated", "invalid type")]),
        ("  server: {name: s}\n  client: {meshTls: {unauthenticatedTLS: true}}\n", &[("spec.client.meshTls", "did you mean \"meshTLS\"?")]),
        // meshTLS: exactly one of unauthenticatedTLS, identities, serviceAccounts.
        ("  server: {name: s}\n  client: {meshTLS: {}}\n", &[("spec.client.meshTLS", "found none")]),
        ("  server: {name: s}\n  client: {meshTLS: {unauthenticatedTLS: false}}\n", &[("spec.client.meshTLS", "admits no client")]),
        ("  server: {name: s}\n  client: {meshTLS: {unauthenticatedTLS: true, identities: ['*']}}\n", &[("spec.client.meshTLS", "more than one")]),
        ("  server: {name: s}\n  client: {meshTLS: {identities: ['*'], serviceAccounts: [{name: a}]}}\n", &[("spec.client.meshTLS", "more than one")]),
        ("  server: {name: s}\n  client: {meshTLS: {identities: []}}\n", &[("spec.client.meshTLS.identities", "must not be empty")]),
        ("  server: {name: s}\n  client: {meshTLS: {identities: [a.b, '*.c', 'foo*', '*.', '']}}\n", &[
            ("spec.client.meshTLS.identities[2]", "only as the whole identity"),
            ("spec.client.meshTLS.identities[3]", "a wildcard must be"),
            ("spec.client.meshTLS.identities[4]", "must not be empty"),
        ]),
        ("  server: {name: s}\n  client: {meshTLS: {serviceAccounts: []}}\n", &[("spec.client.meshTLS.serviceAccounts", "must not be empty")]),
        ("  server: {name: s}\n  client: {meshTLS: {serviceAccounts: [{namespace: x}]}}\n", &[("spec.client.meshTLS.serviceAccounts[0].name", "required")]),
        ("  server: {name: s}\n  client: {meshTLS: {serviceAccounts: [{name: a, namespace: Bad}]}}\n", &[("spec.client.meshTLS.serviceAccounts[0].namespace", "not a valid namespace")]),
        ("  server: {name: s}\n  client: {meshTLS: {serviceAccounts: [{name: a, nmespace: x}]}}\n", &[("spec.client.meshTLS.serviceAccounts[0].nmespace", "did you mean \"namespace\"?")]),
        // networks.
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: []}\n", &[("spec.client.networks", "empty list admits no address")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: }]}\n", &[("spec.client.networks[0].cidr", "required")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8}, {cidr: 300.0.0.0/8}]}\n", &[("spec.client.networks[1].cidr", "not a CIDR")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8, except: [11.0.0.0/8]}]}\n", &[("spec.client.networks[0].except[0]", "not inside")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8, except: [10.0.0.0/7]}]}\n", &[("spec.client.networks[0].except[0]", "not inside")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}]}\n", &[("spec.client.networks[0].except[0]", "covers all")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 'fd00::/8', except: ['10.0.0.0/16']}]}\n", &[("spec.client.networks[0].except[0]", "not of the address family of cidr fd00::/8")]),
        // IPv4-mapped IPv6 networks are read as the IPv4 networks they carry.
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: '::ffff:10.0.0.0/104', except: ['10.1.0.0/16', '::ffff:10.2.0.0/112']}]}\n", &[]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: '::/0', except: ['::ffff:10.1.0.0/112']}]}\n", &[("spec.client.networks[0].except[0]", "would exclude nothing")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: '::ffff:10.0.0.0/104', except: ['fd00::/8']}]}\n", &[("spec.client.networks[0].except[0]", "not of the address family of cidr 10.0.0.0/8")]),
        ("  server: {name: s}\n  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}]}\n", &[("spec.client.networks[0].exept", "did you mean \"except\"?")]),
    ];
    for (spec, want) in cases {
        if want.is_empty() {
            load(&a(spec));
        } else {
            assert_errors(&a(spec), want);
        }
    }
    // serviceAccounts default to the authorization's namespace.
    let res = load(&a(
        "  server: {name: s}\n  client: {meshTLS: {serviceAccounts: [{name: web}, {name: p, namespace: o}]}}\n",
    ));
    assert_eq!(
        res.authorizations[0].client,
        ClientAuth::ServiceAccounts(vec![("web".into(), "ns".into()), ("p".into(), "o".into())])
    );
}

#[test]
fn network_authentication_policy_rules() {
    let n = |spec: &str| format!("{NAP}spec:\n{spec}");
    let ok = "  target: {selector: {matchLabels: {app: b}}}\n  ports: [{port: 8080}, {port: http}]\n  sources: [{podSelector: {matchLabels: {app: f}}}, {podSelector: {}, namespace: other}]\n";
    let res = load(&n(ok));
    let nap = &res.network_policies[0];
    assert_eq!(
        nap.ports,
        [PortRef::Number(8080), PortRef::Name("http".into())]
    );
    assert_eq!(
        nap.sources[0].namespace, "ns",
        "defaults to the policy's namespace"
    );
    assert_eq!(nap.sources[1].namespace, "other");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("  ports: [{port: 1}]\n  sources: [{podSelector: {}}]\n", &[("spec.target", "required")]),
        ("  target: {}\n  ports: [{port: 1}]\n  sources: [{podSelector: {}}]\n", &[("spec.target.selector", "required")]),
        ("  target: {selector: {}}\n  sources: [{podSelector: {}}]\n", &[("spec.ports", "required")]),
        ("  target: {selector: {}}\n  ports: []\n  sources: [{podSelector: {}}]\n", &[("spec.ports", "must not be empty")]),
        ("  target: {selector: {}}\n  ports: [{port: 0}, {}]\n  sources: [{podSelector: {}}]\n", &[("spec.ports[0].port", "out of range"), ("spec.ports[1].port", "required")]),
        ("  target: {selector: {}}\n  ports: [{port: 1}]\n", &[("spec.sources", "required")]),
        ("  target: {selector: {}}\n  ports: [{port: 1}]\n  sources: []\n", &[("spec.sources", "must not be empty")]),
        ("  target: {selector: {}}\n  ports: [{port: 1}]\n  sources: [{}]\n", &[("spec.sources[0].podSelector", "required")]),
        ("  target: {selector: {}}\n  ports: [{port: 1}]\n  sources: [{podSelector: {}, namespace: 'a b'}]\n", &[("spec.sources[0].namespace", "not a valid namespace")]),
        ("  target: {selectr: {}}\n  ports: [{port: 1}]\n  sources: [{podSelector: {}}]\n", &[("spec.target.selectr", "did you mean \"selector\"?")]),
        ("  target: {selector: {}}\n  ports: [{port: 1}]\n  sources: [{podSelector: {}}]\n  destinations: []\n", &[("spec.destinations", "unknown field")]),
    ];
    for (spec, want) in cases {
        assert_errors(&n(spec), want);
    }
}

#[test]
fn loading_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write(
        "b.yml",
        &format!("{SERVER}spec: {{podSelector: {{}}, port: 2}}\n"),
    );
    write(
        "a.yaml",
        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: first, namespace: ns}\nspec: {podSelector: {}, port: 1}\n",
    );
    write("notes.txt", "not yaml: [");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    let res = Resources::load(&[dir.path()]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = res.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "s"], "sorted by file name");
    assert!(res.servers[0].origin.file.ends_with("a.yaml"));

    // Errors from several files are all collected.
    write("c.yaml", &format!("{SERVER}spec: {{port: 2}}\n"));
    write("d.yaml", "a: [\n");
    let missing = dir.path().join("missing.yaml");
    let err = Resources::load(&[dir.path(), missing.as_path()]).unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    assert!(err.0[0].file.ends_with("c.yaml") && err.0[0].field == "spec.podSelector");
    assert!(err.0[1].file.ends_with("d.yaml") && err.0[1].message.contains("invalid YAML"));
    assert!(err.0[2].file.ends_with("missing.yaml") && err.0[2].doc == 0);
    assert!(err.0[2].to_string().contains("missing.yaml: cannot read"));

    let empty = tempfile::tempdir().expect("tempdir");
    let err = Resources::load(&[empty.path()]).unwrap_err();
    assert!(err.0[0].message.contains("no *.yaml"), "{err}");
}

#[test]
fn check_reports_cross_resource_problems() {
    let cfg = PolicyConfig::default();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: emoji, namespace: emojivoto, labels: {app: emoji-svc}}\nspec: {containers: [{name: c, ports: [{name: grpc, containerPort: 8080}, {name: prom, containerPort: 8801}]}]}\n";
    // The docs' two example Servers, as written, overlap on the emoji pod:
    // emoji-grpc by name (grpc = 8080), backend-services by number.
    let servers = "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {namespace: emojivoto, name: emoji-grpc}\nspec: {podSelector: {matchLabels: {app: emoji-svc}}, port: grpc, proxyProtocol: gRPC}\n---\n\
        apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {namespace: emojivoto, name: backend-services}\nspec:\n  podSelector:\n    matchExpressions:\n    - {key: app, operator: In, values: [voting-svc, emoji-svc]}\n    - {key: environment, operator: NotIn, values: [dev]}\n  port: 8080\n  proxyProtocol: HTTP/2\n";
    let res = load(&format!("{pod}---\n{servers}"));
    let problems = res.check(&cfg);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = problems[0].to_string();
    assert!(
        p.starts_with("test.yaml:3 Server/emojivoto/backend-services: spec: overlaps Server/emojivoto/emoji-grpc (test.yaml:2): both select port 8080 of Pod/emojivoto/emoji"),
        "{p}"
    );
    // Without pods nothing is known to overlap.
    assert!(load(servers).check(&cfg).is_empty());
    // Two pods with the same overlap: reported once.
    let pod2 = pod.replace("name: emoji,", "name: emoji-2,");
    assert_eq!(
        load(&format!("{pod}---\n{pod2}---\n{servers}"))
            .check(&cfg)
            .len(),
        1
    );

    let cases: &[(&str, &[(&str, &str)])] = &[
        // Unknown default-inbound-policy values, naming the pod or namespace.
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n, annotations: {config.linkerd.io/default-inbound-policy: deny-all}}\nspec: {containers: []}\n",
            &[("metadata.annotations.config.linkerd.io/default-inbound-policy", "pod n/p falls back")],
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, annotations: {config.linkerd.io/default-inbound-policy: all-authenticatd}}\n",
            &[("metadata.annotations.config.linkerd.io/default-inbound-policy", "did you mean \"all-authenticated\"?")],
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {metadata: {annotations: {config.linkerd.io/default-inbound-policy: nope}}, spec: {containers: []}}}\n",
            &[("spec.template.metadata.annotations.config.linkerd.io/default-inbound-policy", "unknown default policy")],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {config.linkerd.io/opaque-ports: '3306,abc_d,9-1,admin'}}\nspec: {containers: []}\n",
            &[
                ("metadata.annotations.config.linkerd.io/opaque-ports", "\"abc_d\" is not a port"),
                ("metadata.annotations.config.linkerd.io/opaque-ports", "\"9-1\" is not a port range"),
                ("metadata.annotations.config.linkerd.io/opaque-ports", "\"admin\" is not a declared"),
            ],
        ),
        // Authorizations that target no Server.
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: a}\nspec: {server: {name: web-http}, client: {unauthenticated: true}}\n",
            &[("spec.server.name", "no Server named \"web-http\" in namespace default")],
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: a}\nspec: {server: {selector: {matchLabels: {x: y}}}, client: {unauthenticated: true}}\n",
            &[("spec.server.selector", "selects no Server")],
        ),
        // A Server in another namespace does not count.
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: web-http, namespace: other}\nspec: {podSelector: {}, port: 80}\n---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: a}\nspec: {server: {name: web-http}, client: {unauthenticated: true}}\n",
            &[("spec.server.name", "no Server named")],
        ),
        // Duplicates.
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspec: {podSelector: {}, port: 80}\n---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspec: {podSelector: {}, port: 81}\n",
            &[("metadata.name", "duplicate: also defined at test.yaml:1")],
        ),
        // A Server port name that no selected pod declares.
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: b}}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}\n---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspec: {podSelector: {matchLabels: {a: b}}, port: admin}\n",
            &[("spec.port", "declares a container port named \"admin\"")],
        ),
        // NetworkAuthenticationPolicy sources that match no pod.
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: b}}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthenticationPolicy\nmetadata: {name: n}\nspec: {target: {selector: {matchLabels: {app: b}}}, ports: [{port: http}, {port: grpc}], sources: [{podSelector: {matchLabels: {app: nobody}}}]}\n",
            &[
                ("spec.sources[0].podSelector", "matches no pod in namespace default"),
                ("spec.ports[1].port", "no target pod declares"),
            ],
        ),
    ];
    for (yaml, want) in cases {
        let got = load(yaml).check(&cfg);
        assert_eq!(got.len(), want.len(), "{yaml}\n{got:#?}");
        for (e, (field, msg)) in got.iter().zip(want.iter()) {
            assert_eq!(e.field, *field, "{e}");
            assert!(e.message.contains(msg), "{e}\nwant: {msg}");
        }
    }
}
