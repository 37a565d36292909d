//! End-to-end: the proxy's HTTP paths (HTTP/1, HTTP/2, gRPC, upgrades),
//! enforcement per request, the app-down path, pooling, the admin server and
//! metrics, through the real `portcullis` binary.

#[path = "support/apps.rs"]
mod apps;

use std::time::Duration;

use apps::*;
use bytes::Bytes;
use e2e::Proxy;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_are_forwarded_with_host_and_without_client_sent_identity() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m]);
    let mut tx = h1(listen).await;
    let mut req = get("/hello?x=1");
    req.headers_mut()
        .insert("l5d-client-id", HeaderValue::from_static("forged.identity"));
    req.headers_mut()
        .insert("connection", HeaderValue::from_static("keep-alive"));
    req.headers_mut()
        .insert("keep-alive", HeaderValue::from_static("timeout=5"));
    let (status, headers, _, _) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-seen-host"], "web.example", "Host preserved");
    assert_eq!(headers["x-seen-path"], "/hello");
    assert_eq!(
        headers["x-seen-client-id"], "<none>",
        "a client-sent l5d-client-id never reaches the app"
    );
    assert_eq!(headers["x-seen-keep-alive"], "<none>", "hop-by-hop removed");
    assert!(
        headers.get("x-hop").is_none(),
        "response hop-by-hop removed"
    );

    // A body goes through, on the same connection.
    tx.ready().await.unwrap();
    let req = Request::post("/echo")
        .header("host", "web.example")
        .body(Full::new(Bytes::from(payload(7, 300_000))))
        .unwrap();
    let (status, _, body, _) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(checksum(&body), checksum(&payload(7, 300_000)));

    assert_eq!(
        proxy.metric(
            "inbound_http_authz_allow_total",
            &[
                ("srv_kind", "default"),
                ("srv_name", "all-unauthenticated"),
                ("route_kind", "default"),
                ("authz_name", "all-unauthenticated"),
            ]
        ),
        2.0
    );
    assert_eq!(
        proxy.metric(
            "inbound_tcp_detect_http_results_total",
            &[("result", "http/1")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("request_total", &[("direction", "inbound")]),
        2.0
    );
    assert_eq!(
        proxy.wait_metric(
            "response_total",
            &[("status_code", "200"), ("classification", "success")],
            2.0,
            Duration::from_secs(2)
        ),
        2.0
    );
    assert_eq!(
        proxy.metric("response_latency_ms_count", &[("status_code", "200")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_http1_requests_get_403_and_the_connection_stays_usable() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--default-policy", "deny"]);
    let mut tx = h1(listen).await;
    for _ in 0..2 {
        tx.ready().await.expect("the connection stays open");
        let (status, headers, body, _) = read(tx.send_request(get("/")).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["l5d-proxy-error"], "unauthorized request on route");
        assert!(body.is_empty());
    }
    // A denied request with a body (unread by the app) does not cost the
    // connection either.
    let post = Request::post("/upload")
        .header("host", "web.example")
        .body(Full::new(Bytes::from(payload(3, 200_000))))
        .unwrap();
    tx.ready().await.unwrap();
    let (status, _, _, _) = read(tx.send_request(post).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    tx.ready()
        .await
        .expect("the connection stays open after a denied upload");
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.connections(), 0, "nothing reached the app");
    assert_eq!(
        proxy.metric(
            "inbound_http_authz_deny_total",
            &[("srv_name", "deny"), ("route_name", "default")]
        ),
        4.0
    );
    assert_eq!(
        proxy.wait_metric(
            "response_total",
            &[("status_code", "403")],
            4.0,
            Duration::from_secs(2)
        ),
        4.0
    );
    let port = format!("port={}", app.port());
    assert!(
        proxy.wait_log(
            &[
                "denied",
                &port,
                "identity=\"none\"",
                "server=default/deny",
                "reason=the default policy is deny",
                "proto=\"http\"",
                "path=\"/\""
            ],
            Duration::from_secs(2)
        ),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_are_forwarded_and_denied_per_request() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut tx = h2c(listen).await;
    let mut req = get(&format!("http://web.example:{}/h2", app.port()));
    req.headers_mut()
        .insert("l5d-client-id", HeaderValue::from_static("forged"));
    let (status, headers, _, _) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-seen-version"], "HTTP/2.0", "HTTP/2 end to end");
    assert_eq!(
        headers["x-seen-host"],
        format!("web.example:{}", app.port()).as_str(),
        ":authority preserved"
    );
    assert_eq!(headers["x-seen-client-id"], "<none>");

    // Many concurrent streams on one connection.
    let mut all = Vec::new();
    for i in 0..20 {
        let mut tx = tx.clone();
        all.push(tokio::spawn(async move {
            let req = get(&format!("http://web.example/s{i}?ms=50"));
            read(tx.send_request(req).await.unwrap()).await.0
        }));
    }
    for t in all {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }

    let app2 = http_app().await;
    let (listen2, m2) = map(app2.port());
    let proxy2 = Proxy::start(&["--map", &m2, "--default-policy", "deny"]);
    let mut tx = h2c(listen2).await;
    for _ in 0..2 {
        let req = get("http://web.example/");
        let (status, headers, _, _) = read(tx.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["l5d-proxy-error"], "unauthorized request on route");
    }
    assert_eq!(app2.connections(), 0, "nothing reached the app");
    assert_eq!(
        proxy2.metric(
            "inbound_tcp_detect_http_results_total",
            &[("result", "http/2")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_beyond_the_flow_control_windows_pass_both_ways() {
    // The relay leaves flow control to the client and the app: 3 MiB
    // each way needs many WINDOW_UPDATEs to cross it, on four streams at
    // once.
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let tx = h2c(listen).await;
    let mut all = Vec::new();
    for seed in 0..4 {
        let mut tx = tx.clone();
        all.push(tokio::spawn(async move {
            let sent = Bytes::from(payload(seed, 3 << 20));
            let req = Request::post("http://web.example/grpc")
                .header("content-type", "application/grpc")
                .body(Full::new(sent.clone()))
                .unwrap();
            let (status, _, body, trailers) = read(tx.send_request(req).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body == sent, "stream {seed}: the body came back intact");
            assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        }));
    }
    for t in all {
        t.await.unwrap();
    }
    assert_eq!(app.connections(), 1, "one app connection for the client's");
    assert_eq!(app.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_keeps_trailers_and_denials_are_grpc_statuses() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut tx = h2c(listen).await;
    let req = Request::post("http://web.example/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let (status, headers, body, trailers) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-seen-te"], "trailers",
        "te: trailers reaches the app"
    );
    assert_eq!(&body[..], b"\0\0\0\0\x02hi");
    assert_eq!(trailers.expect("trailers forwarded")["grpc-status"], "0");

    let app2 = http_app().await;
    let (listen2, m2) = map(app2.port());
    let proxy2 = Proxy::start(&["--map", &m2, "--default-policy", "deny"]);
    let mut tx = h2c(listen2).await;
    let req = Request::post("http://web.example/pkg.Svc/Method")
        .header("content-type", "application/grpc+proto")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "gRPC denials are HTTP 200");
    assert_eq!(headers["grpc-status"], "7", "PERMISSION_DENIED");
    assert!(headers.contains_key("grpc-message"));
    assert_eq!(app2.connections(), 0, "nothing reached the app");
    assert_eq!(
        proxy2.wait_metric(
            "response_total",
            &[("status_code", "200"), ("classification", "failure")],
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_gets_the_client_a_502() {
    let port = closed_port();
    let (listen, m) = map(port);
    let proxy = Proxy::start(&["--map", &m]);
    let mut tx = h1(listen).await;
    let (status, headers, _, _) = tokio::time::timeout(Duration::from_secs(5), async {
        read(tx.send_request(get("/")).await.unwrap()).await
    })
    .await
    .expect("answered, not hung");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers.contains_key("l5d-proxy-error"));
    // The connection stays usable.
    tx.ready().await.expect("the connection stays open");
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    let mut tx = h2c(listen).await;
    let req = Request::post("http://web.example/pkg.Svc/M")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = read(tx.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14", "UNAVAILABLE");
    assert!(proxy.wait_log(
        &["request to the application failed"],
        Duration::from_secs(2)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut tx = h1(listen).await;
    let req = Request::get("/ws")
        .header("host", "web.example")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = hyper::upgrade::on(rsp).await.expect("upgraded");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"over the upgrade").await.unwrap();
    let mut back = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back))
        .await
        .expect("echo arrives")
        .unwrap();
    assert_eq!(&back, b"over the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_the_app_are_pooled() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    for _ in 0..5 {
        let mut tx = h1(listen).await;
        let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        drop(tx);
        // Let the pool take the connection back before the next client.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.connections(), 1, "five clients, one app connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let proxy = Proxy::start(&["--default-policy", "cluster-unauthenticated"]);
    assert_eq!(proxy.get("/live"), (200, "live\n".to_string()));
    assert_eq!(proxy.get("/ready").0, 200);
    let (status, policy) = proxy.get("/policy");
    assert_eq!(status, 200);
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["default_policy"], "cluster-unauthenticated");
    assert!(policy["opaque_ports"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(3306)));
    let (status, config) = proxy.get("/config");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["detect_timeout"], "10s");
    let (status, metrics) = proxy.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE inbound_policy_generation gauge"));
    assert!(metrics.ends_with("# EOF\n"));
    assert_eq!(proxy.get("/nope").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_networks_default_policy_admits_only_cluster_clients() {
    // Loopback is not in the cluster networks unless configured so.
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _p = Proxy::start(&["--map", &m, "--default-policy", "cluster-unauthenticated"]);
    let mut tx = h1(listen).await;
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    drop(_p);

    let (listen, m) = map(app.port());
    let _p = Proxy::start(&[
        "--map",
        &m,
        "--default-policy",
        "cluster-unauthenticated",
        "--cluster-networks",
        "127.0.0.0/8,10.0.0.0/8",
    ]);
    let mut tx = h1(listen).await;
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_default_allows_and_logs_each_allow() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--default-policy", "audit"]);
    let mut tx = h1(listen).await;
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(proxy.wait_log(
        &[
            "audit: allowed",
            &format!("port={}", app.port()),
            "server=default/audit"
        ],
        Duration::from_secs(2)
    ));
    assert_eq!(
        proxy.metric("inbound_http_authz_allow_total", &[("authz_name", "audit")]),
        1.0
    );
}
