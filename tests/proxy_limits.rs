//! End-to-end: the limits a sidecar needs to survive its clients, each
//! crossed — detection timeout (silent and trickling clients), HTTP/1 head
//! size, header-read and idle timeouts, HTTP/2 stream, header-list and
//! reset-flood limits, `--max-connections`, descriptor exhaustion — and
//! graceful shutdown on SIGTERM; and the threads' CPU scheduling policy.

#[path = "support/apps.rs"]
mod apps;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apps::*;
use e2e::Proxy;
use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_handled_as_opaque_after_the_detect_timeout() {
    // A server-speaks-first app on a port that is not opaque: detection
    // waits for the client, then gives up and forwards as TCP.
    let app = greeting_app(b"220 hello\r\n").await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--detect-timeout", "300ms"]);
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut greeting))
        .await
        .expect("greeting after the detect timeout")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(&greeting, b"220 hello\r\n");
    assert!(
        took >= Duration::from_millis(280),
        "not before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "soon after it: {took:?}"
    );
    assert_eq!(
        proxy.metric(
            "inbound_tcp_detect_http_results_total",
            &[("result", "read_timeout")]
        ),
        1.0
    );
    // Authorized as TCP.
    assert_eq!(proxy.metric("inbound_tcp_authz_allow_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_cannot_hold_detection_past_the_timeout() {
    // The app records what it receives and when.
    /// When the first byte arrived, and every byte.
    type Received = Option<(Instant, Vec<u8>)>;
    let got: Arc<Mutex<Received>> = Arc::new(Mutex::new(None));
    let seen = got.clone();
    let app = tcp_app(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut g = seen.lock().unwrap();
                let entry = g.get_or_insert_with(|| (Instant::now(), Vec::new()));
                entry.1.extend_from_slice(&buf[..n]);
            }
        }
    })
    .await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m, "--detect-timeout", "500ms"]);
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET /").await.unwrap();
    // One byte every 100 ms for 3 s: always a valid prefix of a request line.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.write_all(b"a").await.is_err() {
            break;
        }
        if got.lock().unwrap().is_some() {
            break;
        }
    }
    let (first, bytes) = got.lock().unwrap().clone().expect("forwarded as opaque");
    let after = first - start;
    assert!(after >= Duration::from_millis(450), "{after:?}");
    assert!(
        after < Duration::from_millis(1500),
        "held past the timeout: {after:?}"
    );
    assert!(
        bytes.starts_with(b"GET /a"),
        "the bytes read during detection are replayed"
    );
}

/// Sends a raw HTTP/1 request and returns the status code of the answer
/// (`None` when the connection closes without one).
async fn raw_status(listen: std::net::SocketAddr, request: &[u8]) -> Option<u16> {
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(request).await.ok()?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_http1_head_gets_431() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m, "--http1-max-head-bytes", "4096"]);
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    assert_eq!(raw_status(listen, fits.as_bytes()).await, Some(200));
    let too_big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    assert_eq!(raw_status(listen, too_big.as_bytes()).await, Some(431));
    // Far bigger than the detection buffer, too.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    assert_eq!(raw_status(listen, huge.as_bytes()).await, Some(431));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_request_head_is_closed() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m, "--http-header-read-timeout", "300ms"]);
    let start = Instant::now();
    let mut c = TcpStream::connect(listen).await.unwrap();
    // A request line (so detection says HTTP/1), then the head never ends.
    c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
        .await
        .unwrap();
    read_until_closed(&mut c, Duration::from_secs(5))
        .await
        .expect("closed by the header-read timeout");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&[
        "--map",
        &m,
        "--http-idle-timeout",
        "300ms",
        "--http-header-read-timeout",
        "10s",
    ]);
    // HTTP/1: after a response, no new request for the idle timeout.
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(5))
        .await
        .expect("closed when idle");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "the request was answered first"
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(start.elapsed() < Duration::from_secs(2));

    // HTTP/2: GOAWAY, and the client's connection ends.
    let s = TcpStream::connect(listen).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // A slow request in flight is not idle.
    let (status, _, _, _) = read(
        tx.send_request(get("http://web/slow?ms=600"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a request longer than the idle timeout completes"
    );
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the HTTP/2 connection closes when idle")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_concurrent_streams_and_header_list_are_limited() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&[
        "--map",
        &m,
        "--http2-max-concurrent-streams",
        "3",
        "--http2-max-header-list-bytes",
        "4096",
    ]);
    // Streams: the h2 client learns the limit from SETTINGS and queues.
    let s = TcpStream::connect(listen).await.unwrap();
    let (h2, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let (rsp, _) = h2
        .send_request(http::Request::get("http://web/").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(rsp.await.unwrap().status(), StatusCode::OK);
    assert_eq!(h2.current_max_send_streams(), 3, "advertised to clients");

    // Crossing it: six 300 ms requests take two rounds.
    let start = Instant::now();
    let mut all = Vec::new();
    for _ in 0..6 {
        let h2 = h2.clone();
        all.push(tokio::spawn(async move {
            let mut h2 = h2.ready().await.unwrap();
            let (rsp, _) = h2
                .send_request(
                    http::Request::get("http://web/slow?ms=300")
                        .body(())
                        .unwrap(),
                    true,
                )
                .unwrap();
            rsp.await.unwrap().status()
        }));
    }
    for t in all {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert!(
        start.elapsed() >= Duration::from_millis(580),
        "{:?}",
        start.elapsed()
    );

    // Header list: a 8 KiB header block gets 431.
    let mut tx = h2c(listen).await;
    let mut req = get("http://web/");
    req.headers_mut()
        .insert("x-big", HeaderValue::from_str(&"a".repeat(8000)).unwrap());
    let status = match tx.send_request(req).await {
        Ok(rsp) => rsp.status(),
        Err(e) => panic!("expected a 431 response, got {e}"),
    };
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The connection survives it.
    let mut tx = h2c(listen).await;
    let (status, _, _, _) = read(tx.send_request(get("http://web/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads HTTP/2 frames for up to `wait` (or until the connection closes):
/// (type, stream id, payload).
async fn read_frames(c: &mut TcpStream, wait: Duration) -> Vec<(u8, u32, Vec<u8>)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16384];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push((rest[3], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    frames
}

/// GOAWAY (type 7) with ENHANCE_YOUR_CALM (0xb).
fn calmed_down(frames: &[(u8, u32, Vec<u8>)]) -> bool {
    frames
        .iter()
        .any(|(t, _, p)| *t == 0x7 && p.len() >= 8 && p[4..8] == [0, 0, 0, 0xb])
}

/// The client preface, an empty SETTINGS, then `n` HEADERS frames with
/// `block`, each followed by `after` (for its stream id) when given.
fn h2_flood(n: u32, block: &[u8], after: Option<fn(u32) -> Vec<u8>>) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for i in 0..n {
        let id = 2 * i + 1;
        out.extend(frame(0x1, 0x4 | 0x1, id, block)); // HEADERS, END_HEADERS|END_STREAM
        if let Some(after) = after {
            out.extend(after(id));
        }
    }
    out
}

/// HPACK: :method GET, :scheme http, :path /, :authority "web" (literal,
/// not indexed).
const GET_BLOCK: [u8; 8] = [0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    // The proxy relays resets to the app, so the app here is tolerant: the
    // GOAWAY asserted must be the proxy's.
    let app = tolerant_h2_app().await;
    // Raw frames: a well-behaved client library would not flood.
    let rst: fn(u32) -> Vec<u8> = |id| frame(0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    for (limit, calm, wait) in [("5", true, 5), ("100000", false, 1)] {
        let (listen, m) = map(app.port());
        let _proxy = Proxy::start(&["--map", &m, "--http2-max-pending-accept-resets", limit]);
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(&h2_flood(200, &GET_BLOCK, Some(rst)))
            .await
            .unwrap();
        let frames = read_frames(&mut c, Duration::from_secs(wait)).await;
        assert_eq!(
            calmed_down(&frames),
            calm,
            "GOAWAY ENHANCE_YOUR_CALM with limit {limit}"
        );
    }
}

/// An HTTP/2 app answering 200 that puts up with any number of resets.
async fn tolerant_h2_app() -> App {
    tcp_app(|s| async move {
        let Ok(mut conn) = h2::server::Builder::new()
            .max_pending_accept_reset_streams(1_000_000)
            .handshake::<_, bytes::Bytes>(s)
            .await
        else {
            return;
        };
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let _ = respond.send_response(http::Response::new(()), true);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_malformed_http2_streams_close_the_connection() {
    // A request with a connection-specific header is malformed in HTTP/2:
    // the proxy resets the stream; past the limit, it closes the connection.
    let mut block = GET_BLOCK.to_vec();
    block.extend_from_slice(&[0x00, 10]);
    block.extend_from_slice(b"connection");
    block.extend_from_slice(&[1, b'x']);
    let app = http_app().await;
    for (limit, calm) in [("5", true), ("1024", false)] {
        let (listen, m) = map(app.port());
        let _proxy = Proxy::start(&["--map", &m, "--http2-max-local-error-resets", limit]);
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(&h2_flood(50, &block, None)).await.unwrap();
        let frames = read_frames(&mut c, Duration::from_secs(2)).await;
        let resets = frames.iter().filter(|(t, _, _)| *t == 0x3).count();
        assert_eq!(calmed_down(&frames), calm, "limit {limit}");
        if !calm {
            assert_eq!(
                resets, 50,
                "under the limit, each malformed stream is reset"
            );
        }
    }
    assert_eq!(app.connections(), 0, "no malformed request reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_accept_gets_a_502_after_the_connect_timeout() {
    // A listener with a one-connection backlog that never accepts: once the
    // backlog is full, further connects hang (SYNs are dropped).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.listen(1).unwrap();
    let port = stuck.local_addr().unwrap().port();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fill.push(c);
        }
    }
    let (listen, m) = map(port);
    let _proxy = Proxy::start(&["--map", &m, "--app-connect-timeout", "300ms"]);
    let mut tx = h1(listen).await;
    let start = Instant::now();
    let (status, _, _, _) = tokio::time::timeout(Duration::from_secs(5), async {
        read(tx.send_request(get("/")).await.unwrap()).await
    })
    .await
    .expect("answered, not hung");
    let took = start.elapsed();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_and_counted() {
    let app = echo_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&[
        "--map",
        &m,
        "--max-connections",
        "2",
        "--opaque-ports",
        &app.port().to_string(),
    ]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).await.unwrap();
        held.push(c);
    }
    let mut third = TcpStream::connect(listen).await.unwrap();
    let got = read_until_closed(&mut third, Duration::from_secs(2))
        .await
        .expect("refused at once");
    assert!(got.is_empty());
    assert_eq!(
        proxy.metric(
            "inbound_tcp_refused_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    // A slot frees when a connection ends.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(listen).await.unwrap();
    again.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), again.read_exact(&mut b))
        .await
        .expect("served again")
        .unwrap();
    assert_eq!(&b, b"ok");
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces): utime is
    // field 14, stime 15 (1-based), i.e. 11 and 12 after ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_from_descriptor_exhaustion_back_off() {
    let app = echo_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start_with(
        &["--map", &m, "--opaque-ports", &app.port().to_string()],
        Some(40),
        &[],
    );
    // Each proxied connection holds two descriptors; 40 clients exhaust 40.
    let mut clients = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = TcpStream::connect(listen).await {
            clients.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While descriptors are exhausted, the accept loop must not spin.
    let before = cpu_ticks(proxy.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(proxy.pid()) - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in one second: spinning on EMFILE"
    );
    drop(clients);
    // It recovers once descriptors are free (the backoff is at most 1 s).
    let mut ok = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(mut c) = TcpStream::connect(listen).await else {
            continue;
        };
        if c.write_all(b"back").await.is_err() {
            continue;
        }
        let mut b = [0u8; 4];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1500), c.read_exact(&mut b)).await
        {
            ok = &b == b"back";
            if ok {
                break;
            }
        }
    }
    assert!(ok, "serving again after descriptors are freed");
    assert!(
        proxy.wait_metric(
            "inbound_tcp_accept_errors_total",
            &[("error", "EMFILE")],
            1.0,
            Duration::from_secs(2)
        ) >= 1.0,
        "{}",
        proxy.metrics()
    );
    assert!(proxy.wait_log(&["accept failed; backing off"], Duration::from_secs(1)));
}

/// The status of a response still on its way (`None`: the request failed).
fn status_later(
    rsp: impl std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>
        + Send
        + 'static,
) -> tokio::task::JoinHandle<Option<StatusCode>> {
    tokio::spawn(async move {
        match rsp.await {
            Ok(rsp) => Some(read(rsp).await.0),
            Err(_) => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let mut proxy = Proxy::start(&["--map", &m]);
    let in_flight = status_later(h1(listen).await.send_request(get("/slow?ms=800")));
    // The same over HTTP/2 (the relay: GOAWAY, then the open stream ends).
    let in_flight_h2 = status_later(
        h2c(listen)
            .await
            .send_request(get("http://web/slow?ms=800")),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term = Instant::now();
    proxy.sigterm();
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "the listener closed on SIGTERM"
    );
    assert_eq!(
        in_flight.await.unwrap(),
        Some(StatusCode::OK),
        "the in-flight request completes"
    );
    assert_eq!(
        in_flight_h2.await.unwrap(),
        Some(StatusCode::OK),
        "the in-flight HTTP/2 stream completes"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits once drained, long before the 30 s grace");
    assert!(status.success(), "{status}");
    assert!(term.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_long_connections_after_the_grace_period() {
    let app = echo_app().await;
    let (listen, m) = map(app.port());
    let mut proxy = Proxy::start(&[
        "--map",
        &m,
        "--opaque-ports",
        &app.port().to_string(),
        "--shutdown-grace",
        "500ms",
    ]);
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).await.unwrap();
    let term = Instant::now();
    proxy.sigterm();
    // Still usable during the grace period.
    c.write_all(b"yo").await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"yo");
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    let took = term.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(read_until_closed(&mut c, Duration::from_secs(2))
        .await
        .is_some());
}

/// An HTTP request the app never answers holds its connection through the
/// drain; when the grace period ends the proxy closes it and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_unanswered_http_request_after_the_grace_period() {
    // Reads the request, never answers, keeps the connection open.
    let app = tcp_app(|mut s| async move {
        let mut b = [0u8; 1024];
        while matches!(s.read(&mut b).await, Ok(1..)) {}
    })
    .await;
    let (listen, m) = map(app.port());
    let mut proxy = Proxy::start(&["--map", &m, "--shutdown-grace", "500ms"]);
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    // The request is in flight once the proxy counts it.
    assert_eq!(
        proxy.wait_metric("request_total", &[], 1.0, Duration::from_secs(5)),
        1.0
    );
    let term = Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    let took = term.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "closed before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Closed without a response: nothing was answered for the app.
    let rest = read_until_closed(&mut c, Duration::from_secs(2))
        .await
        .expect("the client connection is closed");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Closed by the proxy when the grace ended, not by its exit.
    let logs = proxy.logs();
    assert!(logs.contains("shutdown grace expired"), "{logs}");
    assert!(!logs.contains("still open after being closed"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_keeps_its_slot_until_it_ends() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--max-connections", "1"]);
    let mut tx = h1(listen).await;
    let req = http::Request::get("/ws")
        .header("host", "web")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(rsp).await.unwrap());
    io.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    io.read_exact(&mut b).await.unwrap();
    // The splice outlives the HTTP server of its connection, but not its slot.
    let mut other = TcpStream::connect(listen).await.unwrap();
    assert!(read_until_closed(&mut other, Duration::from_secs(2))
        .await
        .expect("refused")
        .is_empty());
    assert_eq!(
        proxy.metric(
            "inbound_tcp_refused_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    drop(io);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = h1(listen).await;
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "the slot is free again");
}

/// The scheduling policy (`/proc/PID/task/TID/stat` field 41) of every
/// thread of process `pid`.
fn thread_policies(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

#[test]
fn every_proxy_thread_runs_with_the_chosen_cpu_scheduling_policy() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let batch = Proxy::start::<&str>(&[]);
    let policies = thread_policies(batch.pid());
    assert!(!policies.is_empty());
    assert!(
        policies.iter().all(|&p| p == SCHED_BATCH),
        "default batch: {policies:?}"
    );
    let normal = Proxy::start_with::<&str>(&[], None, &[("PORTCULLIS_CPU_SCHEDULING", "normal")]);
    let policies = thread_policies(normal.pid());
    assert!(
        policies.iter().all(|&p| p == SCHED_OTHER),
        "--cpu-scheduling normal: {policies:?}"
    );
}
