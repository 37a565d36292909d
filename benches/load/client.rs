//! The harness's own load generator, for what wrk and h2load cannot do:
//! mTLS with a client certificate (new handshakes per second, and
//! keep-alive requests over mTLS), a fixed request rate with latency
//! measured from each request's scheduled send time (the coordinated
//! omission correction of wrk2/oha `--latency-correction`), and holding
//! thousands of idle keep-alive connections open for the memory scenario.
//! It runs as a subprocess (the harness binary re-executed with `__client`)
//! pinned to the load core, on a current-thread tokio runtime, with hyper's
//! HTTP/1.1 client connection (no pool: one connection per task).
//!
//! Output: one line `RESULT {json}` on stdout (`requests`, `errors`,
//! `elapsed_s`, `first_error`, `latency_us` percentiles, and at a fixed
//! rate `late_us_p99`, the pacer's own error). In idle mode it
//! prints `IDLE_READY {json}` once every connection has answered one
//! request, closes them all when stdin reaches EOF, then prints `RESULT`.
//!
//! Must not: retry a failed request silently (every failure is an error in
//! the output). Started by `scenarios.rs`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Percentiles reported by every tool wrapper (and drawn in the charts).
pub const PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    Handshake,
    Idle,
}

struct Args {
    addr: SocketAddr,
    mode: Mode,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut addr = None;
    let mut mode = Mode::KeepAlive;
    let mut connections = 1usize;
    let mut duration = Duration::from_secs(1);
    let mut rate = None;
    let mut tls = None;
    let mut it = args.iter();
    let next = |it: &mut std::slice::Iter<'_, String>, f: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| format!("{f} needs a value"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--addr" => {
                let v = next(&mut it, a)?;
                addr = Some(v.parse().map_err(|e| format!("--addr {v}: {e}"))?);
            }
            "--mode" => {
                mode = match next(&mut it, a)?.as_str() {
                    "keepalive" => Mode::KeepAlive,
                    "handshake" => Mode::Handshake,
                    "idle" => Mode::Idle,
                    m => return Err(format!("unknown --mode {m}")),
                }
            }
            "--connections" => {
                let v = next(&mut it, a)?;
                connections = v.parse().map_err(|e| format!("--connections {v}: {e}"))?;
            }
            "--duration" => {
                let v = next(&mut it, a)?;
                let s: f64 = v.parse().map_err(|e| format!("--duration {v}: {e}"))?;
                duration = Duration::from_secs_f64(s.max(0.01));
            }
            "--rate" => {
                let v = next(&mut it, a)?;
                rate = Some(v.parse().map_err(|e| format!("--rate {v}: {e}"))?);
            }
            "--tls" => {
                let ca = PathBuf::from(next(&mut it, a)?);
                let cert = PathBuf::from(next(&mut it, a)?);
                let key = PathBuf::from(next(&mut it, a)?);
                let sni = next(&mut it, a)?;
                let name =
                    ServerName::try_from(sni.clone()).map_err(|e| format!("SNI {sni}: {e}"))?;
                tls = Some((ca, cert, key, name));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let tls = match tls {
        Some((ca, cert, key, name)) => Some((
            crate::tls::client(&ca, &cert, &key, mode != Mode::Handshake)?,
            name,
        )),
        None => None,
    };
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        mode,
        connections: connections.max(1),
        duration,
        rate,
        tls,
    })
}

/// What all tasks add to.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    /// Fixed rate: how late each send left after its scheduled time.
    late_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

type Shared = Rc<RefCell<Tally>>;

pub fn main(args: &[String]) -> Result<(), String> {
    let args = parse(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let tally: Shared = Rc::default();
    let args = Rc::new(args);
    let start = Instant::now();
    match args.mode {
        Mode::KeepAlive | Mode::Handshake => {
            let deadline = start + args.duration;
            let mut tasks = Vec::new();
            for i in 0..args.connections {
                let (args, tally) = (args.clone(), tally.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    if args.mode == Mode::Handshake {
                        handshake_loop(&args, &tally, deadline).await
                    } else {
                        keepalive_loop(&args, &tally, i, start, deadline).await
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Mode::Idle => idle(&args, &tally).await,
    }
    let elapsed = start.elapsed().as_secs_f64();
    let t = tally.borrow();
    println!("RESULT {}", summary(&t, elapsed));
    Ok(())
}

fn summary(t: &Tally, elapsed: f64) -> serde_json::Value {
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let mut late = t.late_us.clone();
    late.sort_unstable();
    let pct: Vec<serde_json::Value> = PERCENTILES
        .iter()
        .map(|p| serde_json::json!([p, percentile(&lat, *p)]))
        .collect();
    serde_json::json!({
        "requests": t.requests,
        "errors": t.errors,
        "elapsed_s": elapsed,
        "first_error": t.first_error,
        "latency_us": pct,
        "late_us_p99": (!late.is_empty()).then(|| percentile(&late, 99.0)),
    })
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).copied().map_or(0, u64::from)
}

async fn connect(args: &Args) -> Result<SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(args.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", args.addr))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn IoBox> = match &args.tls {
        Some((cfg, name)) => {
            let tls = TlsConnector::from(cfg.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", args.addr))?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// A plain or TLS stream, boxed so both kinds share one connection path.
trait IoBox: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> IoBox for T {}

async fn request(send: &mut SendRequest<Empty<Bytes>>, close: bool) -> Result<(), String> {
    let mut req = Request::get("/").header(hyper::header::HOST, "bench");
    if close {
        req = req.header(hyper::header::CONNECTION, "close");
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    send.ready().await.map_err(|e| format!("connection: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    if status != hyper::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    Ok(())
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn keepalive_loop(args: &Args, tally: &Shared, i: usize, start: Instant, deadline: Instant) {
    // Fixed rate: each connection sends every `interval`, staggered so the
    // total is `rate` requests/s spread evenly.
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(0.001)));
    let mut next_at = interval.map(|iv| start + iv.mul_f64(i as f64 / args.connections as f64));
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        if let Some(at) = next_at {
            if at >= deadline {
                return;
            }
            pace_until(at).await;
        } else if Instant::now() >= deadline {
            return;
        }
        let intended = next_at.unwrap_or_else(Instant::now);
        if next_at.is_some() {
            tally.borrow_mut().late_us.push(micros(intended.elapsed()));
        }
        if let (Some(at), Some(iv)) = (next_at.as_mut(), interval) {
            *at += iv;
        }
        let send = match conn.as_mut() {
            Some(s) => s,
            None => match connect(args).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    tally.borrow_mut().error(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match request(send, false).await {
            Ok(()) => {
                let mut t = tally.borrow_mut();
                t.requests += 1;
                t.latencies_us.push(micros(intended.elapsed()));
            }
            Err(e) => {
                tally.borrow_mut().error(e);
                conn = None;
            }
        }
    }
}

/// How long before a scheduled send the pacer stops sleeping and starts
/// yielding: tokio's timer fires on whole-millisecond ticks, up to a tick late.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Waits until `at` to within microseconds. Sleeping on tokio's timer alone
/// sent each request up to a millisecond after its scheduled time, and that
/// lateness, counted as latency from the schedule, made direct's p50 about
/// 1.6 ms and swamped the tens of microseconds a proxy adds. So: sleep until
/// shortly before, then yield (letting the other connections' I/O run) until
/// the moment. This spins the load generator's core, never the proxy's.
async fn pace_until(at: Instant) {
    if let Some(early) = at.checked_sub(TIMER_SLACK) {
        if early > Instant::now() {
            tokio::time::sleep_until(early.into()).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

async fn handshake_loop(args: &Args, tally: &Shared, deadline: Instant) {
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let result = match connect(args).await {
            Ok(mut send) => request(&mut send, true).await,
            Err(e) => Err(e),
        };
        let mut t = tally.borrow_mut();
        match result {
            Ok(()) => {
                t.requests += 1;
                t.latencies_us.push(micros(t0.elapsed()));
            }
            Err(e) => t.error(e),
        }
    }
}

/// Opens `connections` keep-alive connections (64 handshakes in flight at a
/// time), each answering one request, and holds them until stdin closes.
async fn idle(args: &Rc<Args>, tally: &Shared) {
    let held: Rc<RefCell<Vec<SendRequest<Empty<Bytes>>>>> = Rc::default();
    let sem = Rc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (args, tally, held, sem) = (args.clone(), tally.clone(), held.clone(), sem.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            let t0 = Instant::now();
            let r = match connect(&args).await {
                Ok(mut send) => request(&mut send, false).await.map(|()| send),
                Err(e) => Err(e),
            };
            let mut t = tally.borrow_mut();
            match r {
                Ok(send) => {
                    t.requests += 1;
                    t.latencies_us.push(micros(t0.elapsed()));
                    held.borrow_mut().push(send);
                }
                Err(e) => t.error(e),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    {
        let t = tally.borrow();
        println!(
            "IDLE_READY {}",
            serde_json::json!({"open": held.borrow().len(), "errors": t.errors, "first_error": t.first_error})
        );
    }
    // Hold until the harness closes our stdin (it measures RSS meanwhile).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
    held.borrow_mut().clear();
    // Let the connection tasks see their senders dropped and close.
    tokio::time::sleep(Duration::from_millis(200)).await;
}
