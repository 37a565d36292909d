//! End-to-end: `portcullis-controller serve` -> `portcullis --policy-controller`.
//! A resource file edit revokes a live connection within a second; a proxy
//! whose controller is not up yet applies the default policy after
//! `--policy-timeout`, then the controller's policy once it arrives.

#[path = "support/apps.rs"]
mod apps;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apps::*;
use e2e::Proxy;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The pod `demo/web` declaring `port`, a Server on it, and one
/// ServerAuthorization admitting plaintext clients from `cidr`.
fn resources(port: u16, protocol: &str, cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n  labels:\n    app: web\n\
         spec:\n  containers:\n    - name: web\n      ports:\n        - containerPort: {port}\n\
         ---\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata:\n  name: web\n  namespace: demo\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: web\n  port: {port}\n  proxyProtocol: {protocol}\n\
         ---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata:\n  name: local\n  namespace: demo\n\
         spec:\n  server:\n    name: web\n  client:\n    unauthenticated: true\n    networks:\n      - cidr: {cidr}\n"
    )
}

/// Replaces the file atomically (write + rename).
fn write(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `portcullis-controller serve` on `addr`, serving `resources`.
fn controller(resources: &Path, addr: SocketAddr) -> e2e::Controller {
    let (addr_s, res) = (addr.to_string(), resources.display().to_string());
    e2e::Controller::serve(&["--listen", &addr_s, "--resources", &res], &[], addr)
}

fn policy_file(dir: &tempfile::TempDir, yaml: &str) -> PathBuf {
    let path = dir.path().join("policy.yaml");
    write(&path, yaml);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_revokes_a_live_connection_through_the_controller_within_a_second() {
    let app = echo_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    let path = policy_file(&dir, &resources(p, "opaque", "127.0.0.0/8"));
    let ctl_addr = e2e::free_addr();
    let ctl = controller(&path, ctl_addr);
    let (listen, m) = map(p);
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-controller",
        &format!("http://{ctl_addr}"),
        "--workload",
        "demo/web",
        "--inbound-ports",
        &p.to_string(),
    ]);
    assert!(
        proxy.wait_ready(Duration::from_secs(10)),
        "ready once port {p} has its policy:\n{}",
        proxy.logs()
    );
    let (status, policy) = proxy.get("/policy");
    assert_eq!(status, 200);
    assert!(
        policy.contains(&format!("controller http://{ctl_addr}")),
        "{policy}"
    );
    assert!(policy.contains("\"opaque\""), "{policy}");

    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");

    // controller: file edit -> recompile -> WatchPort message;
    // proxy: table swap -> revocation of the live connection.
    let changed = Instant::now();
    write(&path, &resources(p, "opaque", "10.0.0.0/8"));
    let rest = read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("the live connection is closed");
    let took = changed.elapsed();
    assert!(rest.is_empty());
    assert!(
        took < Duration::from_secs(1),
        "closed after {took:?}\ncontroller:\n{}\nproxy:\n{}",
        ctl.log(),
        proxy.logs()
    );
    assert_eq!(
        proxy.wait_metric(
            "inbound_tcp_authz_terminate_total",
            &[("srv_name", "web"), ("srv_kind", "server")],
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

    // The controller goes away: the last policy stays in force.
    drop(ctl);
    assert!(
        proxy.wait_metric(
            "inbound_policy_stream_errors_total",
            &[],
            1.0,
            Duration::from_secs(3)
        ) >= 1.0
    );
    let mut c = TcpStream::connect(listen).await.unwrap();
    let _ = c.write_all(b"x").await;
    assert!(read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("closed")
        .is_empty());
    assert_eq!(proxy.get("/ready").0, 200);
}

async fn status_of(listen: SocketAddr) -> StatusCode {
    let mut tx = h1(listen).await;
    read(tx.send_request(get("/")).await.unwrap()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_controller_the_default_applies_after_the_policy_timeout() {
    let app = http_app().await;
    let p = app.port();
    let dir = tempfile::tempdir().unwrap();
    // Only 10.0.0.0/8: the test client (127.0.0.1) is denied once it applies.
    let path = policy_file(&dir, &resources(p, "HTTP/1", "10.0.0.0/8"));
    let ctl_addr = e2e::free_addr();
    let (listen, m) = map(p);
    // The app's port is not in --inbound-ports: it is watched when the
    // first connection comes (its wait starts then). Port 9999, watched from
    // the start, keeps /ready at 503 until the controller answers.
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--policy-controller",
        &format!("http://{ctl_addr}"),
        "--workload",
        "demo/web",
        "--inbound-ports",
        "9999",
        "--policy-timeout",
        "500ms",
    ]);

    // Unreachable controller: the connection waits out --policy-timeout,
    // then the configured default (all-unauthenticated) lets it through.
    let started = Instant::now();
    assert_eq!(status_of(listen).await, StatusCode::OK);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(
        proxy.wait_log(&["default policy applies"], Duration::from_secs(1)),
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.get("/ready").0, 503, "no port has a policy yet");
    // Later connections do not wait again.
    let again = Instant::now();
    assert_eq!(status_of(listen).await, StatusCode::OK);
    assert!(again.elapsed() < Duration::from_millis(400));

    // The controller comes up: its policy arrives and denies us.
    let _ctl = controller(&path, ctl_addr);
    assert!(proxy.wait_ready(Duration::from_secs(5)), "{}", proxy.logs());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = status_of(listen).await;
        if status == StatusCode::FORBIDDEN {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
