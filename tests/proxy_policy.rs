//! End-to-end: `--policy-file` — Servers and authorizations, hot reload,
//! revocation of live connections, fail-closed edits, default policies and
//! their annotations, `proxyProtocol` set versus detected.

#[path = "support/apps.rs"]
mod apps;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apps::*;
use e2e::Proxy;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A namespace and the pod `demo/web` declaring `ports`, with extra pod
/// annotations and namespace annotations (YAML maps, may be empty), then
/// `rest` (Servers, authorizations).
fn resources(ports: &[u16], pod_annotations: &str, ns_annotations: &str, rest: &str) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!("        - containerPort: {p}\n"))
        .collect();
    let ann = |a: &str| {
        if a.is_empty() {
            String::new()
        } else {
            format!("  annotations:\n    {a}\n")
        }
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n{}---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n{}  labels:\n    app: web\n\
         spec:\n  serviceAccountName: web\n  containers:\n    - name: web\n      image: web\n      ports:\n{ports}{rest}",
        ann(ns_annotations),
        ann(pod_annotations),
    )
}

fn server(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata:\n  name: {name}\n  namespace: demo\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: web\n  port: {port}\n  proxyProtocol: {protocol}\n"
    )
}

fn authz_networks(name: &str, server: &str, cidr: &str) -> String {
    format!(
        "---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata:\n  name: {name}\n  namespace: demo\n\
         spec:\n  server:\n    name: {server}\n  client:\n    unauthenticated: true\n    networks:\n      - cidr: {cidr}\n"
    )
}

/// Replaces the file atomically (write + rename), as `kubectl` volumes and
/// careful editors do.
fn write_policy(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn policy_file(dir: &tempfile::TempDir, yaml: &str) -> PathBuf {
    let path = dir.path().join("policy.yaml");
    write_policy(&path, yaml);
    path
}

async fn status_of(listen: std::net::SocketAddr) -> StatusCode {
    let mut tx = h1(listen).await;
    read(tx.send_request(get("/")).await.unwrap()).await.0
}

/// Polls `f` until it returns `want` or `timeout` passes; returns how long it took.
async fn eventually<F, Fut, T>(timeout: Duration, want: T, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_authorizations_decide_and_edits_apply_within_a_second() {
    let app = http_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    let allow = resources(
        &[p],
        "",
        "",
        &(server("web-http", p, "HTTP/1") + &authz_networks("local", "web-http", "127.0.0.0/8")),
    );
    let path = policy_file(&dir, &allow);
    let (listen, m) = map(p);
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-file",
        path.to_str().unwrap(),
        "--workload",
        "demo/web",
    ]);
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    assert_eq!(status_of(listen).await, StatusCode::OK);
    assert_eq!(
        proxy.metric(
            "inbound_http_authz_allow_total",
            &[
                ("srv_group", "policy.linkerd.io"),
                ("srv_kind", "server"),
                ("srv_name", "web-http"),
                ("authz_kind", "serverauthorization"),
                ("authz_name", "local"),
            ]
        ),
        1.0,
        "{}",
        proxy.metrics()
    );
    let (_, policy) = proxy.get("/policy");
    assert!(policy.contains("web-http"), "{policy}");

    // Only 10.0.0.0/8 now: loopback clients are denied.
    let deny = resources(
        &[p],
        "",
        "",
        &(server("web-http", p, "HTTP/1") + &authz_networks("local", "web-http", "10.0.0.0/8")),
    );
    write_policy(&path, &deny);
    let took = eventually(Duration::from_secs(3), StatusCode::FORBIDDEN, || {
        status_of(listen)
    })
    .await
    .expect("the edit applies");
    assert!(took < Duration::from_millis(1500), "applied after {took:?}");
    assert!(proxy.metric("inbound_policy_generation", &[]) >= 2.0);
    assert!(proxy.wait_log(
        &[
            "denied",
            "server=server/web-http",
            "not in any authorized network"
        ],
        Duration::from_secs(2)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_live_opaque_connection_closes_it_within_a_second() {
    let app = echo_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    let allow = resources(
        &[p],
        "",
        "",
        &(server("db", p, "opaque") + &authz_networks("local", "db", "127.0.0.0/8")),
    );
    let path = policy_file(&dir, &allow);
    let (listen, m) = map(p);
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-file",
        path.to_str().unwrap(),
        "--workload",
        "demo/web",
    ]);
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");

    let changed = Instant::now();
    write_policy(
        &path,
        &resources(
            &[p],
            "",
            "",
            &(server("db", p, "opaque") + &authz_networks("local", "db", "10.0.0.0/8")),
        ),
    );
    let rest = read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("the live connection is closed");
    let took = changed.elapsed();
    assert!(rest.is_empty());
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert_eq!(
        proxy.wait_metric(
            "inbound_tcp_authz_terminate_total",
            &[("srv_name", "db")],
            1.0,
            Duration::from_secs(1)
        ),
        1.0
    );
    assert!(proxy.wait_log(&["revoked by policy"], Duration::from_secs(1)));
    // New connections are denied too.
    let mut c = TcpStream::connect(listen).await.unwrap();
    let _ = c.write_all(b"x").await;
    assert!(read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("closed")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_good_policy() {
    let app = http_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    let good = resources(
        &[p],
        "",
        "",
        &(server("web-http", p, "HTTP/1") + &authz_networks("local", "web-http", "127.0.0.0/8")),
    );
    let path = policy_file(&dir, &good);
    let (listen, m) = map(p);
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-file",
        path.to_str().unwrap(),
        "--workload",
        "demo/web",
    ]);
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    assert_eq!(status_of(listen).await, StatusCode::OK);

    // A typo in a CIDR: the whole edit is rejected, and logged.
    let typo = resources(
        &[p],
        "",
        "",
        &(server("web-http", p, "HTTP/1") + &authz_networks("local", "web-http", "10.0.0.0/88")),
    );
    write_policy(&path, &typo);
    assert_eq!(
        proxy.wait_metric(
            "inbound_policy_errors_total",
            &[],
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
    assert!(
        proxy.wait_log(&["invalid policy", "10.0.0.0/88"], Duration::from_secs(1)),
        "{}",
        proxy.logs()
    );
    assert!(proxy.wait_log(
        &["the last good policy stays in force"],
        Duration::from_secs(1)
    ));
    assert_eq!(
        status_of(listen).await,
        StatusCode::OK,
        "still the good policy"
    );
    assert_eq!(proxy.get("/ready").0, 200);

    // Not YAML at all, written in place: rejected too.
    std::fs::write(&path, "{{{ not yaml").unwrap();
    assert!(
        proxy.wait_metric(
            "inbound_policy_errors_total",
            &[],
            2.0,
            Duration::from_secs(3)
        ) >= 2.0
    );
    assert_eq!(status_of(listen).await, StatusCode::OK);

    // Fixed: applies.
    write_policy(
        &path,
        &resources(
            &[p],
            "",
            "",
            &(server("web-http", p, "HTTP/1") + &authz_networks("local", "web-http", "10.0.0.0/8")),
        ),
    );
    assert!(
        eventually(Duration::from_secs(3), StatusCode::FORBIDDEN, || status_of(
            listen
        ))
        .await
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_first_file_denies_everything_until_fixed() {
    let app = http_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    let path = policy_file(&dir, "kind: Server\nspec: [not, a, map]\n");
    let (listen, m) = map(p);
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-file",
        path.to_str().unwrap(),
        "--workload",
        "demo/web",
    ]);
    assert_eq!(proxy.get("/ready").0, 503);
    assert_eq!(
        status_of(listen).await,
        StatusCode::FORBIDDEN,
        "no valid policy: fail closed, not the all-unauthenticated default"
    );
    assert_eq!(app.connections(), 0);

    // A valid file with no Server for the port: the default policy applies.
    write_policy(&path, &resources(&[p], "", "", ""));
    assert!(proxy.wait_ready(Duration::from_secs(3)));
    assert_eq!(status_of(listen).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_annotations_override_the_flag() {
    let app = http_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();

    // Pod annotation beats the flag.
    let path = policy_file(
        &dir,
        &resources(
            &[p],
            "config.linkerd.io/default-inbound-policy: deny",
            "",
            "",
        ),
    );
    let (listen, m) = map(p);
    let args = |m: &str| {
        vec![
            "--map".to_string(),
            m.to_string(),
            "--policy-file".into(),
            path.to_str().unwrap().into(),
            "--workload".into(),
            "demo/web".into(),
        ]
    };
    let proxy = Proxy::start(&args(&m));
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    assert_eq!(status_of(listen).await, StatusCode::FORBIDDEN);
    assert_eq!(
        proxy.metric("inbound_http_authz_deny_total", &[("srv_name", "deny")]),
        1.0
    );
    drop(proxy);

    // Namespace annotation beats the flag; the pod has none.
    write_policy(
        &path,
        &resources(
            &[p],
            "",
            "config.linkerd.io/default-inbound-policy: all-unauthenticated",
            "",
        ),
    );
    let (listen, m) = map(p);
    let mut with_flag = args(&m);
    with_flag.extend(["--default-policy".into(), "deny".into()]);
    let proxy = Proxy::start(&with_flag);
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    assert_eq!(status_of(listen).await, StatusCode::OK);
    drop(proxy);

    // Neither: the flag decides.
    write_policy(&path, &resources(&[p], "", "", ""));
    let (listen, m) = map(p);
    let mut with_flag = args(&m);
    with_flag.extend(["--default-policy".into(), "deny".into()]);
    let proxy = Proxy::start(&with_flag);
    assert!(proxy.wait_ready(Duration::from_secs(5)));
    assert_eq!(status_of(listen).await, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_set_skips_detection_and_unknown_detects() {
    let greet = greeting_app(b"* OK imap ready\r\n").await;
    let by_annotation = greeting_app(b"+OK pop3 ready\r\n").await;
    let h2_app = http_app().await;
    let h1_only = echo_app().await;
    let detected = http_app().await;
    let all = [
        greet.port(),
        by_annotation.port(),
        h2_app.port(),
        h1_only.port(),
        detected.port(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let rest = server("greet", greet.port(), "opaque")
        + &authz_networks("a1", "greet", "0.0.0.0/0")
        + &server("h2", h2_app.port(), "HTTP/2")
        + &authz_networks("a2", "h2", "0.0.0.0/0")
        + &server("h1", h1_only.port(), "HTTP/1")
        + &authz_networks("a3", "h1", "0.0.0.0/0")
        + &server("detected", detected.port(), "unknown")
        + &authz_networks("a4", "detected", "0.0.0.0/0");
    let path = policy_file(
        &dir,
        &resources(
            &all,
            &format!(
                "config.linkerd.io/opaque-ports: \"{}\"",
                by_annotation.port()
            ),
            "",
            &rest,
        ),
    );
    let maps: Vec<(std::net::SocketAddr, String)> = all.iter().map(|p| map(*p)).collect();
    let mut args = vec![
        "--policy-file".to_string(),
        path.to_str().unwrap().to_string(),
        "--workload".into(),
        "demo/web".into(),
    ];
    for (_, m) in &maps {
        args.extend(["--map".to_string(), m.clone()]);
    }
    let proxy = Proxy::start(&args);
    assert!(proxy.wait_ready(Duration::from_secs(5)));

    // opaque by Server, and by the pod's opaque-ports annotation: the
    // greeting comes at once (detection would wait 10 s).
    for (i, want) in [
        (0usize, &b"* OK imap ready\r\n"[..]),
        (1, b"+OK pop3 ready\r\n"),
    ] {
        let mut c = TcpStream::connect(maps[i].0).await.unwrap();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .expect("greeting without detection")
            .unwrap();
        assert_eq!(got, want);
    }

    // HTTP/2 by Server: prior-knowledge HTTP/2 without detection.
    let mut tx = h2c(maps[2].0).await;
    let (status, headers, _, _) =
        read(tx.send_request(get("http://web.example/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-seen-version"], "HTTP/2.0");

    // HTTP/1 by Server: anything but HTTP is refused.
    let mut c = TcpStream::connect(maps[3].0).await.unwrap();
    c.write_all(b"\x00\x01binary protocol\r\n").await.unwrap();
    assert!(read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("closed")
        .is_empty());
    assert_eq!(h1_only.connections(), 0);
    assert_eq!(
        proxy.wait_metric(
            "inbound_tcp_refused_total",
            &[("reason", "not_http")],
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );

    // unknown: detected.
    assert_eq!(status_of(maps[4].0).await, StatusCode::OK);
    let detections = |port: u16| {
        proxy.metric(
            "inbound_tcp_detect_http_results_total",
            &[("target_port", &port.to_string())],
        )
    };
    assert_eq!(detections(detected.port()), 1.0);
    assert_eq!(detections(h2_app.port()), 0.0, "HTTP/2 set: no detection");
    assert_eq!(detections(greet.port()), 0.0, "opaque: no detection");
    assert_eq!(detections(by_annotation.port()), 0.0);
}
