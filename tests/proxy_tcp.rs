//! End-to-end: the proxy's TCP paths (opaque, detected-as-opaque, TLS
//! passthrough, the direct path) through the real `portcullis` binary.

#[path = "support/apps.rs"]
mod apps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apps::*;
use e2e::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SENT: usize = 4 * 1024 * 1024 + 17;
const RETURNED: usize = 3 * 1024 * 1024 + 5;

/// An app that reads until the client half-closes, answers with the length
/// and checksum of what it got, then sends `RETURNED` bytes and closes.
async fn checksum_app() -> App {
    tcp_app(|mut s| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_err() {
            return;
        }
        let mut answer = Vec::new();
        answer.extend_from_slice(&(got.len() as u64).to_be_bytes());
        answer.extend_from_slice(&checksum(&got).to_be_bytes());
        answer.extend_from_slice(&payload(2, RETURNED));
        let _ = s.write_all(&answer).await;
    })
    .await
}

/// Sends `SENT` bytes, half-closes, and checks both directions.
async fn exchange_and_verify(listen: std::net::SocketAddr) {
    let mut c = TcpStream::connect(listen).await.unwrap();
    let data = payload(1, SENT);
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        // Half-close: the app only answers after our FIN.
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async {
        r.read_to_end(&mut back).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, recv) })
        .await
        .expect("exchange finishes");
    assert_eq!(back.len(), 16 + RETURNED, "bytes back");
    assert_eq!(
        u64::from_be_bytes(back[..8].try_into().unwrap()),
        SENT as u64,
        "the app got every byte"
    );
    assert_eq!(
        u64::from_be_bytes(back[8..16].try_into().unwrap()),
        checksum(&data),
        "the app got the bytes unchanged"
    );
    assert_eq!(checksum(&back[16..]), checksum(&payload(2, RETURNED)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mib_payloads_cross_both_ways_with_half_close() {
    let app = checksum_app().await;
    // As a configured opaque port, with each --opaque-transfer; then
    // detected as not-HTTP.
    for (i, transfer) in ["copy", "splice"].into_iter().enumerate() {
        let (opaque, opaque_map) = map(app.port());
        let proxy = Proxy::start(&[
            "--map",
            &opaque_map,
            "--opaque-ports",
            &app.port().to_string(),
            "--opaque-transfer",
            transfer,
        ]);
        exchange_and_verify(opaque).await;
        assert_eq!(app.connections(), i + 1, "{transfer}");
        let m = proxy.metrics();
        let read = e2e::metric_sum(&m, "tcp_read_bytes_total", &[]);
        let written = e2e::metric_sum(&m, "tcp_write_bytes_total", &[]);
        assert_eq!(read as usize, SENT, "{transfer}: {m}");
        assert_eq!(written as usize, 16 + RETURNED, "{transfer}");
    }

    let (detected, detected_map) = map(app.port());
    let proxy = Proxy::start(&["--map", &detected_map, "--opaque-ports", "1"]);
    exchange_and_verify(detected).await;
    assert_eq!(
        proxy.metric(
            "inbound_tcp_detect_http_results_total",
            &[("result", "not_http")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "inbound_tcp_authz_allow_total",
            &[
                ("srv_kind", "default"),
                ("srv_name", "all-unauthenticated"),
                ("tls", "no_identity"),
                ("target_port", &app.port().to_string()),
            ]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_apps_greet_at_once_on_opaque_ports() {
    let app = greeting_app(b"220 smtp ready\r\n").await;
    let (listen, m) = map(app.port());
    // The default detect timeout (10 s) would hold the greeting if detection ran.
    let _proxy = Proxy::start(&["--map", &m, "--opaque-ports", &app.port().to_string()]);
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut greeting))
        .await
        .expect("greeting arrives without waiting for detection")
        .unwrap();
    assert_eq!(&greeting, b"220 smtp ready\r\n");
    assert!(start.elapsed() < Duration::from_secs(2));
    c.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_connections_are_closed_without_forwarding_a_byte() {
    let app = echo_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--default-policy",
        "deny",
        "--opaque-ports",
        &app.port().to_string(),
    ]);
    let mut c = TcpStream::connect(listen).await.unwrap();
    let _ = c.write_all(b"secret").await;
    let got = read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("the proxy closes the connection");
    assert!(got.is_empty());
    assert_eq!(app.connections(), 0, "nothing reached the app");
    assert_eq!(
        proxy.metric(
            "inbound_tcp_authz_deny_total",
            &[("srv_kind", "default"), ("srv_name", "deny")]
        ),
        1.0
    );
    // Logged once, at info, with port, client, identity, server and reason.
    let port = format!("port={}", app.port());
    let needles = [
        "denied",
        &port,
        "client=127.0.0.1:",
        "identity=",
        "none",
        "server=default/deny",
        "default policy is deny",
    ];
    assert!(
        proxy.wait_log(&needles, Duration::from_secs(2)),
        "{}",
        proxy.logs()
    );
    let lines = proxy
        .logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count();
    assert_eq!(lines, 1, "one log line per deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_gets_the_client_a_closed_connection() {
    let port = closed_port();
    let (listen, m) = map(port);
    let proxy = Proxy::start(&["--map", &m, "--opaque-ports", &port.to_string()]);
    let mut c = TcpStream::connect(listen).await.unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("closed, not hung");
    assert!(got.is_empty());
    assert!(proxy.wait_log(&["application is unreachable"], Duration::from_secs(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_port_itself_is_never_forwarded() {
    // Without an iptables redirect, a connection to --inbound-addr has the
    // inbound port as its destination: the direct path, closed for now.
    let proxy = Proxy::start::<&str>(&[]);
    let mut c = TcpStream::connect(proxy.inbound).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = read_until_closed(&mut c, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(got.is_empty());
    assert_eq!(
        proxy.wait_metric(
            "inbound_tcp_refused_total",
            &[("reason", "direct")],
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}

// ===== TLS passthrough

fn tls_configs(name: &str) -> (rustls::ServerConfig, rustls::ClientConfig) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_not_for_the_proxy_passes_through_untouched() {
    let (server, client) = tls_configs("app.example");
    let app = tls_echo_app(server).await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(listen).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.example").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake finishes")
        .expect("the app's certificate verifies end to end");
    tls.write_all(b"ping").await.unwrap();
    tls.flush().await.unwrap();
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(
        proxy.metric(
            "inbound_tcp_authz_allow_total",
            &[("tls", "opaque"), ("sni", "app.example")]
        ),
        1.0,
        "{}",
        proxy.metrics()
    );
    // No HTTP detection ran on the TLS stream.
    assert_eq!(
        proxy.metric("inbound_tcp_detect_http_results_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_tls_passthrough_is_closed() {
    let (server, client) = tls_configs("app.example");
    let app = tls_echo_app(server).await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--default-policy", "deny"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(listen).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.example").unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("fails fast");
    assert!(res.is_err(), "the handshake cannot complete");
    assert_eq!(app.connections(), 0);
    assert_eq!(
        proxy.metric("inbound_tcp_authz_deny_total", &[("tls", "opaque")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_can_come_from_the_environment_and_logs_can_be_json() {
    let a = echo_app().await;
    let b = echo_app().await;
    let (la, ma) = map(a.port());
    let (lb, mb) = map(b.port());
    let maps = format!("{ma},{mb}");
    let ports = format!("{},{}", a.port(), b.port());
    let proxy = Proxy::start_with::<&str>(
        &["--log-format", "json"],
        None,
        &[
            ("PORTCULLIS_MAP", &maps),
            ("PORTCULLIS_OPAQUE_PORTS", &ports),
            ("PORTCULLIS_DEFAULT_POLICY", "deny"),
        ],
    );
    for listen in [la, lb] {
        let mut c = TcpStream::connect(listen).await.unwrap();
        let _ = c.write_all(b"x").await;
        assert!(read_until_closed(&mut c, Duration::from_secs(3))
            .await
            .expect("denied: closed")
            .is_empty());
    }
    assert_eq!(a.connections() + b.connections(), 0);
    assert_eq!(
        proxy.wait_metric(
            "inbound_tcp_authz_deny_total",
            &[("srv_name", "deny")],
            2.0,
            Duration::from_secs(2)
        ),
        2.0
    );
    // Every log line is a JSON object; denials carry their fields.
    assert!(proxy.wait_log(&["\"denied\""], Duration::from_secs(2)));
    let mut denials = 0;
    for line in proxy.logs().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "denied" {
            denials += 1;
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["fields"]["identity"], "none");
            assert_eq!(v["fields"]["server"], "default/deny");
            assert!(v["fields"]["client"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"));
        }
    }
    assert_eq!(denials, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listeners_and_clients_work() {
    let app = echo_app().await;
    let listen: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(&[
        "--map",
        &format!("{listen}={}", app.port()),
        "--opaque-ports",
        &app.port().to_string(),
    ]);
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"six").await.unwrap();
    let mut b = [0u8; 3];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"six");
    assert_eq!(
        proxy.metric(
            "inbound_tcp_authz_allow_total",
            &[
                ("target_ip", "::1"),
                ("target_port", &app.port().to_string())
            ]
        ),
        1.0,
        "{}",
        proxy.metrics()
    );
}
