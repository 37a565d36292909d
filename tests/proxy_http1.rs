//! End-to-end: the HTTP/1.1 fast path (`proxy/src/http1.rs`) over raw
//! sockets, where the exact bytes matter: pipelining, chunked and
//! close-delimited responses, interim responses, HEAD, small bodies split
//! across reads, the hand-off to hyper in the middle of a connection, app
//! connections closed while idle, and broken responses.

#[path = "support/apps.rs"]
mod apps;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apps::*;
use e2e::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// One response read off a raw connection: head text and body bytes.
struct Rsp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Rsp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A raw client connection with its unread bytes.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(T, self.s.read(&mut chunk))
            .await
            .expect("no answer within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response; `head_request` means no body whatever the head says.
    async fn response(&mut self, head_request: bool) -> Rsp {
        let (head_len, status, head) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                break (
                    n,
                    r.code.unwrap(),
                    String::from_utf8_lossy(&self.buf[..n]).into_owned(),
                );
            }
            assert!(self.fill().await, "closed within a head: {:?}", self.buf);
        };
        self.buf.drain(..head_len);
        let mut rsp = Rsp {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status / 100 == 1 || status == 204 || status == 304 {
            return rsp;
        }
        if rsp.header("transfer-encoding").is_some() {
            // Kept encoded as sent: tests compare it verbatim. The body ends
            // with the last chunk (`0`), the trailers and an empty line.
            loop {
                let last = if self.buf.starts_with(b"0\r\n") {
                    Some(0)
                } else {
                    find(&self.buf, b"\r\n0\r\n").map(|i| i + 2)
                };
                if let Some(end) =
                    last.and_then(|z| find(&self.buf[z + 1..], b"\r\n\r\n").map(|e| z + 1 + e + 4))
                {
                    rsp.body = self.buf.drain(..end).collect();
                    return rsp;
                }
                assert!(self.fill().await, "closed within a chunked body");
            }
        }
        match rsp.header("content-length") {
            Some(n) => {
                let n: usize = n.parse().unwrap();
                while self.buf.len() < n {
                    assert!(self.fill().await, "closed within a body");
                }
                rsp.body = self.buf.drain(..n).collect();
            }
            None => {
                while self.fill().await {}
                rsp.body = std::mem::take(&mut self.buf);
            }
        }
        rsp
    }

    /// Whether the proxy closed the connection (EOF within 5 s).
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An app that answers each request on a connection with the next of
/// `answers` (raw bytes), recording the request heads it received.
async fn scripted_app(
    answers: Vec<&'static [u8]>,
    close_after_each: bool,
) -> (App, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answers = Arc::new(answers);
    let next = Arc::new(Mutex::new(0usize));
    let app = tcp_app(move |mut s| {
        let (log, answers, next) = (log.clone(), answers.clone(), next.clone());
        async move {
            let mut buf = Vec::new();
            loop {
                let end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                buf.drain(..end);
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    (*n - 1) % answers.len()
                };
                if s.write_all(answers[i]).await.is_err() || close_after_each {
                    return;
                }
            }
        }
    })
    .await;
    (app, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_their_responses_in_order() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(
        b"GET /a HTTP/1.1\r\nHost: w\r\n\r\nGET /b HTTP/1.1\r\nHost: w\r\n\r\nPOST /c HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    for path in ["/a", "/b", "/c"] {
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-seen-path"), Some(path));
        assert!(
            r.header("x-hop").is_none(),
            "listed hop-by-hop header removed: {}",
            r.head
        );
        assert!(r.header("connection").is_none(), "{}", r.head);
        if path == "/c" {
            assert_eq!(r.body, b"hello");
        }
    }
    assert_eq!(
        proxy.wait_metric("response_total", &[("status_code", "200")], 3.0, T),
        3.0
    );
    assert_eq!(
        app.connections(),
        1,
        "one app connection for the client connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_split_across_reads_is_forwarded_whole() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    let body = payload(11, 40_000);
    c.send(
        format!(
            "PUT /up HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    for part in body.chunks(10_000) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.send(part).await;
    }
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(checksum(&r.body), checksum(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_and_trailers_pass_through_verbatim() {
    let chunked: &'static [u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: done\r\n\r\n";
    let (app, seen) = scripted_app(vec![chunked], false).await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    for _ in 0..2 {
        c.send(b"GET /chunks HTTP/1.1\r\nHost: w\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(
            r.body,
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: done\r\n\r\n".to_vec()
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(
        app.connections(),
        1,
        "the chunked framing was followed to its end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_ends_the_client_connection() {
    let (app, _) = scripted_app(
        vec![b"HTTP/1.1 200 OK\r\nX-App: 1\r\n\r\nuntil the end"],
        true,
    )
    .await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert_eq!(
        r.body, b"until the end",
        "the body ends where the app closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_and_head_requests_keep_the_framing() {
    let (app, _) = scripted_app(
        vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            // HEAD: a length, but no body follows.
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ],
        false,
    )
    .await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET /hints HTTP/1.1\r\nHost: w\r\n\r\n").await;
    let early = c.response(false).await;
    assert_eq!(early.status, 103);
    assert_eq!(early.header("link"), Some("</style.css>"));
    let r = c.response(false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));

    c.send(b"HEAD /big HTTP/1.1\r\nHost: w\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(r.header("content-length"), Some("1000"));
    c.send(b"DELETE /x HTTP/1.1\r\nHost: w\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(
        r.status, 204,
        "the HEAD response had no body: the next response is in place"
    );
    assert!(c.buf.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_need_hyper_are_handed_over_mid_connection() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET /fast HTTP/1.1\r\nHost: w\r\n\r\n").await;
    assert_eq!(c.response(false).await.header("x-seen-path"), Some("/fast"));
    // Chunked request bodies are hyper's.
    c.send(b"POST /chunked HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.header("x-seen-path"), Some("/chunked"));
    assert_eq!(r.body, b"abc", "the app echoed the decoded body");
    c.send(b"GET /after HTTP/1.1\r\nHost: w\r\n\r\n").await;
    assert_eq!(
        c.response(false).await.header("x-seen-path"),
        Some("/after")
    );
    assert_eq!(
        proxy.metric("request_total", &[("direction", "inbound")]),
        3.0,
        "each request counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_hypers_answer() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET / HTTP/1.1\r\nHost: w\r\nBad Header: x\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(app.connections(), 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_closed_while_idle_are_replaced() {
    // The app answers one request per connection without saying so.
    let (app, seen) = scripted_app(
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        true,
    )
    .await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    for i in 0..3 {
        c.send(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ok"[..]),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(app.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_response_gets_the_client_a_502_and_the_connection_survives() {
    let (app, _) = scripted_app(
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ],
        true,
    )
    .await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("l5d-proxy-error"),
        Some("connection to the application failed")
    );
    c.send(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n").await;
    assert_eq!(c.response(false).await.status, 200);
    assert!(
        proxy.wait_log(
            &[
                "request to the application failed",
                "conflicting content-length"
            ],
            T
        ),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_client_is_honoured() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let _proxy = Proxy::start(&["--map", &m]);
    let mut c = Raw::connect(listen).await;
    c.send(b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await, "the proxy closes after the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_with_a_small_body_keeps_the_connection() {
    let app = http_app().await;
    let (listen, m) = map(app.port());
    let proxy = Proxy::start(&["--map", &m, "--default-policy", "deny"]);
    let mut c = Raw::connect(listen).await;
    c.send(b"POST /x HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("l5d-proxy-error"),
        Some("unauthorized request on route")
    );
    c.send(b"GET /y HTTP/1.1\r\nHost: w\r\n\r\n").await;
    assert_eq!(
        c.response(false).await.status,
        403,
        "the body was skipped, not read as a request"
    );
    assert_eq!(app.connections(), 0);
    assert_eq!(
        proxy.metric("inbound_http_authz_deny_total", &[("srv_name", "deny")]),
        2.0
    );
}
