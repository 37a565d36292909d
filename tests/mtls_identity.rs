//! End-to-end: the proxy's own identity through the real binary — startup
//! refusals with exact messages, certificate rotation mid-run (new
//! handshakes see the new leaf, live connections continue, a bad file keeps
//! the old one), and the application's own TLS passed through untouched.

#[path = "support/apps.rs"]
mod apps;
#[path = "support/mesh.rs"]
mod mesh;

use std::time::{Duration, Instant};

use apps::*;
use e2e::Proxy;
use http::StatusCode;
use mesh::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROXY_ID: &str = "web.demo.serviceaccount.identity.linkerd.cluster.local";

/// Runs the binary with `args` and expects it to refuse to start.
fn refuses(args: &[String]) -> String {
    let out = std::process::Command::new(e2e::bin("portcullis"))
        .args(args)
        .args([
            "--inbound-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env_remove("PORTCULLIS_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_refuses_a_bad_identity_saying_exactly_why() {
    let id = ProxyIdentity::new(PROXY_ID);
    let dir = id.dir.path();
    let with = |cert: &std::path::Path, key: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "--identity-trust-anchors".to_string(),
            id.anchors.display().to_string(),
            "--identity-cert".into(),
            cert.display().to_string(),
            "--identity-key".into(),
            key.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // Key of another certificate.
    let other = id.client(&[PROXY_ID]);
    let (_, other_key) = other.write(dir, "other");
    let err = refuses(&with(&id.cert, &other_key, &[]));
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("other.key"), "{err}");

    // Expired.
    let expired = id.ca.issue_with(&[PROXY_ID], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let (c, k) = expired.write(dir, "expired");
    let err = refuses(&with(&c, &k, &[]));
    assert!(err.contains("expired at"), "{err}");

    // Not valid for --identity-name.
    let err = refuses(&with(
        &id.cert,
        &id.key,
        &[
            "--identity-name",
            "api.demo.serviceaccount.identity.linkerd.cluster.local",
        ],
    ));
    assert!(err.contains("is not valid for the identity name"), "{err}");

    // Signed by a CA that is not a trust anchor.
    let foreign = Ca::new("foreign").issue(&[PROXY_ID]);
    let (c, k) = foreign.write(dir, "foreign");
    let err = refuses(&with(&c, &k, &[]));
    assert!(
        err.contains("does not verify against --identity-trust-anchors"),
        "{err}"
    );

    // An empty file, named.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = refuses(&with(&empty, &id.key, &[]));
    assert!(
        err.contains("--identity-cert") && err.contains("empty.pem"),
        "{err}"
    );

    // Only some of the files.
    let err = refuses(&["--identity-cert".into(), id.cert.display().to_string()]);
    assert!(err.contains("--identity-trust-anchors"), "{err}");
}

/// The proxy's certificate as seen by a new meshed client.
async fn served_leaf(addr: std::net::SocketAddr, id: &ProxyIdentity) -> Vec<u8> {
    let tls = connect_tls(addr, PROXY_ID, id.client_config(None, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_run_reaches_new_handshakes_and_spares_live_connections() {
    let mut id = ProxyIdentity::new(PROXY_ID);
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let mut args = id.args();
    args.extend(["--map".into(), m]);
    let proxy = Proxy::start(&args);
    let first = id.leaf.der.to_vec();
    assert_eq!(served_leaf(listen, &id).await, first);

    // A live keep-alive connection from before the rotation.
    let client = id.client(&[&sa("frontend", "demo")]);
    let tls = connect_tls(
        listen,
        PROXY_ID,
        id.client_config(Some(&client), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let mut live = h1_over(tls).await.unwrap();
    let (status, headers, _, _) = read(live.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-seen-client-id").unwrap(),
        sa("frontend", "demo").as_str()
    );

    // Rotate: new handshakes see the new leaf within a couple of polls.
    let second = id.ca.issue(&[PROXY_ID]);
    let second_der = second.der.to_vec();
    id.rotate(second);
    let start = Instant::now();
    while served_leaf(listen, &id).await != second_der {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rotation not picked up:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.wait_log(&["reloaded the local identity"], Duration::from_secs(5)));

    // The connection from before the rotation still works.
    let (status, _, _, _) = read(live.send_request(get("/again")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    // A bad new certificate (for another name) is refused; the second leaf stays.
    let bad = id.ca.issue(&["other.example"]);
    std::fs::write(&id.cert, &bad.cert_pem).unwrap();
    std::fs::write(&id.key, &bad.key_pem).unwrap();
    assert!(
        proxy.wait_log(
            &[
                "keeping the current identity",
                "not valid for the identity name"
            ],
            Duration::from_secs(10)
        ),
        "{}",
        proxy.logs()
    );
    assert_eq!(served_leaf(listen, &id).await, second_der);
}

/// A TLS app with its own certificate (not the mesh's).
async fn tls_app(ca: &Ca, name: &str) -> App {
    let leaf = ca.issue(&[name]);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key_der())
        .unwrap();
    tls_echo_app(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_tls_passes_through_and_is_authorized_on_network_only() {
    let id = ProxyIdentity::new(PROXY_ID);
    let app_ca = Ca::new("app's own CA");
    let app = tls_app(&app_ca, "shop.example").await;
    let locked = tls_app(&app_ca, "shop.example").await;
    let (open_listen, m1) = map(app.port());
    let (locked_listen, m2) = map(locked.port());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    // `locked` needs a mesh identity; passthrough TLS has none.
    std::fs::write(
        &policy,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n  labels:\n    app: web\n\
             spec:\n  containers:\n    - name: web\n      ports:\n        - containerPort: {}\n        - containerPort: {}\n\
             ---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata:\n  name: locked\n  namespace: demo\n\
             spec:\n  podSelector:\n    matchLabels:\n      app: web\n  port: {}\n\
             ---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata:\n  name: locked\n  namespace: demo\n\
             spec:\n  server:\n    name: locked\n  client:\n    meshTLS:\n      identities: [\"*\"]\n",
            app.port(),
            locked.port(),
            locked.port()
        ),
    )
    .unwrap();
    let mut args = id.args();
    args.extend([
        "--map".into(),
        m1,
        "--map".into(),
        m2,
        "--policy-file".into(),
        policy.display().to_string(),
        "--workload".into(),
        "demo/web".into(),
    ]);
    let proxy = Proxy::start(&args);
    assert!(proxy.wait_ready(Duration::from_secs(10)));

    // Not our SNI: the app's certificate comes back, end to end.
    let mut tls = connect_tls(
        open_listen,
        "shop.example",
        client_config(&app_ca, None, &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("passthrough handshake: {e}\n{}", proxy.logs()));
    tls.write_all(b"through").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 7];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"through");
    assert!(
        proxy.wait_metric(
            "inbound_tcp_authz_allow_total",
            &[("tls", "opaque"), ("sni", "shop.example")],
            1.0,
            Duration::from_secs(5)
        ) >= 1.0,
        "{}",
        proxy.metrics()
    );

    // An authorization that needs mesh identity never matches passthrough.
    let denied = connect_tls(
        locked_listen,
        "shop.example",
        client_config(&app_ca, None, &[]),
    )
    .await;
    assert!(
        denied.is_err(),
        "passthrough TLS reached a meshTLS-only port"
    );
    assert!(
        locked.connections() == 0,
        "a denied connection reached the app"
    );
}
