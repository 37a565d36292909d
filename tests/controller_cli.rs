//! `portcullis-controller validate` and `check`, run as an operator runs them:
//! on the seeds' examples (tests/fixtures/) and on broken inputs. Asserts
//! the output lines and exit codes of the contract (validate: 0/1; check:
//! 0 allow, 3 deny, 1 bad input).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn controller(args: &[&str]) -> Output {
    Command::new(e2e::bin("portcullis-controller"))
        .args(args)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_DEFAULT_POLICY")
        .output()
        .expect("run portcullis-controller")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

#[test]
fn validate_accepts_every_seed_example_with_a_summary() {
    let cases = [
        (
            fixture("emojivoto.yaml"),
            "valid: 1 Namespace, 3 Pods, 4 Servers, 3 ServerAuthorizations\n",
        ),
        (
            fixture("walkthrough.yaml"),
            "valid: 1 Namespace, 2 Deployments, 1 NetworkAuthenticationPolicy\n",
        ),
        (fixture("kubectl-pod.yaml"), "valid: 1 Pod\n"),
        (fixture("kubectl-list.yaml"), "valid: 1 Pod, 1 Server\n"),
    ];
    for (path, summary) in cases {
        let o = controller(&["validate", &path]);
        assert_eq!(o.status.code(), Some(0), "{path}: {}", stderr(&o));
        assert_eq!(stdout(&o), summary, "{path}");
    }
    // A directory: every file in it.
    let o = controller(&["validate", &fixtures().display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("valid: 2 Namespaces, "),
        "{}",
        stdout(&o)
    );
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web}
spec:
  containers:
    - name: web
      ports:
        - {name: http, containerPort: 8080}
"#;

#[test]
fn validate_reports_every_problem_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        format!(
            r#"{POD}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {{name: web-http, namespace: shop}}
spec:
  podSelecter: {{matchLabels: {{app: web}}}}
  port: http
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {{name: web-public, namespace: shop}}
spec:
  server: {{name: web-http}}
  client:
    unauthenticated: true
    networks: [{{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]
"#
        ),
    )
    .unwrap();
    let file = broken.display().to_string();
    let o = controller(&["validate", &file]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:2 Server/shop/web-http: spec.podSelecter: unknown field"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{file}:3 ServerAuthorization/shop/web-public: spec.client.networks[0].except[0]: "
        )),
        "{out}"
    );

    // Cross-resource problems are errors for validate too: two Servers on
    // one port, and an authorization that targets no Server.
    let overlap = dir.path().join("overlap.yaml");
    std::fs::write(
        &overlap,
        format!(
            r#"{POD}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {{name: a, namespace: shop}}
spec: {{podSelector: {{matchLabels: {{app: web}}}}, port: 8080}}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {{name: b, namespace: shop}}
spec: {{podSelector: {{}}, port: http}}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {{name: orphan, namespace: shop}}
spec:
  server: {{name: missing}}
  client: {{unauthenticated: true}}
"#
        ),
    )
    .unwrap();
    let file = overlap.display().to_string();
    let o = controller(&["validate", &file]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{file}:3 Server/shop/b: "))
                && l.contains("Server/shop/a")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "{file}:4 ServerAuthorization/shop/orphan: spec.server"
        ))),
        "{out}"
    );

    let o = controller(&["validate", "/nonexistent/portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).starts_with("/nonexistent/portcullis.yaml: cannot read"));
}

/// One row per question an operator asks, on the docs seed's examples.
#[test]
fn check_explains_decisions_on_the_seed_examples() {
    let emojivoto = fixture("emojivoto.yaml");
    let walkthrough = fixture("walkthrough.yaml");
    let web_sa = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    let prometheus = "prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local";
    #[rustfmt::skip]
    let rows: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (&emojivoto, vec!["--workload", "emojivoto/web", "--port", "8080"], 0,
         "allow\nserver: server/web-http\nauthorization: serverauthorization/web-public\n"),
        (&emojivoto, vec!["--workload", "emojivoto/web", "--port", "8080", "--client-ip", "2001:db8::1"], 0,
         "allow\nserver: server/web-http\nauthorization: serverauthorization/web-public\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8080"], 3,
         "deny\nserver: server/emoji-grpc\nreason: authorizations for this address require meshed TLS\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8080", "--tls-no-identity"], 3,
         "deny\nserver: server/emoji-grpc\nreason: authorizations for this address require a client identity\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8080", "--client-id", web_sa], 0,
         "allow\nserver: server/emoji-grpc\nauthorization: serverauthorization/emoji-grpc\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8080", "--client-id", "spiffe://cluster.local/ns/emojivoto/sa/web"], 0,
         "allow\nserver: server/emoji-grpc\nauthorization: serverauthorization/emoji-grpc\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8080", "--client-id", "web.other.serviceaccount.identity.linkerd.cluster.local"], 3,
         "deny\nserver: server/emoji-grpc\nreason: the client identity is not authorized\n"),
        // Kubelet probes get through on their exact path; other paths need the Server's authorizations.
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8801", "--method", "GET", "--path", "/ready"], 0,
         "allow\nserver: server/prom\nauthorization: default/probe\nroute: default/probe\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8801", "--path", "/metrics"], 3,
         "deny\nserver: server/prom\nroute: default/default\nreason: authorizations for this address require meshed TLS\n"),
        (&emojivoto, vec!["--workload", "emojivoto/emoji", "--port", "8801", "--path", "/metrics", "--client-id", prometheus], 0,
         "allow\nserver: server/prom\nauthorization: serverauthorization/prom-prometheus\nroute: default/default\n"),
        // A port no Server selects: the default policy.
        (&emojivoto, vec!["--workload", "emojivoto/web", "--port", "9999"], 0,
         "allow\nserver: default/all-unauthenticated\nauthorization: default/all-unauthenticated\n"),
        (&emojivoto, vec!["--workload", "emojivoto/web", "--port", "9999", "--default-policy", "cluster-authenticated"], 3,
         "deny\nserver: default/cluster-authenticated\nreason: authorizations for this address require meshed TLS\n"),
        (&emojivoto, vec!["--workload", "emojivoto/web", "--port", "9999", "--default-policy", "cluster-unauthenticated", "--client-ip", "203.0.113.9"], 3,
         "deny\nserver: default/cluster-unauthenticated\nreason: the client address is not in any authorized network\n"),
        // The walkthrough: frontend's service account may reach backend:8080; the namespace defaults to deny.
        (&walkthrough, vec!["--workload", "demo/backend", "--port", "8080", "--client-id", "default.demo.serviceaccount.identity.linkerd.cluster.local"], 0,
         "allow\nserver: networkauthenticationpolicy/frontend-can-talk-to-backend\nauthorization: networkauthenticationpolicy/frontend-can-talk-to-backend\n"),
        (&walkthrough, vec!["--workload", "demo/frontend", "--port", "80"], 3,
         "deny\nserver: default/deny\nreason: the default policy is deny\n"),
    ];
    for (file, args, code, expected) in rows {
        let mut all = vec!["check", "--resources", file];
        all.extend(&args);
        let o = controller(&all);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(stdout(&o), expected, "{args:?}");
    }
}

#[test]
fn check_rejects_bad_input_with_exit_1() {
    let emojivoto = fixture("emojivoto.yaml");
    let base = ["check", "--resources", emojivoto.as_str()];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--workload", "emojivoto/nope", "--port", "80"],
            "unknown workload emojivoto/nope",
        ),
        (
            vec!["--workload", "emojivoto", "--port", "80"],
            "expected NAMESPACE/POD",
        ),
        (
            vec!["--workload", "emojivoto/web", "--port", "0"],
            "invalid port 0",
        ),
        (
            vec!["--workload", "emojivoto/web", "--port", "70000"],
            "70000",
        ),
        (
            vec![
                "--workload",
                "emojivoto/web",
                "--port",
                "80",
                "--client-ip",
                "10.0.0",
            ],
            "10.0.0",
        ),
        (
            vec![
                "--workload",
                "emojivoto/web",
                "--port",
                "80",
                "--header",
                "no-equals",
            ],
            "invalid --header",
        ),
        (
            vec![
                "--workload",
                "emojivoto/web",
                "--port",
                "80",
                "--method",
                "G T",
            ],
            "invalid --method",
        ),
        (
            vec![
                "--workload",
                "emojivoto/web",
                "--port",
                "80",
                "--path",
                "relative",
            ],
            "invalid --path",
        ),
        (
            vec![
                "--workload",
                "emojivoto/web",
                "--port",
                "80",
                "--client-id",
                "a",
                "--tls-no-identity",
            ],
            "cannot be used with",
        ),
        (vec!["--workload", "emojivoto/web"], "--port"),
    ];
    for (args, message) in cases {
        let mut all = base.to_vec();
        all.extend(&args);
        let o = controller(&all);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
    }
    // Resources that do not load: every error, then exit 1.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: y}\nspec: {containers: [{name: c}]}\n---\n\
         apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s, namespace: y}\n\
         spec: {podSelector: {}, port: 0}\n",
    )
    .unwrap();
    let file = bad.display().to_string();
    let o = controller(&[
        "check",
        "--resources",
        &file,
        "--workload",
        "y/x",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{file}:2 Server/y/s: spec.port: ")),
        "{}",
        stderr(&o)
    );
}

/// Policy flags read their PORTCULLIS_* environment variables, as the proxy's do.
#[test]
fn policy_flags_have_environment_variables() {
    let emojivoto = fixture("emojivoto.yaml");
    let o = Command::new(e2e::bin("portcullis-controller"))
        .args([
            "check",
            "--resources",
            &emojivoto,
            "--workload",
            "emojivoto/web",
            "--port",
            "9999",
        ])
        .env("PORTCULLIS_DEFAULT_POLICY", "deny")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stdout(&o),
        "deny\nserver: default/deny\nreason: the default policy is deny\n"
    );
}
